"""Airflow's overhead: one demo run through Airflow against the same config through the CLI.

Starts a demo API and a private `airflow standalone` (temporary AIRFLOW_HOME, free ports, stopped at
the end), runs configs/demo.yaml once with the CLI and once as a DAG run (trigger -> review gate
waiting), and prints both wall times and the difference.

    .venv/bin/python bench/airflow_overhead.py [--rows 5000]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from devtools.airflow_client import AirflowClient  # noqa: E402

DAG = "anomaly_detection"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def airflow_env(overrides: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    base.update(overrides)
    out = subprocess.run(
        ["bash", "-c", 'source "$1" && env -0', "_", str(ROOT / "scripts" / "airflow_env.sh")],
        env=base,
        capture_output=True,
        check=True,
    ).stdout
    return dict(item.decode().split("=", 1) for item in out.split(b"\0") if b"=" in item)


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-airflow-") as tmp:
        home = Path(tmp) / "airflow"
        api_port = free_port()
        api = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devtools.demo_api",
                "--port",
                str(api_port),
                "--rows",
                str(args.rows),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        env = airflow_env(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW_PORT": str(free_port()),
                "AIRFLOW_WORKER_LOG_PORT": str(free_port()),
                "AIRFLOW_TRIGGER_LOG_PORT": str(free_port()),
                "ANOMALY_RUNS_DIR": str(Path(tmp) / "runs"),
                "ANOMALY_REPORTS_DIR": str(Path(tmp) / "reports"),
            }
        )
        try:
            wait_http(f"http://127.0.0.1:{api_port}/health")
            records = f"http://127.0.0.1:{api_port}/records"
            started = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "anomaly_detection",
                    "run",
                    "--config",
                    str(ROOT / "configs" / "demo.yaml"),
                    "--quiet",
                    "--set",
                    f"source.url={records}",
                    "--set",
                    f"output.runs_dir={tmp}/cli-runs",
                    "--set",
                    f"output.reports_dir={tmp}/cli-reports",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            cli = time.perf_counter() - started

            up = time.perf_counter()
            subprocess.run(
                ["bash", str(ROOT / "scripts" / "airflow_up.sh")],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            startup = time.perf_counter() - up
            client = AirflowClient.from_credentials_file(env["AIRFLOW_URL"], env["AIRFLOW_CREDENTIALS_FILE"])
            client.wait_for_dag(DAG, 300)
            client.unpause(DAG)
            started = time.perf_counter()
            run_id = client.trigger(DAG, {"config": "demo.yaml", "url": records})
            client.wait_for_task_state(DAG, run_id, "review", ["awaiting_input"], 1800)
            through_airflow = time.perf_counter() - started
            tasks = client.task_instance_list(DAG, run_id)
        finally:
            subprocess.run(
                ["bash", str(ROOT / "scripts" / "airflow_down.sh")], env=env, stdout=subprocess.DEVNULL
            )
            api.terminate()
            api.wait(timeout=30)
    print(f"demo config, {args.rows} rows")
    print(f"  airflow standalone start-up (once):          {startup:7.1f} s")
    print(f"  CLI, whole process:                          {cli:7.1f} s")
    print(f"  Airflow, trigger -> review gate waiting:     {through_airflow:7.1f} s")
    print(f"  Airflow overhead:                            {through_airflow - cli:7.1f} s")
    durations = sorted(((t.get("duration") or 0.0, t["task_id"]) for t in tasks), reverse=True)[:6]
    print("  slowest tasks: " + ", ".join(f"{task} {sec:.1f}s" for sec, task in durations))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
