"""The pinned environment works: pyspark survives pyspark-client, Spark runs, the package has no Airflow import."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pin(name: str) -> str:
    match = re.search(rf"^{re.escape(name)}==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert match, f"{name} is not pinned in requirements.txt"
    return match.group(1)


def test_every_requirement_is_pinned_exactly():
    lines = [
        ln
        for ln in (ROOT / "requirements.txt").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+_-]+", ln) for ln in lines), lines


def test_installed_pyspark_is_the_pinned_one_with_its_jars():
    import pyspark

    assert pyspark.__version__ == _pin("pyspark")
    jars = Path(pyspark.__file__).parent / "jars"
    assert list(jars.glob("spark-core_*.jar")), "pyspark-client overwrote pyspark: no Spark jars"


def test_local_spark_session_runs_a_job():
    code = (
        "from pyspark.sql import SparkSession\n"
        "s = SparkSession.builder.master('local[1]').appName('install-check')"
        ".config('spark.ui.enabled', 'false').config('spark.driver.host', '127.0.0.1')"
        ".config('spark.driver.bindAddress', '127.0.0.1').getOrCreate()\n"
        "print('SUM', s.range(1000).selectExpr('sum(id) as s').collect()[0]['s'])\n"
        "s.stop()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SUM 499500" in out.stdout


def test_core_package_imports_neither_airflow_nor_pyspark():
    code = (
        "import sys, importlib, pkgutil, anomaly_detection\n"
        "for m in pkgutil.iter_modules(anomaly_detection.__path__):\n"
        "    if m.name != '__main__': importlib.import_module('anomaly_detection.' + m.name)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('airflow', 'pyspark'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
