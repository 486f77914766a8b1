"""A real Spark standalone cluster (one master, one worker) on 127.0.0.1 for tests.

Usage in a test module::

    from spark_cluster import spark_standalone  # noqa: F401  (the fixture)

    def test_it(spark_standalone):
        run_spark_job("preprocess", run_dir, config, master=spark_standalone.master_url)

``spark_standalone`` is module-scoped. The master and the worker are started with the installed
pyspark's ``bin/spark-class`` (not the ``sbin`` scripts, which daemonize), each in its own session /
process group, with SPARK_HOME = the pyspark package directory, SPARK_LOCAL_IP=127.0.0.1, free ports,
and their logs, work and scratch directories under a temporary directory. Start-up waits (at most
``SPARK_TEST_UP_TIMEOUT`` seconds, default 120) until the master's JSON status lists the worker as
ALIVE; otherwise the test fails with the tails of both logs. Teardown sends SIGTERM to both process
groups, then SIGKILL to whatever is left. ``SparkStandalone`` can also be used directly as a context
manager.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from anomaly_detection.spark_submit import spark_env, spark_home

UP_TIMEOUT = float(os.environ.get("SPARK_TEST_UP_TIMEOUT", "120"))
STOP_TIMEOUT = 15.0
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError:
        return "(no log)"


@dataclass
class SparkStandalone:
    """A master and a worker (``cores`` cores, ``memory`` of executor memory) under ``root``."""

    root: Path
    cores: int = 1
    memory: str = "2g"
    daemon_memory: str = "512m"
    port: int = field(default_factory=free_port)
    webui_port: int = field(default_factory=free_port)
    worker_webui_port: int = field(default_factory=free_port)
    env: dict[str, str] = field(init=False)
    processes: dict[str, subprocess.Popen] = field(init=False, default_factory=dict)
    startup_seconds: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.spark_home = spark_home()
        self.log_dir = self.root / "logs"
        self.work_dir = self.root / "work"
        self.local_dir = self.root / "local"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "PYSPARK_"))}
        env.update(
            {
                "SPARK_HOME": str(self.spark_home),
                "SPARK_LOCAL_IP": "127.0.0.1",
                "SPARK_LOG_DIR": str(self.log_dir),
                "SPARK_WORKER_DIR": str(self.work_dir),
                "SPARK_LOCAL_DIRS": str(self.local_dir),  # the worker's and its executors' scratch space
                "SPARK_PID_DIR": str(self.root),
                "SPARK_DAEMON_MEMORY": self.daemon_memory,
                # a test cluster lives minutes and computes nothing itself: the C1 JIT starts it faster
                "SPARK_DAEMON_JAVA_OPTS": "-XX:TieredStopAtLevel=1",
                # the REST submission server would take the fixed port 6066; client mode never uses it
                "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
            }
        )
        self.env = env

    # ------------------------------------------------------------------ addresses and logs

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    @property
    def webui_url(self) -> str:
        return f"http://127.0.0.1:{self.webui_port}"

    @property
    def master_log(self) -> Path:
        return self.log_dir / "master.log"

    @property
    def worker_log(self) -> Path:
        return self.log_dir / "worker.log"

    @property
    def submit_env(self) -> dict[str, str]:
        """The environment for a spark-submit against this cluster (what ``run_spark_job`` uses)."""
        return spark_env(self.master_url)

    def log_tails(self, lines: int = 40) -> str:
        return (
            f"---- master log ({self.master_log}) ----\n{_tail(self.master_log, lines)}\n"
            f"---- worker log ({self.worker_log}) ----\n{_tail(self.worker_log, lines)}"
        )

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        """The master's JSON status (workers, active and completed applications)."""
        with urllib.request.urlopen(f"{self.webui_url}/json/", timeout=timeout) as response:
            return json.load(response)

    def app_dirs(self) -> list[Path]:
        """The worker's ``app-*`` directories (one per application that ran an executor here)."""
        return sorted(self.work_dir.glob("app-*"))

    # ------------------------------------------------------------------ start / stop

    def _spawn(self, name: str, args: list[str], log: Path) -> None:
        with open(log, "ab") as out:
            self.processes[name] = subprocess.Popen(
                [str(self.spark_home / "bin" / "spark-class"), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.root,
                start_new_session=True,
            )

    def _alive_workers(self) -> int:
        try:
            status = self.status(timeout=2)
        except (OSError, ValueError):
            return 0
        if status.get("status") != "ALIVE":
            return 0
        return sum(1 for worker in status.get("workers", []) if worker.get("state") == "ALIVE")

    def start(self) -> "SparkStandalone":
        began = time.monotonic()
        for directory in (self.log_dir, self.work_dir, self.local_dir):
            directory.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        try:
            self._spawn(
                "master",
                [MASTER_CLASS, "--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(self.webui_port)],
                self.master_log,
            )
            worker_args = [
                WORKER_CLASS,
                self.master_url,
                "--host", "127.0.0.1",
                "--webui-port", str(self.worker_webui_port),
                "--cores", str(self.cores),
                "--memory", self.memory,
                "--work-dir", str(self.work_dir),
            ]  # fmt: skip
            self._spawn("worker", worker_args, self.worker_log)
            deadline = began + UP_TIMEOUT
            while self._alive_workers() < 1:
                exited = {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}
                if exited or time.monotonic() > deadline:
                    why = f"exited early {exited}" if exited else f"no ALIVE worker after {UP_TIMEOUT:g}s"
                    raise RuntimeError(f"Spark standalone cluster at {self.master_url} did not start: {why}")
                time.sleep(0.5)
        except BaseException as exc:
            tails = self.log_tails()
            self.stop()
            if isinstance(exc, RuntimeError):
                pytest.fail(f"{exc}\n{tails}", pytrace=False)
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """SIGTERM both process groups (worker first), wait, then SIGKILL what is left. Idempotent."""
        for name in ("worker", "master"):
            process = self.processes.get(name)
            if process is not None and process.poll() is None:
                _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in self.processes.values():
            # the group may still hold children (executors are the worker's) after its leader exited
            _signal_group(process, signal.SIGKILL)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> "SparkStandalone":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # start_new_session: the group id is the leader's pid
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(scope="module")
def spark_standalone(tmp_path_factory) -> Iterator[SparkStandalone]:
    """A running standalone master + worker on 127.0.0.1 (``.master_url``, ``.env``, ``.master_log``,
    ``.worker_log``, ``.work_dir``, ``.status()``) for the module; always stopped at the end."""
    cluster = SparkStandalone(tmp_path_factory.mktemp("spark_standalone"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
