#!/usr/bin/env bash
# Stop the `airflow standalone` started by scripts/airflow_up.sh for this AIRFLOW_HOME (default
# <repo>/var/airflow): SIGTERM to all of it, then SIGKILL to whatever is left after a bounded wait
# (AIRFLOW_DOWN_TIMEOUT, default 30 s). Idempotent: exits 0 when nothing is running.
#
# "All of it" = every process in the standalone's session (airflow_up.sh starts it with setsid, so the
# session id is the pid in $AIRFLOW_HOME/standalone.pid; task processes move to their own process
# groups but stay in the session) plus every descendant of those (e.g. a task's subprocess that started
# a new session), so nothing is left behind.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/airflow_env.sh
source "$here/airflow_env.sh" || exit 1

pidfile="$AIRFLOW_HOME/standalone.pid"
timeout="${AIRFLOW_DOWN_TIMEOUT:-30}"

if [ ! -f "$pidfile" ]; then
    echo "Airflow standalone is not running (no $pidfile)."
    exit 0
fi
sid="$(cat "$pidfile" 2>/dev/null || true)"
case "$sid" in
    ''|*[!0-9]*|0|1) echo "warning: ignoring bad pid file $pidfile ('$sid')" >&2; rm -f "$pidfile"; exit 0 ;;
esac

# The session's processes and all their descendants, one pid a line (never this script's own);
# zombies do not count.
members() {
    ps -eo pid=,ppid=,sid=,stat= | awk -v sid="$sid" -v me="$$" '
        { n = NR }
        $4 !~ /^Z/ { pid[NR] = $1; ppid[NR] = $2; s[NR] = $3 }
        END {
            for (i = 1; i <= n; i++) if (i in pid && s[i] == sid) keep[pid[i]] = 1
            do {
                added = 0
                for (i = 1; i <= n; i++)
                    if ((i in pid) && !(pid[i] in keep) && (ppid[i] in keep)) { keep[pid[i]] = 1; added = 1 }
            } while (added)
            for (p in keep) if (p != me) print p
        }'
}

# refresh: alive_pids = everything seen so far that is still alive (a descendant re-parented to init
# after its parent died is no longer found by members(), so the pids seen are remembered in tracked).
tracked=""
alive_pids=""
refresh() {
    local p
    tracked="$(printf '%s\n%s\n' "$tracked" "$(members)" | grep -E '^[0-9]+$' | sort -un)"
    alive_pids=""
    for p in $tracked; do
        if [ -e "/proc/$p" ] && ! grep -qs '^State:[[:space:]]*Z' "/proc/$p/status"; then
            alive_pids="${alive_pids:+$alive_pids }$p"
        fi
    done
}

refresh
if [ -z "$alive_pids" ]; then
    echo "Airflow standalone is not running (process group $sid is gone)."
    rm -f "$pidfile"
    exit 0
fi
if ! pgrep -s "$sid" -f airflow >/dev/null 2>&1; then
    echo "warning: session $sid has no airflow process (stale pid file?); not touching it" >&2
    rm -f "$pidfile"
    exit 0
fi

echo "Stopping airflow standalone (session/process group $sid, $(echo $alive_pids | wc -w) processes)..."
kill -TERM -- "-$sid" 2>/dev/null
# shellcheck disable=SC2086
kill -TERM $alive_pids 2>/dev/null
deadline=$((SECONDS + timeout))
refresh
while [ -n "$alive_pids" ] && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.5
    refresh
done
if [ -n "$alive_pids" ]; then
    echo "Still running after ${timeout}s; sending SIGKILL to: $alive_pids"
    # shellcheck disable=SC2086
    kill -KILL $alive_pids 2>/dev/null
    deadline=$((SECONDS + 10))
    refresh
    while [ -n "$alive_pids" ] && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.5
        refresh
    done
fi
rm -f "$pidfile"
if [ -n "$alive_pids" ]; then
    echo "error: could not stop: $alive_pids" >&2
    exit 1
fi
echo "Airflow standalone stopped."
