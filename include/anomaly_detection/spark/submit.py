"""Build and run the ``spark-submit`` command lines of the Spark jobs in ``spark_jobs/``.

pyspark is never imported here (the core must import without it): its installation is located
with :func:`importlib.util.find_spec`, which does not run the package.

The Airflow DAG passes :func:`job_application_args` as a ``SparkSubmitOperator``'s
``application_args`` with ``application=str(job_path("preprocess"))``; :func:`run_spark_job` runs a
job from Python (tests, the CLI, a ``BashOperator``).

Masters: ``local[...]`` runs the job inside the spark-submit JVM. A standalone master
(``spark://host:port``) runs it in client deploy mode: the driver (this machine's Python) stays
in the spark-submit process and the executors run on the cluster's workers with the same Python
(``spark.pyspark.python``), the code of the ``anomaly_detection`` package shipped to them as a
``--py-files`` zip (:func:`build_py_files`). With a master on loopback the driver binds to
127.0.0.1 too. :func:`run_spark_job` first checks that a standalone master accepts connections,
so an unreachable master fails in seconds with its URL in the message (Spark itself retries for
about a minute and then reports "All masters are unresponsive").

Completion: a job stages every output under a hidden directory of the run and renames it into
place only when all of it is written, then writes its marker ``spark_<job>.done.json``
(:func:`done_marker`; ``<job>`` is ``detect-<algorithm>`` for one algorithm). A job killed or failed
midway leaves no marker and no published output of its own (it removes both when it starts), so
readers that need the Spark outputs check :func:`require_complete` first; :func:`run_spark_job` does
after every job (a zero exit status without this attempt's marker is a failure).
"""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from anomaly_detection.errors import PipelineError
from anomaly_detection.runs import spark_jobs_dir

#: The package's directory (``include/anomaly_detection``), shipped to executors with the jobs.
PACKAGE_DIR = Path(__file__).resolve().parents[1]
JOBS = ("preprocess", "detect")
#: Printed by a job before it exits on a pipeline error (see ``spark_jobs/common.py``).
ERROR_PREFIX = "error: "
DEFAULT_TIMEOUT_SECONDS = 6 * 3600
STDERR_TAIL_LINES = 20
#: Seconds :func:`run_spark_job` waits for a standalone master to accept a TCP connection.
MASTER_CONNECT_TIMEOUT_SECONDS = 5.0
#: Name prefix of the ``--py-files`` zips (:func:`build_py_files`).
PY_FILES_PREFIX = "anomaly-detection-pyfiles-"
#: A zip not used for this long is removed when a zip of other sources is built next to it
#: (far longer than :data:`DEFAULT_TIMEOUT_SECONDS`).
PY_FILES_KEEP_SECONDS = 2 * 24 * 3600
#: What Spark's standalone client logs when it gives up registering with the master(s).
UNRESPONSIVE_MASTER = "All masters are unresponsive"
#: A job logs ``[stage] <what>`` when it enters a stage; a failure names the last one.
STAGE_TAG = "[stage] "
#: The attempt id :func:`run_spark_job` gives a job (recorded in its completion marker).
ATTEMPT_ENV = "ANOMALY_SPARK_ATTEMPT"
#: Every algorithm the Spark detect job runs (``anomaly_detection.spark.jobs.common.SPARK_ALGORITHMS``).
SPARK_ALGORITHMS = (
    "ensemble", "isolation_forest", "hbos", "ecod", "kmeans", "bisecting_kmeans", "time_series",
)  # fmt: skip


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
        return spark_jobs_dir() / f"{name.removesuffix('.py')}.py"
    path = Path(job).resolve()
    if not path.is_file():
        raise PipelineError(
            f"unknown Spark job {name!r}; choose one of {', '.join(JOBS)} or give a script path"
        )
    return path


def job_application_args(
    run_dir: str | Path, config_path: str | Path, algorithm: str | None = None
) -> list[str]:
    """The job's own arguments (what follows the script on the spark-submit command line)."""
    args = ["--run-dir", str(run_dir), "--config", str(config_path)]
    if algorithm:
        args += ["--algorithm", algorithm]
    return args


