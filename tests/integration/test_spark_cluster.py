"""The Spark jobs on a real standalone cluster (a master and a one-core worker on 127.0.0.1, started
by the ``spark_standalone`` fixture), submitted in client deploy mode, give the same run-directory
outputs as the session's ``local[2]`` reference run of the same input (``spark_reference``,
tests/integration/conftest.py); an unreachable master fails fast, naming itself.

The reference run starts in the background (unless an earlier module started it) while the cluster
starts. Both runs get the same test-only settings (``RUN_CONF``), among them
``spark.default.parallelism=2`` so the two read the input in the same partitions whatever the
machine's core count (KMeans initialisation samples per partition).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from spark_cluster import SparkStandalone
from spark_helpers import (
    JOB_TIMEOUT,
    N_DUPLICATES,
    REFERENCE_ROWS,
    RUN_CONF,
    flagged_positions,
    java_available,
    reference_run,
    requires_spark,
    spark_features,
)

import anomaly_detection.spark.submit as spark_submit
from anomaly_detection.detect.scored import read_sample, sample_path
from anomaly_detection.errors import PipelineError
from anomaly_detection.spark.submit import (
    build_py_files,
    check_master_reachable,
    default_conf,
    master_addresses,
    run_spark_job,
    spark_env,
    spark_submit_command,
)

pytestmark = pytest.mark.slow
#: The cluster runs KMeans only (``--algorithm kmeans``); the reference runs every algorithm.
JOBS = (("preprocess", ()), ("detect", ("--algorithm", "kmeans")))
APP_NAMES = {"anomaly-detection-preprocess", "anomaly-detection-detect"}
#: The unreachable-master check must answer well within this many seconds.
UNREACHABLE_BOUND_SECONDS = 15


def run_pipeline(paths, config_path: Path, master: str) -> dict[str, float]:
    """Both jobs through spark-submit on ``master``; their wall-clock seconds."""
    timings = {}
    for job, extra in JOBS:
        started = time.perf_counter()
        run_spark_job(
            job, paths.root, config_path, master=master, extra_args=extra, conf=RUN_CONF, timeout=JOB_TIMEOUT
        )
        timings[job] = round(time.perf_counter() - started, 1)
    return timings


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def spark_standalone(tmp_path_factory):
    """The module's cluster (a master and one worker), started after the reference run was (so the
    two start side by side)."""
    if not java_available():
        pytest.skip("Java is not on PATH")
    reference_run(tmp_path_factory)
    cluster = SparkStandalone(tmp_path_factory.mktemp("spark_standalone"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, spark_standalone, spark_reference):
    """Both jobs on the cluster, on a fresh run directory holding the reference's input."""
    paths, config_path = spark_reference.new_input(tmp_path_factory.mktemp("cluster"))
    started = time.perf_counter()
    cluster_timings = run_pipeline(paths, config_path, spark_standalone.master_url)
    print(
        f"\ncluster start {spark_standalone.startup_seconds:.1f}s; jobs on {spark_standalone.master_url} "
        f"{cluster_timings} ({time.perf_counter() - started:.1f}s); local[2] reference {spark_reference.timings}"
    )
    return {
        "local": spark_reference.paths,
        "cluster": paths,
        "cluster_timings": cluster_timings,
        "planted": spark_reference.planted,
    }


# --------------------------------------------------------------------------- command line (no JVM)


def test_standalone_master_command_line(tmp_path):
    master = "spark://127.0.0.1:7077"
    command = spark_submit_command(
        "detect", tmp_path, tmp_path / "c.yaml", master=master, py_files_dir=tmp_path / "zips"
    )
    assert command[1:5] == ["--master", master, "--deploy-mode", "client"]
    py_files = Path(command[command.index("--py-files") + 1])
    assert py_files.parent == tmp_path / "zips" and py_files.suffix == ".zip"
    names = zipfile.ZipFile(py_files).namelist()
    assert {
        "anomaly_detection/__init__.py",
        "anomaly_detection/spark/submit.py",
        "anomaly_detection/spark/jobs/common.py",
        "anomaly_detection/spark/jobs/detect.py",
        "anomaly_detection/spark/jobs/metrics.py",
        "anomaly_detection/spark/jobs/preprocess.py",
    } <= set(names)
    # the entry files are the driver's (spark-submit runs them), not the executors'
    assert not [name for name in names if not name.startswith("anomaly_detection/")], names
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)
    assert build_py_files(tmp_path / "zips") == py_files  # same sources, same file
    # what an executor does with it: the zip first on the path, the package (and the modules the
    # jobs import) found in it, without running the heavy ones here
    probe = (
        "import sys, importlib.util as u; sys.path.insert(0, sys.argv[1]); import anomaly_detection.errors; "
        "names = ['anomaly_detection.errors', 'anomaly_detection.features.preprocess', 'anomaly_detection.spark.jobs.common', 'anomaly_detection.spark.jobs.detect', 'anomaly_detection.spark.jobs.metrics']; "
        "bad = [n for n in names if not u.find_spec(n).origin.startswith(sys.argv[1])]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", probe, str(py_files)], check=True, timeout=120, cwd=tmp_path)
    confs = dict(command[i + 1].split("=", 1) for i, part in enumerate(command) if part == "--conf")
    assert confs["spark.pyspark.python"] == confs["spark.pyspark.driver.python"] == sys.executable
    assert confs["spark.driver.host"] == confs["spark.driver.bindAddress"] == "127.0.0.1"
    assert spark_env(master, {})["SPARK_LOCAL_IP"] == "127.0.0.1"

    remote = "spark://spark-master.example:7077"
    assert "spark.driver.host" not in default_conf(remote) and "SPARK_LOCAL_IP" not in spark_env(remote, {})
    local = spark_submit_command("detect", tmp_path, tmp_path / "c.yaml", master="local[2]")
    assert "--deploy-mode" not in local and "--py-files" not in local
    assert master_addresses("spark://a:7077,b") == [("a", 7077), ("b", 7077)]
    assert master_addresses("spark://[::1]:7078") == [("::1", 7078)]


