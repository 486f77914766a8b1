"""End-to-end check of the local Airflow harness: a real ``airflow standalone`` (scripts/airflow_up.sh),
the REST client (devtools.airflow_client) and a human-in-the-loop gate answered over REST.

Runs on the session's shared standalone (``airflow_shared``), whose DAGs folder (a temporary one, never
the repo's dags/) gets this module's throwaway DAG; the broken DAG file exists only during its test.
The scheduler is killed only at a quiet moment (no task of any run in flight).
"""

from __future__ import annotations

import os
import signal
import textwrap
import time
import uuid
from datetime import datetime

import psutil
import pytest
import requests
from airflow_fixtures import REPO, wait_until

from devtools.airflow_client import AirflowApiError, AirflowClient, DagImportError

pytestmark = pytest.mark.slow

DAG_ID = "harness_probe"

PROBE_DAG = textwrap.dedent(
    """
    from __future__ import annotations

    import os

    import pendulum
    from airflow.providers.standard.operators.hitl import ApprovalOperator
    from airflow.sdk import DAG, Param, task

    with DAG(
        dag_id="harness_probe",
        schedule=None,
        start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
        catchup=False,
        tags=["test"],
    ):

        @task
        def hello(**context):
            conf = context["dag_run"].conf or {}
            print(f"HARNESS-HELLO token={conf.get('token')} runs_dir={os.environ.get('ANOMALY_RUNS_DIR')}")
            return {"token": conf.get("token"), "n": 3}

        @task
        def square(x):
            return x * x

        gate = ApprovalOperator(
            task_id="gate",
            subject="Approve run {{ dag_run.conf['token'] }}?",
            body="Harness probe gate.",
            params={"note": Param("", type="string")},
        )

        @task
        def after(**context):
            answer = context["ti"].xcom_pull(task_ids="gate")
            print(f"HARNESS-AFTER chosen={answer['chosen_options']} note={answer['params_input'].get('note')}")
            return answer["params_input"].get("note")

        [hello(), square.expand(x=[2, 3])] >> gate >> after()
    """
)

# (It must mention "airflow" and "dag": DAG discovery safe mode skips files that do not.)
BROKEN_DAG = 'from airflow.sdk import DAG  # noqa: F401\n\nraise RuntimeError("HARNESS-BROKEN-DAG")\n'


AIRFLOW_TEST_DAGS = {"harness_probe.py": PROBE_DAG}  # next to the repo's DAGs in the shared instance


def test_rest_api_requires_auth(airflow_shared):
    url = airflow_shared.url
    # Health is public, DAGs are not.
    assert requests.get(f"{url}/api/v2/monitor/health", timeout=30).status_code == 200
    assert requests.get(f"{url}/api/v2/dags", timeout=30).status_code in (401, 403)
    bad = requests.get(f"{url}/api/v2/dags", headers={"Authorization": "Bearer nonsense"}, timeout=30)
    assert bad.status_code in (401, 403)
    # The no-credentials token route only works in all-admins mode, which must be off.
    assert requests.get(f"{url}/auth/token", timeout=30).status_code in (401, 403)
    wrong = AirflowClient(url, "admin", "wrong-password")
    with pytest.raises(AirflowApiError) as err:
        wrong.get_dag(DAG_ID)
    assert err.value.status in (401, 403)
    # Credentials file: private.
    creds = airflow_shared.home / "simple_auth_manager_passwords.json"
    assert creds.stat().st_mode & 0o777 == 0o600
    # Bound to loopback only.
    assert airflow_shared.env["AIRFLOW__API__HOST"] == "127.0.0.1"


def _real_scheduler(airflow_shared) -> psutil.Process:
    """The scheduler's own Python process (not the restarting wrapper around it) in the instance's group."""
    pgid = int((airflow_shared.home / "standalone.pid").read_text())
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if os.getpgid(proc.pid) == pgid and "scheduler" in cmd and "python" in os.path.basename(cmd[0]):
                found.append(proc)
        except (psutil.Error, ProcessLookupError):
            continue
    assert len(found) == 1, [p.cmdline() for p in found]
    return found[0]


