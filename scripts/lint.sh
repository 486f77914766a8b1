#!/usr/bin/env bash
# Ruff lint and format checks (settings in pyproject.toml). `scripts/lint.sh --fix` fixes what it can.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fix" ]; then
    .venv/bin/ruff check --fix . && .venv/bin/ruff format .
    exit
fi
.venv/bin/ruff check . && .venv/bin/ruff format --check . >/dev/null || {
    echo "error: ruff found problems (see above; 'scripts/lint.sh --fix' fixes most)" >&2
    .venv/bin/ruff format --check . | grep -v "already formatted" >&2
    exit 1
}
echo "ruff: lint and format clean"
