"""Faults on the Spark path, on a real standalone cluster (a master and two one-core workers on
127.0.0.1): the detect job loses a worker (its JVM and its executor's, SIGKILL) mid-way, and the
spark-submit driver of the detect job is SIGKILLed mid-way and the job run again.

Every run starts from a copy of one preprocessed run directory and is compared with an
undisturbed detect run on the same cluster: the same best model, anomaly counts, flagged rows and
(within float tolerance) scores and metrics. A job that cannot finish must fail naming the job,
the stage and the cause, and leave nothing marked complete (no ``models/<algorithm>.json``, no
``spark_detect.done.json``), so select refuses to read it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from spark_cluster import SparkStandalone
from spark_helpers import JOB_TIMEOUT, QUICK_JVM, java_available, make_table, write_run

from anomaly_detection.config import load_config
from anomaly_detection.detect.scored import flagged_path, read_flagged, read_sample, sample_path
from anomaly_detection.errors import PipelineError
from anomaly_detection.pipeline.stages import select_stage
from anomaly_detection.runs import RunPaths
from anomaly_detection.spark.submit import done_marker, read_done, require_complete, run_spark_job

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not java_available(), reason="Java is not on PATH")]

N_ROWS = 3_000
ALGORITHMS = ["kmeans", "isolation_forest"]
OVERRIDES = {
    "modeling": {
        "algorithms": ALGORITHMS,
        "grids": {
            "kmeans": {"simple": {"n_clusters": [4, 5]}},
            "isolation_forest": {"simple": {"n_estimators": [50], "max_samples": [256]}},
        },
    },
    "evaluation": {"label_column": "is_anomaly", "selection": "metric"},
    "processing": {"missing_values": "median"},  # the input only: no KMeans imputation to wait for
}
#: As tests/integration/test_spark_cluster.py: C1 JIT, executors that fit the 2g workers, the same partitions
#: whatever the number of live executors (so a run that lost one computes the same thing).
RUN_CONF = {
    **QUICK_JVM,
    "spark.executor.extraJavaOptions": "-XX:TieredStopAtLevel=1",
    "spark.executor.memory": "1g",
    "spark.default.parallelism": "2",
    "spark.sql.shuffle.partitions": "2",
}
#: The worker is killed when the job starts its second KMeans configuration; the driver when it
#: starts Isolation Forest (KMeans' rows are then staged, nothing is published).
WORKER_KILL_AT = r"\[stage\] tune kmeans \{'n_clusters': 5\}"
DRIVER_KILL_AT = r"\[stage\] tune isolation_forest"
TIMINGS: dict[str, float] = {}


# --------------------------------------------------------------------------- helpers


def copy_run(source: RunPaths, root: Path, name: str) -> tuple[RunPaths, Path]:
    target = root / "runs" / name
    shutil.copytree(source.root, target)
    paths = RunPaths(target, root / "reports")
    return paths, paths.config


def detect(paths: RunPaths, config_path: Path, cluster: SparkStandalone, **kwargs):
    return run_spark_job(
        "detect",
        paths.root,
        config_path,
        master=cluster.master_url,
        conf=RUN_CONF,
        timeout=JOB_TIMEOUT,
        **kwargs,
    )


def wait_for_log(
    paths: RunPaths, offset: int, pattern: str, job: Future, timeout: float = JOB_TIMEOUT
) -> None:
    """Wait until the run's ``pipeline.log`` shows ``pattern`` after byte ``offset``."""
    regex, deadline = re.compile(pattern), time.monotonic() + timeout
    while True:
        text = paths.log.read_bytes()[offset:].decode(errors="replace") if paths.log.exists() else ""
        if regex.search(text):
            return
        if job.done():
            job.result()  # raises the job's failure
            pytest.fail(f"the job finished before {pattern!r} was logged")
        if time.monotonic() > deadline:
            pytest.fail(f"{pattern!r} not logged within {timeout:g}s")
        time.sleep(0.1)


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:g}s")
        time.sleep(0.1)
    return value


