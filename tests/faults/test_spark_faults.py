"""Faults on the Spark path, on a real standalone cluster (a master and two one-core workers on
127.0.0.1): the detect job loses a worker (its JVM and its executor's, SIGKILL) mid-way, and the
spark-submit driver of the detect job is SIGKILLed mid-way and the job run again.

Every run starts from a copy of the session's reference run (tests/support/spark_helpers.py: both
jobs through spark-submit in ``local[2]`` with the same settings, ``RUN_CONF``) and is compared with
its outputs: the same best model, anomaly counts, flagged rows and (within float tolerance) scores
and metrics. A job that cannot finish must fail naming the job, a stage it logged and the cause, and
leave nothing marked complete (no ``models/<algorithm>.json``, no ``spark_detect.done.json``), so
select refuses to read it; run again, it must give the reference's outputs.

Faults land at conditions, not at times: the worker is killed while the driver is paused
(SIGSTOP) at a logged stage, once the worker's executor has run tasks of the job; the driver is
killed once the log shows Isolation Forest started (KMeans' rows are staged then). The stage a
killed driver's failure names is the last one its stdout carried out before it died, so it is
checked against the stages the attempt logged, not pinned. The data lost, recorded in the fault
ledger, is measured: what the final outputs lack against the reference's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from spark_cluster import UP_TIMEOUT, SparkStandalone
from spark_helpers import (
    JOB_TIMEOUT,
    REFERENCE_ALGORITHMS,
    RUN_CONF,
    copy_run,
    java_available,
    reference_run,
)

from anomaly_detection.config import load_config
from anomaly_detection.detect.scored import flagged_path, read_flagged, read_sample, sample_path
from anomaly_detection.errors import PipelineError
from anomaly_detection.pipeline.stages import select_stage
from anomaly_detection.runs import RunPaths
from anomaly_detection.spark.submit import (
    STAGE_TAG,
    done_marker,
    read_done,
    require_complete,
    run_spark_job,
)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not java_available(), reason="Java is not on PATH")]

ALGORITHMS = REFERENCE_ALGORITHMS  # kmeans {'n_clusters': 4}, {'n_clusters': 5}, then isolation_forest
#: The worker is killed when the job has started its second KMeans configuration; the driver when
#: it has started Isolation Forest (KMeans' rows are then staged, nothing is published).
WORKER_KILL_AT = r"\[stage\] tune kmeans \{'n_clusters': 5\}"
DRIVER_KILL_AT = r"\[stage\] tune isolation_forest"
TIMINGS: dict[str, float] = {}


# --------------------------------------------------------------------------- helpers


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


def wait_for_condition(condition, job: Future, what: str, timeout: float = JOB_TIMEOUT) -> None:
    """Poll ``condition`` until it holds while the job runs; fail if the job ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if job.done():
            job.result()  # raises the job's failure
            pytest.fail(f"the job finished before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} within {timeout:g}s")
        time.sleep(0.1)


def wait_for_log(
    paths: RunPaths, offset: int, pattern: str, job: Future, timeout: float = JOB_TIMEOUT
) -> None:
    """Wait until the run's ``pipeline.log`` shows ``pattern`` after byte ``offset``."""
    regex = re.compile(pattern)

    def logged() -> bool:
        text = paths.log.read_bytes()[offset:].decode(errors="replace") if paths.log.exists() else ""
        return bool(regex.search(text))

    wait_for_condition(logged, job, f"{pattern!r} was logged", timeout)


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:g}s")
        time.sleep(0.1)
    return value


def logged_stages(paths: RunPaths, offset: int) -> list[str]:
    """The stages the run's ``pipeline.log`` shows after byte ``offset`` (one attempt's), in order."""
    text = paths.log.read_bytes()[offset:].decode(errors="replace")
    return [line.split(STAGE_TAG, 1)[1].strip() for line in text.splitlines() if STAGE_TAG in line]


def executor_ran_tasks(cluster: SparkStandalone, worker: int) -> bool:
    """Whether an executor of the running application on ``worker`` has finished a task."""
    try:
        apps = [app["id"] for app in cluster.status(timeout=2)["activeapps"]]
    except (OSError, ValueError):
        return False
    return any(
        "Finished task" in log.read_text(errors="replace")
        for app in apps
        for log in cluster.work_dir_of(worker).glob(f"{app}/*/stderr")
    )


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


