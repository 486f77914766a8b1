"""The CLI end to end against the demo API running as its own process, as `make demo` runs it."""

import json
import re
import shutil
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from demo_process import free_port, run_cli, run_demo, running_demo_api


@pytest.fixture(scope="module")
def demo_api():
    with running_demo_api(rows=3000, seed=11) as base:
        yield base


def test_demo_run_reports_the_planted_anomalies(demo_api, tmp_path):
    out = run_demo(demo_api, tmp_path, "demo-e2e")
    assert out.returncode == 0, out.stderr
    report = Path(re.search(r"^report: (.+)$", out.stdout, re.M).group(1))
    assert report.is_file() and report.parent.name == "demo-e2e"
    assert (tmp_path / "reports" / "demo-e2e.html").read_bytes() == report.read_bytes()

    planted = json.loads(urllib.request.urlopen(demo_api + "/planted").read())["ids"]
    run_dir = report.parent
    anomalies = pd.read_csv(run_dir / "anomalies.csv")
    assert list(anomalies.columns[:6]) == ["rank", "score", "explanation", "top_features", "row", "id"]
    assert anomalies["score"].is_monotonic_decreasing
    results = json.loads((run_dir / "results.json").read_text())
    top_n = min(len(anomalies), results["best"]["anomaly_count"], 50)
    assert len(planted) <= top_n
    assert set(planted) <= set(anomalies["id"].head(top_n)), (
        "planted anomalies missing from the top anomalies"
    )
    html = report.read_text()
    table = html[html.index('<section id="top">') : html.index('<section id="logs">')]
    for planted_id in planted:
        assert re.search(rf">\s*{planted_id}\s*<", table), (
            f"planted id {planted_id} not in the report's top table"
        )

    assert results["status"] == "succeeded" and results["run_id"] == "demo-e2e"
    rows = results["rows"]
    assert rows["ingested"] == rows["scored"] == 3000 and rows["duplicates"] > 0
    assert 0 <= rows["duplicates_flagged"] <= min(rows["duplicates"], results["best"]["anomaly_count"])
    assert "id" not in results["features"] and len(results["features"]) >= 12
    assert [m["algorithm"] for m in results["models"]] == ["ensemble"]  # others only when listed
    # the count comes from the scores (contamination auto), within 2x of the planted rows, and says why
    assert len(planted) / 2 <= results["best"]["anomaly_count"] <= 2 * len(planted)
    assert "mixture" in results["best"]["info"]["threshold_rule"]
    assert "anomalies:</strong> " in html and "the ranked scores" in html
    assert (
        results["best"]["algorithm"] == "ensemble" and results["selection"]["strategy"] == "ensemble"
    )  # the default
    for m in results["models"]:
        assert {"algorithm", "params", "metric", "score", "anomaly_count", "seconds"} <= m.keys()
    assert {"anomaly_share", "algorithm", "params", "score"} <= results["best"].keys()
    for name in (
        "config.resolved.yaml",
        "flattened.parquet",
        "features.parquet",
        "pipeline.log",
        "raw/manifest.json",
    ):
        assert (run_dir / name).exists(), name
    assert len(list((run_dir / "raw").glob("page-*.json"))) == 4  # 3 full pages of 1000 + the empty one


def test_complex_mode_tries_a_wider_grid(demo_api, tmp_path):
    out = run_demo(
        demo_api,
        tmp_path,
        "complex",
        "modeling.hyperparameters=complex",
        "modeling.algorithms=[kmeans, dbscan]",
        runs_dir=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "complex" / "results.json").read_text())
    assert len(results["models"]) == 9 + 12
    assert {m["algorithm"] for m in results["models"]} == {"kmeans", "dbscan"}


def test_bad_override_fails_with_one_line_naming_the_key():
    out = run_cli("run", "--config", "configs/demo.yaml", "--set", "modeling.hyperparameters=medium")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "modeling.hyperparameters" in out.stderr and "'simple' or 'complex'" in out.stderr


def test_unreachable_api_fails_clearly_and_keeps_the_log(tmp_path):
    port = free_port()
    out = run_cli(
        "run",
        "--quiet",
        "--run-id",
        "down",
        "--set",
        f"source.url=http://127.0.0.1:{port}/nothing",
        "--set",
        "source.retries=1",
        "--set",
        "source.backoff_seconds=0",
        "--set",
        f"output.runs_dir={tmp_path}",
    )
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1
    assert f"127.0.0.1:{port}/nothing" in out.stderr and "connection failed" in out.stderr
    results = json.loads((tmp_path / "down" / "results.json").read_text())
    assert results["status"] == "failed" and "connection failed" in results["error"]
    assert "connection failed" in (tmp_path / "down" / "pipeline.log").read_text()


def test_check_config_redacts_secrets(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "source:\n  url: https://api.example.com/x?api_key=TOPSECRET\n  headers: {Authorization: Bearer TOPSECRET}\n"
    )
    out = run_cli("check-config", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "TOPSECRET" not in out.stdout and "api.example.com" in out.stdout


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not shutil.which("java"), reason="Java is not on PATH")
def test_auto_mode_routes_a_run_over_budget_to_the_spark_jobs_through_spark_submit(demo_api, tmp_path):
    """One spark-submit pipeline through the CLI: auto mode with a 1 MiB native budget (the memory
    guard's routing) running both Spark jobs."""
    out = run_demo(
        demo_api, tmp_path, "demo-spark",
        "processing.mode=auto",
        "processing.native_memory_budget_mb=1",
        'modeling.algorithms=["isolation_forest", "kmeans", "bisecting_kmeans", "dbscan"]',
        "modeling.grids.kmeans.simple={n_clusters: [4]}",
        "modeling.grids.bisecting_kmeans.simple={n_clusters: [4]}",
        "spark.master=local[2]",
        "spark.driver_memory=1g",
        timeout=1100,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    run_dir = tmp_path / "runs" / "demo-spark"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "succeeded" and results["mode"] == "spark"
    assert results["rows"]["ingested"] == 3000
    ingest_info = json.loads((run_dir / "ingest.json").read_text())
    assert ingest_info["bulk"] and "budget" in ingest_info["routed_to_spark"]
    assert list((run_dir / "raw.native").glob("page-*")) and (run_dir / "flattened.parquet").is_dir()
    assert {m["algorithm"] for m in results["models"]} == {
        "isolation_forest",
        "kmeans",
        "bisecting_kmeans",
    }  # dbscan: native only
    assert all(m["info"]["engine"] == "spark" for m in results["models"])
    log = (run_dir / "pipeline.log").read_text()
    assert "routing this run to Spark" in log and "skipped: dbscan" in log
    truth = json.loads(urllib.request.urlopen(demo_api + "/planted").read())
    planted = truth["ids"]
    anomalies = pd.read_csv(run_dir / "anomalies.csv")
    assert set(planted) <= set(anomalies["id"]), "the Spark path misses planted anomalies"
    # the explanations come from the features Spark stored with the flagged rows
    for _, row in anomalies[anomalies["id"].isin(planted)].iterrows():
        first = row["top_features"].split(";")[0].rsplit(":", 1)[0].removeprefix("metrics.")
        assert first in truth["columns"][str(int(row["id"]))], (
            row["id"],
            row["explanation"],
        )  # ids: float in Spark's CSV
    html = (run_dir / "report.html").read_text()
    assert 'id="time"' in html and "<code>timestamp</code>" in html
