#!/usr/bin/env bash
# The main job: start the demo API and a local Airflow, trigger a run of configs/demo.yaml through
# the REST API, and wait until it reaches the review gate. Stop everything with `make stop`.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${DEMO_PORT:-8765}
mkdir -p var
if ! .venv/bin/python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" 2>/dev/null; then
  setsid .venv/bin/python -m devtools.demo_api --host 127.0.0.1 --port "$PORT" --drift-per-run 0.5 > var/demo_api.log 2>&1 &
  echo $! > var/demo_api.pid
  for _ in $(seq 1 100); do
    if .venv/bin/python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" 2>/dev/null; then break; fi
    kill -0 "$(cat var/demo_api.pid)" 2>/dev/null || { echo "error: the demo API did not start:" >&2; cat var/demo_api.log >&2; exit 1; }
    sleep 0.2
  done
fi
echo "demo API: http://127.0.0.1:$PORT/records"
scripts/airflow_up.sh
# shellcheck source=scripts/airflow_env.sh
source scripts/airflow_env.sh
.venv/bin/python scripts/demo_airflow.py "http://127.0.0.1:$PORT/records" "$@"
