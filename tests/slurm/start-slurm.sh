#!/usr/bin/env bash
# Start a private Slurm cluster (munged + slurmctld + slurmd) for tests: one node (this
# machine), or several nodes on this machine, each in a network and UTS namespace.
#
# Usage: tests/slurm/start-slurm.sh [STATE_DIR]     (must run as root)
#
#   STATE_DIR   where everything lives: config, state, spool, logs, pid files, the
#               munge key and socket. Default: $PACKMULE_SLURM_DIR or /tmp/packmule-slurm.
#               munged refuses to start if any directory above it is writable by others
#               without the sticky bit (/tmp itself is fine).
#
# Environment (all optional):
#   PACKMULE_SLURM_PARTITION   partition name                        [packmule]
#   PACKMULE_SLURM_PORTS       "CTLD_PORT SLURMD_PORT"               [6917 6918]
#   PACKMULE_SLURM_NODES       "NAME:CPUS:MEMORY_MB ..." for a multi-node cluster  [unset]
#   PACKMULE_SLURM_NET_WAIT    seconds to wait for another multi-node cluster to stop [300]
#
# Multi-node (PACKMULE_SLURM_NODES set, e.g. "n1:2:4000 n2:1:2000"): node I (in the order
# given) is namespace pmslurm-NAME with address 10.213.77.I and host name NAME, on a bridge
# that the root namespace joins as 10.213.77.254, where slurmctld listens (see netns.sh).
# Each slurmd is given the size named, which may be less than the machine's, never more;
# /etc/hosts gets a line per node. One multi-node cluster runs at a time (the network's
# names are fixed): a second one waits for the first to stop.
#
# Nothing system-wide is configured: the cluster uses its own munged (own key and
# socket), its own slurm.conf and non-default ports, so a Slurm or munge already on the
# machine is left alone. Client commands find the cluster through SLURM_CONF:
#
#   export SLURM_CONF=STATE_DIR/slurm.conf     (or: . STATE_DIR/env)
#
# Idempotent: when the daemons recorded in STATE_DIR's pid files are alive and the
# configuration is unchanged, it only checks that the nodes are idle. Stop with
# stop-slurm.sh (same STATE_DIR), which kills only the pids in the pid files (and, in
# multi-node mode, what runs in the cluster's own namespaces).
#
# Installs slurm-wlm and munge with apt-get when they are missing (Debian 12: slurm 22.05).
set -euo pipefail

D=${1:-${PACKMULE_SLURM_DIR:-/tmp/packmule-slurm}}
PARTITION=${PACKMULE_SLURM_PARTITION:-packmule}
read -r CTLD_PORT SLURMD_PORT <<<"${PACKMULE_SLURM_PORTS:-6917 6918}"
read -r -a NODE_SPECS <<<"${PACKMULE_SLURM_NODES:-}"
NET_WAIT=${PACKMULE_SLURM_NET_WAIT:-300}
T0=$(date +%s.%N)

