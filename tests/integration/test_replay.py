"""``python -m anomaly_detection replay RUN_DIR``: the saved snapshot and resolved config reproduce the run
exactly, without the network (the API is stopped before the replay)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import requests
from demo_process import running_demo_api

from anomaly_detection.errors import PipelineError
from anomaly_detection.pipeline.replay import Snapshot

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "anomaly_detection", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env=dict(os.environ),
    )


def original_run(tmp_path, run_id, *sets, rows=2000):
    with running_demo_api(rows=rows, seed=5) as base:
        out = cli(
            "run", "-q", "-c", "configs/demo.yaml", "--run-id", run_id,
            "--set", f"source.url={base}/records",
            "--set", f"output.runs_dir={tmp_path / 'runs'}", "--set", f"output.reports_dir={tmp_path / 'reports'}",
            *[arg for s in sets for arg in ("--set", s)],
        )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return tmp_path / "runs" / run_id


def replay(run_dir, run_id):
    return cli("replay", "-q", str(run_dir), "--run-id", run_id)


def test_a_native_run_replays_identically_without_the_network(tmp_path):
    run_dir = original_run(tmp_path, "orig")
    out = replay(run_dir, "again")  # the demo API is stopped by now
    assert out.returncode == 0, out.stdout + out.stderr
    assert "identical: same scores, same selection, same anomalies" in out.stdout
    replayed = tmp_path / "runs" / "again"
    first, second = (json.loads((d / "results.json").read_text()) for d in (run_dir, replayed))
    assert (
        first["best"]["algorithm"] == second["best"]["algorithm"]
        and first["best"]["params"] == second["best"]["params"]
    )
    pd.testing.assert_frame_equal(
        pd.read_csv(run_dir / "anomalies.csv"), pd.read_csv(replayed / "anomalies.csv")
    )
    assert (replayed / "report.html").exists() and json.loads((replayed / "replay_of.json").read_text())[
        "replay_of"
    ] == str(run_dir)

    # a replay notices when the data is not what the run saw: change one value in a saved page
    tampered = tmp_path / "runs" / "tampered"
    shutil.copytree(run_dir, tampered)
    manifest = json.loads((tampered / "raw" / "manifest.json").read_text())
    page = tampered / "raw" / manifest[0]["file"]
    records = json.loads(page.read_text())
    target = (
        records
        if isinstance(records, list)
        else records[next(k for k, v in records.items() if isinstance(v, list))]
    )
    target[0]["metrics"]["m01"] = 1e9
    page.write_text(json.dumps(records))
    out = replay(tampered, "of-tampered")
    assert out.returncode == 1 and "DIFFERENT from the original" in out.stdout
    assert "differs: flattened.parquet" in out.stdout


def test_replay_refuses_what_is_not_a_run(tmp_path):
    out = replay(tmp_path, "x")
    assert out.returncode == 2 and "no raw/ snapshot" in out.stderr


def test_the_snapshot_never_reaches_the_network(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "page-00001.json").write_text("[]")
    (raw / "manifest.json").write_text(
        json.dumps([{"page": 1, "url": "http://127.0.0.1:9/records?api_key=***", "file": "page-00001.json"}])
    )
    session = Snapshot(raw).session()
    assert session.get("http://127.0.0.1:9/records?api_key=REALSECRET").json() == []  # masked alike, so found
    with pytest.raises(requests.exceptions.InvalidURL, match="no response for"):
        session.get("http://127.0.0.1:9/other")
    (raw / "page-00001.json").unlink()
    with pytest.raises(PipelineError, match="missing"):
        Snapshot(raw)


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("java"), reason="Java is not on PATH")
def test_a_spark_run_replays_identically(tmp_path, spark_session, monkeypatch):
    """A run on the Spark path and its replay, in this process: the Spark jobs' bodies run in the
    session's local SparkSession where the pipeline would spark-submit them (spark-submit is tested
    in test_spark_jobs.py, the CLI's Spark path in test_cli.py)."""
    from spark_helpers import run_in_process

    from anomaly_detection.config import load_config, parse_set_option
    from anomaly_detection.pipeline import run as run_module
    from anomaly_detection.pipeline.replay import replay as replay_run

    def spark_stage(config, paths, job):
        run_in_process(spark_session, job, paths.root, paths.config)

    monkeypatch.setattr(run_module, "spark_stage", spark_stage)
    sets = [
        "processing.mode=spark", "spark.master=local[2]",
        'modeling.algorithms=["isolation_forest", "kmeans"]', "modeling.grids.kmeans.simple={n_clusters: [4]}",
        f"output.runs_dir={tmp_path / 'runs'}", f"output.reports_dir={tmp_path / 'reports'}",
    ]  # fmt: skip
    with running_demo_api(rows=3000, seed=5) as base:
        overrides = dict(parse_set_option(s) for s in [f"source.url={base}/records", *sets])
        config = load_config(ROOT / "configs" / "demo.yaml", overrides)
        original = run_module.run_pipeline(config, run_id="spark-orig")
    assert original.status == "succeeded", original.error
    run_dir = original.paths.root
    assert json.loads((run_dir / "results.json").read_text())["mode"] == "spark"

    outcome = replay_run(run_dir, run_id="spark-again")  # the demo API is stopped by now
    assert outcome.status == "identical", (outcome.error, outcome.comparison and outcome.comparison.details)
    checks = outcome.comparison.checks
    spark_outputs = {
        "features.spark.parquet",
        "models/isolation_forest.json",
        "models/isolation_forest.flagged.parquet",
        "models/kmeans.json",
        "models/kmeans.flagged.parquet",
    }
    assert spark_outputs <= set(checks) and "anomalies.csv" in checks, sorted(checks)
    assert json.loads((outcome.replayed.root / "results.json").read_text())["mode"] == "spark"
