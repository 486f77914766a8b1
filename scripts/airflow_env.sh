# shellcheck shell=bash
# Settings for a local `airflow standalone` of this project: the ONE source of truth.
# scripts/airflow_up.sh, scripts/airflow_down.sh and tests/support/airflow_fixtures.py all source this file.
#
#   source scripts/airflow_env.sh        # then e.g.  airflow dags list
#
# Optional overrides (set them before sourcing):
#   AIRFLOW_HOME             default <repo>/var/airflow   (database, logs, airflow.cfg, credentials)
#   AIRFLOW_PORT             default 8080                 (API server + UI, bound to 127.0.0.1)
#   AIRFLOW_DAGS_FOLDER      default <repo>/dags
#   AIRFLOW_PLUGINS_FOLDER   default <repo>/plugins
#   AIRFLOW_WORKER_LOG_PORT  default AIRFLOW_PORT+713 (8793 for 8080, Airflow's default)
#   AIRFLOW_TRIGGER_LOG_PORT default AIRFLOW_PORT+714 (8794 for 8080)
#   AIRFLOW_PARALLELISM      default 4 (LocalExecutor worker processes; Airflow's default 32 swamps 2 cores)
#   ANOMALY_RUNS_DIR / ANOMALY_REPORTS_DIR   default <repo>/runs, <repo>/reports (read by the DAG)
#
# $AIRFLOW_HOME/env.local.sh, if present, is sourced last: per-instance extra settings.
#
# The admin password is generated once per AIRFLOW_HOME into $AIRFLOW_CREDENTIALS_FILE
# (JSON {"admin": "<password>"}, mode 600); it is also Airflow's simple-auth-manager passwords file.
# Sourcing this file has no side effect beyond creating AIRFLOW_HOME and that file.

_ad_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

AIRFLOW_HOME="${AIRFLOW_HOME:-$_ad_repo/var/airflow}"
mkdir -p "$AIRFLOW_HOME" || return 1
AIRFLOW_HOME="$(cd "$AIRFLOW_HOME" && pwd)"   # absolute: Airflow resolves relative paths per process
export AIRFLOW_HOME
export AIRFLOW_CONFIG="$AIRFLOW_HOME/airflow.cfg"

export AIRFLOW_PORT="${AIRFLOW_PORT:-8080}"
case "$AIRFLOW_PORT" in
    ''|*[!0-9]*) echo "airflow_env.sh: AIRFLOW_PORT must be a number, got '$AIRFLOW_PORT'" >&2; return 1 ;;
esac
export AIRFLOW_WORKER_LOG_PORT="${AIRFLOW_WORKER_LOG_PORT:-$((AIRFLOW_PORT + 713))}"
export AIRFLOW_TRIGGER_LOG_PORT="${AIRFLOW_TRIGGER_LOG_PORT:-$((AIRFLOW_PORT + 714))}"
export AIRFLOW_URL="http://127.0.0.1:$AIRFLOW_PORT"
export AIRFLOW_CREDENTIALS_FILE="$AIRFLOW_HOME/simple_auth_manager_passwords.json"
export AIRFLOW_USERNAME=admin

# `airflow standalone` starts its parts as `airflow` from PATH: the project's venv must come first.
case ":$PATH:" in
    *":$_ad_repo/.venv/bin:"*) ;;
    *) export PATH="$_ad_repo/.venv/bin:$PATH" ;;
esac

# --- core ---------------------------------------------------------------------------------------
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW_PARALLELISM:-4}"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW_DAGS_FOLDER:-$_ad_repo/dags}"
export AIRFLOW__CORE__PLUGINS_FOLDER="${AIRFLOW_PLUGINS_FOLDER:-$_ad_repo/plugins}"
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True   # nothing runs until someone unpauses it
export AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT=120           # imports are slow on small VMs
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="$AIRFLOW_URL/execution/"
# Tasks talk to the API server for every state change; on a busy 2-core machine its answers can take
# longer than the default 5 s, and 5 attempts then fail a healthy task. Wait longer, try more often.
export AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT=30
export AIRFLOW__WORKERS__EXECUTION_API_RETRIES=10
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
# SQLite busy timeouts (60 s; the API server 3 s): see devtools/airflow_sqlite.py.
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS=devtools.airflow_sqlite.CONNECT_ARGS
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC=devtools.airflow_sqlite.CONNECT_ARGS_ASYNC

# --- auth: simple auth manager, one password-protected admin (never all-admins) --------------------
export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="$AIRFLOW_USERNAME:admin"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=False
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$AIRFLOW_CREDENTIALS_FILE"

# --- API server (UI + REST + execution API), loopback only ------------------------------------------
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT="$AIRFLOW_PORT"
export AIRFLOW__API__WORKERS=1
export AIRFLOW__API__BASE_URL="$AIRFLOW_URL"

# --- fast DAG discovery and heartbeats (tests wait on them) -----------------------------------------
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=5
export AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL=15
export AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES=1
export AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT=120
export AIRFLOW__DAG_PROCESSOR__HEALTH_CHECK_THRESHOLD=60
export AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC=2
export AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC=2
export AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD=60
export AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC=2

# --- logs ---------------------------------------------------------------------------------------------
export AIRFLOW__LOGGING__BASE_LOG_FOLDER="$AIRFLOW_HOME/logs"
export AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY="$AIRFLOW_HOME/logs/dag_processor"
# The scheduler's and triggerer's log servers (they bind every interface; Airflow has no host setting).
export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT="$AIRFLOW_WORKER_LOG_PORT"
export AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT="$AIRFLOW_TRIGGER_LOG_PORT"

# --- connections and the project's own settings ----------------------------------------------------
# JSON form: conn_type "spark" + host "local[*]" makes SparkSubmitHook run `spark-submit --master local[*]`
# (the URI form spark://local[*] would turn into master "spark://local[*]").
export AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "local[*]"}'
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
export ANOMALY_RUNS_DIR="${ANOMALY_RUNS_DIR:-$_ad_repo/runs}"
export ANOMALY_REPORTS_DIR="${ANOMALY_REPORTS_DIR:-$_ad_repo/reports}"
# Loopback traffic (tasks -> execution API, clients -> REST API) must never go through a proxy.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"

# --- the admin password: generated once per AIRFLOW_HOME, mode 600 -----------------------------------
if [ ! -s "$AIRFLOW_CREDENTIALS_FILE" ]; then
    (
        umask 077
        pw="$(head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
        printf '{"%s": "%s"}\n' "$AIRFLOW_USERNAME" "${pw:0:24}" > "$AIRFLOW_CREDENTIALS_FILE.tmp.$$" &&
            mv -f "$AIRFLOW_CREDENTIALS_FILE.tmp.$$" "$AIRFLOW_CREDENTIALS_FILE"
    ) || return 1
fi
chmod 600 "$AIRFLOW_CREDENTIALS_FILE"

# Per-instance extras/overrides (e.g. AIRFLOW__CORE__...=...), sourced last when present.
if [ -f "$AIRFLOW_HOME/env.local.sh" ]; then
    # shellcheck source=/dev/null
    source "$AIRFLOW_HOME/env.local.sh" || return 1
fi

unset _ad_repo
