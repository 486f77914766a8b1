"""Data, settings and runs shared by the Spark test modules: a generated table with planted outliers,
a run directory holding it, test-only Spark settings, and

* the session's **reference run** (:func:`reference_run`): both jobs through real spark-submit in
  ``local[2]`` on one generated run directory, once per pytest process; modules that only need
  Spark's outputs read it (or copies of it) instead of running spark-submit themselves;
* an in-process **local SparkSession** (:func:`local_session`) and :func:`run_in_process`, which
  runs a job's body in it as spark-submit would, for tests where spark-submit is not what is tested.

The fixtures over these are in ``tests/integration/conftest.py`` (``spark_reference``,
``spark_session``); tests/faults/test_spark_faults.py reads the same reference run.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from anomaly_detection.config import build_config
from anomaly_detection.errors import PipelineError
from anomaly_detection.runs import RunPaths
from anomaly_detection.spark.submit import (
    job_application_args,
    job_name,
    read_done,
    require_complete,
    run_spark_job,
)

N_ROWS = 2_000
N_OUTLIERS = 20
N_DUPLICATES = 25
JOB_TIMEOUT = 300
#: Test-only: these JVMs live under a minute on tiny data, where the C1 JIT alone starts ~40% faster
#: on a busy 2-core VM. Production keeps the full JIT (long jobs need C2).
QUICK_JVM = {"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1"}
#: Test-only settings of the spark-submit runs compared with each other (the reference run, the
#: standalone cluster's, the fault runs): C1 JIT in every JVM, an executor that fits a test worker's
#: 2g, the same partitions whatever the number of cores or live executors (KMeans initialisation
#: samples per partition), few shuffle partitions.
RUN_CONF = {
    **QUICK_JVM,
    "spark.executor.extraJavaOptions": "-XX:TieredStopAtLevel=1",
    "spark.executor.memory": "1g",
    "spark.default.parallelism": "2",
    "spark.sql.shuffle.partitions": "2",
}


def java_available() -> bool:
    return shutil.which("java") is not None


requires_spark = pytest.mark.skipif(not java_available(), reason="Java is not on PATH")


# --------------------------------------------------------------------------- data


def make_table(n: int = N_ROWS, seed: int = 7) -> tuple[pd.DataFrame, np.ndarray]:
    """Four clusters in (x, y, z), ~1% planted far outliers, NaNs, one inf, duplicates appended after
    their originals, a constant, an id, a constant-step sequence, text, timestamps, an empty column.

    Returns the table and the positions of the planted outliers' first occurrences.
    """
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 0, 0], [6, 6, 0], [0, 6, 6], [6, 0, 6]], dtype=float)
    cluster = rng.integers(0, 4, n)
    xyz = centers[cluster] + rng.normal(0, 0.6, (n, 3))
    count = cluster * 10 + rng.integers(0, 3, n)
    outliers = rng.choice(n, N_OUTLIERS, replace=False)
    direction = rng.normal(size=(N_OUTLIERS, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    xyz[outliers] = 3.0 + direction * rng.uniform(13, 16, (N_OUTLIERS, 1))
    count[outliers] = rng.integers(0, 40, N_OUTLIERS)
    table = pd.DataFrame(
        {
            "event_id": rng.permutation(n) + 1000,
            "x": xyz[:, 0],
            "y": xyz[:, 1],
            "z": xyz[:, 2],
            "count": count,
            "flag": np.isin(cluster, [1, 3]),
            "const": 3.0,
            "city": rng.choice(["Lyon", "Oslo", "Lima"], n),
            "meta.note": rng.choice(["a b", "c.d", None], n),
            "seen_at": pd.Timestamp("2026-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 10**6, n), unit="s"),
            "empty": np.nan,
            "is_anomaly": np.isin(np.arange(n), outliers).astype(np.int64),
        }
    )
    normal = np.setdiff1d(np.arange(n), outliers)
    holes = rng.choice(normal, 61, replace=False)
    table.loc[holes[:30], "x"] = np.nan
    table.loc[holes[30:60], "y"] = np.nan
    table.loc[holes[60], "z"] = np.inf
    table.insert(1, "seq", np.arange(n) * 3 + 5)  # an ID by its constant step, not by its name
    # duplicates land after their original, so the kept rows are 0..n-1 and "seq" keeps its step
    duplicated = rng.choice(n, N_DUPLICATES, replace=False)
    keys = np.concatenate([np.arange(n, dtype=float), rng.uniform(duplicated + 0.5, n)])
    order = np.argsort(keys, kind="stable")
    full = pd.concat([table, table.iloc[duplicated]]).iloc[order].reset_index(drop=True)
    first_position = np.argsort(order)[:n]  # where original row i ended up
    return full, np.sort(first_position[outliers])


def write_run(root: Path, table: pd.DataFrame, overrides: dict) -> tuple[RunPaths, Path]:
    paths = RunPaths.create(root / "runs", root / "reports", "spark-test")
    table.to_parquet(paths.flattened, index=False)
    output = {"runs_dir": str(root / "runs"), "reports_dir": str(root / "reports")}
    config = build_config({"name": "spark-test", "output": output}, overrides)
    paths.config.write_text(yaml.safe_dump(config.redacted(), sort_keys=False), encoding="utf-8")
    return paths, paths.config


# --------------------------------------------------------------------------- reading the outputs


def spark_features(paths: RunPaths) -> tuple[np.ndarray, pd.DataFrame, np.ndarray | None]:
    """Spark's ``features.spark.parquet`` in position order: kept positions, the named features and
    the labels (``None`` without a label column). Tests read all of it; the pipeline never does."""
    import json

    names = json.loads(paths.summary.read_text())["features"]
    stored = pd.read_parquet(paths.spark_features).sort_values("_pos").reset_index(drop=True)
    features = stored[[f"f{j}" for j in range(len(names))]].set_axis(names, axis=1)
    labels = stored["_label"].to_numpy() if "_label" in stored else None
    return stored["_pos"].to_numpy(), features, labels


def flagged_positions(paths: RunPaths, algorithm: str) -> np.ndarray:
    from anomaly_detection.detect.scored import flagged_path, read_flagged

    return np.sort(read_flagged(flagged_path(paths.models, algorithm))["position"].to_numpy())


def copy_run(source: RunPaths, root: Path, name: str) -> tuple[RunPaths, Path]:
    """A copy of the run directory ``source`` as ``root/runs/<name>``: its paths and config."""
    target = root / "runs" / name
    shutil.copytree(source.root, target)
    paths = RunPaths(target, root / "reports")
    return paths, paths.config


# --------------------------------------------------------------------------- the session's reference run

REFERENCE_ROWS = 3_000
REFERENCE_SEED = 11
REFERENCE_MASTER = "local[2]"
REFERENCE_ALGORITHMS = ["kmeans", "isolation_forest"]
#: Two KMeans configurations (a grid, and a point mid-way for the fault tests) and an Isolation
#: Forest; a fixed 5 % of rows (the tests count it; contamination auto on Spark is tested in
#: test_spark_detect.py and test_spark_parity.py); labels; selection by metric (the ensemble is not
#: configured); the default imputation.
REFERENCE_OVERRIDES = {
    "modeling": {
        "algorithms": REFERENCE_ALGORITHMS,
        "contamination": 0.05,
        "grids": {
            "kmeans": {"simple": {"n_clusters": [4, 5]}},
            "isolation_forest": {"simple": {"n_estimators": [50], "max_samples": [256]}},
        },
    },
    "evaluation": {"label_column": "is_anomaly", "selection": "metric"},
}


@dataclass(frozen=True)
class SparkReference:
    """The reference run: ``paths`` holds both jobs' outputs (complete, never to be written to: copy
    it first), ``preprocessed`` a copy taken between the two jobs (the input of a detect run)."""

    table: pd.DataFrame
    planted: np.ndarray
    paths: RunPaths
    config_path: Path
    preprocessed: RunPaths
    timings: dict[str, float] = field(default_factory=dict)

    def new_input(self, root: Path) -> tuple[RunPaths, Path]:
        """A fresh run directory with the reference's input table and config (nothing run yet)."""
        return write_run(root, self.table, REFERENCE_OVERRIDES)


