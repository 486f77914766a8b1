#!/usr/bin/env bash
# Create .venv and install the pinned requirements. pyspark-client (pulled in by the Spark
# provider) writes over pyspark's files, so pyspark is reinstalled last, without dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  echo "error: Python 3.11 is required ($PYTHON is $("$PYTHON" --version 2>&1)); set PYTHON=python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
export UV_PYTHON=.venv/bin/python
.venv/bin/uv pip install --quiet --compile-bytecode -r requirements.txt
pyspark_pin=$(grep -E '^pyspark==' requirements.txt)
# Uninstall then install (not --reinstall-package, which refreshes the cache and rebuilds the
# 400 MB sdist into a new 1.4 GB cache entry on every install): the cached build is reused.
.venv/bin/uv pip uninstall --quiet pyspark
.venv/bin/uv pip install --quiet --compile-bytecode --no-deps "$pyspark_pin"
.venv/bin/uv pip install --quiet --no-deps -e .
.venv/bin/python - <<'PY'
import pathlib, pyspark
jars = pathlib.Path(pyspark.__file__).parent / "jars"
assert jars.is_dir() and any(jars.glob("spark-core_*.jar")), f"pyspark at {jars.parent} has no Spark jars"
print(f"installed: pyspark {pyspark.__version__} with its jars; anomaly_detection from include/")
PY