def is_local_master(master: str) -> bool:
    """``local``, ``local[4]``, ``local[*]``, ``local-cluster[...]``: Spark inside the spark-submit JVM."""
    return master.startswith("local")


def is_standalone_master(master: str) -> bool:
    """A Spark standalone master URL, ``spark://host:port`` (or ``spark://h1:p1,h2:p2`` with standby masters)."""
    return master.startswith("spark://")


def master_addresses(master: str) -> list[tuple[str, int]]:
    """The ``(host, port)`` pairs of a ``spark://`` URL (port 7077 when omitted)."""
    if not is_standalone_master(master):
        raise PipelineError(f"not a Spark standalone master URL: {master!r}")
    addresses = []
    for part in master[len("spark://") :].split(","):
        part = part.strip().rstrip("/")
        if part.startswith("["):  # [::1]:7077
            host, _, rest = part[1:].partition("]")
            port = rest.removeprefix(":")
        else:
            host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
        if not host:
            raise PipelineError(f"Spark master URL {master!r} has no host")
        try:
            addresses.append((host, int(port) if port else 7077))
        except ValueError:
            raise PipelineError(f"Spark master URL {master!r} has a bad port {port!r}") from None
    return addresses


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_master(master: str) -> bool:
    """A local master, or a standalone master whose every host is a loopback address."""
    if is_local_master(master):
        return True
    if not is_standalone_master(master):
        return False
    try:
        return all(_is_loopback(host) for host, _ in master_addresses(master))
    except PipelineError:
        return False


def base_conf() -> dict[str, str]:
    """Settings every job gets, whatever the master (the DAG's SparkSubmitOperator too): this
    interpreter on the driver and executors, quiet logs, no UI."""
    return {
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.log.level": "WARN",
    }


def default_conf(master: str) -> dict[str, str]:
    """:func:`base_conf`, and with a local or loopback standalone master a driver bound to 127.0.0.1."""
    conf = base_conf()
    if is_loopback_master(master):
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
    return conf


def _py_files_sources() -> list[tuple[str, Path]]:
    """``(name in the zip, file)`` of every file of the ``anomaly_detection`` package, sorted."""
    sources = []
    for root, prefix in ((PACKAGE_DIR, "anomaly_detection"),):
        if not root.is_dir():
            raise PipelineError(f"cannot ship {prefix} to the executors: {root} is not a directory")
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if path.is_file() and "__pycache__" not in relative.parts and path.suffix not in (".pyc", ".pyo"):
                sources.append((f"{prefix}/{relative.as_posix()}", path))
    return sources


