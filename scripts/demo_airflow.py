"""Trigger the demo run on the local Airflow and wait until it reaches the review gate.

Called by scripts/demo.sh after scripts/airflow_up.sh, with scripts/airflow_env.sh sourced.
Usage: demo_airflow.py DEMO_API_URL [--conf JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from anomaly_detection.report.index import report_url
from devtools.airflow_client import AirflowClient

DAG = "anomaly_detection"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("api_url")
    parser.add_argument("--conf", default="{}", help="extra run conf (JSON)")
    parser.add_argument("--timeout", type=float, default=1200)
    args = parser.parse_args()

    url = os.environ["AIRFLOW_URL"]
    creds = os.environ["AIRFLOW_CREDENTIALS_FILE"]
    client = AirflowClient.from_credentials_file(url, creds)
    client.wait_for_dag(DAG, 300)
    client.unpause(DAG)
    conf = {"config": "demo.yaml", "url": args.api_url, **json.loads(args.conf)}
    started = time.monotonic()
    run_id = client.trigger(DAG, conf)
    print(
        f"triggered {DAG} run {run_id}; waiting for the review gate (task logs: {url}/dags/{DAG})", flush=True
    )
    try:
        client.wait_for_task_state(DAG, run_id, "review", ["awaiting_input"], args.timeout)
    except Exception as exc:  # noqa: BLE001 - show the cause and where to look
        print(f"error: the run did not reach the review gate: {exc}", file=sys.stderr)
        return 1
    report = client.xcom(DAG, run_id, "build_report")
    best = report["best"]
    user, password = next(iter(json.load(open(creds)).items()))
    print(
        f"""
The demo run is waiting for your review ({time.monotonic() - started:.0f} s after the trigger).

  Airflow UI   {url}/dags/{DAG}/runs/{run_id}   (log in as {user}; password in {creds})
  Report       {url}{report_url(run_id)}   (inside Airflow: "Anomaly reports" in the navigation)
               {report["report"]}
  Best model   {best["algorithm"]} {best["params"]}: {best["anomaly_count"]} anomalies ({100 * best["anomaly_share"]:.2f}%)

Approve, reject or rerun in the UI (task 'review' -> Required actions), or over REST:

  TOKEN=$(curl -s -X POST {url}/auth/token -H 'Content-Type: application/json' \\
          -d '{{"username": "{user}", "password": "'$(python3 -c "import json;print(json.load(open('{creds}'))['{user}'])")'"}}' \\
          | python3 -c 'import json,sys;print(json.load(sys.stdin)["access_token"])')
  curl -X PATCH "{url}/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/review/-1/hitlDetails" \\
       -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
       -d '{{"chosen_options": ["Approve"], "params_input": {{"comment": "looks right"}}}}'

Run `make demo` again for a second run: its report shows the trend and the drift (the demo API
moves m01 and m02 by half a standard deviation per run) and links this one.

An approved report is copied to {os.environ.get("ANOMALY_REPORTS_DIR", "reports")}/approved/. Stop everything with: make stop
""",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
