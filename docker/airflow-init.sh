#!/usr/bin/env bash
# One-shot setup run by the `airflow-init` service before the long-running services start (the
# role of airflow-init in the official Airflow docker-compose): fix the ownership of the named
# volumes, migrate the metadata database, and set the admin login of the simple auth manager.
# Runs as root (user "0:0" in docker-compose.yaml); Airflow commands run as the airflow user.
# Idempotent: safe to run on every `docker compose up`.
set -euo pipefail

AIRFLOW_UID="${AIRFLOW_UID:-50000}"
ADMIN_USER="${_AIRFLOW_WWW_USER_USERNAME:-admin}"
ADMIN_PASSWORD="${_AIRFLOW_WWW_USER_PASSWORD:-admin}"
PASSWORDS_FILE="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-${AIRFLOW_HOME:-/opt/airflow}/simple_auth_manager_passwords.json.generated}"
DATA_DIR="${ANOMALY_DATA_DIR:-/opt/anomaly/data}"

as_airflow() {
  if [ "$(id -u)" = 0 ]; then
    HOME="${AIRFLOW_HOME:-/opt/airflow}" setpriv --reuid="$AIRFLOW_UID" --regid=0 --clear-groups -- "$@"
  else
    "$@"
  fi
}

# Resources: Airflow + a Spark worker want a few GiB; warn (do not fail) on a small Docker VM.
mem_kib=$(awk '/MemTotal/ {print $2}' /proc/meminfo)
if [ "${mem_kib:-0}" -lt $((6 * 1024 * 1024)) ]; then
  echo "WARNING: Docker has $((mem_kib / 1024)) MiB of memory; at least 6 GiB is recommended" \
       "(Airflow ~2 GiB, Spark driver 1 GiB, SPARK_WORKER_MEMORY=${SPARK_WORKER_MEMORY:-2g})." >&2
fi

# The project code must be mounted (or baked into the image) where the services expect it.
for dir in "${AIRFLOW__CORE__DAGS_FOLDER:-/opt/anomaly/dags}" /opt/anomaly/include/anomaly_detection; do
  [ -d "$dir" ] || { echo "ERROR: $dir is missing: run docker compose from the project root" >&2; exit 1; }
done

# Named volumes are created root-owned when the image path did not exist, and a host bind mount
# may be too: give them to the airflow user (uid $AIRFLOW_UID, group 0) like the official init.
# Only the directories themselves: what is inside was written by that user already, and a
# recursive chown of a large volume would slow every start.
if [ "$(id -u)" = 0 ]; then
  owned=("$DATA_DIR" "$DATA_DIR/runs" "$DATA_DIR/reports" "${AIRFLOW_HOME:-/opt/airflow}/logs"
         "$(dirname "$PASSWORDS_FILE")")
  mkdir -p "${owned[@]}"
  chown "$AIRFLOW_UID:0" "${owned[@]}"
  chmod g+rwx "${owned[@]}"
fi

as_airflow airflow version
as_airflow airflow db migrate

# Simple auth manager: users come from [core] simple_auth_manager_users (set in
# docker-compose.yaml to "<ADMIN_USER>:admin"); their passwords live in a JSON file that the
# api-server reads. Write the admin's password there, keeping any other user's entry.
ADMIN_USER="$ADMIN_USER" ADMIN_PASSWORD="$ADMIN_PASSWORD" PASSWORDS_FILE="$PASSWORDS_FILE" as_airflow python - <<'PY'
import json, os, pathlib

path = pathlib.Path(os.environ["PASSWORDS_FILE"])
try:
    passwords = json.loads(path.read_text() or "{}")
except (FileNotFoundError, ValueError):
    passwords = {}
passwords[os.environ["ADMIN_USER"]] = os.environ["ADMIN_PASSWORD"]
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(json.dumps(passwords) + "\n")
path.chmod(0o600)
print(f"login user {os.environ['ADMIN_USER']!r} set in {path}")
PY

echo "airflow-init done: shared data in $DATA_DIR (runs/, reports/)"
