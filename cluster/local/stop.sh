#!/usr/bin/env bash
# Stop the Ray head that cluster/local/start.sh started -- and nothing else on the machine.
#
#   cluster/local/stop.sh        # FRESHRANK_RAY_TEMP_DIR must match the one start.sh used
#
# start.sh ran `ray start` in a process group of its own and wrote its id to
# <temp dir>/freshrank-head.pgid. This sends SIGTERM to that group and to every descendant
# (workers, jobs' drivers and Serve replicas have groups of their own), waits up to
# FRESHRANK_STOP_GRACE_S [30] seconds, then SIGKILLs what is left. `ray stop` would instead stop
# every Ray process of this user on the machine, other people's clusters and test sessions
# included. Stop jobs with `ray job stop` first when they should finish cleanly (the trainer
# checkpoints its window on SIGTERM; SIGTERM from here reaches it too, but its workers stop at
# the same moment, so the window in flight is retrained on the next start).
set -euo pipefail

TEMP_DIR=${FRESHRANK_RAY_TEMP_DIR:-/tmp/ray}
GRACE_S=${FRESHRANK_STOP_GRACE_S:-30}
PGID_FILE="$TEMP_DIR/freshrank-head.pgid"

if [ ! -f "$PGID_FILE" ]; then
    echo "no head started by cluster/local/start.sh under $TEMP_DIR: nothing to stop" >&2
    exit 0
fi
pgid=$(cat "$PGID_FILE")
case "$pgid" in '' | *[!0-9]*) echo "bad process group id in $PGID_FILE" >&2; exit 1 ;; esac

# Everything in the group, then their descendants (collected before anything dies, since
# orphans are re-parented and could no longer be found).
pids=$(pgrep -g "$pgid" || true)
frontier=$pids
while [ -n "$frontier" ]; do
    next=""
    for pid in $frontier; do
        next="$next $(pgrep -P "$pid" || true)"
    done
    frontier=$(echo $next)
    pids="$pids $frontier"
done
pids=$(echo $pids | tr ' ' '\n' | sort -un | tr '\n' ' ')

if [ -z "${pids// /}" ]; then
    echo "the head under $TEMP_DIR (process group $pgid) is not running"
    rm -f "$PGID_FILE"
    exit 0
fi

echo "stopping the freshrank head under $TEMP_DIR: $(echo $pids | wc -w) processes"
# shellcheck disable=SC2086
kill -TERM $pids 2>/dev/null || true
deadline=$((SECONDS + GRACE_S))
alive=$pids
while [ -n "${alive// /}" ] && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.5
    still=""
    for pid in $alive; do
        state=$(ps -o stat= -p "$pid" 2>/dev/null || true)
        case "$state" in '' | Z*) ;; *) still="$still $pid" ;; esac  # gone, or a zombie
    done
    alive=$still
done
if [ -n "${alive// /}" ]; then
    echo "still running after ${GRACE_S}s, killing:$alive"
    # shellcheck disable=SC2086
    kill -KILL $alive 2>/dev/null || true
fi
rm -f "$PGID_FILE"
echo "stopped"
