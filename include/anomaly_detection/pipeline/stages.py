"""The native pipeline as small stages that read and write files in the run directory.

Each stage takes the typed config and the :class:`~anomaly_detection.runs.RunPaths` of the run,
so the CLI can chain them in one process and an Airflow task can run any one of them, passing
only paths. ``run_pipeline`` chains them all.
"""

from __future__ import annotations

import logging
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import requests
import yaml

from anomaly_detection import __version__, atomic
from anomaly_detection.config import PipelineConfig, redact_url
from anomaly_detection.detect import scored
from anomaly_detection.detect.evaluate import ModelResult, better, choose, evaluate, select_best
from anomaly_detection.detect.explain import Reference, explain, fit_reference, named_features
from anomaly_detection.detect.grid import DetectorSettings, run_grid
from anomaly_detection.errors import PipelineError
from anomaly_detection.features.context import follows_every_feature
from anomaly_detection.features.derive import feature_plan
from anomaly_detection.features.preprocess import preprocess
from anomaly_detection.ingest import memory
from anomaly_detection.ingest.auth import CredentialResolver, env_credentials
from anomaly_detection.ingest.native import ingest
from anomaly_detection.ingest.sources import bulk_ingest_sources, ingest_sources
from anomaly_detection.pipeline import checks, timeview
from anomaly_detection.report import insights
from anomaly_detection.report.format import datetimes_as_iso, epochs_as_iso
from anomaly_detection.runs import SECRET_MASK, RunPaths, utc_now

log = logging.getLogger(__name__)

#: Makes the HTTP session(s) ingestion uses; None: the reader's own.
SessionFactory = Callable[[], requests.Session]


