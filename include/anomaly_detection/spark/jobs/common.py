"""Shared by the spark-submit jobs: arguments, the SparkSession, logging, run-directory files, errors.

Both jobs are started as ``spark-submit spark_jobs/<job>.py --run-dir DIR --config DIR/config.resolved.yaml``
(see :mod:`anomaly_detection.spark.submit`) and can be run as ``python spark_jobs/<job>.py ...`` for
debugging, with the master then defaulting to ``local[*]``.

pyspark is imported inside functions only, so this module (and the pure helpers below) import
without a JVM.

Outputs are atomic per job: :class:`Outputs` stages everything a job writes under a hidden
``.spark-<job>.<attempt>.staging/`` directory of the run, renames it into place when all of it is
written, then writes the job's completion marker (``spark_<job>.done.json``, see
:func:`anomaly_detection.spark.submit.require_complete`). A job first removes its marker, the
markers of the jobs that depend on it and its own earlier outputs, so a job killed or failed
midway leaves nothing that looks complete; the next attempt removes the stale staging directory.
The job reports its progress with :func:`stage`; a failure logs one line naming the job, the stage
and the cause.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from anomaly_detection import atomic
from anomaly_detection.config import PipelineConfig, load_config
from anomaly_detection.errors import PipelineError
from anomaly_detection.runs import LOG_FORMAT, PACKAGE_LOGGER, SECRET_MASK, RunPaths, run_logging, utc_now

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column, DataFrame, SparkSession

#: Name of the row-position column the jobs carry next to the data columns.
POS = "_pos"
#: PySpark 4.3 warns on every pandas conversion that pandas >= 3 is not fully supported.
PANDAS_WARNING = r"PySpark does not yet fully support pandas"
#: Exit status of a job that stopped on a :class:`PipelineError` (bad config, unusable data).
EXIT_PIPELINE_ERROR = 2
#: Longest cause (characters) of an unexpected error in the failure line (Py4J errors carry stacks).
MAX_CAUSE_CHARS = 600
# one definition each, read by run_spark_job: the prefix of the stderr line naming the cause of a
# failure, the tag of the stage lines, the attempt id it passes; the detectors of the Spark path
from anomaly_detection.spark.submit import (  # noqa: E402
    ATTEMPT_ENV,
    ERROR_PREFIX,
    SPARK_ALGORITHMS,
    STAGE_TAG,
    done_marker,
)

Body = Callable[["SparkSession", PipelineConfig, RunPaths, logging.Logger], None]


def quiet_pandas_warning() -> None:
    """Silence PySpark's "pandas >= 3 is not fully supported" FutureWarning (and only that one)."""
    warnings.filterwarnings("ignore", message=PANDAS_WARNING, category=FutureWarning)


def parse_args(
    prog: str, description: str, argv: list[str] | None, *, algorithm: bool = False
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--run-dir", required=True, type=Path, help="the run directory (runs/<run_id>)")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="the resolved config (default: <run-dir>/config.resolved.yaml)",
    )
    if algorithm:
        parser.add_argument(
            "--algorithm",
            default=None,
            choices=list(SPARK_ALGORITHMS),
            help="the detector to tune (default: every configured algorithm that runs on Spark)",
        )
    return parser.parse_args(argv)


def job_paths(run_dir: Path) -> RunPaths:
    root = Path(run_dir).resolve()
    if not root.is_dir():
        raise PipelineError(f"run directory not found: {root}")
    # The jobs never publish a report, so reports_dir is not used.
    return RunPaths(root, root)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).splitlines()) or type(exc).__name__


