"""The bodies of the Airflow DAG's tasks, without Airflow.

Each function takes the run's params (the trigger form / run conf) and its run id, works on the
run directory, logs what it did with counts, and returns a small JSON-able summary with paths:
tasks pass paths through XCom, never data. The config is re-resolved from the params in every
task (cheap and deterministic), so secrets never have to be read back from a file.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from anomaly_detection import atomic
from anomaly_detection.config import PipelineConfig, build_config, expand_dotted, read_config_file
from anomaly_detection.errors import ConfigError
from anomaly_detection.ingest.auth import CredentialResolver, env_credentials
from anomaly_detection.orchestration.params import TRIGGER_FIELDS, form_overrides
from anomaly_detection.runs import (
    SECRET_MASK,
    RunPaths,
    configs_dir,
    reports_dir,
    run_logging,
    runs_dir,
    safe_run_id,
    utc_now,
)

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "demo.yaml"


def config_file(name: str | None) -> Path:
    """The config file a run names, which must be a YAML file directly inside ``configs/``."""
    name = name or DEFAULT_CONFIG
    folder = configs_dir().resolve()
    available = sorted(p.name for p in folder.glob("*.yaml"))
    if "/" in name or "\\" in name or name not in available:
        raise ConfigError(
            f"config: {name!r} is not a config file in {folder}; available: {', '.join(available)}"
        )
    path = (folder / name).resolve()
    if path.parent != folder:  # a symlink out of the folder
        raise ConfigError(
            f"config: {name!r} resolves to {path}, outside {folder}; config files must live in it"
        )
    return path


def config_from_params(params: Mapping[str, Any]) -> PipelineConfig:
    """Config file < ``overrides`` (a nested or dotted mapping) < the form fields."""
    overrides = params.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides: must be an object of config keys, got {type(overrides).__name__}")
    if "output" in expand_dotted(overrides):
        raise ConfigError(
            "overrides: output.* (where runs and reports are written) is set by the deployment "
            "(ANOMALY_RUNS_DIR, ANOMALY_REPORTS_DIR), not by a run's conf"
        )
    fields = form_overrides(params, TRIGGER_FIELDS)
    locations = {"output": {"runs_dir": str(runs_dir()), "reports_dir": str(reports_dir())}}
    config = build_config(read_config_file(config_file(params.get("config"))), overrides, fields, locations)
    SECRET_MASK.add(*config.secret_values())
    return config


def _paths(config: PipelineConfig, run_id: str) -> RunPaths:
    return RunPaths.create(config.output.runs_dir, config.output.reports_dir, safe_run_id(run_id))


@contextlib.contextmanager
def stage(params: Mapping[str, Any], run_id: str) -> Iterator[tuple[PipelineConfig, RunPaths]]:
    """Resolve the config and open the run's log for one task."""
    config = config_from_params(params)
    paths = _paths(config, run_id)
    with run_logging(paths):
        yield config, paths


def _meta(paths: RunPaths) -> dict[str, Any]:
    path = paths.root / "run_meta.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


# --------------------------------------------------------------------------- tasks