def _without_timings(result: dict) -> dict:
    info = {k: v for k, v in result["info"].items() if not k.endswith("_seconds")}
    return {**{k: v for k, v in result.items() if k != "seconds"}, "info": info}


def outputs_of(paths: RunPaths, config_path: Path) -> dict:
    """What select and report read of a detect run, and what select makes of it."""
    config = load_config(config_path)
    require_complete(paths.root, "detect", config.modeling.algorithms)
    outputs = {"models": {}, "flagged": {}, "sample": {}}
    for algorithm in ALGORITHMS:
        outputs["models"][algorithm] = [
            _without_timings(r) for r in json.loads((paths.models / f"{algorithm}.json").read_text())
        ]
        outputs["flagged"][algorithm] = read_flagged(flagged_path(paths.models, algorithm)).sort_values(
            "position", ignore_index=True
        )
        outputs["sample"][algorithm] = read_sample(sample_path(paths.models, algorithm))
    selected = select_stage(config, paths)
    outputs["best"] = selected["best"]
    outputs["anomaly_count"] = selected["anomaly_count"]
    outputs["anomalies"] = pd.read_csv(paths.anomalies)
    return outputs


def assert_close(mine, theirs, where: str) -> None:
    if isinstance(mine, dict):
        assert mine.keys() == theirs.keys(), where
        for key in mine:
            assert_close(mine[key], theirs[key], f"{where}.{key}")
    elif isinstance(mine, list):
        assert len(mine) == len(theirs), where
        for i, (a, b) in enumerate(zip(mine, theirs)):
            assert_close(a, b, f"{where}[{i}]")
    elif isinstance(mine, float) and isinstance(theirs, float):
        assert mine == pytest.approx(theirs, rel=1e-9, abs=1e-12, nan_ok=True), where
    else:
        assert mine == theirs, where


def assert_same_outputs(got: dict, expected: dict) -> None:
    """Same best model, anomaly counts and flagged rows; scores and metrics equal within float tolerance."""
    assert got["best"]["algorithm"] == expected["best"]["algorithm"]
    assert got["best"]["params"] == expected["best"]["params"]
    assert got["anomaly_count"] == expected["anomaly_count"]
    assert_close(_without_timings(got["best"]), _without_timings(expected["best"]), "best")
    for algorithm in ALGORITHMS:
        assert_close(got["models"][algorithm], expected["models"][algorithm], algorithm)
        mine, theirs = got["flagged"][algorithm], expected["flagged"][algorithm]
        assert np.array_equal(mine["position"], theirs["position"]), f"{algorithm}: flagged rows differ"
        np.testing.assert_allclose(mine["score"], theirs["score"], rtol=1e-9, atol=1e-12)
        mine, theirs = got["sample"][algorithm], expected["sample"][algorithm]
        assert np.array_equal(mine["position"], theirs["position"]) and np.array_equal(
            mine["anomaly"], theirs["anomaly"]
        )
        np.testing.assert_allclose(mine["score"], theirs["score"], rtol=1e-9, atol=1e-12)
    mine, theirs = got["anomalies"], expected["anomalies"]
    assert list(mine.columns) == list(theirs.columns) and len(mine) == len(theirs) == got["anomaly_count"]
    assert np.array_equal(mine["seq"], theirs["seq"])  # the same original rows, in the same rank order
    np.testing.assert_allclose(mine["score"], theirs["score"], rtol=1e-9, atol=1e-12)


