"""SQLite connect arguments for a local ``airflow standalone``, read by Airflow through import paths.

scripts/airflow_env.sh points ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS`` (and ``..._ASYNC``) at
``CONNECT_ARGS``; the wrapper that scripts/airflow_up.sh puts in front of ``airflow`` points the API
server at ``API_SERVER_CONNECT_ARGS``.

Why two busy timeouts: sqlite3 waits 5 s by default for another connection's write lock, then fails
with "database is locked". The scheduler exits on that error, so the scheduler, DAG processor and
triggerer wait up to 60 s instead. The API server is the exception: its audit-log dependency runs
blocking database calls on the event loop, so while it waits for the lock, the request holding that
lock cannot finish either, and the wait only ends at the timeout. A short timeout there turns such a
stall into one failed request (HTTP 500 "Database error", which ``AirflowClient`` and the task SDK
send again) instead of a minute in which nothing in Airflow can write.
"""

SQLITE_BUSY_TIMEOUT_SECONDS = 60
API_SERVER_BUSY_TIMEOUT_SECONDS = 3

# Separate dicts: Airflow adds keys (check_same_thread) to the one it is given.
CONNECT_ARGS: dict = {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
CONNECT_ARGS_ASYNC: dict = {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
API_SERVER_CONNECT_ARGS: dict = {"timeout": API_SERVER_BUSY_TIMEOUT_SECONDS}
API_SERVER_CONNECT_ARGS_ASYNC: dict = {"timeout": API_SERVER_BUSY_TIMEOUT_SECONDS}
