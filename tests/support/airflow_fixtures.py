"""Real ``airflow standalone`` instances for the end-to-end and fault tests, shared per test session.

Starting a standalone costs a minute or more on a 2-core machine, so a session starts at most two,
each on first use and stopped once no later test needs it (or at the session's end):

* ``airflow_shared``: for every module that leaves the instance as it found it (tests/e2e/
  test_airflow_e2e.py, test_airflow_harness.py, test_reports_plugin.py, tests/faults/test_secrets.py);
* ``airflow_destructive``: for modules that SIGKILL task processes or restart the whole standalone
  (tests/faults/test_airflow_faults.py).

Both are session fixtures defined in tests/conftest.py (which also runs the modules of one instance
next to each other, and the destructive ones last). A test module asks for one by name and declares
what it needs from it at module level; the session's instance gets the union over its modules::

    AIRFLOW_EXTRA_ENV = {"AIRFLOW_CONN_MY_API": "..."}   # environment that wins over scripts/airflow_env.sh
    AIRFLOW_TEST_DAGS = {"my_dag.py": "...source..."}    # DAG files next to the repo's dags/

    def test_it(airflow_shared):
        client = airflow_shared.client                   # GateAwareClient (devtools.airflow_client)
        client.wait_for_dag("my_dag", 120)

Two modules that set one variable to different values cannot share an instance: the fixture fails
and names them. On a shared instance every module uses its own run ids, waits for its own runs, and
leaves no run in flight or file in the DAGs folder behind.

Each instance has a temporary AIRFLOW_HOME, free ports, its own DAGs folder (symlinks to the repo's
dags/ plus the modules' test DAGs; never the repo's folder itself, so a test may add a file to it) and
ANOMALY_RUNS_DIR / ANOMALY_REPORTS_DIR inside that home. It is started and stopped by the same scripts
a user runs (scripts/airflow_up.sh and scripts/airflow_down.sh, whose settings all come from
scripts/airflow_env.sh), in its own session/process group, and the whole group is killed at the end
even if a test failed. A failed start fails the test with the tail of the Airflow log.
``AirflowStandalone`` can also be used directly as a context manager.

Waits are on conditions (``wait_until``), never on the clock: an answer to a human-in-the-loop gate,
for one, waits until the scheduler has processed the exit of the gate's parked task process (see
``AirflowStandalone.gate_settled``) instead of devtools.airflow_client's fixed 10 seconds.
"""

from __future__ import annotations

import atexit
import json
import os
import shlex
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest

from anomaly_detection.runs import safe_run_id
from devtools.airflow_client import FINISHED_RUN_STATES, AirflowApiError, AirflowClient, TaskStateError

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
UP_TIMEOUT = int(os.environ.get("AIRFLOW_TEST_UP_TIMEOUT", "240"))
DOWN_TIMEOUT = 30
#: Seconds a standalone that is done for the session gets after SIGTERM before SIGKILL: a graceful end
#: (up to DOWN_TIMEOUT, e.g. of the scheduler's executor workers) buys nothing for a throwaway home.
FINAL_DOWN_TIMEOUT = 5
#: How long an answer to a gate waits for the scheduler to process the exit of the gate's parked process.
GATE_SETTLE_TIMEOUT = 90.0
#: Task instance states in which a task process is running or about to start.
IN_FLIGHT_STATES = ("running", "queued", "scheduled", "up_for_retry", "restarting")

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.5,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate()`` every ``interval`` seconds until it returns something truthy; return that.

    Raises ``TimeoutError`` naming ``what`` (and ``describe()``, if given) after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            detail = f": {describe()}" if describe else ""
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(min(interval, left))


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


class LogFollower:
    """The lines of a growing log file that ``keep`` accepts, read incrementally (each byte once).

    A restart of the standalone renames its log to ``.1`` and starts a new one: the follower reads the
    rest of the old file through its open handle, then goes on with the new one.
    """

    def __init__(self, path: Path, keep: Callable[[str], bool]) -> None:
        self.path, self.keep = path, keep
        self.lines: list[str] = []
        self._fh = None
        self._partial = ""

    def read(self) -> list[str]:
        while True:
            if self._fh is None:
                try:
                    self._fh = open(self.path, encoding="utf-8", errors="replace")  # noqa: SIM115
                except FileNotFoundError:
                    return self.lines
            self._take(self._fh.read())
            try:
                replaced = os.stat(self.path).st_ino != os.fstat(self._fh.fileno()).st_ino
            except FileNotFoundError:
                replaced = False  # renamed, the new one not created yet
            if not replaced:
                return self.lines
            self._fh.close()
            self._fh = None
            self._take("\n")  # the old file's last line, even without its newline

    def _take(self, text: str) -> None:
        *complete, self._partial = (self._partial + text).split("\n")
        self.lines.extend(line for line in complete if line and self.keep(line))


