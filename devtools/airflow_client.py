"""A small client for Airflow 3's REST API v2 (``requests`` only; no Airflow import).

Used by the project's main command and by the end-to-end tests against a local ``airflow standalone``
(see ``scripts/airflow_up.sh``)::

    client = AirflowClient.from_credentials_file("http://127.0.0.1:8080",
                                                 "var/airflow/simple_auth_manager_passwords.json")
    client.wait_healthy(120)
    client.wait_for_dag("anomaly_detection", 180)
    client.unpause("anomaly_detection")
    run_id = client.trigger("anomaly_detection", {"config": "demo.yaml"})
    client.wait_for_task_state("anomaly_detection", run_id, "review", {"awaiting_input"}, 600)
    client.answer_hitl("anomaly_detection", run_id, "review", ["Approve"])
    state = client.wait_for_run("anomaly_detection", run_id, 600)   # "success" / "failed"

Authentication: ``POST /auth/token`` with JSON ``{"username", "password"}`` (simple auth manager) gives a
JWT, sent as ``Authorization: Bearer``; when the API rejects the token (401 "Token Expired", or 403
"Invalid JWT token") the client logs in again once and retries the request.

Every ``wait_*`` method is bounded by its ``timeout`` (seconds) and raises ``TimeoutError`` naming what
it waited for and the last states it saw. Connection errors and 5xx answers while waiting are retried
until the deadline (the API server may be restarting); outside waits they raise ``AirflowApiError``.

Task instance states are Airflow's strings: ``success``, ``failed``, ``running``, ``queued``,
``scheduled``, ``awaiting_input`` (a human-in-the-loop task waiting for its answer), ``deferred``,
``up_for_retry``, ``upstream_failed``, ``skipped``, ``removed``, ... and ``None`` (not yet scheduled).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import requests

__all__ = [
    "AirflowApiError",
    "AirflowClient",
    "DagImportError",
    "TaskStateError",
    "FINISHED_RUN_STATES",
    "FINISHED_TASK_STATES",
]

FINISHED_RUN_STATES = frozenset({"success", "failed"})
# States a task instance does not leave by itself (a run that is cleared is another story).
FINISHED_TASK_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})

#: How often a request that failed on a database error (HTTP 500, reason "Database error") is sent again.
DB_ERROR_RETRIES = 3
DB_ERROR_BACKOFF = 1.0
#: Seconds a human-in-the-loop gate must have been waiting before ``answer_hitl`` answers it.
HITL_SETTLE_SECONDS = 10.0

T = TypeVar("T")


class AirflowApiError(RuntimeError):
    """The API answered with an unexpected status (or could not be reached)."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class DagImportError(RuntimeError):
    """The DAG did not show up and Airflow reports import errors (``.errors`` holds them)."""

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.errors = errors


class TaskStateError(RuntimeError):
    """A task instance reached a finished state other than the ones waited for."""

    def __init__(self, message: str, state: str | None) -> None:
        super().__init__(message)
        self.state = state


def _seg(value: Any) -> str:
    """One URL path segment (run ids hold ``:`` and ``+``)."""
    return quote(str(value), safe="")


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in {"127.0.0.1", "localhost", "::1"}


