import os
import sys
import tempfile
from pathlib import Path

import pytest

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


AIRFLOW_FIXTURES = ("airflow_shared", "airflow_destructive")  # in the order their modules run


def pytest_addoption(parser):
    parser.addoption(
        "--lane",
        choices=("airflow", "other"),
        help="run only the modules on a session Airflow standalone (airflow) or only the others (other); "
        "scripts/test.sh runs the two lanes side by side",
    )


def _uses_airflow(item) -> bool:
    """In the airflow lane: it uses an Airflow fixture, or is marked ``airflow_lane`` to balance the lanes."""
    if item.get_closest_marker("airflow_lane"):
        return True
    return any(f in getattr(item, "fixturenames", ()) for f in AIRFLOW_FIXTURES)


def pytest_collection_modifyitems(config, items):
    """Run modules marked ``slow`` (real Airflow, Spark) after the quick ones, keeping each module whole.

    A failing quick test then shows up within minutes, and module-scoped servers start once. Among the
    slow ones, the modules on the shared Airflow standalone run next to each other, then those on the
    destructive one: each instance lives only while its modules run (never two at once on 2 cores).
    """
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    airflow_rank: dict[str, int] = {}
    for item in items:
        rank = max(
            (i + 1 for i, f in enumerate(AIRFLOW_FIXTURES) if f in getattr(item, "fixturenames", ())),
            default=0,
        )
        airflow_rank[item.module.__name__] = max(rank, airflow_rank.get(item.module.__name__, 0))
    items.sort(key=lambda item: (item.module.__name__ in slow_modules, airflow_rank[item.module.__name__]))
    lane = config.getoption("lane")
    if lane:
        on_airflow = {item.module.__name__ for item in items if _uses_airflow(item)}
        keep = [(item.module.__name__ in on_airflow) == (lane == "airflow") for item in items]
        config.hook.pytest_deselected(items=[item for item, kept in zip(items, keep) if not kept])
        items[:] = [item for item, kept in zip(items, keep) if kept]


@pytest.fixture(scope="session")
def airflow_shared(request, tmp_path_factory):
    """The session's ``airflow standalone`` for every module that leaves it as it found it: started on
    first use with the union of its modules' AIRFLOW_EXTRA_ENV and AIRFLOW_TEST_DAGS, stopped after the
    last test that uses it (tests/support/airflow_fixtures.py)."""
    from airflow_fixtures import session_standalone

    yield from session_standalone(request, tmp_path_factory, "airflow_shared")


@pytest.fixture(scope="session")
def airflow_destructive(request, tmp_path_factory):
    """The session's ``airflow standalone`` for modules that kill its task processes or restart it."""
    from airflow_fixtures import session_standalone

    yield from session_standalone(request, tmp_path_factory, "airflow_destructive")


@pytest.fixture(scope="module", autouse=True)
def _stop_airflow_no_longer_needed(request):
    """After each module: stop a session Airflow standalone that no later test uses."""
    yield
    fixtures = sys.modules.get("airflow_fixtures")  # not imported: no standalone was started
    if fixtures is not None and fixtures.SERVICES:
        fixtures.stop_services_no_longer_needed(request.node)