def short_cause(exc: BaseException) -> str:
    """``<Type>: <message>`` on one line. A pipeline error keeps its whole message; anything else
    (a Py4J error carries the JVM's stack trace) its first lines, cut at :data:`MAX_CAUSE_CHARS`."""
    if isinstance(exc, PipelineError):
        return f"{type(exc).__name__}: {one_line(exc)}"
    text = str(exc)
    java = getattr(exc, "java_exception", None)
    if java is not None:  # Py4JJavaError: the Java exception's own message, not the call site
        with contextlib.suppress(Exception):
            text = str(java.toString())
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("at ")
    ]
    cause = " ".join(lines[:3]) or type(exc).__name__
    if len(cause) > MAX_CAUSE_CHARS:
        cause = cause[: MAX_CAUSE_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {cause}"


# --------------------------------------------------------------------------- session


def _explicit_master_in_submit_args() -> bool:
    return "--master" in os.environ.get("PYSPARK_SUBMIT_ARGS", "")


def build_session(app_name: str, extra_conf: dict[str, str] | None = None) -> SparkSession:
    """The job's SparkSession.

    The master (and the app name) come from spark-submit or ``PYSPARK_SUBMIT_ARGS``; a plain
    ``python job.py`` run gets ``local[*]``. With a local master the driver binds to 127.0.0.1. The
    UI is off unless ``spark.ui.enabled`` is set. Column names are case-sensitive, as in pandas.
    """
    quiet_pandas_warning()
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    if "PYSPARK_GATEWAY_PORT" not in os.environ and not _explicit_master_in_submit_args():
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # plain python: local[*] below
    # Start (plain python) or join (spark-submit) the JVM first, so SparkConf() sees the settings
    # spark-submit was given and we only fill in what is missing.
    SparkContext._ensure_initialized()  # noqa: SLF001 - private but long-stable; SparkConf() then reads the JVM's
    conf = SparkConf()
    if not conf.contains("spark.master"):
        conf.setMaster("local[*]")
    if conf.get("spark.master", "").startswith("local"):
        conf.setIfMissing("spark.driver.host", "127.0.0.1")
        conf.setIfMissing("spark.driver.bindAddress", "127.0.0.1")
    conf.setIfMissing("spark.ui.enabled", "false")
    if "PYSPARK_GATEWAY_PORT" in os.environ:
        conf.setIfMissing("spark.ui.showConsoleProgress", "false")
    else:  # plain python starts Spark as "pyspark-shell", which turns the progress bar on
        conf.set("spark.ui.showConsoleProgress", "false")
    # let adaptive execution shrink the shuffle partitions of cached frames too (2,000 rows must
    # not run 200 tasks per pass)
    conf.setIfMissing("spark.sql.optimizer.canChangeCachedPlanOutputPartitioning", "true")
    conf.setIfMissing("spark.pyspark.python", sys.executable)
    conf.setIfMissing("spark.sql.session.timeZone", "UTC")
    conf.set("spark.sql.caseSensitive", "true")  # "a" and "A" are different API fields
    for key, value in (extra_conf or {}).items():
        conf.set(key, value)
    # spark-submit --name (e.g. SparkSubmitOperator's name=) wins over our default name
    spark = SparkSession.builder.appName(conf.get("spark.app.name", app_name)).config(conf=conf).getOrCreate()
    spark.sparkContext.setLogLevel(conf.get("spark.log.level", "WARN"))
    return spark


# --------------------------------------------------------------------------- files


def pandas_dtypes(path: Path) -> dict[str, Any]:
    """The dtype of every column as ``pandas.read_parquet(path)`` gives it, read from the schema only."""
    from anomaly_detection.detect.scored import read_schema

    empty = read_schema(path).empty_table().to_pandas()
    return {str(name): dtype for name, dtype in empty.dtypes.items()}


def quoted(name: str) -> str:
    """A column name Spark resolves literally (dots, spaces and backticks included)."""
    return "`" + name.replace("`", "``") + "`"


def read_positioned(spark: SparkSession, path: Path, names: list[str]) -> DataFrame:
    """Read a parquet file, or a directory of part files, as columns ``_pos, c0, c1, ...``.

    ``c<i>`` is ``names[i]``. ``_pos`` is the row's index in the whole dataset, files taken in name
    order (what pandas and :func:`anomaly_detection.detect.scored.iter_batches` see): the row's index in
    its file (Spark's ``_metadata.row_index``) plus the rows of the files before it, whatever the
    partitioning or the order Spark's tasks run in. The per-file offsets come from the Parquet
    footers and join as a broadcast table.
    """
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    from anomaly_detection.detect.scored import parquet_files

    files = parquet_files(path)
    if not files:
        raise PipelineError(f"{path} holds no parquet files")
    frame = spark.read.parquet(*(str(f) for f in files))
    present = set(frame.columns)
    missing = [n for n in names if n not in present]
    if missing:
        raise PipelineError(f"{path}: Spark does not see column(s) {missing}; it sees {sorted(present)[:40]}")
    metadata = frame.metadataColumn("_metadata")
    columns = [F.col(quoted(n)).alias(f"c{i}") for i, n in enumerate(names)]
    if len(files) == 1:
        return frame.select(metadata.getField("row_index").alias(POS), *columns)
    counts = [pq.ParquetFile(f).metadata.num_rows for f in files]
    starts = itertools.accumulate(counts[:-1], initial=0)
    offsets = spark.createDataFrame(
        [(f.name, int(o)) for f, o in zip(files, starts)], "_file string, _offset long"
    )
    located = frame.select(
        metadata.getField("file_name").alias("_file"), metadata.getField("row_index").alias("_row"), *columns
    )
    return located.join(F.broadcast(offsets), "_file").select(
        (F.col("_offset") + F.col("_row")).alias(POS), *(F.col(f"c{i}") for i in range(len(names)))
    )


def write_parts(frame: DataFrame, target: Path) -> None:
    """Write ``frame`` as Spark part files into ``target`` (a staged path, see :class:`Outputs`)."""
    frame.write.mode("overwrite").parquet(str(target))


def remove_path(path: Path) -> None:
    """Remove a file or a directory; a directory is first renamed to a hidden name, so a removal
    cut short never leaves a dataset with fewer part files under its real name."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        aside = atomic.temporary_sibling(path.with_name(path.name + ".old"))
        os.replace(path, aside)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- job state


@dataclass
class JobState:
    """The running job: its name, attempt id, current stage and logger (one job per process)."""

    name: str
    attempt: str
    log: logging.Logger
    stage: str = "start"
    started: float = field(default_factory=time.perf_counter)
    master: str | None = None
    application_id: str | None = None


_JOB: JobState | None = None


def current_job() -> JobState:
    if _JOB is None:
        raise RuntimeError("no Spark job is running in this process (use run_job)")
    return _JOB


def stage(what: str) -> None:
    """Enter a stage of the job: logged as ``[stage] <what>`` and named by a failure."""
    job = current_job()
    job.stage = what
    job.log.info("%s%s", STAGE_TAG, what)


class Outputs:
    """The outputs of one job attempt, staged under a hidden directory of the run and published
    together (each renamed into place, in the order added) before the job's completion marker.

    Use as a context manager: an exception (the job failed) discards the staging directory.
    """

    def __init__(self, paths: RunPaths, job: JobState | None = None) -> None:
        job = job or current_job()
        self.root = Path(paths.root)
        self.job = job
        self.staging = self.root / f".spark-{job.name}.{job.attempt}.staging"
        self.finals: list[Path] = []

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is not None:
            self.discard()

    def start(self, finals: list[Path], *, invalidate: list[str] = ()) -> None:
        """Begin the attempt: remove the markers of this job and of ``invalidate`` (job names whose
        results depend on this one), then this job's earlier outputs ``finals`` and stale staging
        directories of earlier attempts."""
        for name in [self.job.name, *invalidate]:
            done_marker(self.root, name).unlink(missing_ok=True)
        for final in finals:
            remove_path(final)
        for stale in self.root.glob(f".spark-{self.job.name}.*.staging"):
            if stale != self.staging:
                shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True)

    def path(self, final: Path) -> Path:
        """Where to write ``final`` (a path inside the run directory) until it is published."""
        final = Path(final)
        staged = self.staging / final.relative_to(self.root)
        staged.parent.mkdir(parents=True, exist_ok=True)
        if final not in self.finals:
            self.finals.append(final)
        return staged

    def commit(self, **details: Any) -> Path:
        """Rename every staged output into place, then write the completion marker (last)."""
        missing = [
            str(f.relative_to(self.root))
            for f in self.finals
            if not (self.staging / f.relative_to(self.root)).exists()
        ]
        if missing:
            raise PipelineError(f"outputs not written: {', '.join(missing)}")
        for final in self.finals:
            with atomic.replacing(final) as tmp:
                os.replace(self.staging / final.relative_to(self.root), tmp)
        shutil.rmtree(self.staging, ignore_errors=True)
        marker = done_marker(self.root, self.job.name)
        atomic.write_json(
            marker,
            {
                "job": self.job.name,
                "attempt": self.job.attempt,
                "finished_at": utc_now(),
                "seconds": round(time.perf_counter() - self.job.started, 3),
                "master": self.job.master,
                "application_id": self.job.application_id,
                "outputs": [str(f.relative_to(self.root)) for f in self.finals],
                **details,
            },
        )
        return marker

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


# --------------------------------------------------------------------------- running


@contextlib.contextmanager
def job_logging(paths: RunPaths, name: str) -> Iterator[logging.Logger]:
    """Log to the run's ``pipeline.log`` (like the native stages) and to stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(SECRET_MASK)
    package = logging.getLogger(PACKAGE_LOGGER)
    with run_logging(paths) as _:
        package.addHandler(handler)
        try:
            yield logging.getLogger(f"{PACKAGE_LOGGER}.spark.{name}")
        finally:
            package.removeHandler(handler)


def stderr_line(text: str) -> None:
    """Write one line to the job's stderr.

    Under spark-submit the JVM runs this Python driver with its stderr merged into spark-submit's
    stdout, so the line goes through the JVM's ``System.err`` instead; a plain ``python job.py``
    run prints it.
    """
    sys.stdout.flush()
    if "PYSPARK_GATEWAY_PORT" in os.environ:  # started by spark-submit
        try:
            from pyspark import SparkContext

            SparkContext._ensure_initialized()  # noqa: SLF001 - joins the running JVM
            err = SparkContext._jvm.System.err  # noqa: SLF001
            err.println(text)
            err.flush()
            return
        except Exception:  # noqa: BLE001 - fall back to Python's stderr
            pass
    print(text, file=sys.stderr, flush=True)


def fail(exc: BaseException) -> int:
    """Write the one line naming the cause to stderr; return the job's exit status."""
    stderr_line(f"{ERROR_PREFIX}{short_cause(exc)}")
    return EXIT_PIPELINE_ERROR


def run_job(
    name: str,
    args: argparse.Namespace,
    body: Body,
    *,
    extra_conf: dict[str, str] | None = None,
    spark: SparkSession | None = None,
) -> int:
    """Load the config, start Spark, run ``body``.

    Exit status 0 on success, 2 on a :class:`PipelineError` (bad config, unusable data), 1 on any
    other exception. A failure logs one line ``spark <job> failed in stage "<stage>": <Type>: <cause>``
    (then, for an unexpected error, its traceback) and writes ``error: <Type>: <cause>`` to stderr.

    ``spark``: run in this existing session instead of starting one (tests run the job bodies in one
    long-lived local session); it is left running, only the frames the job cached are dropped.
    """
    global _JOB
    quiet_pandas_warning()
    try:
        paths = job_paths(args.run_dir)
        config = load_config(args.config or paths.config)
    except PipelineError as exc:
        return fail(exc)
    borrowed = spark is not None
    with job_logging(paths, name) as log:
        job = _JOB = JobState(name, os.environ.get(ATTEMPT_ENV) or uuid.uuid4().hex[:12], log)
        try:
            stage("start Spark")
            if spark is None:
                spark = build_session(f"anomaly-detection-{name}", extra_conf)
            job.master, job.application_id = spark.sparkContext.master, spark.sparkContext.applicationId
            log.info("spark %s: master %s, run %s, attempt %s", name, job.master, paths.run_id, job.attempt)
            body(spark, config, paths, log)
        except Exception as exc:  # noqa: BLE001 - the cause to the log and stderr, the traceback to the log
            log.error('spark %s failed in stage "%s": %s', name, job.stage, short_cause(exc))
            if not isinstance(exc, PipelineError):
                log.error("spark %s: traceback of the failure", name, exc_info=exc)
            fail(exc)
            return EXIT_PIPELINE_ERROR if isinstance(exc, PipelineError) else 1
        finally:
            _JOB = None
            if borrowed:
                with contextlib.suppress(Exception):
                    spark.catalog.clearCache()
            elif spark is not None:
                spark.stop()
        log.info("spark %s finished in %.1fs", name, time.perf_counter() - job.started)
    return 0


def is_numeric_dtype(dtype: Any) -> bool:
    """The native rule: numeric or boolean pandas dtype."""
    return bool(pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))


def missing_expr(column: Column, floating: bool) -> Column:
    """``pandas.isna`` in Spark: null, and NaN for floating columns."""
    from pyspark.sql import functions as F

    return (column.isNull() | F.isnan(column)) if floating else column.isNull()
