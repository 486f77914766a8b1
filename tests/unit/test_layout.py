"""The layout holds: small modules, no private names imported across modules, dev tooling kept out of
the shipped package (and so out of the zip sent to Spark executors)."""

import ast
import zipfile
from pathlib import Path

import pytest

from anomaly_detection.spark.submit import build_py_files

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("include", "devtools", "dags", "plugins", "spark_jobs", "tests", "bench", "scripts")
MAX_LINES = 600


def python_files():
    for folder in SOURCES:
        yield from sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def test_no_module_is_over_600_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in python_files()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def test_no_private_name_is_imported_from_another_module():
    found = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                "anomaly_detection",
                "devtools",
            ):
                found += [
                    f"{path.relative_to(ROOT)}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.endswith("__")
                ]
    assert not found, found


@pytest.mark.parametrize("package", ["anomaly_detection"])
def test_the_shipped_package_never_imports_dev_tooling(package):
    for path in (ROOT / "include" / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] in ("devtools", "tests") for n in names), path


def test_the_spark_zip_holds_the_package_and_no_dev_tooling(tmp_path):
    with zipfile.ZipFile(build_py_files(tmp_path)) as archive:
        names = archive.namelist()
    assert "anomaly_detection/spark/jobs/detect.py" in names and "anomaly_detection/config.py" in names
    assert not [n for n in names if not n.startswith("anomaly_detection/")], names
