"""End to end on a real `airflow standalone`, driven only through its REST API v2, as a user's script.

All runs are triggered at once (the slow part is Airflow starting task processes), then each test
follows one of them: approve, reject, rerun with adjustments, the Spark branch, a gate marked failed
in the UI, and a bad conf. Every wait is bounded, and all of them together by one budget counted from
the trigger, so a stuck Airflow fails the module in BUDGET seconds, not once per test; a failed wait
quotes the Airflow log's errors.

The standalone is the session's shared one (``airflow_shared``): the runs have ids of their own
(``e2e_*``), and any of them still in flight when the module ends is marked failed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from airflow_fixtures import BudgetedWaits, GateAwareClient
from demo_process import running_demo_api

from anomaly_detection.report.index import report_url

DAG = "anomaly_detection"
SECRET = "s3cr3t-Token-4e2b9c"
BUDGET = 1800
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def demo_api():
    with running_demo_api(rows=2000, seed=5) as base:
        yield base


# an API token kept in an Airflow connection; the demo API ignores it, the test hunts for leaks
AIRFLOW_EXTRA_ENV = {"AIRFLOW_CONN_DEMO_API": json.dumps({"conn_type": "http", "password": SECRET})}


@pytest.fixture(scope="module")
def client(airflow_shared):
    """A client with a patient timeout: a 2-core machine running six DAG runs answers slowly."""
    return GateAwareClient(airflow_shared, timeout=180)


@pytest.fixture(scope="module")
def runs(airflow_shared, client, demo_api):
    client.wait_for_dag(DAG, 300)
    client.unpause(DAG)
    url = f"{demo_api}/records"
    confs = {
        "approve": {"url": url, "overrides": {"source.auth": {"type": "bearer", "conn_id": "demo_api"}}},
        "reject": {"url": url, "algorithms": ["isolation_forest", "kmeans"]},
        "rerun": {"url": url, "contamination": 0.05},
        "spark": {"url": url, "mode": "spark"},
        "marked_failed": {"url": url, "algorithms": ["kmeans"]},
        "bad_conf": {"url": url, "overrides": {"modeling.colour": "red"}},
    }
    triggered = {name: client.trigger(DAG, conf, run_id=f"e2e_{name}") for name, conf in confs.items()}
    yield triggered
    # the instance is shared: leave nothing in flight for the next module (a no-op when all passed)
    ended = airflow_shared.end_runs(DAG, [*triggered.values(), f"rerun__{triggered['rerun']}"])
    if ended:
        print(f"marked failed, still in flight at the end of the module: {ended}")


@pytest.fixture(scope="module")
def wait(client, airflow_shared, runs):
    return BudgetedWaits(client, airflow_shared, DAG, BUDGET)  # made right after ``runs`` triggered them


def test_bad_conf_fails_clearly_at_resolve_config(airflow_shared, client, runs, wait):
    run_id = runs["bad_conf"]
    assert wait.run(run_id) == "failed"
    states = client.task_instances(DAG, run_id)
    assert states["resolve_config"] == "failed"
    assert states.get("ingest") in ("upstream_failed", None)
    log = client.task_log(DAG, run_id, "resolve_config")
    assert "modeling.colour" in log and "unknown key" in log


def test_approve_publishes_and_records_the_decision(airflow_shared, client, runs, wait):
    run_id = runs["approve"]
    wait.gate(run_id)
    detail = client.hitl_detail(DAG, run_id, "review")
    report = client.xcom(DAG, run_id, "build_report")
    assert report["report"] in detail["body"] and "Anomalies:" in detail["body"]
    assert detail["options"] == ["Approve", "Reject", "Rerun with adjustments"]
    assert Path(report["report"]).is_file()
    # the reports plugin (plugins/anomaly_reports.py): "Open report" on build_report and in the gate's body
    url = report_url(run_id, base_path="")
    assert f"[Open report]({url})" in detail["body"]
    assert client.get_json(f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/build_report/links")[
        "extra_links"
    ] == {"Open report": url}
    assert client.request("GET", url).headers["content-type"] == "text/html; charset=utf-8"
    ingest_log = client.task_log(DAG, run_id, "ingest")
    assert "ingested 2000 records" in ingest_log and "page 1:" in ingest_log

    client.answer_hitl(DAG, run_id, "review", "Approve", {"comment": "checked the top rows"})
    assert wait.run(run_id) == "success"
    states = client.task_instances(DAG, run_id)
    assert (
        states["publish"] == "success"
        and states["rejected"] == "skipped"
        and states["trigger_rerun"] == "skipped"
    )

    run_dir = airflow_shared.run_dir(run_id)
    decision = json.loads((run_dir / "decision.json").read_text())
    assert decision["decision"] == "approved" and decision["by"] == "admin"
    assert decision["comment"] == "checked the top rows" and decision["at"]
    approved = airflow_shared.home / "reports" / "approved" / f"{run_dir.name}.html"
    assert approved.is_file()
    html = approved.read_text()
    assert "Approved" in html and "checked the top rows" in html

    # the token from the Airflow connection is nowhere: task logs, run directory, XCom, report
    for task in ("ingest", "resolve_config", "build_report"):
        assert SECRET not in client.task_log(DAG, run_id, task)
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in json.dumps(client.xcom(DAG, run_id, "ingest"))


def test_reject_records_and_publishes_nothing(airflow_shared, client, runs, wait):
    run_id = runs["reject"]
    wait.gate(run_id)
    client.answer_hitl(DAG, run_id, "review", "Reject", {"comment": "too many false alarms"})
    assert wait.run(run_id) == "success"
    states = client.task_instances(DAG, run_id)
    assert states["rejected"] == "success" and states["publish"] == "skipped"
    run_dir = airflow_shared.run_dir(run_id)
    assert json.loads((run_dir / "decision.json").read_text())["decision"] == "rejected"
    assert not (airflow_shared.home / "reports" / "approved" / f"{run_dir.name}.html").exists()
    assert "Rejected" in (run_dir / "report.html").read_text()


def test_rerun_starts_a_linked_run_with_the_adjustments(airflow_shared, client, runs, wait):
    run_id = runs["rerun"]
    wait.gate(run_id)
    client.answer_hitl(
        DAG,
        run_id,
        "review",
        "Rerun with adjustments",
        {"contamination": 0.1, "algorithms": ["kmeans"], "comment": "wider net"},
    )
    assert wait.run(run_id) == "success"
    assert client.task_instances(DAG, run_id)["trigger_rerun"] == "success"
    rerun_id = f"rerun__{run_id}"
    conf = client.dag_run(DAG, rerun_id)["conf"]
    assert conf["rerun_of"] == run_id and conf["contamination"] == 0.1
    assert conf["overrides"]["modeling.algorithms"] == ["kmeans"]

    wait.gate(rerun_id)
    rerun_dir = airflow_shared.run_dir(rerun_id)
    results = json.loads((rerun_dir / "results.json").read_text())
    assert results["rerun_of"] == run_id
    assert {m["algorithm"] for m in results["models"]} == {"kmeans"}
    assert results["best"]["anomaly_share"] == pytest.approx(0.1, abs=0.01)
    report = (rerun_dir / "report.html").read_text()
    assert run_id in report
    # the rerun's report says what changed: the parameters and the rows
    changes = report[report.index('id="rerun"') :]
    assert (
        '<code>modeling.contamination</code></td><td class="mono">0.05</td><td class="mono">0.1</td>'
        in changes
    )
    assert re.search(r"<strong>[1-9][0-9,]* newly flagged</strong>", changes)
    first = json.loads((airflow_shared.run_dir(run_id) / "decision.json").read_text())
    assert first["decision"] == "rerun" and first["adjustments"]["modeling.contamination"] == 0.1
    client.answer_hitl(DAG, rerun_id, "review", "Reject")
    assert wait.run(rerun_id) == "success"


def test_spark_branch_runs_through_spark_submit(airflow_shared, client, runs, wait):
    run_id = runs["spark"]
    wait.gate(run_id)
    states = client.task_instances(DAG, run_id)
    assert states["spark_preprocess"] == "success" and states["spark_detect"] == "success"
    assert states["preprocess"] == "skipped"
    assert "spark path" in client.task_log(DAG, run_id, "choose_path")
    run_dir = airflow_shared.run_dir(run_id)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["mode"] == "spark" and results["status"] == "succeeded"
    # bulk ingestion: page part files and a compressed raw snapshot with its manifest
    assert sorted(p.name for p in (run_dir / "flattened.parquet").iterdir())[0] == "part-000000.parquet"
    assert (run_dir / "raw" / "manifest.jsonl").is_file() and list((run_dir / "raw").glob("page-*.json.gz"))
    # Spark wrote the features and the flagged rows as part files; the common stages did the rest
    assert (run_dir / "features.spark.parquet").is_dir() and not (run_dir / "features.parquet").exists()
    best = results["best"]
    assert best["info"]["engine"] == "spark"
    assert (run_dir / "models" / f"{best['algorithm']}.flagged.parquet").is_dir()
    assert len(pd.read_csv(run_dir / "anomalies.csv")) == best["anomaly_count"] > 0
    report = Path(results["published_report"]).read_text(encoding="utf-8")
    assert best["algorithm"] in report and "spark detect" in report  # the Spark jobs' log lines are in it
    client.answer_hitl(DAG, run_id, "review", "Approve")
    assert wait.run(run_id) == "success"


def test_gate_marked_failed_in_the_ui_counts_as_reject(airflow_shared, client, runs, wait):
    run_id = runs["marked_failed"]
    wait.gate(run_id)
    client.request(
        "PATCH",
        f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/review",
        json_body={"new_state": "failed"},
    )
    wait.task(run_id, "apply_decision", ["success"])
    wait.run(run_id)
    states = client.task_instances(DAG, run_id)
    assert states["publish"] == "skipped" and states["rejected"] == "success"
    run_dir = airflow_shared.run_dir(run_id)
    decision = json.loads((run_dir / "decision.json").read_text())
    assert decision["decision"] == "rejected" and decision["via"] == "marked_failed"
