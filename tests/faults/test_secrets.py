"""Secrets never leak: known secrets are planted in every channel a run can get one from (an Airflow
connection, an environment variable, the URL's query, a request header), the API refuses requests
without them, and every file under the runs and reports directories, every task log, the XComs and
the review gate's body are searched for them afterwards.

Runs on the session's shared standalone (``airflow_shared``): the search covers the other modules' runs
and logs too. Data lost: the records the API served that are missing from the runs' flattened tables."""

from __future__ import annotations

import base64
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DAG = "anomaly_detection"
CONN_TOKEN = "conn-Tok3n-91f0a7c2"
ENV_TOKEN = "env-Tok3n-5d2e8b41"
URL_KEY = "url-K3y-0c7a19e3"
HEADER_KEY = "hdr-K3y-7b3f2d90"
SECRETS = (CONN_TOKEN, ENV_TOKEN, URL_KEY, HEADER_KEY)
XCOM_TASKS = (
    "resolve_config",
    "ingest",
    "preprocess",
    "detect",
    "evaluate_and_select",
    "build_report",
    "publish",
)
TASKS = (
    "resolve_config",
    "ingest",
    "choose_path",
    "preprocess",
    "evaluate_and_select",
    "build_report",
    "review",
    "apply_decision",
    "publish",
)


def _records(n: int = 400) -> list[dict]:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(n, 4))
    X[:8] += 9
    return [{"id": i, "stats": {f"f{j}": round(float(X[i, j]), 5) for j in range(4)}} for i in range(n)]


class AuthApi(ThreadingHTTPServer):
    """Serves records only to requests carrying the credentials of their route; counts refusals."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.records = _records()
        self.served: dict[str, int] = {}
        self.refused: list[str] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: AuthApi

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if parts.path == "/conn":  # bearer token from the connection + api_key in the URL + a header
            ok = (
                self.headers.get("Authorization") == f"Bearer {CONN_TOKEN}"
                and query.get("api_key") == [URL_KEY]
                and self.headers.get("X-Api-Key") == HEADER_KEY
            )
        elif parts.path == "/env":  # the token from an environment variable, sent as a query parameter
            ok = query.get("token") == [ENV_TOKEN]
        else:
            ok = False
        if not ok:
            self.server.refused.append(parts.path)
            self._send(401, {"error": "unauthorized"})
            return
        self.server.served[parts.path] = self.server.served.get(parts.path, 0) + 1
        self._send(200, {"data": self.server.records})

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def api():
    server = AuthApi()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


AIRFLOW_EXTRA_ENV = {
    "AIRFLOW_CONN_SECRET_API": json.dumps({"conn_type": "http", "password": CONN_TOKEN}),
    "DAD_TEST_API_TOKEN": ENV_TOKEN,
}


def _variants(secret: str) -> list[str]:
    return [secret, quote(secret, safe=""), quote_plus(secret), base64.b64encode(secret.encode()).decode()]


def _leaks(root: Path) -> list[str]:
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".gz":
            import gzip

            data = gzip.decompress(data)
        for secret in SECRETS:
            if any(v.encode() in data for v in _variants(secret)):
                found.append(f"{secret} in {path}")
    return found


def records_lost(api: AuthApi, run_dir: Path) -> int:
    """How many of the records the API served (counted with repeats) the run's flattened table lacks."""
    served = Counter(int(r["id"]) for r in api.records)
    try:
        stored = Counter(int(i) for i in pd.read_parquet(run_dir / "flattened.parquet", columns=["id"])["id"])
    except (OSError, ValueError, KeyError):
        stored = Counter()  # no table (or no id column): all of it is lost
    return sum((served - stored).values())


@pytest.fixture
def own_runs(airflow_shared):
    """The run ids the test triggers; any still in flight at its end is marked failed (shared instance)."""
    run_ids: list[str] = []
    yield run_ids
    airflow_shared.end_runs(DAG, run_ids)


def test_planted_secrets_appear_nowhere(airflow_shared, api, fault_ledger, own_runs):
    client = airflow_shared.client
    client.wait_for_dag(DAG, 300)
    client.unpause(DAG)
    common = {"mode": "native", "algorithms": ["isolation_forest", "kmeans"], "config": "demo.yaml"}
    confs = {
        "secrets_conn": {
            **common,
            "url": f"{api.base}/conn?api_key={URL_KEY}&limit=1000",
            "overrides": {
                "source.auth": {"type": "bearer", "conn_id": "secret_api"},
                "source.headers": {"X-Api-Key": HEADER_KEY},
                "source.records_path": "data",
                "source.pagination.type": "none",
            },
        },
        "secrets_env": {
            **common,
            "url": f"{api.base}/env",
            "overrides": {
                "source.auth": {"type": "query", "param_name": "token", "token_env": "DAD_TEST_API_TOKEN"},
                "source.records_path": "data",
                "source.pagination.type": "none",
            },
        },
    }
    run_ids = [client.trigger(DAG, conf, run_id=name) for name, conf in confs.items()]
    own_runs.extend(run_ids)
    fault_ledger.injected("planted secret (connection, env var, URL query, header)", len(SECRETS))
    bodies = []
    try:
        for run_id in run_ids:
            client.wait_for_task_state(DAG, run_id, "review", ["awaiting_input"], 600)
            bodies.append(client.hitl_detail(DAG, run_id, "review"))
            client.answer_hitl(DAG, run_id, "review", "Approve", {"comment": "fine"})
        states = [client.wait_for_run(DAG, run_id, 300) for run_id in run_ids]
    finally:
        # did every record served reach each run's table? Measured before any assertion (and also when a
        # wait failed), so the ledger always has it
        fault_ledger.lost(sum(records_lost(api, airflow_shared.run_dir(run_id)) for run_id in run_ids))
    assert states == ["success"] * len(run_ids), dict(zip(run_ids, states))
    # the credentials were really used: every request carried them, none was refused
    assert api.served == {"/conn": 1, "/env": 1} and api.refused == []

    leaks = _leaks(airflow_shared.home / "runs") + _leaks(airflow_shared.home / "reports")
    leaks += [
        f"{s} in {airflow_shared.home / 'logs'}"
        for s in SECRETS
        if s
        in "".join(
            p.read_text(errors="replace") for p in (airflow_shared.home / "logs").rglob("*") if p.is_file()
        )
    ]
    for run_id in run_ids:
        for task, map_index in [*((t, -1) for t in TASKS), ("detect", 0), ("detect", 1)]:
            log = client.task_log(DAG, run_id, task, map_index=map_index)
            assert log.strip(), f"no log for {task}"
            leaks += [f"{s} in the {task} log of {run_id}" for s in SECRETS if s in log]
            if task in XCOM_TASKS:
                value = client.xcom(DAG, run_id, task, map_index=map_index)
                leaks += [f"{s} in the {task} XCom of {run_id}" for s in SECRETS if s in json.dumps(value)]
    leaks += [f"{s} in the gate's body" for s in SECRETS for body in bodies if s in json.dumps(body)]
    assert leaks == []

    # and the masked forms are there instead: the saved config and the report show *** where the secrets were
    run_dir = airflow_shared.run_dir(run_ids[0])
    saved = (run_dir / "config.resolved.yaml").read_text()
    assert "api_key=***" in saved and "X-Api-Key: '***'" in saved
    ingest_log = client.task_log(DAG, run_ids[0], "ingest")
    assert "api_key=***" in ingest_log and "ingested 400 records" in ingest_log
