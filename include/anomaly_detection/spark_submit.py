"""Build and run the ``spark-submit`` command lines of the Spark jobs in ``spark_jobs/``.

pyspark is never imported here (the core must import without it): its installation is located
with :func:`importlib.util.find_spec`, which does not run the package.

The Airflow DAG passes :func:`job_application_args` as a ``SparkSubmitOperator``'s
``application_args`` with ``application=str(job_path("preprocess"))``; :func:`run_spark_job` runs a
job from Python (tests, the CLI, a ``BashOperator``).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Mapping

from .errors import PipelineError

#: The repository's ``spark_jobs/`` directory (next to ``include/``).
SPARK_JOBS_DIR = Path(__file__).resolve().parents[2] / "spark_jobs"
JOBS = ("preprocess", "detect")
#: Printed by a job before it exits on a pipeline error (see ``spark_jobs/common.py``).
ERROR_PREFIX = "error: "
DEFAULT_TIMEOUT_SECONDS = 6 * 3600
STDERR_TAIL_LINES = 20


def spark_home() -> Path:
    """The directory of the installed ``pyspark`` package (it holds ``bin/`` and ``jars/``)."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError("pyspark is not installed in this environment; install it to use the Spark jobs")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def spark_submit_executable() -> Path:
    path = spark_home() / "bin" / ("spark-submit.cmd" if os.name == "nt" else "spark-submit")
    if not path.is_file():
        raise PipelineError(f"spark-submit not found at {path}; is the pyspark installation complete?")
    return path


def job_path(job: str | Path) -> Path:
    """``"preprocess"`` / ``"detect"`` (or a path to a job script) as the script's absolute path."""
    name = str(job)
    if name in JOBS or name.removesuffix(".py") in JOBS:
        return SPARK_JOBS_DIR / f"{name.removesuffix('.py')}.py"
    path = Path(job).resolve()
    if not path.is_file():
        raise PipelineError(f"unknown Spark job {name!r}; choose one of {', '.join(JOBS)} or give a script path")
    return path


def job_application_args(run_dir: str | Path, config_path: str | Path, algorithm: str | None = None) -> list[str]:
    """The job's own arguments (what follows the script on the spark-submit command line)."""
    args = ["--run-dir", str(run_dir), "--config", str(config_path)]
    if algorithm:
        args += ["--algorithm", algorithm]
    return args


def default_conf(master: str) -> dict[str, str]:
    """Settings every job gets: this interpreter on the driver and executors, quiet logs, no UI,
    and with a local master a driver bound to 127.0.0.1."""
    conf = {
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.log.level": "WARN",
    }
    if master.startswith("local"):
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
    return conf


def spark_submit_command(
    job: str | Path,
    run_dir: str | Path,
    config_path: str | Path,
    *,
    master: str = "local[*]",
    extra_args: Iterable[str] = (),
    conf: Mapping[str, str] | None = None,
) -> list[str]:
    """The spark-submit command line of ``job`` on ``run_dir``.

    ``extra_args`` are appended to the job's arguments (e.g. ``("--algorithm", "kmeans")``);
    ``conf`` entries are added as ``--conf key=value`` and win over :func:`default_conf`.
    """
    settings = {**default_conf(master), **{k: str(v) for k, v in (conf or {}).items()}}
    command = [str(spark_submit_executable()), "--master", master, "--name", f"anomaly-detection-{Path(str(job)).stem}"]
    for key, value in settings.items():
        command += ["--conf", f"{key}={value}"]
    command.append(str(job_path(job)))
    command += job_application_args(run_dir, config_path)
    command += [str(a) for a in extra_args]
    return command


def spark_env(master: str = "local[*]", base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for spark-submit: ``SPARK_HOME`` of this pyspark and, with a local master,
    ``SPARK_LOCAL_IP=127.0.0.1`` (no hostname look-up, no warning about it)."""
    env = dict(os.environ if base is None else base)
    env["SPARK_HOME"] = str(spark_home())
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    if master.startswith("local"):
        env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return env


def failure_cause(stderr: str, *, tail: int = STDERR_TAIL_LINES) -> str:
    """The job's one-line cause when it printed one, else the last ``tail`` lines of stderr."""
    lines = [line.rstrip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(ERROR_PREFIX):
            return line[len(ERROR_PREFIX) :]
    return "\n".join(lines[-tail:]) or "(no output on stderr)"


def run_spark_job(
    job: str | Path,
    run_dir: str | Path,
    config_path: str | Path,
    *,
    master: str = "local[*]",
    extra_args: Iterable[str] = (),
    conf: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run the job with spark-submit; raise :class:`PipelineError` naming the cause when it fails.

    The job runs in its own process group, which is killed when ``timeout`` seconds pass.
    """
    command = spark_submit_command(job, run_dir, config_path, master=master, extra_args=extra_args, conf=conf)
    name = Path(str(job)).stem
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=spark_env(master, env),
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        stdout, stderr = process.communicate()
        raise PipelineError(f"Spark job {name} timed out after {timeout:g}s; last output:\n{failure_cause(stderr)}") from None
    except BaseException:
        _kill_group(process)
        raise
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if result.returncode != 0:
        raise PipelineError(f"Spark job {name} failed (exit status {result.returncode}): {failure_cause(stderr)}")
    return result


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