class AirflowClient:
    """Client for one Airflow API server (``base_url`` like ``http://127.0.0.1:8080``)."""

    def __init__(self, base_url: str, username: str, password: str, *, timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password
        self.timeout = timeout
        self.poll_interval = 2.0
        self._token: str | None = None
        self.session = requests.Session()
        if _is_loopback(self.base_url):
            # Loopback never goes through a proxy (nor picks up .netrc credentials).
            self.session.trust_env = False

    def __repr__(self) -> str:
        return f"AirflowClient({self.base_url!r}, user={self.username!r})"

    @classmethod
    def from_credentials_file(
        cls, base_url: str, path: str | Path, username: str | None = None, *, timeout: float = 30
    ) -> AirflowClient:
        """A client from a simple-auth-manager passwords file (JSON ``{"user": "password"}``).

        ``username`` defaults to the file's only (first) user.
        """
        passwords = json.loads(Path(path).read_text())
        if not isinstance(passwords, dict) or not passwords:
            raise ValueError(f"{path}: expected a JSON object {{user: password}}")
        user = username or next(iter(passwords))
        if user not in passwords:
            raise ValueError(f"{path}: no password for user {user!r}")
        return cls(base_url, user, passwords[user], timeout=timeout)

    # ------------------------------------------------------------------ HTTP

    def _url(self, path: str) -> str:
        return self.base_url + path

    def fetch_token(self) -> str:
        """``POST /auth/token`` with the credentials; returns (and keeps) the JWT."""
        try:
            resp = self.session.post(
                self._url("/auth/token"),
                json={"username": self.username, "password": self._password},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise AirflowApiError(f"cannot reach Airflow at {self.base_url}: {exc}") from exc
        if resp.status_code not in (200, 201):
            raise AirflowApiError(
                f"login as {self.username!r} at {self.base_url}/auth/token failed: "
                f"HTTP {resp.status_code} {resp.text[:300]}",
                resp.status_code,
                resp.text,
            )
        token = resp.json().get("access_token")
        if not token:
            raise AirflowApiError(
                f"login at {self.base_url}/auth/token returned no access_token", resp.status_code
            )
        self._token = token
        return token

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        expect: Collection[int] = (200,),
        auth: bool = True,
    ) -> requests.Response:
        """One API call; ``path`` starts with ``/``. Raises ``AirflowApiError`` unless the status is in ``expect``."""
        relogged = False
        for attempt in range(1, DB_ERROR_RETRIES + 2):
            hdrs = dict(headers or {})
            if auth:
                if self._token is None:
                    self.fetch_token()
                hdrs["Authorization"] = f"Bearer {self._token}"
            try:
                resp = self.session.request(
                    method,
                    self._url(path),
                    params=params,
                    json=json_body,
                    headers=hdrs,
                    timeout=self.timeout,
                )
            except requests.RequestException as exc:
                raise AirflowApiError(
                    f"{method} {path}: cannot reach Airflow at {self.base_url}: {exc}"
                ) from exc
            if auth and not relogged and _token_rejected(resp):
                self._token = None  # expired or no longer valid: log in again, once
                relogged = True
                continue
            if _database_error(resp) and attempt <= DB_ERROR_RETRIES:
                # The request's transaction was rolled back (SQLite busy): safe to send again.
                time.sleep(DB_ERROR_BACKOFF * attempt)
                continue
            break
        if resp.status_code not in expect:
            try:
                body: Any = resp.json()
            except ValueError:
                body = resp.text
            detail = body.get("detail", body) if isinstance(body, dict) else body
            raise AirflowApiError(
                f"{method} {path}: HTTP {resp.status_code}: {str(detail)[:1000]}", resp.status_code, body
            )
        return resp

    def get_json(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    # ------------------------------------------------------------------ waiting

    def _poll(
        self,
        what: str,
        timeout: float,
        probe: Callable[[], tuple[bool, T, str]],
    ) -> T:
        """Call ``probe() -> (done, value, description)`` until done or ``timeout``; returns the value.

        Unreachable API / 5xx answers are retried until the deadline; other errors propagate.
        """
        deadline = time.monotonic() + timeout
        last = "nothing seen yet"
        while True:
            try:
                done, value, last = probe()
                if done:
                    return value
            except AirflowApiError as exc:
                if exc.status is not None and exc.status < 500:
                    raise
                last = f"API error: {exc}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}; last seen: {last}")
            time.sleep(min(self.poll_interval, remaining))

    # ------------------------------------------------------------------ health and DAGs

    def health(self) -> dict[str, Any]:
        """``GET /api/v2/monitor/health`` (no login needed)."""
        return self.request("GET", "/api/v2/monitor/health", auth=False).json()

    def wait_healthy(
        self,
        timeout: float,
        components: Iterable[str] = ("metadatabase", "scheduler", "dag_processor"),
    ) -> dict[str, Any]:
        """Wait until every named component reports ``healthy``; returns the health document."""
        wanted = tuple(components)

        def probe():
            health = self.health()
            states = {c: (health.get(c) or {}).get("status") for c in wanted}
            return all(s == "healthy" for s in states.values()), health, f"health {states}"

        return self._poll(f"Airflow at {self.base_url} to be healthy ({', '.join(wanted)})", timeout, probe)

    def import_errors(self) -> list[dict[str, Any]]:
        """``GET /api/v2/importErrors``: ``[{"filename", "stack_trace", "timestamp", ...}]``."""
        return self.get_json("/api/v2/importErrors", limit=100).get("import_errors", [])

    def get_dag(self, dag_id: str) -> dict[str, Any] | None:
        """``GET /api/v2/dags/{dag_id}``, or ``None`` when Airflow does not know it (yet)."""
        resp = self.request("GET", f"/api/v2/dags/{_seg(dag_id)}", expect=(200, 404))
        return resp.json() if resp.status_code == 200 else None

    def wait_for_dag(
        self, dag_id: str, timeout: float, *, import_error_grace: float = 30.0
    ) -> dict[str, Any]:
        """Wait until the DAG is parsed and listed; returns it.

        If it is still missing after ``import_error_grace`` seconds while Airflow reports import errors,
        raises ``DagImportError`` with their stack traces (no need to sit out the whole timeout for a
        broken DAG file). A ``TimeoutError`` also quotes any import errors.
        """
        start = time.monotonic()
        errors: list[dict[str, Any]] = []

        def describe(errs: list[dict[str, Any]]) -> str:
            return "\n".join(f"--- {e.get('filename')}:\n{e.get('stack_trace', '').rstrip()}" for e in errs)

        def probe():
            nonlocal errors
            dag = self.get_dag(dag_id)
            if dag is not None and not dag.get("is_stale", False):
                return True, dag, "listed"
            errors = self.import_errors()
            if errors and time.monotonic() - start >= import_error_grace:
                raise DagImportError(
                    f"DAG {dag_id!r} is not listed and Airflow reports {len(errors)} import error(s):\n"
                    + describe(errors),
                    errors,
                )
            seen = "stale" if dag is not None else "not listed"
            return False, None, f"DAG {seen}; import errors: {describe(errors) if errors else 'none'}"

        return self._poll(f"DAG {dag_id!r} to be parsed", timeout, probe)

    def set_paused(self, dag_id: str, paused: bool) -> dict[str, Any]:
        """``PATCH /api/v2/dags/{dag_id}?update_mask=is_paused`` with ``{"is_paused": paused}``."""
        return self.request(
            "PATCH",
            f"/api/v2/dags/{_seg(dag_id)}",
            params={"update_mask": "is_paused"},
            json_body={"is_paused": paused},
        ).json()

    def unpause(self, dag_id: str) -> dict[str, Any]:
        return self.set_paused(dag_id, False)

    def pause(self, dag_id: str) -> dict[str, Any]:
        return self.set_paused(dag_id, True)

    # ------------------------------------------------------------------ runs

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None, run_id: str | None = None) -> str:
        """``POST /api/v2/dags/{dag_id}/dagRuns`` with ``{"logical_date": null, "conf": conf[, "dag_run_id"]}``.

        Returns the run id (Airflow makes one like ``manual__2025-01-01T00:00:00+00:00`` if not given).
        """
        body: dict[str, Any] = {"logical_date": None, "conf": dict(conf or {})}
        path = f"/api/v2/dags/{_seg(dag_id)}/dagRuns"
        if run_id is None:
            return self.request("POST", path, json_body=body, expect=(200, 201)).json()["dag_run_id"]
        # With a run id the call is safe to repeat: a busy SQLite answers 500 "Database error" or
        # times out, and a retry that finds the run already created (409) has succeeded.
        body["dag_run_id"] = run_id
        for attempt in range(5):
            try:
                self.request("POST", path, json_body=body, expect=(200, 201))
                return run_id
            except AirflowApiError as exc:
                if exc.status == 409 and attempt:
                    return run_id
                if exc.status not in (None, 500, 502, 503, 504) or attempt == 4:
                    raise
                time.sleep(2 * (attempt + 1))
        return run_id

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """``GET /api/v2/dags/{dag_id}/dagRuns/{run_id}`` (``state``: queued/running/success/failed)."""
        return self.get_json(f"/api/v2/dags/{_seg(dag_id)}/dagRuns/{_seg(run_id)}")

    def list_runs(self, dag_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The DAG's most recent runs, newest first (``GET .../dagRuns?order_by=-id&limit=``)."""
        return self.get_json(f"/api/v2/dags/{_seg(dag_id)}/dagRuns", order_by="-id", limit=limit)["dag_runs"]

    def task_instance_list(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run as the API returns them (all pages)."""
        path = f"/api/v2/dags/{_seg(dag_id)}/dagRuns/{_seg(run_id)}/taskInstances"
        out: list[dict[str, Any]] = []
        while True:
            page = self.get_json(path, limit=100, offset=len(out))
            items = list(page.get("task_instances", []))
            out.extend(items)
            total = page.get("total_entries")
            if not items or total is None or len(out) >= total:
                return out

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """``{key: state}`` for the run's task instances.

        The key is the task id for an unmapped task, and ``"task_id[i]"`` for map index ``i`` of a mapped
        (``.expand()``-ed) task; a mapped task that has not been expanded yet appears once under its
        plain task id.
        """
        out: dict[str, str | None] = {}
        for ti in self.task_instance_list(dag_id, run_id):
            index = ti.get("map_index", -1)
            key = ti["task_id"] if index is None or index < 0 else f"{ti['task_id']}[{index}]"
            out[key] = ti.get("state")
        return out

    def task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        """``GET .../taskInstances/{task_id}`` (or ``.../{task_id}/{map_index}`` for a mapped one)."""
        path = f"/api/v2/dags/{_seg(dag_id)}/dagRuns/{_seg(run_id)}/taskInstances/{_seg(task_id)}"
        if map_index >= 0:
            path += f"/{map_index}"
        return self.get_json(path)

    def wait_for_task_state(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        states: str | Iterable[str],
        timeout: float,
        *,
        map_index: int = -1,
    ) -> str:
        """Wait until the task instance is in one of ``states``; returns that state.

        Raises ``TaskStateError`` at once if it reaches a finished state (success, failed, skipped,
        upstream_failed, removed) that is not wanted, e.g. when an upstream task failed.
        """
        wanted = {states} if isinstance(states, str) else set(states)
        label = task_id if map_index < 0 else f"{task_id}[{map_index}]"

        def probe():
            ti = self._task_instance_or_none(dag_id, run_id, task_id, map_index)
            state = ti.get("state") if ti else None
            if state in wanted:
                return True, state, f"{label}={state}"
            if state in FINISHED_TASK_STATES:
                raise TaskStateError(
                    f"task {label} of {dag_id}/{run_id} ended {state!r} while waiting for {sorted(wanted)}; "
                    f"task states: {self._states_text(dag_id, run_id)}",
                    state,
                )
            return False, state, f"{label}={state}; task states: {self._states_text(dag_id, run_id)}"

        return self._poll(f"task {label} of {dag_id}/{run_id} to be in {sorted(wanted)}", timeout, probe)

    def _task_instance_or_none(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> dict | None:
        try:
            return self.task_instance(dag_id, run_id, task_id, map_index)
        except AirflowApiError as exc:
            if exc.status == 404:  # run just created, task instances not there yet
                return None
            raise

    def _states_text(self, dag_id: str, run_id: str) -> str:
        try:
            states = self.task_instances(dag_id, run_id)
        except AirflowApiError as exc:
            return f"(unavailable: {exc})"
        return ", ".join(f"{k}={v}" for k, v in sorted(states.items())) or "(none)"

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        """Wait until the run is finished; returns its final state (``success`` or ``failed``)."""

        def probe():
            state = self.dag_run(dag_id, run_id).get("state")
            if state in FINISHED_RUN_STATES:
                return True, state, f"run {state}"
            hint = ""
            if state == "queued" and (self.get_dag(dag_id) or {}).get("is_paused"):
                hint = " (the DAG is paused)"
            return False, state, f"run {state}{hint}; task states: {self._states_text(dag_id, run_id)}"

        return self._poll(f"run {dag_id}/{run_id} to finish", timeout, probe)

    # ------------------------------------------------------------------ logs and XComs

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> str:
        """A task attempt's log as plain text, one line per log record.

        ``GET .../taskInstances/{task_id}/logs/{try_number}?full_content=true&map_index=`` with
        ``Accept: application/json``. Each structured record becomes
        ``"<timestamp> [<level>] <logger>: <event> key=value ..."`` (leaving out the dag/run/task ids,
        source file and line that every record carries); what the task printed appears as its ``event``
        text (logger ``task.stdout``), e.g. ``"2025-01-01T00:00:00Z [info] task.stdout: hello"``. The
        first lines name the log file(s) read. Of a task still running, returns what is there so far.
        """
        path = (
            f"/api/v2/dags/{_seg(dag_id)}/dagRuns/{_seg(run_id)}/taskInstances/{_seg(task_id)}"
            f"/logs/{int(try_number)}"
        )
        data = self.request(
            "GET",
            path,
            params={"full_content": "true", "map_index": map_index},
            headers={"Accept": "application/json"},
        ).json()
        return "\n".join(_log_line(item) for item in data.get("content", []))

    def xcom(
        self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1
    ) -> Any:
        """An XCom value (``GET .../taskInstances/{task_id}/xcomEntries/{key}?map_index=``).

        JSON-able values (dicts, lists, strings, numbers) come back as the task returned them; other
        types (e.g. datetimes) come back in Airflow's serialized form (``{"__classname__": ...}``).
        """
        path = (
            f"/api/v2/dags/{_seg(dag_id)}/dagRuns/{_seg(run_id)}/taskInstances/{_seg(task_id)}"
            f"/xcomEntries/{quote(key, safe='')}"
        )
        return self.get_json(path, map_index=map_index).get("value")

    # ------------------------------------------------------------------ human in the loop

    def _hitl_path(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
        return (
            f"/api/v2/dags/{_seg(dag_id)}/dagRuns/{_seg(run_id)}/taskInstances/{_seg(task_id)}"
            f"/{int(map_index)}/hitlDetails"
        )

    def hitl_detail(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        """The human-in-the-loop request of a task (``subject``, ``body``, ``options``, ``params``,
        ``response_received``, ``chosen_options``, ...): ``GET .../taskInstances/{task_id}/{map_index}/hitlDetails``."""
        return self.get_json(self._hitl_path(dag_id, run_id, task_id, map_index))

    def answer_hitl(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        chosen_options: str | Iterable[str],
        params_input: Mapping[str, Any] | None = None,
        map_index: int = -1,
    ) -> dict[str, Any]:
        """Answer a human-in-the-loop task: ``PATCH .../taskInstances/{task_id}/{map_index}/hitlDetails``
        with ``{"chosen_options": [...], "params_input": {...}}``. Airflow answers 400 for an option that
        is not offered, 409 if it was answered already."""
        options = [chosen_options] if isinstance(chosen_options, str) else list(chosen_options)
        self._let_gate_settle(self.hitl_detail(dag_id, run_id, task_id, map_index))
        return self.request(
            "PATCH",
            self._hitl_path(dag_id, run_id, task_id, map_index),
            json_body={"chosen_options": options, "params_input": dict(params_input or {})},
        ).json()

    def _let_gate_settle(self, detail: Mapping[str, Any]) -> None:
        """Wait until the gate has been waiting ``HITL_SETTLE_SECONDS``, counted from its ``created_at``.

        Airflow 3.3.2's scheduler fails a human-in-the-loop task whose answer arrives before it has
        processed the exit of the task's paused process ("finished with state success, but the task
        instance's state attribute is queued"). A person never answers that fast; a script can.
        """
        try:
            created = datetime.fromisoformat(str(detail.get("created_at")))
        except ValueError:
            return
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        age = (datetime.now(UTC) - created).total_seconds()
        if age < HITL_SETTLE_SECONDS:
            time.sleep(HITL_SETTLE_SECONDS - max(age, 0.0))


def _database_error(resp: requests.Response) -> bool:
    """Airflow's 500 for a failed database statement (e.g. SQLite "database is locked")."""
    if resp.status_code != 500:
        return False
    try:
        detail = resp.json().get("detail")
    except (ValueError, AttributeError):
        return False
    return isinstance(detail, dict) and detail.get("reason") == "Database error"


def _token_rejected(resp: requests.Response) -> bool:
    """401 (missing/expired token), or 403 "Invalid JWT token" (e.g. revoked, or signed with another secret)."""
    if resp.status_code == 401:
        return True
    if resp.status_code == 403:
        try:
            detail = resp.json().get("detail")
        except (ValueError, AttributeError):
            return False
        return isinstance(detail, str) and "JWT" in detail
    return False


# Shown elsewhere in the line, or the same on every line of one task attempt's log.
_LOG_CONTEXT_KEYS = frozenset(
    {
        "timestamp",
        "event",
        "level",
        "logger",
        "dag_id",
        "run_id",
        "task_id",
        "map_index",
        "try_number",
        "ti_id",
        "filename",
        "lineno",
    }
)


def _log_line(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    rest = {k: v for k, v in item.items() if k not in _LOG_CONTEXT_KEYS}
    parts = []
    if item.get("timestamp"):
        parts.append(str(item["timestamp"]))
    if item.get("level"):
        parts.append(f"[{item['level']}]")
    if item.get("logger"):
        parts.append(f"{item['logger']}:")
    parts.append(str(item.get("event", "")))
    parts.extend(f"{k}={v}" for k, v in rest.items())
    return " ".join(parts)
