#!/usr/bin/env bash
# Run the ruff checks, then the tests.
#   scripts/test.sh            every test (make test), in two lanes side by side: the modules on a
#                              session Airflow standalone, and all the others (pytest --lane)
#   scripts/test.sh --quick    the pure, fast tests in tests/unit (make test-quick)
#   scripts/test.sh ARGS...    one pytest process with ARGS (e.g. a test file, -k, -x)
# pytest's exit code 5 (no tests collected) counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
quick=false
if [ "${1:-}" = "--quick" ]; then
    quick=true
    shift
fi
scripts/lint.sh || exit 1
pytest=(.venv/bin/python -m pytest -q -rs)
if $quick; then
    "${pytest[@]}" tests/unit "$@"
    rc=$?
elif [ $# -gt 0 ]; then
    scripts/ensure_chromium.sh || [ -z "${CI:-}" ] || exit 1  # browser tests skip without Chromium, except under CI
    "${pytest[@]}" "$@"
    rc=$?
else
    scripts/ensure_chromium.sh || [ -z "${CI:-}" ] || exit 1
    # The Airflow modules mostly wait on the scheduler: they run beside the rest instead of after it.
    logs=$(mktemp -d "${TMPDIR:-/tmp}/anomaly-tests.XXXXXX")
    echo "running two lanes side by side (airflow, other); their output: $logs/{airflow,other}.log"
    started=$SECONDS
    "${pytest[@]}" --durations=15 --lane airflow >"$logs/airflow.log" 2>&1 &
    airflow_pid=$!
    "${pytest[@]}" --durations=15 --lane other 2>&1 | tee "$logs/other.log"
    other_rc=${PIPESTATUS[0]}
    wait "$airflow_pid"
    airflow_rc=$?
    echo
    echo "=============================== lane: airflow ==============================="
    cat "$logs/airflow.log"
    .venv/bin/python - "$logs/airflow.log" "$logs/other.log" <<'PY'
import re, sys
totals = [0, 0, 0]
for path in sys.argv[1:]:
    for line in open(path, errors="replace"):
        m = re.match(r"faults injected: (\d+), runs recovered: (\d+), data lost: (\d+)", line.strip())
        if m:
            totals = [t + int(v) for t, v in zip(totals, m.groups())]
print(f"both lanes: faults injected: {totals[0]}, runs recovered: {totals[1]}, data lost: {totals[2]}")
PY
    echo "both lanes: exit codes airflow=$airflow_rc other=$other_rc, $((SECONDS - started)) s"
    rc=$other_rc
    [ "$rc" -eq 0 ] && rc=$airflow_rc
fi
if [ "$rc" -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
