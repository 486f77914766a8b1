"""The report's figures: which ones a run gets (:func:`figure_jobs`), drawn side by side in worker
processes (:func:`draw_all`), each within its own time measurement; a failed figure becomes a note.

Drawing is most of a report's time and every figure is independent, so on a machine with more
than one core the figures are drawn by a small pool of forked processes. They inherit the jobs
from this process (nothing but the key is sent to them) and send back the PNG text. Where forking
is not available the figures are drawn one by one in this process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from anomaly_detection.report import plots
from anomaly_detection.report.inputs import ReportInputs

log = logging.getLogger(__name__)

MAX_WORKERS = 2
#: The strongest events shaded in the time view.
SHADED_EVENTS = 200
#: The jobs of the :func:`draw_all` call in progress, inherited by its forked workers.
_PENDING: dict[str, FigureJob] = {}


@dataclass(frozen=True)
class FigureJob:
    """One figure to draw: a function of :mod:`~anomaly_detection.report.plots` and its arguments."""

    draw: Callable[..., str | None]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Drawn:
    """The drawn figures by key: base64 PNG (or ``None``), the error note of a failed one, seconds."""

    images: dict[str, str | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def get(self, key: str) -> tuple[str | None, str | None]:
        return self.images.get(key), self.errors.get(key)


def _draw_pending(key: str) -> tuple[str | None, str | None, float]:
    return _draw_one(key, _PENDING[key])


def _draw_one(key: str, job: FigureJob) -> tuple[str | None, str | None, float]:
    start = time.perf_counter()
    try:
        return job.draw(*job.args, **job.kwargs), None, time.perf_counter() - start
    except Exception as exc:  # a broken figure must not lose the whole report
        log.exception("report figure %r failed", key)
        return (
            None,
            f"This figure could not be drawn: {type(exc).__name__}: {exc}",
            time.perf_counter() - start,
        )


def _workers(jobs: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, min(MAX_WORKERS, cores, jobs))


def draw_all(jobs: dict[str, FigureJob], *, workers: int | None = None) -> Drawn:
    """Draw every job, in up to ``workers`` forked processes (default: the cores, at most 2).

    Parameters
    ----------
    jobs : dict of str to FigureJob
        The figures by key, in drawing order (the costliest first balances the workers best).
    workers : int, optional
        Processes to draw in; 1 draws in this process.

    Returns
    -------
    Drawn
        Every key of ``jobs`` with its image or error note and the seconds it took.
    """
    workers = _workers(len(jobs)) if workers is None else workers
    results: dict[str, tuple[str | None, str | None, float]] = {}
    if workers > 1:
        _PENDING.clear()
        _PENDING.update(jobs)
        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                futures = {key: pool.submit(_draw_pending, key) for key in jobs}
                results = {key: future.result() for key, future in futures.items()}
        except (BrokenProcessPool, OSError) as exc:
            log.warning("report figures drawn one by one: the worker processes failed (%s)", exc)
            results = {}
        finally:
            _PENDING.clear()
    for key, job in jobs.items():
        if key not in results:
            results[key] = _draw_one(key, job)
    drawn = Drawn()
    for key, (image, error, seconds) in results.items():
        drawn.images[key] = image
        drawn.seconds[key] = seconds
        if error:
            drawn.errors[key] = error
    return drawn


def figure_jobs(inputs: ReportInputs, best_index: int | None) -> dict[str, FigureJob]:
    """Every figure the report of ``inputs`` shows, keyed as the sections look them up."""
    names = list(map(str, inputs.feature_names))
    features = np.asarray(inputs.features)
    n_features = features.shape[1] if features.ndim == 2 else 1
    total_rows = int(inputs.summary.get("rows_after") or len(inputs.scores))
    jobs: dict[str, FigureJob] = {}
    if inputs.correlation_heatmap and n_features >= 2:
        jobs["heatmap"] = FigureJob(plots.correlation_heatmap, (inputs.features, names))
    jobs["scores"] = FigureJob(
        plots.score_distribution, (inputs.scores, inputs.threshold), {"rows_total": total_rows}
    )
    view = inputs.time_view
    if view is not None:
        spans = []
        if view.events is not None and len(view.events):
            shaded = view.events.head(SHADED_EVENTS)
            starts, ends = (
                pd.to_datetime(shaded[c], utc=True).dt.tz_localize(None).to_numpy("datetime64[ns]")
                for c in ("start", "end")
            )
            spans = list(zip(starts, ends))
        jobs["time_features"] = FigureJob(
            plots.features_over_time, (view.times, view.values, view.anomalies, view.feature_names, spans)
        )
    if len(inputs.models or []) > 1:  # one configuration: nothing to compare
        jobs["models"] = FigureJob(plots.model_comparison, (inputs.models, best_index))
    jobs["scatter"] = FigureJob(plots.pca_scatter, (inputs.features, inputs.sample_labels, names))
    if view is not None and view.buckets is not None:
        b = view.buckets
        jobs["time_buckets"] = FigureJob(plots.anomalies_per_bucket, (b.starts, b.rows, b.anomalies, b.width))
    history = inputs.history
    if history is not None and len(history.runs) > 1:
        labels = [str(e.get("finished_at") or e.get("run_id"))[:16] for e in history.runs]
        shares = [float(e.get("anomaly_share") or 0) for e in history.runs]
        jobs["share_trend"] = FigureJob(plots.share_trend, (labels, shares, len(history.runs) - 1))
    if history is not None and history.drift:
        jobs["drift"] = FigureJob(
            plots.drift_bars,
            ([d.feature for d in history.drift], [d.psi for d in history.drift], history.psi_threshold),
        )
    return jobs


def main_figures(inputs: ReportInputs, drawn: Drawn) -> list[dict[str, Any]]:
    """The figure cards of the report's main figure section, from the drawn images."""
    figures: list[dict[str, Any]] = []
    features = np.asarray(inputs.features)
    n_features = features.shape[1] if features.ndim == 2 else 1

    def add(key: str, title: str, caption: str, empty_note: str) -> None:
        image, error = drawn.get(key)
        note = error or (empty_note if image is None else "")
        figures.append({"key": key, "title": title, "image": image, "caption": caption, "note": note})

    if inputs.correlation_heatmap:
        if n_features >= 2:
            add(
                "heatmap",
                "Feature correlation",
                "Pearson correlation between the scaled features, on the sampled rows.",
                "Not enough usable rows to compute correlations.",
            )
        else:
            figures.append(
                {
                    "key": "heatmap",
                    "title": "Feature correlation",
                    "image": None,
                    "caption": "",
                    "note": "Skipped: a correlation heatmap needs at least two features.",
                }  # fmt: skip
            )
    total_rows = int(inputs.summary.get("rows_after") or len(inputs.scores))
    which = (
        "every row"
        if len(inputs.scores) >= total_rows
        else f"a uniform random sample of {len(inputs.scores):,} of the {total_rows:,} rows"
    )
    rule = str(((inputs.best or {}).get("info") or {}).get("threshold_rule") or "")
    add(
        "scores",
        "Anomaly scores and the cut",
        f"Scores of {which} under the selected model. Left: their distribution; right: the scores ranked "
        "from the highest. Rows at or above the dashed cut are flagged" + (f": {rule}." if rule else "."),
        "No finite scores to draw.",
    )
    if len(inputs.models or []) > 1:
        add(
            "models",
            "Model comparison",
            "Selection metric of every configuration tried, coloured by algorithm; the hatched bar is the selected one.",
            "No configurations to compare.",
        )
    add(
        "scatter",
        "Anomalies in feature space" if n_features >= 2 else "Anomalies along the single feature",
        "Sampled rows projected on the first two principal components; anomalies in red."
        if n_features >= 2
        else "Only one feature: its scaled value per sampled row, anomalies in red (no PCA possible).",
        "No usable sampled rows to draw.",
    )
    return figures