@dataclass
class AirflowStandalone:
    """One ``airflow standalone`` with its own AIRFLOW_HOME (see the module docstring)."""

    home: Path
    dags_folder: Path
    extra_env: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(init=False)
    url: str = field(init=False)
    client: GateAwareClient = field(init=False)
    started_at: datetime | None = field(init=False, default=None)
    startup_seconds: float | None = field(init=False, default=None)
    stop_seconds: float | None = field(init=False, default=None)
    stop_output: str = field(init=False, default="")
    running: bool = field(init=False, default=False)
    _atexit: bool = field(init=False, default=False, repr=False)
    _finished: LogFollower = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.home = Path(self.home).resolve()
        self.dags_folder = Path(self.dags_folder).resolve()
        overrides = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW_PORT": str(self.port),
            "AIRFLOW_DAGS_FOLDER": str(self.dags_folder),
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
        # the scheduler's "TaskInstance Finished" lines: it has processed the exit of a task process
        self._finished = LogFollower(self.log_file, lambda line: "TaskInstance Finished:" in line)

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

    def log_count(self, text: str) -> int:
        """How many lines of the current log contain ``text``."""
        try:
            return sum(text in line for line in self.log_file.read_text(errors="replace").splitlines())
        except OSError:
            return 0

    def start(self) -> AirflowStandalone:
        began = time.monotonic()
        self._finished.read()  # what the previous instance's log still holds, before it is renamed
        self.started_at = datetime.now(UTC)
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
        self.running = True
        if not ok:
            self.stop()
            pytest.fail(
                f"airflow standalone did not start (AIRFLOW_HOME={self.home}):\n{output}\n"
                f"---- log tail ----\n{self.log_tail()}",
                pytrace=False,
            )
        self.startup_seconds = time.monotonic() - began
        self.client = GateAwareClient(self, timeout=120)  # a loaded 2-core machine answers slowly
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

    def stop(self, timeout: int = DOWN_TIMEOUT) -> None:
        """scripts/airflow_down.sh: SIGTERM to every process, SIGKILL to those left after ``timeout`` s."""
        began = time.monotonic()
        try:
            proc = subprocess.run(
                ["bash", str(SCRIPTS / "airflow_down.sh")],
                env=dict(self.env, AIRFLOW_DOWN_TIMEOUT=str(timeout)),
                capture_output=True,
                text=True,
                timeout=timeout + 60,
            )
            self.stop_output = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired:
            self.stop_output = f"airflow_down.sh did not return within {timeout + 60}s"
        self._kill_group()  # a no-op when airflow_down.sh did its job
        self.running = False
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

    # ------------------------------------------------------------------ human-in-the-loop gates

    def gate_settled(self, detail: Mapping[str, Any]) -> bool:
        """May the gate of ``detail`` (a ``hitlDetails`` answer) be answered without being failed?

        Airflow 3.3.2 parks a human-in-the-loop task in ``awaiting_input`` and its task process exits;
        the scheduler then gets the executor's "finished" for it. Were the gate answered before that,
        the task instance would be ``scheduled``/``queued`` again when the stale "finished" arrives, and
        the scheduler fails it ("finished with state success, but the task instance's state attribute
        is queued"). So: settled once the scheduler has logged ``TaskInstance Finished`` for this try
        in ``state=awaiting_input``, or when the gate was parked by an earlier start of the standalone
        (that scheduler and its executor are gone; no "finished" will come), or when the task instance
        is no longer parked or running (the API decides what an answer does then).
        """
        ti = detail.get("task_instance") or {}
        if ti.get("state") not in ("awaiting_input", "running"):
            return True
        try:
            created = datetime.fromisoformat(str(detail.get("created_at")))
        except ValueError:
            created = None
        if created is not None:
            created = created if created.tzinfo else created.replace(tzinfo=UTC)
            if self.started_at is not None and created < self.started_at:
                return True
        marks = (f"ti_id={ti.get('id')},", "state=awaiting_input,", f"try_number={ti.get('try_number')},")
        return any(all(mark in line for mark in marks) for line in self._finished.read())

    def wait_gate_settled(self, detail: Mapping[str, Any], timeout: float = GATE_SETTLE_TIMEOUT) -> None:
        """Wait until ``gate_settled(detail)``. Past ``timeout`` the answer goes out anyway, with a warning
        (e.g. a scheduler restarted by airflow_up.sh's wrapper may have lost the "finished" event)."""
        ti = detail.get("task_instance") or {}
        try:
            wait_until(
                lambda: self.gate_settled(detail), timeout, "the gate's task process exit", interval=0.3
            )
        except TimeoutError:
            warnings.warn(
                f"no 'TaskInstance Finished ... state=awaiting_input' line for {ti.get('task_id')} of "
                f"{ti.get('dag_run_id')} (ti {ti.get('id')}) within {timeout:g}s; answering anyway",
                stacklevel=2,
            )

    # ------------------------------------------------------------------ sharing the instance

    def busy_task_instances(self) -> list[str]:
        """Task instances of any DAG and run whose task process is running or about to start."""
        page = self.client.get_json(
            "/api/v2/dags/~/dagRuns/~/taskInstances", state=list(IN_FLIGHT_STATES), limit=100
        )
        return [
            f"{ti['dag_id']}/{ti['dag_run_id']}/{ti['task_id']}[{ti.get('map_index', -1)}]={ti['state']}"
            for ti in page.get("task_instances", [])
        ]

    def end_runs(self, dag_id: str, run_ids) -> list[str]:
        """Mark the runs among ``run_ids`` that are not finished as failed (so none is left in flight for
        the next module on a shared instance); returns them. Missing runs are skipped."""
        ended = []
        for run_id in run_ids:
            try:
                state = self.client.dag_run(dag_id, run_id).get("state")
                if state not in FINISHED_RUN_STATES:
                    self.client.request(
                        "PATCH",
                        f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}",
                        json_body={"state": "failed"},
                    )
                    ended.append(f"{run_id} ({state})")
            except AirflowApiError:
                continue
        return ended