def read_outputs(paths: RunPaths, config_path: Path) -> dict | None:
    """:func:`outputs_of`, or ``None`` when the run's outputs are not complete (or not readable)."""
    try:
        return outputs_of(paths, config_path)
    except (PipelineError, OSError, ValueError):
        return None


def output_items(outputs: dict) -> set[tuple]:
    """Every configuration of each model index, flagged row, report-sample row and anomalies.csv row."""
    items: set[tuple] = {("anomalies.csv", int(seq)) for seq in outputs["anomalies"]["seq"]}
    for algorithm in ALGORITHMS:
        items |= {
            ("model", algorithm, json.dumps(r["params"], sort_keys=True))
            for r in outputs["models"][algorithm]
        }
        items |= {("flagged", algorithm, int(p)) for p in outputs["flagged"][algorithm]["position"]}
        items |= {("sample", algorithm, int(p)) for p in outputs["sample"][algorithm]["position"]}
    return items


def missing_outputs(got: dict | None, expected: dict) -> int:
    """How many of the reference's configurations and rows the run's outputs lack (all of them when
    its outputs are not complete): the data lost, as the fault ledger records it."""
    return len(output_items(expected) - (output_items(got) if got is not None else set()))


@contextlib.contextmanager
def paused(process: subprocess.Popen) -> Iterator[None]:
    """SIGSTOP the spark-submit process group (its JVM and its Python driver) for the ``with``
    block, then SIGCONT: the driver stays where it is while the fault is injected."""
    os.killpg(process.pid, signal.SIGSTOP)  # spark-submit runs in its own process group
    try:
        yield
    finally:
        os.killpg(process.pid, signal.SIGCONT)