def assert_nothing_marked_complete(paths: RunPaths) -> None:
    """No marker, no model index for select, select refuses: nothing of the attempt reads as complete."""
    assert read_done(paths.root, "detect") is None
    with pytest.raises(PipelineError, match="did not complete"):
        require_complete(paths.root, "detect", ALGORITHMS)
    assert not [p.name for p in paths.models.glob("*.json")]
    config = load_config(paths.config)
    with pytest.raises(PipelineError, match="no model results"):
        select_stage(config, paths)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = SparkStandalone(tmp_path_factory.mktemp("spark_faults_cluster"), workers=2)
    cluster.start()
    TIMINGS["cluster start"] = round(cluster.startup_seconds or 0.0, 1)
    try:
        yield cluster
    finally:
        cluster.stop()
        print(f"\nspark faults timings (s): {TIMINGS}")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A preprocessed run directory (the input of every detect run), prepared in ``local[2]`` in the
    background while the cluster starts: a future of its paths."""
    table, _ = make_table(N_ROWS, seed=11)
    paths, config_path = write_run(tmp_path_factory.mktemp("base"), table, OVERRIDES)

    def preprocess() -> RunPaths:
        started = time.perf_counter()
        run_spark_job(
            "preprocess", paths.root, config_path, master="local[2]", conf=RUN_CONF, timeout=JOB_TIMEOUT
        )
        TIMINGS["preprocess (local[2], beside the cluster start)"] = round(time.perf_counter() - started, 1)
        require_complete(paths.root, "preprocess")
        return paths

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spark-preprocess")
    try:
        yield pool.submit(preprocess)
    finally:
        pool.shutdown(wait=True)  # the job has its own timeout


@pytest.fixture(scope="module")
def reference(tmp_path_factory, base, cluster):
    """An undisturbed detect run with both workers."""
    preprocessed = base.result(timeout=2 * JOB_TIMEOUT)
    paths, config_path = copy_run(preprocessed, tmp_path_factory.mktemp("reference"), "reference")
    started = time.perf_counter()
    detect(paths, config_path, cluster)
    TIMINGS["detect (undisturbed)"] = round(time.perf_counter() - started, 1)
    return {"base": preprocessed, "paths": paths, "outputs": outputs_of(paths, config_path)}


# --------------------------------------------------------------------------- staging (no JVM)


def test_outputs_are_published_together_or_not_at_all(tmp_path):
    """The staging protocol of the jobs: a killed attempt leaves its old outputs withdrawn and its new
    ones hidden; the next attempt clears the stale staging and publishes everything, marker last."""
    import logging

    from anomaly_detection.spark.jobs.common import JobState, Outputs

    paths = RunPaths.create(tmp_path / "runs", tmp_path / "reports", "r")
    old_flagged = flagged_path(paths.models, "kmeans")
    old_flagged.mkdir()
    (old_flagged / "part-0.parquet").write_text("old")
    (paths.models / "kmeans.json").write_text("[]")
    done_marker(paths.root, "detect").write_text(json.dumps({"job": "detect", "algorithms": ["kmeans"]}))
    finals = [old_flagged, paths.models / "kmeans.json"]

    killed = Outputs(paths, JobState("detect", "attempt1", logging.getLogger("t")))
    killed.start(finals)
    staged = killed.path(old_flagged)
    staged.mkdir()
    (staged / "part-0.parquet").write_text("half")
    # ... SIGKILL here: nothing published, nothing marked, the old outputs withdrawn
    assert (
        read_done(paths.root, "detect") is None
        and not old_flagged.exists()
        and not (paths.models / "kmeans.json").exists()
    )
    assert sorted(p.name for p in paths.root.iterdir() if p.name.startswith(".")) == [
        ".spark-detect.attempt1.staging"
    ]
    with pytest.raises(PipelineError, match="did not complete"):
        require_complete(paths.root, "detect", ["kmeans", "dbscan"])

    with Outputs(paths, JobState("detect", "attempt2", logging.getLogger("t"))) as retry:
        retry.start(finals)
        assert not killed.staging.exists()
        staged = retry.path(old_flagged)
        staged.mkdir()
        (staged / "part-0.parquet").write_text("new")
        retry.path(paths.models / "kmeans.json").write_text('[{"new": 1}]')
        marker = retry.commit(algorithms=["kmeans"])
    assert (old_flagged / "part-0.parquet").read_text() == "new" and json.loads(
        (paths.models / "kmeans.json").read_text()
    ) == [{"new": 1}]
    assert json.loads(marker.read_text())["attempt"] == "attempt2"
    assert not [p.name for p in paths.root.rglob(".*")]  # no staging, no renamed-aside leftovers
    assert require_complete(paths.root, "detect", ["kmeans", "dbscan"])[0]["outputs"] == [
        "models/kmeans.flagged.parquet",
        "models/kmeans.json",
    ]

    with pytest.raises(RuntimeError):  # a failed attempt discards what it staged
        with Outputs(paths, JobState("detect", "attempt3", logging.getLogger("t"))) as failed:
            failed.start(finals)
            failed.path(old_flagged).mkdir()
            raise RuntimeError("executor lost")
    assert not [p.name for p in paths.root.rglob(".*")] and read_done(paths.root, "detect") is None


def test_a_failure_names_the_job_the_stage_and_the_cause(tmp_path, monkeypatch):
    """run_spark_job's message: the job, the last ``[stage]`` it logged, the cause (or the signal);
    a zero exit status without this attempt's marker is a failure too."""
    import sys

    import anomaly_detection.spark.submit as spark_submit
    from anomaly_detection.spark.jobs.common import short_cause

    def fake(script: str):
        monkeypatch.setattr(
            spark_submit, "spark_submit_command", lambda *a, **k: [sys.executable, "-c", script]
        )
        with pytest.raises(PipelineError) as caught:
            run_spark_job("detect", tmp_path, tmp_path / "c.yaml", master="local[1]", timeout=60)
        return str(caught.value)

    stage = "print('2026 INFO x: [stage] tune kmeans {\\'n_clusters\\': 4}', flush=True); "
    message = fake(
        stage + "import sys; sys.stderr.write('WARN noise\\nerror: DataError: no rows\\n'); sys.exit(2)"
    )
    assert (
        message
        == "Spark job detect failed (exit status 2) in stage \"tune kmeans {'n_clusters': 4}\": DataError: no rows"
    )
    message = fake(
        stage
        + "import os, signal, sys; sys.stderr.write('last words\\n'); sys.stderr.flush(); os.kill(os.getpid(), signal.SIGKILL)"
    )
    assert (
        message
        == "Spark job detect was killed by SIGKILL (exit status -9) in stage \"tune kmeans {'n_clusters': 4}\": last words"
    )
    message = fake("print('[stage] publish')")
    assert message.startswith(
        "Spark job detect exited 0 but did not mark its outputs complete (no marker in "
    )
    assert message.endswith(' in stage "publish"')

    class JavaException:
        def toString(self) -> str:  # noqa: N802 - the Java method py4j exposes
            return (
                "org.apache.spark.SparkException: Job aborted due to stage failure\n\tat org.apache.Foo(Foo.java:1)\n"
                * 50
            )

    class Py4JJavaError(Exception):  # what a lost SparkContext raises: the JVM's stack in the message
        java_exception = JavaException()

    cause = short_cause(Py4JJavaError("An error occurred while calling o12.count.\n: trace"))
    assert (
        cause.startswith("Py4JJavaError: org.apache.spark.SparkException: Job aborted") and "\n" not in cause
    )
    assert "at org.apache" not in cause and len(cause) < 700


