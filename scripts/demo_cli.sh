#!/usr/bin/env bash
# The same pipeline without Airflow: start the demo API on 127.0.0.1:$DEMO_PORT, run the CLI on
# configs/demo.yaml, print the report path, stop the API.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${DEMO_CLI_PORT:-8766}
mkdir -p var
.venv/bin/python -m devtools.demo_api --host 127.0.0.1 --port "$PORT" > var/demo_api_cli.log 2>&1 &
api_pid=$!
trap 'kill $api_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if .venv/bin/python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" 2>/dev/null; then break; fi
  kill -0 $api_pid 2>/dev/null || { echo "error: the demo API did not start:" >&2; cat var/demo_api_cli.log >&2; exit 1; }
  sleep 0.2
done
.venv/bin/python -m anomaly_detection run --config configs/demo.yaml --set "source.url=http://127.0.0.1:$PORT/records" --quiet "$@"