def default_py_files_dir() -> Path:
    """Where :func:`build_py_files` puts its zips by default: a per-user directory in the temp dir."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"anomaly-detection-spark-{uid}"


def build_py_files(directory: str | Path | None = None) -> Path:
    """A zip of the ``anomaly_detection`` package, for ``spark-submit --py-files``.

    Executors on other machines import the jobs' code from it (on this machine the venv has it
    too). The file is named after a hash of the sources, so an unchanged checkout reuses it and
    concurrent builders write identical bytes (each through its own temporary file).
    """
    target_dir = Path(directory) if directory is not None else default_py_files_dir()
    sources = _py_files_sources()
    digest = hashlib.sha256()
    contents = []
    for name, path in sources:
        data = path.read_bytes()
        contents.append((name, data))
        digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    target = target_dir / f"{PY_FILES_PREFIX}{digest.hexdigest()[:16]}.zip"
    if target.is_file():
        os.utime(target)  # in use: see _prune_py_files
        return target
    target_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _prune_py_files(target_dir)
    handle, temporary = tempfile.mkstemp(prefix=".pyfiles-", suffix=".zip", dir=target_dir)
    try:
        with os.fdopen(handle, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in contents:
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def _prune_py_files(directory: Path) -> None:
    """Remove zips of older sources not used for :data:`PY_FILES_KEEP_SECONDS` (a running job's
    driver serves its zip to executors from that path, so a recent one may still be needed)."""
    cutoff = time.time() - PY_FILES_KEEP_SECONDS
    for old in directory.glob(f"{PY_FILES_PREFIX}*.zip"):
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:
            pass


def spark_submit_command(
    job: str | Path,
    run_dir: str | Path,
    config_path: str | Path,
    *,
    master: str = "local[*]",
    extra_args: Iterable[str] = (),
    conf: Mapping[str, str] | None = None,
    py_files_dir: str | Path | None = None,
) -> list[str]:
    """The spark-submit command line of ``job`` on ``run_dir``.

    ``extra_args`` are appended to the job's arguments (e.g. ``("--algorithm", "kmeans")``);
    ``conf`` entries are added as ``--conf key=value`` and win over :func:`default_conf`.
    With any master other than ``local[...]`` the job runs in client deploy mode with
    ``--py-files`` set to :func:`build_py_files` (built in ``py_files_dir`` if given; this writes
    the zip when it does not exist yet).
    """
    settings = {**default_conf(master), **{k: str(v) for k, v in (conf or {}).items()}}
    command = [str(spark_submit_executable()), "--master", master]
    if not is_local_master(master):
        command += ["--deploy-mode", "client", "--py-files", str(build_py_files(py_files_dir))]
    command += ["--name", f"anomaly-detection-{Path(str(job)).stem}"]
    for key, value in settings.items():
        command += ["--conf", f"{key}={value}"]
    command.append(str(job_path(job)))
    command += job_application_args(run_dir, config_path)
    command += [str(a) for a in extra_args]
    return command


def spark_env(master: str = "local[*]", base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for spark-submit: ``SPARK_HOME`` of this pyspark and, with a local or
    loopback standalone master, ``SPARK_LOCAL_IP=127.0.0.1`` (no hostname look-up, no warning)."""
    env = dict(os.environ if base is None else base)
    env["SPARK_HOME"] = str(spark_home())
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    if is_loopback_master(master):
        env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return env


def check_master_reachable(master: str, timeout: float = MASTER_CONNECT_TIMEOUT_SECONDS) -> None:
    """Raise :class:`PipelineError` naming ``master`` when no host of a ``spark://`` URL accepts a
    TCP connection within ``timeout`` seconds (other masters are not checked)."""
    if not is_standalone_master(master):
        return
    problems = []
    for host, port in master_addresses(master):
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return
        except OSError as exc:
            problems.append(f"{host}:{port}: {exc.strerror or exc}")
    raise PipelineError(
        f"Spark master {master} is unreachable ({'; '.join(problems)}); is the master running?"
    )


# --------------------------------------------------------------------------- completion markers


def job_name(job: str | Path, algorithm: str | None = None) -> str:
    """The name a job runs under: ``preprocess``, ``detect`` or ``detect-<algorithm>``."""
    name = Path(str(job)).stem
    return f"{name}-{algorithm}" if algorithm else name


def done_marker(run_dir: str | Path, name: str) -> Path:
    """The marker a job writes into the run directory once all its outputs are in place."""
    return Path(run_dir) / f"spark_{name}.done.json"