# --------------------------------------------------------------------------- faults on the cluster


def test_detect_survives_a_worker_killed_midway(tmp_path, cluster, reference, fault_ledger):
    """SIGKILL worker 2 and its executor while detect runs: the tasks are rescheduled on worker 1 and
    the outputs equal the undisturbed run's (or the job fails cleanly, nothing marked complete)."""
    paths, config_path = copy_run(reference["base"], tmp_path, "worker-lost")
    offset = paths.log.stat().st_size
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="spark-detect") as pool:
        job = pool.submit(detect, paths, config_path, cluster)
        wait_for_log(paths, offset, WORKER_KILL_AT, job)
        executors = wait_until(lambda: cluster.executor_pids(2), 60, "no executor of the job on worker 2")
        killed = cluster.kill_worker(2)
        fault_ledger.injected("SIGKILL of a Spark worker and its executor during detect")
        assert set(executors) <= set(killed)
        try:
            done, error = job.result(timeout=JOB_TIMEOUT + 60), None
        except PipelineError as exc:
            done, error = None, exc
    TIMINGS["detect (worker killed)"] = round(time.perf_counter() - started, 1)
    if error is None:
        # the driver saw the executor go and carried on with worker 1
        assert "Lost executor" in done.stderr or "ExecutorLostFailure" in done.stderr, done.stderr[-3000:]
        assert_same_outputs(outputs_of(paths, config_path), reference["outputs"])
        fault_ledger.recovered("detect finished on the remaining worker after losing a worker")
    else:
        message = str(error)
        assert message.startswith("Spark job detect ") and ' in stage "' in message, message
        assert re.search(r'spark detect failed in stage "[^"]+": \w+', paths.log.read_text()), (
            "no failure line in pipeline.log"
        )
        assert not list(paths.root.glob(".spark-detect.*.staging"))  # a failed job discards its staging
        assert_nothing_marked_complete(paths)
    fault_ledger.lost(0)


