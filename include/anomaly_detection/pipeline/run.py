"""The whole native run in one process (the CLI's): every stage of :mod:`.stages` in order, the
Spark ones through spark-submit, failures recorded in ``results.json`` and never raised past here."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from anomaly_detection import atomic
from anomaly_detection.config import PipelineConfig
from anomaly_detection.errors import PipelineError
from anomaly_detection.ingest.auth import CredentialResolver, env_credentials
from anomaly_detection.pipeline import checks
from anomaly_detection.pipeline.stages import (
    SessionFactory,
    choose_path,
    detect_stage,
    ingest_stage,
    preprocess_stage,
    read_json,
    report_stage,
    resolve_stage,
    select_stage,
    source_urls,
    spark_stage,
)
from anomaly_detection.runs import SECRET_MASK, RunPaths, run_logging, utc_now

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    run_id: str
    status: str
    paths: RunPaths
    error: str | None = None
    best: dict[str, Any] | None = None


def _mark_failed(paths: RunPaths, config: PipelineConfig, error: str, meta: dict[str, Any]) -> None:
    doc = read_json(paths.results) if paths.results.exists() else {}
    doc.update(
        meta,
        run_id=paths.run_id,
        name=config.name,
        status="failed",
        error=error,
        source_url=source_urls(config),
    )
    doc["raw_snapshot"] = str(paths.raw)
    doc["log"] = str(paths.log)
    atomic.write_json(paths.results, doc)


def run_pipeline(
    config: PipelineConfig,
    *,
    run_id: str,
    echo: bool = False,
    credentials: CredentialResolver = env_credentials,
    on_stage: Callable[[str], None] | None = None,
    rerun_of: str | None = None,
    session_factory: SessionFactory | None = None,
) -> RunOutcome:
    """Run every native stage in this process. Failures are recorded, never raised past here."""
    paths = RunPaths.create(config.output.runs_dir, config.output.reports_dir, run_id)
    SECRET_MASK.add(*config.secret_values())
    started_at, clock = utc_now(), time.perf_counter()
    meta: dict[str, Any] = {"started_at": started_at, "rerun_of": rerun_of, "orchestrator": "cli"}
    with run_logging(paths, echo=echo):
        try:
            resolve_stage(config, paths)
            if on_stage:
                on_stage("ingest")
            ingested = ingest_stage(config, paths, credentials=credentials, session_factory=session_factory)
            checks.validate_rows(ingested["rows"], config.validation)
            path, why = choose_path(config, ingested["rows"], routed=ingested.get("routed_to_spark"))
            log.info("%s path (%s)", path, why)
            meta["mode"] = path
            if path == "spark":
                for job in ("preprocess", "detect"):
                    if on_stage:
                        on_stage(f"spark {job}")
                    spark_stage(config, paths, job)
                    if job == "preprocess":
                        checks.validate_summary(read_json(paths.summary), config.validation)
            else:
                if on_stage:
                    on_stage("preprocess")
                preprocess_stage(config, paths)
                for algorithm in config.modeling.algorithms:
                    if on_stage:
                        on_stage(f"detect {algorithm}")
                    detect_stage(config, paths, algorithm)
            meta.update(finished_at=utc_now(), duration_seconds=round(time.perf_counter() - clock, 3))
            outcome = select_stage(config, paths, run_meta=meta)
            if on_stage:
                on_stage("report")
            report_stage(config, paths)
            log.info("run %s finished in %.2fs", paths.run_id, time.perf_counter() - clock)
            return RunOutcome(paths.run_id, "succeeded", paths, best=outcome["best"])
        except PipelineError as exc:
            log.error("run failed: %s", exc)
            _mark_failed(paths, config, str(exc), meta)
            return RunOutcome(paths.run_id, "failed", paths, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - recorded with its traceback, then reported
            log.exception("run failed unexpectedly")
            message = f"{type(exc).__name__}: {exc}"
            _mark_failed(paths, config, message, meta)
            return RunOutcome(paths.run_id, "failed", paths, error=message)
