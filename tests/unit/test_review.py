import json
from datetime import UTC, datetime

import pytest

from anomaly_detection.errors import ConfigError, PipelineError
from anomaly_detection.orchestration import review
from anomaly_detection.runs import RunPaths

NOW = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)


def _answer(option, **form):
    return {
        "chosen_options": [option],
        "params_input": form,
        "responded_by_user": {"id": "7", "name": "ana"},
        "responded_at": "2026-11-27T06:01:00+00:00",
    }


def test_form_answers_map_to_decisions():
    approve = review.decide("success", _answer("Approve", comment="looks right"), now=NOW)
    assert (approve.decision, approve.by, approve.comment, approve.via) == (
        "approved",
        "ana",
        "looks right",
        "form",
    )
    assert review.decide("success", _answer("Reject"), now=NOW).decision == "rejected"
    rerun = review.decide(
        "success",
        _answer("Rerun with adjustments", contamination=0.1, algorithms=["kmeans"], mode=None),
        now=NOW,
    )
    assert rerun.decision == "rerun"
    assert rerun.adjustments == {"modeling.contamination": 0.1, "modeling.algorithms": ["kmeans"]}


def test_marking_the_gate_in_the_ui_counts_as_approve_or_reject():
    assert review.decide("success", None, now=NOW).decision == "approved"
    assert review.decide("success", None, now=NOW).via == "marked_success"
    assert review.decide("failed", None, now=NOW).decision == "rejected"
    assert review.decide("upstream_failed", None, now=NOW) is None
    assert review.decide(None, None, now=NOW) is None


def test_timeout_default_is_reject():
    answer = {**_answer(review.TIMEOUT_DEFAULT), "timedout": True, "responded_by_user": None}
    decision = review.decide("success", answer, now=NOW)
    assert decision.decision == "rejected" and decision.via == "timeout"


def test_bad_adjustments_are_refused_with_the_key():
    with pytest.raises(ConfigError, match="modeling.contamination"):
        review.decide("success", _answer("Rerun with adjustments", contamination=0.9), now=NOW)


def test_a_decision_is_recorded_once_and_never_changes(tmp_path):
    paths = RunPaths.create(tmp_path / "runs", tmp_path / "reports", "r1")
    first = review.record_decision(paths, review.decide("failed", None, now=NOW))
    assert json.loads((paths.root / "decision.json").read_text())["decision"] == "rejected"
    assert review.record_decision(paths, review.decide("failed", None, now=NOW)) == first
    with pytest.raises(PipelineError, match="already rejected"):
        review.record_decision(paths, review.decide("success", None, now=NOW))


def test_only_approved_runs_are_published(tmp_path):
    paths = RunPaths.create(tmp_path / "runs", tmp_path / "reports", "r1")
    paths.report.write_text("<html>report</html>")
    with pytest.raises(PipelineError, match="not reviewed"):
        review.publish(paths)
    review.record_decision(paths, review.decide("failed", None, now=NOW))
    with pytest.raises(PipelineError, match="rejected"):
        review.publish(paths)
    assert not (tmp_path / "reports" / "approved").exists()

    other = RunPaths.create(tmp_path / "runs", tmp_path / "reports", "r2")
    other.report.write_text("<html>ok</html>")
    review.record_decision(other, review.decide("success", _answer("Approve"), now=NOW))
    target = review.publish(other)
    assert target == tmp_path / "reports" / "approved" / "r2.html" and target.read_text() == "<html>ok</html>"


def test_rerun_conf_keeps_the_original_and_links_back():
    original = {
        "config": "demo.yaml",
        "contamination": 0.05,
        "overrides": {"source.retries": 5},
        "rerun_of": "older",
    }
    conf = review.rerun_conf(
        original, {"modeling.contamination": 0.1, "processing.mode": "spark"}, rerun_of="run-1"
    )
    assert conf["rerun_of"] == "run-1"
    assert conf["config"] == "demo.yaml" and conf["contamination"] == 0.1
    assert conf["overrides"] == {
        "source.retries": 5,
        "modeling.contamination": 0.1,
        "processing.mode": "spark",
    }
    assert original["contamination"] == 0.05  # not mutated


def test_gate_body_names_report_model_and_counts():
    summary = {
        "report": "/runs/manual__2026-11-27T06_44_18.710293_00_00/report.html",
        "published_report": "/reports/manual__2026-11-27T06_44_18.710293_00_00.html",
        "run_dir": "/runs/manual__2026-11-27T06_44_18.710293_00_00",
        "rows": 1000,
        "warnings": ["best model: anomaly share is 0%"],
        "best": {
            "algorithm": "kmeans",
            "params": {"n_clusters": 3},
            "metric": "silhouette",
            "score": 0.4,
            "anomaly_count": 50,
            "anomaly_share": 0.05,
        },
    }
    body = review.gate_body(summary, base_path="")
    assert (
        summary["report"] in body and "kmeans" in body and "50 of 1000 rows (5.00%)" in body and "0%" in body
    )
    # a markdown link to the report served by the plugin (plugins/anomaly_reports.py), below Airflow's base path
    assert "[Open report](/anomaly-reports/report/manual__2026-11-27T06_44_18.710293_00_00.html)" in body
    assert "[Open report](/airflow/anomaly-reports/report/" in review.gate_body(summary, base_path="/airflow")
    # without the run directory the published report's name gives the run id; without either, no link
    only_published = {k: v for k, v in summary.items() if k != "run_dir"}
    assert "(/anomaly-reports/report/manual__2026-11-27T06_44_18.710293_00_00.html)" in review.gate_body(
        only_published, base_path=""
    )
    bare = review.gate_body({"report": "/r/report.html", "rows": 1, "best": {}}, base_path="")
    assert "Open report" not in bare and "/r/report.html" in bare
