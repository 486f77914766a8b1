"""The report's figures, each drawn within its own time measurement; a failed figure becomes a note."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from anomaly_detection.report import plots
from anomaly_detection.report.inputs import ReportInputs

log = logging.getLogger(__name__)


def timed_plot(
    name: str, fn: Callable[[], str | None], timings: dict[str, float]
) -> tuple[str | None, str | None]:
    start = time.perf_counter()
    try:
        return fn(), None
    except Exception as exc:  # a broken figure must not lose the whole report
        log.exception("report figure %r failed", name)
        return None, f"This figure could not be drawn: {type(exc).__name__}: {exc}"
    finally:
        timings[name] = time.perf_counter() - start


def draw_figures(
    inputs: ReportInputs, best_index: int | None
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    timings: dict[str, float] = {}
    figures: list[dict[str, Any]] = []
    names = list(map(str, inputs.feature_names))
    n_features = np.asarray(inputs.features).shape[1] if np.asarray(inputs.features).ndim == 2 else 1

    def add(key: str, title: str, fn: Callable[[], str | None], caption: str, empty_note: str) -> None:
        image, error = timed_plot(key, fn, timings)
        note = error or (empty_note if image is None else "")
        figures.append({"key": key, "title": title, "image": image, "caption": caption, "note": note})

    if inputs.correlation_heatmap:
        if n_features >= 2:
            add(
                "heatmap",
                "Feature correlation",
                lambda: plots.correlation_heatmap(inputs.features, names),
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
        lambda: plots.score_distribution(inputs.scores, inputs.threshold, rows_total=total_rows),
        f"Scores of {which} under the selected model. Left: their distribution; right: the scores ranked "
        "from the highest. Rows at or above the dashed cut are flagged" + (f": {rule}." if rule else "."),
        "No finite scores to draw.",
    )
    if len(inputs.models or []) > 1:  # one configuration: nothing to compare
        add(
            "models",
            "Model comparison",
            lambda: plots.model_comparison(inputs.models, best_index),
            "Selection metric of every configuration tried, coloured by algorithm; the hatched bar is the selected one.",
            "No configurations to compare.",
        )
    add(
        "scatter",
        "Anomalies in feature space" if n_features >= 2 else "Anomalies along the single feature",
        lambda: plots.pca_scatter(inputs.features, inputs.sample_labels, names),
        "Sampled rows projected on the first two principal components; anomalies in red."
        if n_features >= 2
        else "Only one feature: its scaled value per sampled row, anomalies in red (no PCA possible).",
        "No usable sampled rows to draw.",
    )
    return figures, timings