def read_done(run_dir: str | Path, name: str) -> dict[str, Any] | None:
    """The job's completion marker, or ``None`` when it did not complete (or the marker is unreadable)."""
    try:
        data = json.loads(done_marker(run_dir, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def require_complete(
    run_dir: str | Path, job: str, algorithms: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """Raise :class:`PipelineError` unless ``job``'s outputs in ``run_dir`` are marked complete.

    ``job`` is ``preprocess`` or ``detect``. For ``detect``, ``algorithms`` (default: those the
    ``detect`` marker lists) must each be covered by the ``detect`` marker or by its own
    ``detect-<algorithm>`` marker; algorithms that do not run on Spark are ignored. Returns the
    markers read.
    """
    name = Path(str(job)).stem
    marker = read_done(run_dir, name)
    if name != "detect" or algorithms is None:
        if marker is None:
            raise PipelineError(
                f"Spark job {name} did not complete on {run_dir} (no {done_marker(run_dir, name).name}): "
                f"its outputs are missing or partial; run the job again"
            )
        return [marker]
    markers, missing = [], []
    covered = set(marker.get("algorithms", [])) if marker else set()
    if marker:
        markers.append(marker)
    for algorithm in (a for a in algorithms if a in SPARK_ALGORITHMS):
        if algorithm in covered:
            continue
        own = read_done(run_dir, job_name(name, algorithm))
        if own is None:
            missing.append(algorithm)
        else:
            markers.append(own)
    if missing:
        raise PipelineError(
            f"Spark job detect did not complete on {run_dir} for {', '.join(missing)} "
            f"(no {done_marker(run_dir, name).name}): its outputs are missing or partial; run the job again"
        )
    return markers


def last_stage(stdout: str) -> str | None:
    """The last stage a job logged (``[stage] <what>`` lines on its stdout)."""
    found = re.findall(rf"{re.escape(STAGE_TAG)}(.+)$", stdout or "", flags=re.M)
    return found[-1].strip() if found else None


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
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> subprocess.CompletedProcess:
    """Run the job with spark-submit; raise :class:`PipelineError` naming the cause when it fails.

    The job runs in its own process group, which is killed when ``timeout`` seconds pass.
    ``on_start`` is called with the spark-submit process once it runs. The job must exit 0 *and*
    leave this attempt's completion marker (:func:`done_marker`); a failure names the job, the
    stage it was in and the cause (or the signal that killed it).
    """
    extra_args = [str(a) for a in extra_args]
    algorithm = extra_args[extra_args.index("--algorithm") + 1] if "--algorithm" in extra_args[:-1] else None
    name = job_name(job, algorithm)
    check_master_reachable(master)
    command = spark_submit_command(job, run_dir, config_path, master=master, extra_args=extra_args, conf=conf)
    attempt = uuid.uuid4().hex[:12]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**spark_env(master, env), ATTEMPT_ENV: attempt},
        start_new_session=True,
    )
    try:
        if on_start is not None:
            on_start(process)
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        stdout, stderr = process.communicate()
        raise PipelineError(
            f"Spark job {name} timed out after {timeout:g}s{_master_note(master, stderr)}{_stage_note(stdout)}; "
            f"last output:\n{failure_cause(stderr)}"
        ) from None
    except BaseException:
        _kill_group(process)
        raise
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    code = result.returncode
    if code != 0:
        if code < 0:  # no cause of its own: the signal, and the last line it wrote
            how, cause = (
                f"was killed by {_signal_name(-code)} (exit status {code})",
                failure_cause(stderr, tail=1),
            )
        else:
            how, cause = f"failed (exit status {code})", failure_cause(stderr)
        raise PipelineError(
            f"Spark job {name} {how}{_master_note(master, stderr)}{_stage_note(stdout)}: {cause}"
        )
    marker = read_done(run_dir, name)
    if marker is None or marker.get("attempt") != attempt:
        found = "no marker" if marker is None else f"the marker of attempt {marker.get('attempt')!r}"
        raise PipelineError(
            f"Spark job {name} exited 0{_master_note(master, stderr)} but did not mark its outputs complete "
            f"({found} in {done_marker(run_dir, name)}, expected attempt {attempt!r}){_stage_note(stdout)}"
        )
    return result


def _stage_note(stdout: str | None) -> str:
    stage = last_stage(stdout or "")
    return f' in stage "{stage}"' if stage else ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _master_note(master: str, stderr: str) -> str:
    """`` on master spark://...`` plus Spark's verdict when its standalone client gave up on the master."""
    if is_local_master(master):
        return ""
    if UNRESPONSIVE_MASTER in stderr:
        return f" on master {master} ({UNRESPONSIVE_MASTER})"
    return f" on master {master}"


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