def read_json(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def versions() -> dict[str, str]:
    import sklearn

    return {
        "anomaly_detection": __version__,
        "python": platform.python_version(),
        "pandas": pd.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }


def _storable(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns with mixed types become text so parquet can store them."""
    frame = frame.copy()
    for name in frame.columns:
        if frame[name].dtype == object:
            frame[name] = frame[name].map(lambda v: v if v is None or isinstance(v, str) else str(v))
    return frame


# --------------------------------------------------------------------------- stages


def resolve_stage(config: PipelineConfig, paths: RunPaths) -> Path:
    """Write the resolved config, secrets redacted."""
    atomic.write_text(paths.config, yaml.safe_dump(config.redacted(), sort_keys=False))
    log.info("run %s: resolved config written to %s", paths.run_id, paths.config)
    return paths.config


def ingest_stage(
    config: PipelineConfig,
    paths: RunPaths,
    *,
    credentials: CredentialResolver = env_credentials,
    session_factory: SessionFactory | None = None,
) -> dict[str, Any]:
    """Fetch the API into ``raw/`` and ``flattened.parquet``.

    With ``processing.mode: spark`` the pages are fetched concurrently and streamed into Parquet
    part files (``flattened.parquet/part-NNNNNN.parquet``, :mod:`anomaly_detection.ingest.bulk`); otherwise the
    records are read into one frame and written as one file. ``session_factory`` makes the HTTP
    sessions (the replay serves the raw snapshot through it).
    """
    started = time.perf_counter()
    if config.processing.mode == "spark":
        return _bulk_ingest_stage(config, paths, credentials=credentials, session_factory=session_factory)
    session = session_factory() if session_factory else None
    guard = memory.IngestMemoryGuard(config.processing)
    try:
        result = ingest_sources(
            ingest,
            config.source,
            config.processing,
            paths.raw,
            credentials=credentials,
            session=session,
            memory_guard=guard,
        )
    except memory.MemoryBudgetExceeded as exc:
        if config.processing.mode != "auto":
            raise
        return _route_to_spark(config, paths, exc, credentials=credentials, session_factory=session_factory)
    estimate = guard.estimate()
    log.info(
        "native path: about %s needed for %s (budget %s)",
        memory.gib(estimate.peak_bytes),
        estimate.describe(),
        memory.gib(guard.budget),
    )
    SECRET_MASK.add(*result.secrets)
    with atomic.replacing(paths.flattened) as tmp:
        _storable(result.frame).to_parquet(tmp, index=False)
    info = {
        "rows": len(result.frame),
        "columns": int(result.frame.shape[1]),
        "pages": len(result.pages),
        "sources": len(config.source.urls),
        "records_path": result.records_path,
        "records_shape": result.records_shape,
        "truncated_at_max_records": result.truncated,
        "seconds": round(time.perf_counter() - started, 3),
        "key_collisions": result.stats.collisions,
        "warnings": result.warnings,
    }
    atomic.write_json(paths.ingest_info, info)
    return info


def _route_to_spark(
    config: PipelineConfig,
    paths: RunPaths,
    exceeded: memory.MemoryBudgetExceeded,
    *,
    credentials: CredentialResolver,
    session_factory: SessionFactory | None,
) -> dict[str, Any]:
    """``auto`` and too big for the native path: fetch again with the Spark path's streaming ingestion.

    The pages the native reader fetched are kept in ``raw.native/``.
    """
    log.warning("auto: %s; routing this run to Spark", exceeded)
    kept = paths.root / "raw.native"
    if kept.exists():
        shutil.rmtree(kept)
    paths.raw.rename(kept)
    paths.raw.mkdir()
    return _bulk_ingest_stage(
        config, paths, credentials=credentials, session_factory=session_factory, routed=str(exceeded)
    )


def _bulk_ingest_stage(
    config: PipelineConfig,
    paths: RunPaths,
    *,
    credentials: CredentialResolver,
    session_factory: SessionFactory | None,
    routed: str | None = None,
) -> dict[str, Any]:
    from anomaly_detection.ingest.bulk import ingest_to_parquet

    with atomic.replacing(paths.flattened) as tmp:
        result = bulk_ingest_sources(
            ingest_to_parquet,
            config.source,
            config.processing,
            paths.raw,
            tmp,
            credentials=credentials,
            session_factory=session_factory,
        )
    info = {
        "rows": result.records,
        "columns": len(result.columns),
        "pages": result.pages,
        "requests": result.requests,
        "sources": len(config.source.urls),
        "records_path": config.source.records_path,
        "records_shape": result.records_shape,
        "truncated_at_max_records": result.truncated,
        "seconds": result.seconds,
        "records_per_second": round(result.records_per_second, 1),
        "bulk": True,
        "warnings": result.warnings,
    }
    if routed:
        info["routed_to_spark"] = routed
    atomic.write_json(paths.ingest_info, info)
    return info


def preprocess_stage(config: PipelineConfig, paths: RunPaths) -> dict[str, Any]:
    """Read ``flattened.parquet``; write ``features.parquet``, ``kept_rows.npy`` (every row's position),
    ``duplicate_rows.npy`` (positions of rows repeating an earlier one) and the data summary."""
    estimate = memory.check_parquet(paths.flattened, config.processing)
    log.info("native path: about %s needed for %s", memory.gib(estimate.peak_bytes), estimate.describe())
    kept = preprocess(
        pd.read_parquet(paths.flattened),
        config.processing,
        label_column=config.evaluation.label_column,
        time_column=config.time.column,
        random_state=config.modeling.random_state,
    )
    rows = kept.rows
    summary = kept.summary
    measures = [spec.column for spec in feature_plan(summary).specs if spec.kind == "measure"]
    summary["time_context"] = timeview.write_context(config, paths.root, kept.table, measures)
    with atomic.replacing(paths.features) as tmp:
        pd.DataFrame(kept.features, columns=kept.feature_names).to_parquet(tmp, index=False)
    with atomic.replacing(paths.kept_rows) as tmp:
        np.save(tmp, rows)
    with atomic.replacing(paths.duplicate_rows) as tmp:
        np.save(tmp, rows[kept.duplicates])
    if kept.labels is not None:
        with atomic.replacing(paths.labels) as tmp:
            np.save(tmp, kept.labels)
    elif paths.labels.exists():
        paths.labels.unlink()
    atomic.write_json(paths.summary, summary)
    checks.validate_summary(summary, config.validation)
    return {"rows": int(len(rows)), "features": kept.feature_names}


def _load_features(paths: RunPaths) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    frame = pd.read_parquet(paths.features)
    labels = np.load(paths.labels) if paths.labels.exists() else None
    return frame.to_numpy(dtype=np.float64), list(frame.columns), labels


def detect_stage(config: PipelineConfig, paths: RunPaths, algorithm: str) -> dict[str, Any]:
    """Tune one algorithm over its grid; write ``models/<algorithm>.json`` and its best scores."""
    X, _, y_true = _load_features(paths)
    settings = DetectorSettings(
        contamination=config.modeling.contamination,
        random_state=config.modeling.random_state,
        fit_sample_size=config.modeling.fit_sample_size,
        dbscan_sample_size=config.modeling.dbscan_sample_size,
    )
    results: list[ModelResult] = []
    best: ModelResult | None = None
    grid = config.modeling.grid_for(algorithm)
    fit_on_distinct = config.processing.fit_on_distinct_rows
    context = timeview.read_scores(paths.root)
    followed = follows_every_feature([s.kind for s in feature_plan(read_json(paths.summary)).specs])
    detections = run_grid(
        algorithm,
        grid,
        X,
        settings,
        fit_on_distinct=fit_on_distinct,
        context=context,
        context_gates_values=followed,
    )
    for detection in detections:
        result = evaluate(
            X,
            detection,
            metric=config.evaluation.metric,
            y_true=y_true,
            sample_size=config.evaluation.silhouette_sample_size,
            random_state=config.modeling.random_state,
        )
        results.append(result)
        if better(result, best):
            best, best_detection = result, detection
    assert best is not None
    scored.write_native(
        paths.models,
        algorithm,
        scores=best_detection.scores,
        labels=best_detection.labels,
        positions=np.load(paths.kept_rows),
        X=X,
        plot_sample_size=config.report.plot_sample_size,
        top_anomalies=config.report.top_anomalies,
        seed=config.modeling.random_state,
    )
    atomic.write_json(paths.models / f"{algorithm}.json", [r.to_dict() for r in results])
    log.info("%s: best %s with %s=%s", algorithm, best.params, best.metric, best.score)
    return {"algorithm": algorithm, "configurations": len(results), "best": best.to_dict()}


def choose_path(config: PipelineConfig, rows: int, *, routed: str | None = None) -> tuple[str, str]:
    """``("native" | "spark", why)`` from ``processing.mode``, the ingested row count and whether the
    ingestion already routed the run to Spark (``routed``: why; see the memory guard)."""
    mode, threshold = config.processing.mode, config.processing.auto_threshold_rows
    if mode != "auto":
        return mode, f"processing.mode is {mode}"
    if routed:
        return "spark", f"auto: {routed}"
    if rows >= threshold:
        return "spark", f"auto: {rows:,} rows >= auto_threshold_rows {threshold:,}"
    return "native", f"auto: {rows:,} rows < auto_threshold_rows {threshold:,}"


def spark_conf(config: PipelineConfig) -> dict[str, str]:
    """The Spark settings of ``config.spark`` for spark-submit's ``--conf``."""
    return {
        "spark.driver.memory": config.spark.driver_memory,
        "spark.executor.memory": config.spark.executor_memory,
    }


def spark_stage(config: PipelineConfig, paths: RunPaths, job: str) -> None:
    """Run ``spark_jobs/<job>.py`` on the run directory through spark-submit (``spark.master``)."""
    from anomaly_detection.spark.submit import run_spark_job

    started = time.perf_counter()
    log.info("spark-submit %s on %s", job, config.spark.master)
    run_spark_job(job, paths.root, paths.config, master=config.spark.master, conf=spark_conf(config))
    log.info("spark %s finished in %.1fs", job, time.perf_counter() - started)


def _model_results(paths: RunPaths, algorithms: list[str]) -> list[ModelResult]:
    results = []
    for algorithm in algorithms:
        path = paths.models / f"{algorithm}.json"
        if path.exists():
            results.extend(ModelResult(**entry) for entry in read_json(path))
    return results


def _reference(
    summary: dict[str, Any], sample: pd.DataFrame, paths: RunPaths, *, also: np.ndarray | None = None
) -> tuple[Reference, pd.DataFrame]:
    """The normal rows of a run's uniform sample, read again from the flattened table (see :mod:`.explain`),
    and the rows at the positions ``also``, in order, read in the same pass over the table."""
    uniform = sample[sample["sampled"].to_numpy(dtype=bool)]
    wanted = uniform["position"].to_numpy()
    more = np.zeros(0, dtype=np.int64) if also is None else np.asarray(also, dtype=np.int64)
    rows = scored.rows_at(paths.flattened, np.concatenate([wanted, more]))
    reference = fit_reference(
        rows.iloc[: len(wanted)],
        uniform["anomaly"].to_numpy() == 0,
        feature_plan(summary),
        scaling=summary.get("scaling"),
    )
    return reference, rows.iloc[len(wanted) :].reset_index(drop=True)


def select_stage(
    config: PipelineConfig, paths: RunPaths, *, run_meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Pick the best configuration overall; write ``anomalies.csv`` and ``results.json``."""
    if (run_meta or {}).get("mode") == "spark":  # only a detect job that finished publishing counts
        from anomaly_detection.spark.submit import require_complete

        require_complete(paths.root, "detect", config.modeling.algorithms)
    results = _model_results(paths, config.modeling.algorithms)
    if not results:
        raise PipelineError(f"no model results found in {paths.models}")
    best_per_algorithm = {
        a: select_best(r for r in results if r.algorithm == a) for a in config.modeling.algorithms
    }
    best, why = choose(results, selection=config.evaluation.selection)
    assert best is not None
    log.info("selection (%s): %s", config.evaluation.selection, why)
    summary = read_json(paths.summary)
    checks.validate_summary(summary, config.validation)
    flagged = scored.read_flagged(scored.flagged_path(paths.models, best.algorithm), features=True)
    sample = scored.read_sample(scored.sample_path(paths.models, best.algorithm))
    reference, anomalies = _reference(summary, sample, paths, also=flagged["position"].to_numpy())
    explanations = explain(reference, anomalies)
    positions = flagged["position"].to_numpy()
    in_time = timeview.explanations(paths.root, anomalies, positions)
    events = timeview.write_events(paths.root, positions, flagged["score"].to_numpy())
    anomalies = datetimes_as_iso(anomalies)
    anomalies.insert(0, "row", positions)  # the record's position in the ingested table
    anomalies.insert(0, "top_features", [e.codes for e in explanations])
    anomalies.insert(
        0, "explanation", [f"{t}; {e.text}" if t else e.text for t, e in zip(in_time, explanations)]
    )
    anomalies.insert(0, "score", flagged["score"].to_numpy())
    anomalies.insert(0, "rank", np.arange(1, len(flagged) + 1))
    with atomic.replacing(paths.anomalies) as tmp:
        anomalies.to_csv(tmp, index=False)
    atomic.copy_file(scored.sample_path(paths.models, best.algorithm), paths.report_sample)

    ingest_info = read_json(paths.ingest_info) if paths.ingest_info.exists() else {}
    model_warnings = [f"best model: {flag}" for flag in best.flags]
    model_warnings += checks.skipped_on_spark(run_meta, config.modeling.algorithms)
    if config.evaluation.selection == "ensemble" and best.algorithm != "ensemble":
        model_warnings.append(f"selection: {why}")
    if not best.selectable:
        model_warnings.append(
            "no configuration passed the sanity checks; the best of the flawed ones is shown"
        )
    warnings = checks.stage_warnings(
        ingest_info, summary, model_warnings, records_path=config.source.records_path
    )
    best_dict = best.to_dict()
    results_doc = {
        **(run_meta or {}),
        "run_id": paths.run_id,
        "status": "succeeded",
        "name": config.name,
        "source_url": source_urls(config),
        "mode": (run_meta or {}).get("mode", "native"),
        "rows": {
            "ingested": ingest_info.get("rows", summary["rows_before"]),
            "scored": summary["rows_after"],
            "duplicates": summary["duplicates"],
            "duplicates_flagged": scored.repeats_among(
                flagged["position"].to_numpy(),
                paths.spark_duplicate_rows
                if (run_meta or {}).get("mode") == "spark" or not paths.features.exists()
                else paths.duplicate_rows,
            ),
        },
        "features": summary["features"],
        "metric": config.evaluation.metric,
        "label_column": config.evaluation.label_column,
        "models": [r.to_dict() for r in results],
        "best_per_algorithm": {a: (r.to_dict() if r else None) for a, r in best_per_algorithm.items()},
        "best": best_dict,
        "selection": {"strategy": config.evaluation.selection, "why": why},
        "warnings": warnings,
        "events": timeview.events_summary(events, paths.root),
        "anomalies": str(paths.anomalies),
        "report": str(paths.report),
        "published_report": str(paths.published_report),
        "versions": versions(),
    }
    atomic.write_json(paths.results, results_doc)
    log.info(
        "best model: %s %s, %s=%s, %d anomalies (%.2f%%)",
        best.algorithm,
        best.params,
        best.metric,
        best.score,
        best.anomaly_count,
        100 * best.anomaly_share,
    )
    return {"best": best_dict, "anomaly_count": best.anomaly_count, "results": str(paths.results)}


def source_urls(config: PipelineConfig) -> str:
    """The source's URL(s), redacted; several are joined with a space."""
    return " ".join(redact_url(url) for url in config.source.urls)


def _optional(what: str, build: Callable[[], Any]) -> Any:
    """Build an optional part of the report; a failure is logged as a warning, never fatal."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - the report is still useful without this part
        log.warning("report: %s left out: %s: %s", what, type(exc).__name__, exc)
        return None


def report_stage(config: PipelineConfig, paths: RunPaths, *, decision: dict[str, Any] | None = None) -> Path:
    """Render ``report.html`` into the run directory and copy it to the reports directory."""
    from anomaly_detection.report.inputs import ReportInputs
    from anomaly_detection.report.render import render_report

    results = read_json(paths.results)
    summary = read_json(paths.summary)
    feature_names = list(summary["features"])
    sample = scored.read_sample(paths.report_sample)
    X = sample[scored.feature_columns(len(feature_names))].to_numpy(dtype=np.float64)
    roles = summary.get("roles") or {}
    preview = epochs_as_iso(scored.head(paths.flattened, config.report.preview_rows), roles)
    top_anomalies = epochs_as_iso(pd.read_csv(paths.anomalies, nrows=config.report.top_anomalies), roles)
    if decision is None and (paths.root / "decision.json").exists():
        decision = read_json(paths.root / "decision.json")
    reference, _ = _reference(summary, sample, paths)
    named = named_features(top_anomalies["top_features"])
    flagged_positions = scored.read_flagged(scored.flagged_path(paths.models, results["best"]["algorithm"]))[
        "position"
    ].to_numpy()
    time_view = _optional(
        "time view",
        lambda: insights.time_view(config, paths, sample, reference, flagged_positions, list(named)),
    )
    history_view = _optional(
        "run history",
        lambda: insights.history_view(
            config, paths, insights.history_entry(config, paths, results, reference, sample)
        ),
    )
    rerun = _optional("rerun comparison", lambda: insights.rerun_view(paths, results.get("rerun_of")))
    inputs = ReportInputs(
        run={
            "run_id": results["run_id"],
            "name": results["name"],
            "status": results["status"],
            "source_url": results["source_url"],
            "started_at": results.get("started_at"),
            "finished_at": results.get("finished_at") or utc_now(),
            "duration_seconds": results.get("duration_seconds"),
            "versions": results["versions"],
            "rerun_of": results.get("rerun_of"),
            "orchestrator": results.get("orchestrator"),
        },
        config=config.redacted(),
        summary={**summary, "duplicates_flagged": results["rows"].get("duplicates_flagged")},
        preview=preview,
        models=results["models"],
        best=results["best"],
        features=X,
        feature_names=feature_names,
        sample_labels=sample["anomaly"].to_numpy(),
        scores=sample.loc[sample["sampled"], "score"].to_numpy(),
        threshold=float(results["best"]["threshold"]),
        top_anomalies=top_anomalies,
        log_text=SECRET_MASK.mask(paths.log.read_text(encoding="utf-8")) if paths.log.exists() else "",
        correlation_heatmap=config.report.correlation_heatmap,
        decision=decision,
        warnings=results.get("warnings", []),
        explained_features=named,
        explained_rows=len(top_anomalies),
        explanation_reference_rows=reference.rows,
        time_view=time_view,
        history=history_view,
        rerun=rerun,
    )
    render_report(inputs, paths.report)
    atomic.copy_file(paths.report, paths.published_report)
    log.info("report written to %s", paths.report)
    return paths.report