def resolve(params: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """Validate the params and write the resolved config; a bad conf fails here, naming the key."""
    from anomaly_detection.pipeline.stages import resolve_stage, spark_conf

    with stage(params, run_id) as (config, paths):
        resolve_stage(config, paths)
        meta = {"airflow_run_id": run_id, "started_at": utc_now(), "rerun_of": params.get("rerun_of") or None}
        atomic.write_text(paths.root / "run_meta.json", json.dumps(meta, indent=2))
        if meta["rerun_of"]:
            log.info("run %s is a rerun of %s", paths.run_id, meta["rerun_of"])
        return {
            "run_dir": str(paths.root),
            "config_path": str(paths.config),
            "mode": config.processing.mode,
            "spark_conf": spark_conf(config),
        }


def ingest(
    params: Mapping[str, Any], run_id: str, *, credentials: CredentialResolver = env_credentials
) -> dict[str, Any]:
    from anomaly_detection.pipeline.stages import ingest_stage

    with stage(params, run_id) as (config, paths):
        info = ingest_stage(config, paths, credentials=credentials)
        return {**info, "flattened": str(paths.flattened), "raw_dir": str(paths.raw)}


def choose_path(params: Mapping[str, Any], ingested: Mapping[str, Any]) -> tuple[str, str]:
    """``("native" | "spark", why)`` from the configured mode and the ingest task's summary (its XCom)."""
    from anomaly_detection.pipeline.stages import choose_path as choose

    return choose(config_from_params(params), int(ingested["rows"]), routed=ingested.get("routed_to_spark"))


def preprocess(params: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    from anomaly_detection.pipeline.stages import preprocess_stage

    with stage(params, run_id) as (config, paths):
        return {**preprocess_stage(config, paths), "features_path": str(paths.features)}


def algorithms(params: Mapping[str, Any]) -> list[str]:
    return list(config_from_params(params).modeling.algorithms)


def detect(params: Mapping[str, Any], run_id: str, algorithm: str) -> dict[str, Any]:
    from anomaly_detection.pipeline.stages import detect_stage

    with stage(params, run_id) as (config, paths):
        if algorithm not in config.modeling.algorithms:
            raise ConfigError(f"modeling.algorithms does not include {algorithm!r}")
        result = detect_stage(config, paths, algorithm)
        best = result["best"]
        return {
            "algorithm": algorithm,
            "configurations": result["configurations"],
            "best_params": best["params"],
            "score": best["score"],
            "anomaly_count": best["anomaly_count"],
            "models_file": str(paths.models / f"{algorithm}.json"),
        }


def select(params: Mapping[str, Any], run_id: str, *, mode: str) -> dict[str, Any]:
    from anomaly_detection.pipeline.stages import select_stage

    with stage(params, run_id) as (config, paths):
        meta = _meta(paths)
        meta.update(finished_at=utc_now(), mode=mode)
        if meta.get("started_at"):
            started = datetime.fromisoformat(meta["started_at"])
            meta["duration_seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
        outcome = select_stage(config, paths, run_meta=meta)
        results = json.loads(paths.results.read_text(encoding="utf-8"))
        return {
            "best": outcome["best"],
            "rows": results["rows"]["scored"],
            "warnings": results["warnings"],
            "results": str(paths.results),
        }


def report(params: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    from anomaly_detection.pipeline.stages import report_stage

    with stage(params, run_id) as (config, paths):
        report_path = report_stage(config, paths)
        results = json.loads(paths.results.read_text(encoding="utf-8"))
        best = results["best"]
        return {
            "report": str(report_path),
            "published_report": str(paths.published_report),
            "run_dir": str(paths.root),
            "rows": results["rows"]["scored"],
            "warnings": results["warnings"],
            "best": {
                k: best[k]
                for k in ("algorithm", "params", "metric", "score", "anomaly_count", "anomaly_share")
            },
        }


def apply_review(
    params: Mapping[str, Any], run_id: str, *, gate_state: str | None, response: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Record the reviewer's decision once, show it in the report, and say which task runs next."""
    from anomaly_detection.orchestration import review
    from anomaly_detection.pipeline.stages import report_stage

    with stage(params, run_id) as (config, paths):
        decision = review.decide(gate_state, response)
        if decision is None:
            log.warning(
                "review gate ended as %s: the run did not reach a review, nothing recorded", gate_state
            )
            return {"decision": None, "next": None}
        decision = review.record_decision(paths, decision)
        log.info(
            "review: %s by %s via %s (%s)",
            decision.decision,
            decision.by,
            decision.via,
            decision.comment or "no comment",
        )
        report_stage(config, paths, decision=decision.to_dict())
        if decision.decision == "approved":
            return {"decision": "approved", "next": "publish"}
        if decision.decision == "rejected":
            return {"decision": "rejected", "next": "rejected"}
        conf = review.rerun_conf(params, decision.adjustments, rerun_of=run_id)
        log.info("rerun requested with adjustments %s", decision.adjustments)
        return {"decision": "rerun", "next": "trigger_rerun", "rerun_conf": conf}


def publish(params: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    from anomaly_detection.orchestration.review import publish as publish_report

    with stage(params, run_id) as (config, paths):
        target = publish_report(paths)
        log.info("published %s", target)
        return {"approved_report": str(target)}
