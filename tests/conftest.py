import os
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# Shared fixtures and helpers (servers, Airflow, Spark, browser) live in tests/support/.
for _path in (TESTS / "support", TESTS):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

SHARED = TESTS.parents[1] / "shared" / "data"

# Airflow is imported in-process only by the DAG integrity tests: give it a throwaway home and the
# project's plugins folder (the DAG imports its review gate operator from there) before any import.
if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow-home-")
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(TESTS.parent / "plugins"))


def pytest_collection_modifyitems(config, items):
    """Run modules marked ``slow`` (real Airflow, Spark) after the quick ones, keeping each module whole.

    A failing quick test then shows up within minutes, and module-scoped servers start once.
    """
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ in slow_modules)