@contextlib.contextmanager
def detect_in_background(paths: RunPaths, config_path: Path, cluster: SparkStandalone):
    """Run :func:`detect` in a thread; yields its future and a dict whose ``"process"`` is the
    spark-submit process once started."""
    started: dict = {}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="spark-detect") as pool:
        yield (
            pool.submit(
                detect,
                paths,
                config_path,
                cluster,
                on_start=lambda process: started.setdefault("process", process),
            ),
            started,
        )


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two one-core workers; the session's reference run starts first (if no earlier module started
    it) and runs beside the cluster's start-up."""
    reference_run(tmp_path_factory)
    cluster = SparkStandalone(tmp_path_factory.mktemp("spark_faults_cluster"), workers=2)
    cluster.start()
    TIMINGS["cluster start"] = round(cluster.startup_seconds or 0.0, 1)
    try:
        yield cluster
    finally:
        cluster.stop()
        print(f"\nspark faults timings (s): {TIMINGS}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cluster):
    """The session's reference run: ``base`` its preprocessed run directory (the input of every
    detect run), ``paths`` a copy of the complete run that select has read, ``outputs`` what select
    and report read of it."""
    run = reference_run(tmp_path_factory).result(timeout=3 * JOB_TIMEOUT)
    TIMINGS["reference run (spark-submit, local[2])"] = sum(run.timings.values())
    paths, config_path = copy_run(run.paths, tmp_path_factory.mktemp("reference"), "reference")
    return {"base": run.preprocessed, "paths": paths, "outputs": outputs_of(paths, config_path)}


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
    the outputs equal the reference's; or the job fails cleanly, nothing marked complete, and run
    again it gives the reference's outputs."""
    paths, config_path = copy_run(reference["base"], tmp_path, "worker-lost")
    offset = paths.log.stat().st_size
    clock = time.perf_counter()
    with detect_in_background(paths, config_path, cluster) as (job, started):
        # worker 2's executor has taken part in the job, and the job is mid-way through KMeans
        wait_for_condition(lambda: executor_ran_tasks(cluster, 2), job, "an executor on worker 2 ran tasks")
        wait_for_log(paths, offset, WORKER_KILL_AT, job)
        with paused(started["process"]):
            executors = cluster.executor_pids(2)
            assert executors, "no executor of the job on worker 2"
            killed = cluster.kill_worker(2)
            fault_ledger.injected("SIGKILL of a Spark worker and its executor during detect")
            assert set(executors) <= set(killed)
            assert logged_stages(paths, offset)[-1] != "publish"  # paused before the job could finish
        try:
            done, error = job.result(timeout=JOB_TIMEOUT + 60), None
        except PipelineError as exc:
            done, error = None, exc
    TIMINGS["detect (worker killed)"] = round(time.perf_counter() - clock, 1)
    if error is None:
        # the driver saw the executor go and carried on with worker 1
        assert "Lost executor" in done.stderr or "ExecutorLostFailure" in done.stderr, done.stderr[-3000:]
        recovery = "detect finished on the remaining worker after losing a worker"
    else:
        message = str(error)
        assert message.startswith("Spark job detect ") and ' in stage "' in message, message
        assert re.search(r'spark detect failed in stage "[^"]+": \w+', paths.log.read_text()), (
            "no failure line in pipeline.log"
        )
        assert not list(paths.root.glob(".spark-detect.*.staging"))  # a failed job discards its staging
        assert_nothing_marked_complete(paths)
        cluster.start_worker(2)
        detect(paths, config_path, cluster)  # the rerun
        recovery = "detect rerun after failing on a lost worker"
    outputs = read_outputs(paths, config_path)
    fault_ledger.lost(missing_outputs(outputs, reference["outputs"]))
    assert outputs is not None, "the run's outputs are not complete"
    assert_same_outputs(outputs, reference["outputs"])
    fault_ledger.recovered(recovery)


def test_detect_driver_killed_midway_then_rerun(tmp_path, cluster, reference, fault_ledger):
    """SIGKILL the spark-submit driver (JVM and Python) of a detect job rerun over complete outputs,
    once KMeans' rows are staged: nothing reads as complete; the next run equals the reference."""
    if cluster.worker_webui_ports[2] not in cluster.alive_worker_ports():
        # restarted, not waited for: it joins the job's executors when it has registered
        cluster.start_worker(2, wait=False)
    paths, config_path = copy_run(reference["paths"], tmp_path, "driver-killed")
    earlier = read_done(paths.root, "detect")
    assert earlier is not None  # a complete earlier run: this is a rerun over its outputs
    offset = paths.log.stat().st_size
    clock = time.perf_counter()
    with detect_in_background(paths, config_path, cluster) as (job, started):
        wait_for_log(paths, offset, DRIVER_KILL_AT, job)
        half = list(paths.root.glob(".spark-detect.*.staging/models/kmeans.flagged.parquet"))
        os.killpg(started["process"].pid, signal.SIGKILL)  # spark-submit runs in its own process group
        fault_ledger.injected("SIGKILL of the spark-submit driver during detect")
        with pytest.raises(PipelineError) as caught:
            job.result(timeout=120)
    TIMINGS["detect (driver killed)"] = round(time.perf_counter() - clock, 1)
    message = str(caught.value)
    assert message.startswith("Spark job detect was killed by SIGKILL"), message
    assert len(message.splitlines()) == 1, message
    # the stage named is one this attempt logged: the last whose line left the driver before the kill
    stages = logged_stages(paths, offset)
    named = re.search(r' in stage "(.+?)": ', message)
    assert named and named.group(1) in stages, (message, stages)
    assert any(s.startswith("tune isolation_forest {") for s in stages), stages  # where the kill landed
    assert half, "KMeans' flagged rows were not staged when the driver was killed"
    assert all(h.exists() for h in half)  # the half output is still there, under a hidden name
    assert_nothing_marked_complete(paths)
    assert not flagged_path(paths.models, "kmeans").exists()  # the earlier outputs were withdrawn first

    clock = time.perf_counter()
    detect(paths, config_path, cluster)  # the retry
    TIMINGS["detect (rerun)"] = round(time.perf_counter() - clock, 1)
    outputs = read_outputs(paths, config_path)
    fault_ledger.lost(missing_outputs(outputs, reference["outputs"]))
    assert not list(paths.root.glob(".spark-detect.*")), "stale staging left behind"
    assert read_done(paths.root, "detect")["attempt"] != earlier["attempt"]
    wait_until(
        lambda: cluster.worker_webui_ports[2] in cluster.alive_worker_ports(), UP_TIMEOUT, "worker 2 not back"
    )
    assert outputs is not None, "the rerun's outputs are not complete"
    assert_same_outputs(outputs, reference["outputs"])
    fault_ledger.recovered("detect rerun after its driver was killed")