def test_a_scheduler_that_dies_is_started_again(airflow_shared):
    # `airflow standalone` never restarts a part that exits; scripts/airflow_up.sh's wrapper does.
    client = airflow_shared.client
    client.wait_for_dag(DAG_ID, timeout=120)
    # The instance is shared: kill the scheduler only when no task of any run is in flight.
    wait_until(
        lambda: not airflow_shared.busy_task_instances(),
        600,
        "no task instance of any run to be in flight",
        interval=2,
        describe=lambda: str(airflow_shared.busy_task_instances()),
    )
    exit_line = "airflow_up.sh: scheduler exited with status"
    exits_before = airflow_shared.log_count(exit_line)  # earlier exits (e.g. SQLite locked) count too
    first = _real_scheduler(airflow_shared)
    killed_at = time.time()
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    wait_until(
        lambda: airflow_shared.log_count(exit_line) > exits_before,
        120,
        "airflow_up.sh to report the scheduler's exit",
        describe=airflow_shared.log_tail,
    )

    def beat_after_kill():
        health = client.health()
        beat = (health.get("scheduler") or {}).get("latest_scheduler_heartbeat")
        fresh = beat is not None and datetime.fromisoformat(beat).timestamp() > killed_at
        return (
            fresh and health["scheduler"]["status"] == "healthy",
            health,
            f"scheduler {health.get('scheduler')}",
        )

    client._poll("a heartbeat of the restarted scheduler", 150, beat_after_kill)
    assert _real_scheduler(airflow_shared).pid != first.pid


def _broken_errors(client) -> list[dict]:
    return [e for e in client.import_errors() if "harness_broken" in str(e.get("filename"))]


def test_import_errors_surface(airflow_shared):
    client = airflow_shared.client
    assert airflow_shared.dags_folder != (REPO / "dags").resolve()  # a temporary folder: ours to write
    broken = airflow_shared.dags_folder / "harness_broken.py"
    broken.write_text(BROKEN_DAG)
    try:
        with pytest.raises(DagImportError, match="HARNESS-BROKEN-DAG"):
            client.wait_for_dag("harness_broken", timeout=90, import_error_grace=0)
    finally:
        broken.unlink()
    # The import error goes with the file (the DAG processor clears errors of files that are gone), so
    # the modules after this one on the shared instance see no import error.
    wait_until(
        lambda: not _broken_errors(client), 120, "the import error of the removed file to go", interval=2
    )


def test_trigger_gate_answer_and_logs(airflow_shared):
    client = airflow_shared.client
    dag = client.wait_for_dag(DAG_ID, timeout=120)
    assert dag["is_paused"] is True  # DAGS_ARE_PAUSED_AT_CREATION
    client.unpause(DAG_ID)
    assert client.get_dag(DAG_ID)["is_paused"] is False

    # A token that went bad is replaced transparently (401 -> new login -> retry).
    client._token = "expired"
    assert client.get_dag(DAG_ID)["dag_id"] == DAG_ID

    token = uuid.uuid4().hex[:8]
    run_id = client.trigger(DAG_ID, {"token": token}, run_id=f"harness_{token}")
    assert run_id == f"harness_{token}"
    assert client.dag_run(DAG_ID, run_id)["conf"] == {"token": token}
    assert run_id in [r["dag_run_id"] for r in client.list_runs(DAG_ID)]

    t0 = time.monotonic()
    assert (
        client.wait_for_task_state(DAG_ID, run_id, "gate", "awaiting_input", timeout=150) == "awaiting_input"
    )
    print(f"gate awaiting input {time.monotonic() - t0:.1f}s after trigger")

    states = client.task_instances(DAG_ID, run_id)
    assert states["hello"] == "success"
    assert states["square[0]"] == "success" and states["square[1]"] == "success"
    assert states["gate"] == "awaiting_input"
    assert client.xcom(DAG_ID, run_id, "square", map_index=1) == 9
    assert client.xcom(DAG_ID, run_id, "hello") == {"token": token, "n": 3}

    log = client.task_log(DAG_ID, run_id, "hello")
    assert f"HARNESS-HELLO token={token}" in log, log
    assert f"runs_dir={airflow_shared.env['ANOMALY_RUNS_DIR']}" in log, log

    detail = client.hitl_detail(DAG_ID, run_id, "gate")
    assert detail["subject"] == f"Approve run {token}?"
    assert detail["options"] == ["Approve", "Reject"]
    assert detail["response_received"] is False

    # A bounded wait on a run that is waiting for a human says what it saw.
    with pytest.raises(TimeoutError, match="gate=awaiting_input"):
        client.wait_for_run(DAG_ID, run_id, timeout=3)
    # An option that is not offered is refused.
    with pytest.raises(AirflowApiError) as err:
        client.answer_hitl(DAG_ID, run_id, "gate", ["Maybe"])
    assert err.value.status == 400

    answer = client.answer_hitl(DAG_ID, run_id, "gate", ["Approve"], {"note": "looks fine"})
    assert answer["chosen_options"] == ["Approve"]

    t0 = time.monotonic()
    assert client.wait_for_run(DAG_ID, run_id, timeout=150) == "success"
    print(f"run finished {time.monotonic() - t0:.1f}s after the answer")
    assert client.task_instances(DAG_ID, run_id)["after"] == "success"
    assert client.xcom(DAG_ID, run_id, "after") == "looks fine"
    assert "HARNESS-AFTER chosen=['Approve'] note=looks fine" in client.task_log(DAG_ID, run_id, "after")
    assert client.hitl_detail(DAG_ID, run_id, "gate")["response_received"] is True
