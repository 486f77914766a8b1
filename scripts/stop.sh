#!/usr/bin/env bash
# Stop what `make demo` started: Airflow and the demo API.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/airflow_down.sh
if [ -f var/demo_api.pid ]; then
  kill "$(cat var/demo_api.pid)" 2>/dev/null && echo "demo API stopped"
  rm -f var/demo_api.pid
fi
exit 0
