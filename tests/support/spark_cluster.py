"""A real Spark standalone cluster (one master, one or more workers) on 127.0.0.1 for tests.

Usage (tests/integration/test_spark_cluster.py and tests/faults/test_spark_faults.py wrap it in a
module-scoped fixture)::

    with SparkStandalone(tmp_path / "cluster") as cluster:
        run_spark_job("preprocess", run_dir, config, master=cluster.master_url)

The master and the worker are started with the installed
pyspark's ``bin/spark-class`` (not the ``sbin`` scripts, which daemonize), each in its own session /
process group, with SPARK_HOME = the pyspark package directory, SPARK_LOCAL_IP=127.0.0.1, free ports,
and their logs, work and scratch directories under a temporary directory. Start-up waits (at most
``SPARK_TEST_UP_TIMEOUT`` seconds, default 120) until the master's JSON status lists the worker as
ALIVE; otherwise the test fails with the tails of both logs. Teardown sends SIGTERM to both process
groups, then SIGKILL to whatever is left.

``SparkStandalone(root, workers=2)`` starts more workers (numbered from 1; worker 1 keeps the names
``worker.log`` and ``work/``, worker ``i`` gets ``worker-<i>.log`` and ``work-<i>/``).
``kill_worker(i)`` SIGKILLs worker ``i``'s JVM and every process under it (its executor JVMs and
their Python workers), as a lost machine would; ``start_worker(i)`` starts it again.
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
from typing import Any

import pytest

from anomaly_detection.spark.submit import spark_env, spark_home

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
    workers: int = 1
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
        self.worker_webui_ports = {
            1: self.worker_webui_port,
            **{i: free_port() for i in range(2, self.workers + 1)},
        }

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

    def worker_log_of(self, i: int) -> Path:
        return self.worker_log if i == 1 else self.log_dir / f"worker-{i}.log"

    def work_dir_of(self, i: int) -> Path:
        return self.work_dir if i == 1 else self.root / f"work-{i}"

    @staticmethod
    def worker_key(i: int) -> str:
        return "worker" if i == 1 else f"worker-{i}"

    @property
    def submit_env(self) -> dict[str, str]:
        """The environment for a spark-submit against this cluster (what ``run_spark_job`` uses)."""
        return spark_env(self.master_url)

    def log_tails(self, lines: int = 40) -> str:
        parts = [f"---- master log ({self.master_log}) ----\n{_tail(self.master_log, lines)}"]
        for i in range(1, self.workers + 1):
            log = self.worker_log_of(i)
            parts.append(f"---- worker {i} log ({log}) ----\n{_tail(log, lines)}")
        return "\n".join(parts)

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        """The master's JSON status (workers, active and completed applications)."""
        with urllib.request.urlopen(f"{self.webui_url}/json/", timeout=timeout) as response:
            return json.load(response)

    def app_dirs(self) -> list[Path]:
        """The workers' ``app-*`` directories (one per application and worker that ran an executor)."""
        return sorted(p for i in range(1, self.workers + 1) for p in self.work_dir_of(i).glob("app-*"))

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
        return len(self.alive_worker_ports())

    def alive_worker_ports(self) -> set[int]:
        """The web UI ports of the workers the master lists as ALIVE (how workers are told apart)."""
        try:
            status = self.status(timeout=2)
        except (OSError, ValueError):
            return set()
        if status.get("status") != "ALIVE":
            return set()
        ports = set()
        for worker in status.get("workers", []):
            if worker.get("state") == "ALIVE":
                address = str(worker.get("webuiaddress", ""))
                ports.add(int(address.rsplit(":", 1)[1]) if address.rsplit(":", 1)[-1].isdigit() else -1)
        return ports

    def _spawn_worker(self, i: int) -> None:
        self.work_dir_of(i).mkdir(parents=True, exist_ok=True)
        worker_args = [
            WORKER_CLASS,
            self.master_url,
            "--host", "127.0.0.1",
            "--webui-port", str(self.worker_webui_ports[i]),
            "--cores", str(self.cores),
            "--memory", self.memory,
            "--work-dir", str(self.work_dir_of(i)),
        ]  # fmt: skip
        self._spawn(self.worker_key(i), worker_args, self.worker_log_of(i))

    def _wait_until(self, done, what: str) -> None:
        deadline = time.monotonic() + UP_TIMEOUT
        while not done():
            exited = {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}
            if exited or time.monotonic() > deadline:
                why = f"exited early {exited}" if exited else f"{what} after {UP_TIMEOUT:g}s"
                raise RuntimeError(f"Spark standalone cluster at {self.master_url} did not start: {why}")
            time.sleep(0.5)

    def executor_pids(self, i: int) -> list[int]:
        """The executor JVMs running under worker ``i`` (CoarseGrainedExecutorBackend processes)."""
        process = self.processes.get(self.worker_key(i))
        if process is None or process.poll() is not None:
            return []
        return [pid for pid in _descendants(process.pid) if "CoarseGrainedExecutorBackend" in _cmdline(pid)]

    def kill_worker(self, i: int) -> list[int]:
        """SIGKILL worker ``i``'s JVM and every process under it (executor JVMs, their Python
        workers), all at once as a lost machine; wait until they are gone and the master no
        longer lists the worker as ALIVE. Returns the pids killed, the worker's first."""
        process = self.processes[self.worker_key(i)]
        victims = [process.pid, *_descendants(process.pid)]
        for pid in victims:
            _kill_pid(pid)
        _signal_group(process, signal.SIGKILL)  # anything in its group that was not found above
        process.wait(timeout=10)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and (
            any(_alive(pid) for pid in victims[1:]) or self.worker_webui_ports[i] in self.alive_worker_ports()
        ):
            time.sleep(0.2)
        return victims

    def start_worker(self, i: int, *, wait: bool = True) -> float:
        """Start worker ``i`` (again); with ``wait``, until the master lists it as ALIVE. Returns the
        seconds taken."""
        began = time.monotonic()
        process = self.processes.get(self.worker_key(i))
        if process is not None and process.poll() is None:
            raise RuntimeError(f"worker {i} is running")
        self.processes.pop(self.worker_key(i), None)
        self._spawn_worker(i)
        if not wait:
            return time.monotonic() - began
        try:
            self._wait_until(
                lambda: self.worker_webui_ports[i] in self.alive_worker_ports(), f"worker {i} not ALIVE"
            )
        except RuntimeError as exc:
            pytest.fail(f"{exc}\n{self.log_tails()}", pytrace=False)
        return time.monotonic() - began

    def start(self) -> SparkStandalone:
        began = time.monotonic()
        for directory in (self.log_dir, self.work_dir, self.local_dir):
            directory.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        try:
            self._spawn(
                "master",
                [
                    MASTER_CLASS,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--webui-port",
                    str(self.webui_port),
                ],
                self.master_log,
            )
            for i in range(1, self.workers + 1):
                self._spawn_worker(i)
            self._wait_until(
                lambda: self._alive_workers() >= self.workers, f"fewer than {self.workers} ALIVE worker(s)"
            )
        except BaseException as exc:
            tails = self.log_tails()
            self.stop()
            if isinstance(exc, RuntimeError):
                pytest.fail(f"{exc}\n{tails}", pytrace=False)
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """SIGTERM every process group (workers first), wait, then SIGKILL what is left. Idempotent."""
        names = [n for n in self.processes if n != "master"] + ["master"]
        for name in names:
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

    def __enter__(self) -> SparkStandalone:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return found


def _descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (children first, then theirs), from ``/proc``."""
    found, queue = [], _children(pid)
    while queue:
        child = queue.pop(0)
        if child not in found:
            found.append(child)
            queue += _children(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # start_new_session: the group id is the leader's pid
    except (ProcessLookupError, PermissionError):
        pass