class GateAwareClient(AirflowClient):
    """devtools.airflow_client.AirflowClient for one standalone of the tests, whose ``answer_hitl``
    waits for ``AirflowStandalone.gate_settled`` instead of the fixed ``HITL_SETTLE_SECONDS``."""

    def __init__(self, airflow: AirflowStandalone, *, timeout: float = 120) -> None:
        passwords = json.loads(Path(airflow.env["AIRFLOW_CREDENTIALS_FILE"]).read_text())
        user = airflow.env.get("AIRFLOW_USERNAME") or next(iter(passwords))
        super().__init__(airflow.url, user, passwords[user], timeout=timeout)
        self.airflow = airflow

    def _let_gate_settle(self, detail: Mapping[str, Any]) -> None:
        self.airflow.wait_gate_settled(detail)


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
        """Poll ``probe()`` until it returns something truthy (within the budget); returns that."""
        try:
            return wait_until(probe, self.left(), what, interval=interval)
        except TimeoutError as exc:
            pytest.fail(f"{exc}{self.diagnosis()}", pytrace=False)


# ---------------------------------------------------------------------------- the session's instances

#: The session fixtures' instances by fixture name (``airflow_shared``, ``airflow_destructive``).
SERVICES: dict[str, AirflowStandalone] = {}


def _users_in(items, fixture: str) -> list[pytest.Item]:
    return [item for item in items if fixture in getattr(item, "fixturenames", ())]


def module_settings(session: pytest.Session, fixture: str) -> tuple[dict[str, str], dict[str, str]]:
    """The union of ``AIRFLOW_EXTRA_ENV`` and of ``AIRFLOW_TEST_DAGS`` over the modules whose tests use
    ``fixture``: ``(env, dags)``. Fails, naming the modules, where two of them disagree."""
    env: dict[str, tuple[str, str]] = {}
    dags: dict[str, tuple[str, str]] = {}
    conflicts = []
    seen = set()
    for item in _users_in(session.items, fixture):
        module = item.module
        if module.__name__ in seen:
            continue
        seen.add(module.__name__)
        for attr, union in (("AIRFLOW_EXTRA_ENV", env), ("AIRFLOW_TEST_DAGS", dags)):
            for key, value in getattr(module, attr, {}).items():
                if key in union and union[key][0] != str(value):
                    conflicts.append(f"{attr}[{key!r}]: {union[key][1]} and {module.__name__} differ")
                union.setdefault(key, (str(value), module.__name__))
    if conflicts:
        pytest.fail(
            f"the modules using {fixture} cannot share one Airflow standalone: " + "; ".join(conflicts),
            pytrace=False,
        )
    return {k: v for k, (v, _) in env.items()}, {k: v for k, (v, _) in dags.items()}


def build_dags_folder(folder: Path, test_dags: Mapping[str, str]) -> Path:
    """``folder`` with a symlink to every entry of the repo's dags/ and the given test DAG files."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in sorted((REPO / "dags").iterdir()):
        if entry.name != "__pycache__":
            (folder / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    for name, source in test_dags.items():
        if (folder / name).exists():
            pytest.fail(f"test DAG {name} would hide the repo's dags/{name}", pytrace=False)
        (folder / name).write_text(source)
    return folder


def session_standalone(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fixture: str
) -> Iterator[AirflowStandalone]:
    """The body of the session fixture ``fixture``: start the instance with its modules' settings,
    yield it, stop it (unless ``stop_services_no_longer_needed`` did already)."""
    env, test_dags = module_settings(request.session, fixture)
    root = tmp_path_factory.mktemp(fixture)
    instance = AirflowStandalone(
        home=root / "home", dags_folder=build_dags_folder(root / "dags", test_dags), extra_env=env
    )
    SERVICES[fixture] = instance
    try:
        instance.start()
        yield instance
    finally:
        SERVICES.pop(fixture, None)
        instance.stop(FINAL_DOWN_TIMEOUT)


def stop_services_no_longer_needed(module_node: pytest.Module) -> None:
    """After the tests of ``module_node``: stop every session instance that no later test uses (an idle
    standalone costs CPU that the rest of the session needs)."""
    items = module_node.session.items
    done = max(
        (i for i, item in enumerate(items) if getattr(item, "module", None) is module_node.obj), default=-1
    )
    for fixture, instance in list(SERVICES.items()):
        if instance.running and not _users_in(items[done + 1 :], fixture):
            instance.stop(FINAL_DOWN_TIMEOUT)
