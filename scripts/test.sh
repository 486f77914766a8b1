#!/usr/bin/env bash
# Run the ruff checks, then the tests.
#   scripts/test.sh            every test (make test)
#   scripts/test.sh --quick    the pure, fast tests in tests/unit (make test-quick)
# Further arguments go to pytest. pytest's exit code 5 (no tests collected) counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
quick=false
if [ "${1:-}" = "--quick" ]; then
    quick=true
    shift
fi
scripts/lint.sh || exit 1
if $quick; then
    .venv/bin/python -m pytest -q -rs tests/unit "$@"
else
    scripts/ensure_chromium.sh || [ -z "${CI:-}" ] || exit 1  # browser tests skip without Chromium, except under CI
    .venv/bin/python -m pytest -q -rs "$@"
fi
rc=$?
if [ $rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi
exit $rc