_REFERENCE_LOCK = threading.Lock()
_REFERENCE: dict[str, Future] = {}


def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Future:
    """A future of the session's :class:`SparkReference`, started in a background thread on the first
    call (the callers start a Spark cluster meanwhile) and shared by every later one."""
    with _REFERENCE_LOCK:
        if "run" not in _REFERENCE:
            root = tmp_path_factory.mktemp("spark_reference")
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spark-reference")
            _REFERENCE["run"] = pool.submit(_build_reference, root)
            pool.shutdown(wait=False)
        return _REFERENCE["run"]


def _build_reference(root: Path) -> SparkReference:
    table, planted = make_table(REFERENCE_ROWS, seed=REFERENCE_SEED)
    paths, config_path = write_run(root, table, REFERENCE_OVERRIDES)
    timings: dict[str, float] = {}

    def submit(job: str) -> None:
        started = time.perf_counter()
        run_spark_job(
            job, paths.root, config_path, master=REFERENCE_MASTER, conf=RUN_CONF, timeout=JOB_TIMEOUT
        )
        timings[job] = round(time.perf_counter() - started, 1)

    submit("preprocess")
    preprocessed, _ = copy_run(paths, root / "preprocessed", paths.run_id)
    submit("detect")
    require_complete(paths.root, "detect", REFERENCE_ALGORITHMS)
    return SparkReference(table, planted, paths, config_path, preprocessed, timings)