def test_detect_driver_killed_midway_then_rerun(tmp_path, cluster, reference, fault_ledger):
    """SIGKILL the spark-submit driver (JVM and Python) of a detect job rerun over complete outputs,
    once KMeans' rows are staged: nothing reads as complete; the next run equals the undisturbed one."""
    if cluster.worker_webui_ports[2] not in cluster.alive_worker_ports():
        # restarted, not waited for: it joins the job's executors when it has registered
        cluster.start_worker(2, wait=False)
    paths, config_path = copy_run(reference["paths"], tmp_path, "driver-killed")
    earlier = read_done(paths.root, "detect")
    assert earlier is not None  # a complete earlier run: this is a rerun over its outputs
    offset = paths.log.stat().st_size
    started: dict = {}
    clock = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="spark-detect") as pool:
        job = pool.submit(
            detect,
            paths,
            config_path,
            cluster,
            on_start=lambda process: started.setdefault("process", process),
        )
        wait_for_log(paths, offset, DRIVER_KILL_AT, job)
        half = list(paths.root.glob(".spark-detect.*.staging/models/kmeans.flagged.parquet"))
        os.killpg(started["process"].pid, signal.SIGKILL)  # spark-submit runs in its own process group
        fault_ledger.injected("SIGKILL of the spark-submit driver during detect")
        with pytest.raises(PipelineError) as caught:
            job.result(timeout=120)
    TIMINGS["detect (driver killed)"] = round(time.perf_counter() - clock, 1)
    message = str(caught.value)
    assert (
        message.startswith("Spark job detect was killed by SIGKILL")
        and ' in stage "tune isolation_forest {' in message
    ), message
    assert len(message.splitlines()) == 1, message
    assert half, "KMeans' flagged rows were not staged when the driver was killed"
    assert all(h.exists() for h in half)  # the half output is still there, under a hidden name
    assert_nothing_marked_complete(paths)
    assert not flagged_path(paths.models, "kmeans").exists()  # the earlier outputs were withdrawn first

    clock = time.perf_counter()
    detect(paths, config_path, cluster)  # the retry
    TIMINGS["detect (rerun)"] = round(time.perf_counter() - clock, 1)
    assert not list(paths.root.glob(".spark-detect.*")), "stale staging left behind"
    assert read_done(paths.root, "detect")["attempt"] != earlier["attempt"]
    assert cluster.worker_webui_ports[2] in cluster.alive_worker_ports()
    assert_same_outputs(outputs_of(paths, config_path), reference["outputs"])
    fault_ledger.recovered("detect rerun after its driver was killed")
    fault_ledger.lost(0)
