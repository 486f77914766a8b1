"""Spark fixtures of the integration modules, one per session (helpers in tests/support/spark_helpers.py):

* ``spark_reference``: the session's reference run, both Spark jobs through real spark-submit in
  ``local[2]`` (a :class:`spark_helpers.SparkReference`); read it, or copy it before writing;
* ``spark_session``: a local SparkSession in the pytest process, for running the job bodies where
  spark-submit is not what is tested (``spark_helpers.run_in_process``). It is stopped, JVM
  included, after the last module that uses it.
"""

from __future__ import annotations

import pytest
from spark_helpers import JOB_TIMEOUT, java_available, local_session, reference_run, stop_local_session

SESSION_FIXTURE = "spark_session"


@pytest.fixture(scope="session")
def spark_reference(tmp_path_factory):
    if not java_available():
        pytest.skip("Java is not on PATH")
    return reference_run(tmp_path_factory).result(timeout=3 * JOB_TIMEOUT)


@pytest.fixture(scope="session")
def spark_session():
    if not java_available():
        pytest.skip("Java is not on PATH")
    session = local_session()
    try:
        yield session
    finally:
        stop_local_session()


@pytest.fixture(scope="module", autouse=True)
def stop_spark_session_when_no_longer_needed(request):
    """After each module: stop the in-process SparkSession when no later test uses it (its JVM would
    otherwise hold its memory through the remaining modules)."""
    yield
    items = request.session.items
    ours = [i for i, item in enumerate(items) if item.module is request.module]
    later = items[max(ours) + 1 :] if ours else []
    if not any(SESSION_FIXTURE in item.fixturenames for item in later):
        stop_local_session()  # nothing to do when it was never started
