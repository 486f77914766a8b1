"""A real ``airflow standalone`` for end-to-end tests.

Usage in a test module::

    import pytest
    from airflow_fixtures import airflow_standalone  # noqa: F401  (the fixture)

    @pytest.fixture(scope="module")
    def airflow_dags_folder(tmp_path_factory):       # which DAGs the instance loads
        folder = tmp_path_factory.mktemp("dags")
        (folder / "my_dag.py").write_text(...)
        return folder

    def test_it(airflow_standalone):
        client = airflow_standalone.client           # devtools.airflow_client.AirflowClient
        client.wait_for_dag("my_dag", 120)

``airflow_standalone`` is module-scoped: one instance per test module, with a temporary AIRFLOW_HOME,
free ports, the module's ``airflow_dags_folder`` (default: the repo's dags/) and ANOMALY_RUNS_DIR /
ANOMALY_REPORTS_DIR inside that home. It is started and stopped by the same scripts a user runs
(scripts/airflow_up.sh and scripts/airflow_down.sh, whose settings all come from scripts/airflow_env.sh),
in its own session/process group, and the whole group is killed at the end even if a test failed.
A failed start fails the test with the tail of the Airflow log. ``AirflowStandalone`` can also be used
directly as a context manager.
"""

from __future__ import annotations