def test_unreachable_master_fails_fast_naming_it(tmp_path):
    master = f"spark://127.0.0.1:{unused_port()}"
    started = time.monotonic()
    with pytest.raises(PipelineError) as caught:
        run_spark_job("preprocess", tmp_path, tmp_path / "c.yaml", master=master, timeout=JOB_TIMEOUT)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert message.splitlines()[0].startswith(f"Spark master {master} is unreachable (")
    assert "refused" in message.lower()
    assert elapsed < UNREACHABLE_BOUND_SECONDS
    check_master_reachable("local[*]")  # nothing to check


def test_job_failure_on_a_master_names_the_master(tmp_path, monkeypatch):
    """When the master goes away after the check, Spark gives up after its own ~60 s of retries and the
    job's last line is a generic Py4J error: the failure still names the master and Spark's verdict."""
    master = "spark://127.0.0.1:7077"
    script = (
        "import sys; sys.stderr.write('ERROR StandaloneSchedulerBackend: Application has been killed. "
        "Reason: All masters are unresponsive! Giving up.\\nerror: Py4JJavaError: stopped SparkContext\\n'); sys.exit(1)"
    )
    monkeypatch.setattr(spark_submit, "check_master_reachable", lambda *a, **k: None)
    monkeypatch.setattr(spark_submit, "spark_submit_command", lambda *a, **k: [sys.executable, "-c", script])
    with pytest.raises(PipelineError) as caught:
        run_spark_job("preprocess", tmp_path, tmp_path / "c.yaml", master=master, timeout=60)
    assert str(caught.value) == (
        f"Spark job preprocess failed (exit status 1) on master {master} (All masters are unresponsive): "
        "Py4JJavaError: stopped SparkContext"
    )


# --------------------------------------------------------------------------- the jobs on the cluster


@requires_spark
def test_jobs_ran_on_the_cluster(runs, spark_standalone):
    status = spark_standalone.status()
    finished = {app["name"]: app for app in status["completedapps"] if app["state"] == "FINISHED"}
    assert APP_NAMES <= set(finished), status["completedapps"]
    assert not status["activeapps"]
    # the worker ran one executor per application; it fetched the shipped code and ran tasks
    app_dirs = {path.name: path for path in spark_standalone.app_dirs()}
    for name in APP_NAMES:
        executor_dirs = sorted(app_dirs[finished[name]["id"]].iterdir())
        assert executor_dirs, f"{name}: no executor directory in {spark_standalone.work_dir}"
        stderr = "".join((d / "stderr").read_text(errors="replace") for d in executor_dirs)
        assert "Finished task" in stderr, f"{name}: no task ran on the executor"
        assert any(d.glob("anomaly-detection-pyfiles-*.zip") for d in executor_dirs), (
            f"{name}: code not shipped"
        )
    log = (runs["cluster"].log).read_text()
    assert f"spark preprocess: master {spark_standalone.master_url}" in log
    assert f"spark detect-kmeans: master {spark_standalone.master_url}" in log


@requires_spark
def test_cluster_preprocess_matches_local(runs):
    local, cluster = runs["local"], runs["cluster"]
    kept, features, labels = spark_features(cluster)
    local_kept, expected, local_labels = spark_features(local)
    assert np.array_equal(kept, local_kept) and np.array_equal(labels, local_labels)
    assert json.loads(cluster.summary.read_text()) == json.loads(local.summary.read_text())
    assert list(features.columns) == list(expected.columns) == ["x", "y", "z", "count", "flag"]
    assert features.shape == (REFERENCE_ROWS + N_DUPLICATES, 5)  # every row, duplicates too
    np.testing.assert_allclose(features.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12)


@requires_spark
def test_cluster_detect_matches_local(runs):
    local, cluster = runs["local"].models, runs["cluster"].models

    def results(models: Path) -> list[dict]:
        timings = lambda info: {k: v for k, v in info.items() if not k.endswith("_seconds")}  # noqa: E731
        return [
            {k: (timings(v) if k == "info" else v) for k, v in r.items() if k != "seconds"}
            for r in json.loads((models / "kmeans.json").read_text())
        ]

    got, expected = results(cluster), results(local)
    assert [r["params"] for r in got] == [{"n_clusters": 4}, {"n_clusters": 5}]
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected):
        assert mine.keys() == theirs.keys()
        for key in mine:
            if isinstance(mine[key], float):
                assert mine[key] == pytest.approx(theirs[key], rel=1e-9, abs=1e-12), key
            else:
                assert mine[key] == theirs[key], key
    flagged = flagged_positions(runs["cluster"], "kmeans")
    assert np.array_equal(flagged, flagged_positions(runs["local"], "kmeans"))
    mine, theirs = read_sample(sample_path(cluster, "kmeans")), read_sample(sample_path(local, "kmeans"))
    assert np.array_equal(mine["position"], theirs["position"])
    np.testing.assert_allclose(mine["score"], theirs["score"], rtol=1e-9, atol=1e-12)
    # the planted outliers are among the anomalies
    assert set(runs["planted"]) <= set(flagged)