say() { printf 'start-slurm: %s\n' "$*"; }
die() {
    printf 'start-slurm: ERROR: %s\n' "$*" >&2
    for f in "$D/log/munged.log" "$D/log/slurmctld.log" "$D"/log/slurmd*.log; do
        [ -s "$f" ] && { printf -- '--- tail of %s\n' "$f" >&2; tail -n 15 "$f" >&2; }
    done
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "must run as root (daemons, munge user, job launch)"
case "$D" in /*) ;; *) D="$PWD/$D" ;; esac
# shellcheck source=tests/slurm/netns.sh
. "$(dirname "$0")/netns.sh"

NODES=() NODE_LINES=""
for spec in "${NODE_SPECS[@]}"; do
    IFS=: read -r name cpus mem <<<"$spec"
    [[ "$name" =~ ^[a-z][a-z0-9]{0,9}$ && "$cpus" =~ ^[1-9][0-9]*$ && "$mem" =~ ^[1-9][0-9]*$ ]] ||
        die "bad node '$spec' in PACKMULE_SLURM_NODES (want NAME:CPUS:MEMORY_MB)"
    NODES+=("$name")
    NODE_LINES+="NodeName=$name NodeAddr=$PM_NET.${#NODES[@]} NodeHostname=$name CPUs=$cpus"
    NODE_LINES+=" RealMemory=$mem State=UNKNOWN"$'\n'
done
[ "${#NODES[@]}" -le 200 ] || die "at most 200 nodes"

# --- 1. packages -----------------------------------------------------------------------------
have_all() {
    local c
    for c in /usr/sbin/munged /usr/sbin/slurmctld /usr/sbin/slurmd sbatch squeue scancel sinfo \
             scontrol; do
        command -v "$c" >/dev/null 2>&1 || return 1
    done
}
if ! have_all; then
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    pkgs=(slurm-wlm munge)
    wait_lock=(-o DPkg::Lock::Timeout=180)  # another apt/dpkg (or test run) may hold the lock
    # Only refresh the package lists when the install cannot work without it.
    if ! apt-get "${wait_lock[@]}" install -y --no-install-recommends "${pkgs[@]}"; then
        apt-get "${wait_lock[@]}" update
        apt-get "${wait_lock[@]}" install -y --no-install-recommends "${pkgs[@]}"
    fi
    have_all || die "slurm-wlm/munge installed, but its commands are still missing"
fi
getent passwd munge >/dev/null || die "user 'munge' missing (the munge package creates it)"
if [ "${#NODES[@]}" -gt 0 ]; then
    for c in ip nsenter unshare; do
        command -v "$c" >/dev/null 2>&1 || die "multi-node mode needs '$c' (iproute2, util-linux)"
    done
fi

# --- 2. host name ----------------------------------------------------------------------------
H=$(hostname -s)
[ -n "$H" ] || die "empty hostname"
# The daemons talk over the addresses below (NodeAddr, SlurmctldHost), but job steps and
# tools still look names up: this host's, and in multi-node mode each node's (lines added
# in step 5). Make this host's resolvable if it is not. stop-slurm.sh removes every line
# marked with this state dir.
HOSTS_MARK="# packmule-slurm $D"
if ! getent hosts "$H" >/dev/null; then
    say "adding '$H' to /etc/hosts"
    printf '127.0.0.1\t%s\t%s\n' "$H" "$HOSTS_MARK" >>/etc/hosts
fi

# --- 3. configuration ------------------------------------------------------------------------
mkdir -p "$D"
chmod 755 "$D"
mkdir -p "$D/ctld" "$D/spool" "$D/log" "$D/run" "$D/munge"

if [ "${#NODES[@]}" -eq 0 ]; then
    # The node as slurmd sees it (CPUs, sockets, cores, threads, RealMemory): a node
    # configured with more than it has is drained ("Low RealMemory"/"Low CPUs"), so copy it.
    NODE_HW=$(SLURM_CONF=/dev/null slurmd -C 2>/dev/null | sed -n 's/^NodeName=[^ ]* //p' |
        head -n1)
    [ -n "$NODE_HW" ] || die "slurmd -C printed no node line"
    CTLD_ADDR=127.0.0.1
    NODE_LINES="NodeName=$H NodeAddr=127.0.0.1 $NODE_HW State=UNKNOWN"
    PART_NODES=$H
    SELECT_PARAMS=CR_Core
    SLURMD_FILES="SlurmdSpoolDir=$D/spool
SlurmdPidFile=$D/run/slurmd.pid
SlurmdLogFile=$D/log/slurmd.log"
else
    CTLD_ADDR=$PM_NET.254
    PART_NODES=$(IFS=,; echo "${NODES[*]}")
    # Memory is allocated too, as on most clusters: a job's steps then see how much they
    # got on their node in SLURM_MEM_PER_NODE (a whole node's when --exclusive).
    SELECT_PARAMS=CR_Core_Memory
    SLURMD_FILES="SlurmdSpoolDir=$D/spool/%n
SlurmdPidFile=$D/run/slurmd-%n.pid
SlurmdLogFile=$D/log/slurmd-%n.log"
fi

CONF_NEW="$D/slurm.conf.new"
cat >"$CONF_NEW" <<EOF
# Generated by packmule tests/slurm/start-slurm.sh; private test cluster.
ClusterName=packmule
SlurmctldHost=$H($CTLD_ADDR)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$D/munge/munge.socket
MpiDefault=none
MailProg=/bin/true
# No cgroups: proctrack/linuxproc tracks job processes by parentage, task/none binds
# nothing, no accounting gatherer. (cgroup v2 here has no cpu/memory controllers.)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=$SELECT_PARAMS
ReturnToService=2
StateSaveLocation=$D/ctld
$SLURMD_FILES
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=3
Waittime=0
${NODE_LINES%$'\n'}
PartitionName=$PARTITION Nodes=$PART_NODES Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
printf 'export SLURM_CONF=%s\n' "$D/slurm.conf" >"$D/env"
export SLURM_CONF="$D/slurm.conf"

# --- helpers: pids from pid files only -------------------------------------------------------
# alive PIDFILE NAME: the pid in PIDFILE is running and is the program NAME (not a reused pid).
alive() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc 0-9 <"$1")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}
# slurmds: "NODE PIDFILE" for each of the cluster's slurmd.
slurmds() {
    local n
    if [ "${#NODES[@]}" -eq 0 ]; then
        echo "$H $D/run/slurmd.pid"
    else
        for n in "${NODES[@]}"; do echo "$n $D/run/slurmd-$n.pid"; done
    fi
}
slurmds_alive() {  # slurmds_alive all|any
    local n f up=0 down=0
    while read -r n f; do
        if alive "$f" slurmd; then up=$((up + 1)); else down=$((down + 1)); fi
    done < <(slurmds)
    if [ "$1" = all ]; then [ "$down" -eq 0 ]; else [ "$up" -gt 0 ]; fi
}
node_states() { sinfo -h -N -p "$PARTITION" -o '%N %T' 2>/dev/null | sort -u; }

wait_idle() {  # every node up: idle, or running jobs
    local states="" pending n state
    for _ in $(seq 1 150); do  # 15 s
        states=$(node_states)
        pending=0
        while read -r n _; do
            state=$(awk -v n="$n" '$1 == n {print $2}' <<<"$states")
            case "$state" in
                idle | mixed | allocated) ;;
                drain* | down*)
                    pending=1
                    scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true ;;
                *) pending=1 ;;
            esac
        done < <(slurmds)
        [ "$pending" -eq 0 ] && return 0
        sleep 0.1
    done
    die "nodes not idle after 15 s: '$(tr '\n' ' ' <<<"$states")'; sinfo: $(sinfo 2>&1)"
}
summary() { echo "$D, partition $PARTITION, nodes: $(node_states | tr '\n' ' ')"; }

# --- 4. already running? ---------------------------------------------------------------------
if alive "$D/munge/munged.pid" munged && alive "$D/run/slurmctld.pid" slurmctld &&
    slurmds_alive all && cmp -s "$CONF_NEW" "$D/slurm.conf" &&
    { [ "${#NODES[@]}" -eq 0 ] || net_is_up "${NODES[@]}"; }; then
    rm -f "$CONF_NEW"
    wait_idle
    say "already running ($(summary))"
    printf 'SLURM_CONF=%s\n' "$SLURM_CONF"
    exit 0
fi
if alive "$D/munge/munged.pid" munged || alive "$D/run/slurmctld.pid" slurmctld ||
    slurmds_alive any || [ -e "$D/net" ]; then
    say "partly running or configuration changed: restarting"
    "$(dirname "$0")/stop-slurm.sh" "$D" >/dev/null
fi
mv "$CONF_NEW" "$D/slurm.conf"
chmod 644 "$D/slurm.conf"

# --- 5. multi-node: the network --------------------------------------------------------------
if [ "${#NODES[@]}" -gt 0 ]; then
    if ! net_claim "$NET_WAIT"; then
        read -r owner _ <<<"$(net_owner)"
        die "the multi-node test network is in use by the cluster in $owner (waited" \
            "$NET_WAIT s); if that cluster is gone, run: $(dirname "$0")/stop-slurm.sh $owner"
    fi
    in_use=$(net_in_use)
    if [ -n "$in_use" ]; then  # not set up by a cluster: leave it alone
        rm -rf -- "$PM_LOCK"
        die "the multi-node test network's names or subnet are in use here: $in_use"
    fi
    # For stop-slurm.sh: this cluster set up (part of) the network.
    printf '%s\n' "${NODES[@]}" >"$D/net"
    net_up "${NODES[@]}" || die "could not set up the network namespaces"
    i=0
    for n in "${NODES[@]}"; do
        i=$((i + 1))
        printf '%s\t%s\t%s\n' "$PM_NET.$i" "$n" "$HOSTS_MARK" >>/etc/hosts
    done
fi

# --- 6. munged, private instance -------------------------------------------------------------
# munged insists on: key owned by its user and not readable by others, its directories not
# writable by others. Run it as the munge user, as the packaged service does; its pid file
# lives in its own directory so that it can remove it on exit. Its socket is a file, which
# the namespaced nodes reach as well.
chown munge:munge "$D/munge"
chmod 755 "$D/munge"  # the socket must be reachable by clients
if [ ! -s "$D/munge/munge.key" ]; then
    (umask 077 && dd if=/dev/urandom of="$D/munge/munge.key" bs=1024 count=1 status=none)
fi
chown munge:munge "$D/munge/munge.key"
chmod 400 "$D/munge/munge.key"
touch "$D/log/munged.log"
chown munge:munge "$D/log/munged.log"
rm -f "$D/munge/munge.socket" "$D/munge/munge.socket.lock" "$D/munge/munged.pid"
runuser -u munge -- /usr/sbin/munged \
    --socket="$D/munge/munge.socket" --key-file="$D/munge/munge.key" \
    --pid-file="$D/munge/munged.pid" --log-file="$D/log/munged.log" \
    --seed-file="$D/munge/munged.seed" --num-threads=2 ||
    die "munged did not start"
for _ in $(seq 1 50); do
    [ -S "$D/munge/munge.socket" ] && break
    sleep 0.1
done
munge -S "$D/munge/munge.socket" -n | unmunge -S "$D/munge/munge.socket" >/dev/null ||
    die "munge credential round trip failed"

# --- 7. slurmctld + slurmd -------------------------------------------------------------------
# Fresh state every start: no jobs or node state left over from an earlier run.
find "$D/ctld" "$D/spool" -mindepth 1 -delete
/usr/sbin/slurmctld -f "$D/slurm.conf" -i || die "slurmctld did not start"
if [ "${#NODES[@]}" -eq 0 ]; then
    /usr/sbin/slurmd -f "$D/slurm.conf" -N "$H" || die "slurmd did not start"
else
    # Each slurmd in its node's network namespace and in a UTS namespace of its own, named
    # after the node. nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup
    # mounts, and slurmd 22.05 then fails to initialise its cgroup plugin.
    for n in "${NODES[@]}"; do
        mkdir -p "$D/spool/$n"
        # shellcheck disable=SC2016  # $1 and $2 are the inner shell's
        nsenter --net="/run/netns/$PM_PREFIX-$n" unshare --uts sh -c \
            'hostname "$1" && exec /usr/sbin/slurmd -f "$2" -N "$1"' sh "$n" "$D/slurm.conf" ||
            die "slurmd of node $n did not start"
    done
fi
for _ in $(seq 1 50); do
    alive "$D/run/slurmctld.pid" slurmctld && slurmds_alive all && break
    sleep 0.1
done
alive "$D/run/slurmctld.pid" slurmctld || die "slurmctld exited (see $D/log/slurmctld.log)"
slurmds_alive all || die "a slurmd exited (see $D/log/slurmd*.log)"
wait_idle

T1=$(date +%s.%N)
say "up in $(awk -v a="$T0" -v b="$T1" 'BEGIN{printf "%.1f", b-a}') s ($(summary))"
printf 'SLURM_CONF=%s\n' "$SLURM_CONF"