# --------------------------------------------------------------------------- the in-process session

#: The tests' local session: two cores, and as few partitions as the spark-submit test runs.
SESSION_CONF = {
    "spark.master": "local[2]",
    "spark.default.parallelism": "2",
    "spark.sql.shuffle.partitions": "2",
}


_SESSION: dict[str, Any] = {}


def local_session() -> Any:
    """The local SparkSession of this process (started on the first call), configured as the jobs
    configure theirs."""
    from anomaly_detection.spark.jobs.common import build_session

    if "spark" not in _SESSION:
        launch = {
            # the Python workers: this interpreter (spark-submit gets it from spark_env; pyspark
            # started in-process reads only the environment, else runs "python3" from PATH)
            "PYSPARK_PYTHON": sys.executable,
            # the JVM pyspark launches: C1 JIT, as QUICK_JVM for spark-submit (measured here: the
            # 3,000-row jobs about a third faster, the JVM up in half the time)
            "PYSPARK_SUBMIT_ARGS": f"--driver-java-options {QUICK_JVM['spark.driver.extraJavaOptions']} pyspark-shell",
        }
        before = {key: os.environ.get(key) for key in launch}
        os.environ.update({key: os.environ.get(key) or value for key, value in launch.items()})
        try:
            _SESSION["spark"] = build_session("anomaly-detection-tests", SESSION_CONF)
        finally:  # read once, at launch: later spark-submit children get their own settings
            for key, value in before.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return _SESSION["spark"]


def stop_local_session() -> None:
    """Stop the session of :func:`local_session`, if started, and its JVM (pyspark keeps the JVM for
    the next session otherwise, and with it its memory)."""
    session = _SESSION.pop("spark", None)
    if session is None:
        return
    from pyspark import SparkContext

    session.stop()
    gateway = SparkContext._gateway
    if gateway is None:
        return
    process = getattr(gateway, "proc", None)
    gateway.shutdown()
    SparkContext._gateway = SparkContext._jvm = None
    if process is not None:  # the gateway JVM exits when its stdin closes
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=30)
        except Exception:  # noqa: BLE001 - a JVM that does not go is killed
            process.kill()
            process.wait(timeout=30)


def run_in_process(
    spark: Any, job: str, run_dir: Path, config_path: Path, *, algorithm: str | None = None
) -> None:
    """Run ``job``'s body in ``spark`` with the arguments spark-submit would pass it; like
    ``run_spark_job``, raise unless it exits 0 *and* marks its outputs complete."""
    module = importlib.import_module(f"anomaly_detection.spark.jobs.{job}")
    code = module.main(job_application_args(run_dir, config_path, algorithm), spark=spark)
    name = job_name(job, algorithm)
    if code != 0:
        raise PipelineError(
            f"Spark job {name} failed in process (exit status {code}); see {run_dir}/pipeline.log"
        )
    if read_done(run_dir, name) is None:
        raise PipelineError(f"Spark job {name} exited 0 in process but did not mark its outputs complete")
