#!/usr/bin/env bash
# Stop the private Slurm cluster started by start-slurm.sh.
#
# Usage: tests/slurm/stop-slurm.sh [STATE_DIR] [--purge]
#
#   STATE_DIR   as given to start-slurm.sh (default: $PACKMULE_SLURM_DIR or /tmp/packmule-slurm)
#   --purge     also delete STATE_DIR afterwards
#
# Cancels the cluster's jobs, then stops slurmd, slurmctld and munged by the pids in
# STATE_DIR/run/*.pid and STATE_DIR/munge/munged.pid only (each pid is checked to still be
# that program). A multi-node cluster's network (see netns.sh) is taken down if this
# cluster owns it, with whatever still runs in its namespaces, and its route and /etc/hosts
# lines are removed. Idempotent: stopping a stopped cluster does nothing.
set -uo pipefail

D="" PURGE=0
for a in "$@"; do
    case "$a" in
        --purge) PURGE=1 ;;
        *) D=$a ;;
    esac
done
D=${D:-${PACKMULE_SLURM_DIR:-/tmp/packmule-slurm}}
case "$D" in /*) ;; *) D="$PWD/$D" ;; esac

say() { printf 'stop-slurm: %s\n' "$*"; }
# shellcheck source=tests/slurm/netns.sh
. "$(dirname "$0")/netns.sh"
pid_of() {  # pid_of PIDFILE NAME: the live pid of NAME recorded in PIDFILE, or nothing
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc 0-9 <"$1")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
}
running() {  # running PID: exists and is not a zombie waiting for its parent
    kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}
stop() {  # stop NAME PIDFILE: SIGTERM, then SIGKILL after 10 s
    local pid
    pid=$(pid_of "$2" "$1") || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 100); do
        running "$pid" || break
        sleep 0.1
    done
    if running "$pid"; then
        say "$1 ($pid) ignored SIGTERM; SIGKILL"
        kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$2" 2>/dev/null
    say "stopped $1 ($pid)"
}

if [ -d "$D" ]; then
    export SLURM_CONF="$D/slurm.conf"
    # Jobs first, while slurmctld and slurmd can still clean them up (their processes are
    # children of slurmstepd, which would otherwise outlive slurmd).
    any_slurmd=0
    for f in "$D"/run/slurmd*.pid; do
        pid_of "$f" slurmd >/dev/null && any_slurmd=1
    done
    if pid_of "$D/run/slurmctld.pid" slurmctld >/dev/null && [ "$any_slurmd" = 1 ]; then
        jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
        if [ -n "${jobs// /}" ]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null
            for _ in $(seq 1 100); do  # up to 10 s
                [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
                sleep 0.1
            done
        fi
    fi
    for f in "$D"/run/slurmd*.pid; do
        [ -e "$f" ] && stop slurmd "$f"
    done
    stop slurmctld "$D/run/slurmctld.pid"
    stop munged "$D/munge/munged.pid"
    if [ -e "$D/net" ]; then
        net_down
        rm -f "$D/net"
    fi
fi

# Undo the /etc/hosts lines start-slurm.sh added for this STATE_DIR, if any. Rewrite in place
# (not sed -i): /etc/hosts may be a bind mount that cannot be replaced.
MARK="# packmule-slurm $D"
if grep -qF -- "$MARK" /etc/hosts 2>/dev/null; then
    kept=$(grep -vF -- "$MARK" /etc/hosts)
    printf '%s\n' "$kept" >/etc/hosts
    say "removed the /etc/hosts lines"
fi

if [ "$PURGE" = 1 ] && [ -d "$D" ]; then
    rm -rf -- "$D"
    say "removed $D"
fi
exit 0
