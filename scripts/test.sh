#!/usr/bin/env bash
# Run every test. pytest's exit code 5 (no tests collected) counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/ensure_chromium.sh || [ -z "${CI:-}" ] || exit 1  # for the browser tests: they skip without Chromium, except under CI
.venv/bin/python -m pytest -q -rs "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi
exit $rc