import atexit
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from anomaly_detection.runs import safe_run_id
from devtools.airflow_client import AirflowClient, TaskStateError

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
UP_TIMEOUT = int(os.environ.get("AIRFLOW_TEST_UP_TIMEOUT", "240"))
DOWN_TIMEOUT = 30


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def airflow_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment scripts/airflow_env.sh makes, given ``overrides`` (AIRFLOW_HOME, AIRFLOW_PORT, ...).

    The caller's own AIRFLOW* variables are dropped first, so a shell that sourced the env of another
    instance cannot leak into this one.
    """
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    base.update(overrides)
    out = subprocess.run(
        ["bash", "-c", 'source "$1" && env -0', "_", str(SCRIPTS / "airflow_env.sh")],
        env=base,
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    env = {}
    for item in out.split(b"\0"):
        if b"=" in item:
            key, _, value = item.decode().partition("=")
            env[key] = value
    return env


@dataclass
class AirflowStandalone:
    """One ``airflow standalone`` with its own AIRFLOW_HOME (see the module docstring)."""

    home: Path
    dags_folder: Path
    extra_env: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(init=False)
    url: str = field(init=False)
    client: AirflowClient = field(init=False)
    startup_seconds: float | None = field(init=False, default=None)
    stop_seconds: float | None = field(init=False, default=None)
    stop_output: str = field(init=False, default="")
    _atexit: bool = field(init=False, default=False, repr=False)

    def __post_init__(self) -> None:
        self.home = Path(self.home).resolve()
        overrides = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW_PORT": str(self.port),
            "AIRFLOW_DAGS_FOLDER": str(Path(self.dags_folder).resolve()),
            "AIRFLOW_WORKER_LOG_PORT": str(free_port()),
            "AIRFLOW_TRIGGER_LOG_PORT": str(free_port()),
            "ANOMALY_RUNS_DIR": str(self.home / "runs"),
            "ANOMALY_REPORTS_DIR": str(self.home / "reports"),
            **self.extra_env,
        }
        if self.extra_env:
            # Inputs of airflow_env.sh take effect as overrides above; settings it sets itself (AIRFLOW__...)
            # only through the per-instance file it sources last.
            self.home.mkdir(parents=True, exist_ok=True)
            (self.home / "env.local.sh").write_text(
                "".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in self.extra_env.items())
            )
        self.env = airflow_env(overrides)
        self.url = self.env["AIRFLOW_URL"]

    @property
    def log_file(self) -> Path:
        return self.home / "standalone.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "standalone.pid"

    def run_dir(self, run_id: str) -> Path:
        """Where the DAG's run ``run_id`` keeps its files (under ANOMALY_RUNS_DIR)."""
        return self.home / "runs" / safe_run_id(run_id)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> AirflowStandalone:
        began = time.monotonic()
        env = dict(self.env, AIRFLOW_UP_TIMEOUT=str(UP_TIMEOUT))
        if not self._atexit:
            atexit.register(self._kill_group)
            self._atexit = True
        try:
            proc = subprocess.run(
                ["bash", str(SCRIPTS / "airflow_up.sh")],
                env=env,
                capture_output=True,
                text=True,
                timeout=UP_TIMEOUT + 60,
            )
            output = proc.stdout + proc.stderr
            ok = proc.returncode == 0
        except subprocess.TimeoutExpired as exc:
            output = f"airflow_up.sh did not return within {UP_TIMEOUT + 60}s: {exc}"
            ok = False
        if not ok:
            self.stop()
            pytest.fail(
                f"airflow standalone did not start (AIRFLOW_HOME={self.home}):\n{output}\n"
                f"---- log tail ----\n{self.log_tail()}",
                pytrace=False,
            )
        self.startup_seconds = time.monotonic() - began
        self.client = AirflowClient.from_credentials_file(
            self.url,
            self.env["AIRFLOW_CREDENTIALS_FILE"],
            timeout=120,  # a loaded 2-core machine answers slowly
        )
        return self

    def session_id(self) -> int | None:
        """The standalone's session / process group id (from the pid file), or None when it is not running."""
        try:
            sid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return sid if sid > 1 else None

    def restart(self) -> AirflowStandalone:
        """Stop every process of the standalone, then start it again on the same home, database and ports.

        Runs, task instances and human-in-the-loop requests live in the database and survive; the client
        logs in again by itself (a new API server may sign tokens with a new key).
        """
        self.stop()
        return self.start()

    def stop(self) -> None:
        began = time.monotonic()
        try:
            proc = subprocess.run(
                ["bash", str(SCRIPTS / "airflow_down.sh")],
                env=dict(self.env, AIRFLOW_DOWN_TIMEOUT=str(DOWN_TIMEOUT)),
                capture_output=True,
                text=True,
                timeout=DOWN_TIMEOUT + 60,
            )
            self.stop_output = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired:
            self.stop_output = f"airflow_down.sh did not return within {DOWN_TIMEOUT + 60}s"
        self._kill_group()  # a no-op when airflow_down.sh did its job
        self.stop_seconds = time.monotonic() - began

    def _kill_group(self) -> None:
        """Last resort: SIGKILL the process group named in the pid file, if any is left."""
        try:
            pgid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        if pgid > 1:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.pid_file.unlink()
        except OSError:
            pass

    def __enter__(self) -> AirflowStandalone:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class BudgetedWaits:
    """The client's waits on one DAG, all bounded together by ``budget`` seconds counted from creation.

    A stuck Airflow then fails a test module once, in ``budget`` seconds, not once per test. A failed
    wait quotes the error lines and the tail of the standalone's log.
    """

    def __init__(self, client: AirflowClient, airflow: AirflowStandalone, dag_id: str, budget: float) -> None:
        self.client, self.airflow, self.dag_id, self.budget = client, airflow, dag_id, budget
        self.deadline = time.monotonic() + budget

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"the module's {self.budget}s budget is used up{self.diagnosis()}", pytrace=False)
        return left

    def diagnosis(self) -> str:
        text = self.airflow.log_file.read_text(errors="replace") if self.airflow.log_file.exists() else ""
        lines = text.splitlines()
        errors = [ln for ln in lines if "[error" in ln or "exited with status" in ln or "Error:" in ln]
        return (
            f"\n---- {len(errors)} error lines in {self.airflow.log_file} (last 15) ----\n"
            + "\n".join(errors[-15:])
            + "\n---- last 15 log lines ----\n"
            + "\n".join(lines[-15:])
        )

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, self.left(), **kwargs)
        except (TimeoutError, TaskStateError) as exc:
            pytest.fail(f"{exc}{self.diagnosis()}", pytrace=False)

    def run(self, run_id: str) -> str:
        return self._call(self.client.wait_for_run, self.dag_id, run_id)

    def task(self, run_id: str, task_id: str, states: list[str], map_index: int = -1) -> str:
        return self._call(
            self.client.wait_for_task_state, self.dag_id, run_id, task_id, states, map_index=map_index
        )

    def gate(self, run_id: str) -> None:
        """Wait until the run's review gate waits for an answer."""
        self.task(run_id, "review", ["awaiting_input"])

    def until(self, what: str, probe, interval: float = 0.5):
        """Poll ``probe()`` until it returns something truthy."""
        while True:
            value = probe()
            if value:
                return value
            if self.left() < interval:
                pytest.fail(f"timed out waiting for {what}{self.diagnosis()}", pytrace=False)
            time.sleep(interval)


def _optional_fixture(request, name: str, default):
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        return default


@pytest.fixture(scope="module")
def airflow_standalone(tmp_path_factory, request) -> Iterator[AirflowStandalone]:
    """A running ``airflow standalone`` (``.client``, ``.home``, ``.url``, ``.env``) for the module.

    Optional module-scoped fixtures it uses when the test module defines them: ``airflow_dags_folder``
    (a Path; default the repo's dags/) and ``airflow_extra_env`` (a dict of environment settings that
    win over scripts/airflow_env.sh's, e.g. ``{"AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False"}``).
    """
    instance = AirflowStandalone(
        home=tmp_path_factory.mktemp("airflow_home"),
        dags_folder=Path(_optional_fixture(request, "airflow_dags_folder", REPO / "dags")),
        extra_env=_optional_fixture(request, "airflow_extra_env", {}),
    )
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
