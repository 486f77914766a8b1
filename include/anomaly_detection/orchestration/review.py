"""The human review gate's logic: turn a reviewer's answer into one recorded decision.

Pure functions plus small file writers; the DAG wires them to Airflow's human-in-the-loop operator.
A decision is written once to ``decision.json`` in the run directory and never changes: a second,
different outcome for the same run is refused, so a rejected run can never be published.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from anomaly_detection import atomic
from anomaly_detection.config import build_config
from anomaly_detection.errors import PipelineError
from anomaly_detection.orchestration.params import REVIEW_FIELDS, form_overrides
from anomaly_detection.report.index import report_url
from anomaly_detection.runs import RunPaths

APPROVE = "Approve"
REJECT = "Reject"
RERUN = "Rerun with adjustments"
OPTIONS = (APPROVE, REJECT, RERUN)
#: What happens when nobody answers before the response timeout: never publish unattended.
TIMEOUT_DEFAULT = REJECT

_DECISION_OF = {APPROVE: "approved", REJECT: "rejected", RERUN: "rerun"}


@dataclass(frozen=True)
class Decision:
    """One review outcome, as written to ``decision.json``."""

    decision: str  # approved | rejected | rerun
    by: str
    at: str
    comment: str = ""
    adjustments: dict[str, Any] = field(default_factory=dict)
    via: str = "form"  # form | marked_success | marked_failed | timeout

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _user_name(user: Any) -> str:
    if isinstance(user, Mapping):
        return str(user.get("name") or user.get("id") or "unknown")
    return str(user) if user else "unknown"


def adjustments_from_form(params_input: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config overrides a reviewer asked for: only filled-in adjustable fields, validated."""
    overrides = form_overrides(params_input, REVIEW_FIELDS)
    if overrides:
        build_config(overrides)  # raises ConfigError naming the bad field
    return overrides


def decide(
    gate_state: str | None, response: Mapping[str, Any] | None, *, now: datetime | None = None
) -> Decision | None:
    """Map the gate task's final state and its response (XCom) to a decision.

    * answered form: the chosen option, by the responding user;
    * gate marked success in the UI without an answer: approved;
    * gate failed (marked failed in the UI, or timed out with no default): rejected;
    * any other state (the run failed before the gate): ``None``, nothing to decide.
    """
    at = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    if gate_state == "success" and response and response.get("chosen_options"):
        chosen = response["chosen_options"][0]
        if chosen not in _DECISION_OF:
            raise PipelineError(f"review answer {chosen!r} is not one of {list(OPTIONS)}")
        params_input = response.get("params_input") or {}
        responded_at = response.get("responded_at")
        timed_out = bool(response.get("timedout"))
        return Decision(
            decision=_DECISION_OF[chosen],
            by="timeout" if timed_out else _user_name(response.get("responded_by_user")),
            at=str(responded_at) if responded_at else at,
            comment=str(params_input.get("comment") or ""),
            adjustments=adjustments_from_form(params_input) if chosen == RERUN else {},
            via="timeout" if timed_out else "form",
        )
    if gate_state == "success":
        return Decision(decision="approved", by="ui (task marked success)", at=at, via="marked_success")
    if gate_state == "failed":
        return Decision(
            decision="rejected", by="ui (task marked failed or timed out)", at=at, via="marked_failed"
        )
    return None


def record_decision(paths: RunPaths, decision: Decision) -> Decision:
    """Write ``decision.json`` once. The same decision again is a no-op; a different one is refused."""
    path = paths.root / "decision.json"
    if path.exists():
        existing = json.loads(path.read_text(encoding="utf-8"))
        if existing.get("decision") != decision.decision:
            raise PipelineError(
                f"run {paths.run_id} was already {existing.get('decision')} by {existing.get('by')} at "
                f"{existing.get('at')}; refusing to record it as {decision.decision}"
            )
        return Decision(**existing)
    atomic.write_text(path, json.dumps(decision.to_dict(), indent=2))
    return decision


def read_decision(paths: RunPaths) -> dict[str, Any] | None:
    path = paths.root / "decision.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def publish(paths: RunPaths) -> Path:
    """Copy an approved run's report to ``<reports_dir>/approved/``; refuses any run not approved."""
    decision = read_decision(paths)
    if not decision or decision.get("decision") != "approved":
        state = decision.get("decision") if decision else "not reviewed"
        raise PipelineError(f"run {paths.run_id} is {state}; only approved runs are published")
    target = paths.reports_dir / "approved" / f"{paths.run_id}.html"
    atomic.copy_file(paths.report, target)
    return target


def rerun_conf(
    original_conf: Mapping[str, Any], adjustments: Mapping[str, Any], *, rerun_of: str
) -> dict[str, Any]:
    """The conf of a rerun: the original run's conf with the adjustments applied and a link back."""
    conf = {k: v for k, v in dict(original_conf).items() if k != "rerun_of"}
    overrides = dict(conf.get("overrides") or {})
    overrides.update(adjustments)
    conf["overrides"] = overrides
    for form_field in REVIEW_FIELDS:
        if form_field.key in adjustments and form_field.name in conf:
            conf[form_field.name] = adjustments[
                form_field.key
            ]  # keep the trigger-form fields consistent with the overrides
    conf["rerun_of"] = rerun_of
    return conf


def _report_run_id(summary: Mapping[str, Any]) -> str | None:
    """The run id the published report is named after (run directory name, else the report file name)."""
    if summary.get("run_dir"):
        return Path(str(summary["run_dir"])).name
    published = str(summary.get("published_report") or "")
    name = Path(published).name
    return name[: -len(".html")] if name.endswith(".html") and len(name) > len(".html") else None


def gate_body(summary: Mapping[str, Any], *, base_path: str | None = None) -> str:
    """Markdown shown on the gate: a link to the report in the Airflow UI, its path, what the best model found.

    The link is the reports plugin's URL (plugins/anomaly_reports.py) below Airflow's base path
    (``base_path``; default from ``AIRFLOW__API__BASE_URL``).
    """
    best = summary.get("best") or {}
    share = 100 * float(best.get("anomaly_share") or 0)
    run_id = _report_run_id(summary)
    link = f"**[Open report]({report_url(run_id, base_path)})**" if run_id else "**Report:**"
    lines = [
        f"{link} `{summary.get('report')}`",
        "",
        f"**Best model:** {best.get('algorithm')} `{json.dumps(best.get('params'), sort_keys=True)}`"
        f" ({best.get('metric')} = {best.get('score')})",
        f"**Anomalies:** {best.get('anomaly_count')} of {summary.get('rows')} rows ({share:.2f}%)",
    ]
    for warning in summary.get("warnings") or []:
        lines.append(f"- ⚠ {warning}")
    lines += [
        "",
        "Approve publishes the report to `reports/approved/`. Reject records the rejection."
        " Rerun starts a new run with the adjustments below.",
    ]
    return "\n".join(lines)
