# shellcheck shell=bash
# Network namespaces for a multi-node test Slurm on one machine. Sourced by start-slurm.sh
# and stop-slurm.sh (not run on its own); the caller sets D (its state dir) and say().
#
# Layout: a bridge in namespace pmslurm-sw (the "switch"); each node NAME in namespace
# pmslurm-NAME with eth0 = $PM_NET.<i> (i = 1, 2, ... in the order given); the root
# namespace on veth pmslurm0 = $PM_NET.254, where slurmctld and the test's manager listen.
#
# These names and the subnet are fixed, so one such network exists at a time: it belongs to
# the state dir named in $PM_LOCK/owner (claimed by an atomic rename), and only that state
# dir's stop-slurm.sh takes it down. A second multi-node cluster waits for it.
#
# Safety: before any address is assigned, a blackhole route for the subnet (at a high
# metric) goes into the root namespace, so that a packet for the subnet never leaves the
# machine through the default route, even while the veth is down or gone.

PM_NET=10.213.77
PM_PREFIX=pmslurm
PM_ROOT_IF=${PM_PREFIX}0
PM_BLACKHOLE=(blackhole "$PM_NET.0/24" metric 4242)
PM_LOCK=/run/packmule-slurm-net

# net_owner: "STATE_DIR CLAIMANT_PID" of the current owner, or nothing.
net_owner() { cat "$PM_LOCK/owner" 2>/dev/null; }

# net_pids: processes in any of our namespaces (by the namespace files in /run/netns).
net_pids() {
    local ns
    for ns in /run/netns/"$PM_PREFIX"-*; do
        [ -e "$ns" ] && ip netns pids "${ns##*/}" 2>/dev/null
    done
    return 0
}

# net_stale: the owner is gone: the script that claimed the network has exited, the owner's
# slurmctld is not running, and no process is left in the namespaces.
net_stale() {
    local dir pid ctld
    read -r dir pid <<<"$(net_owner)"
    [ -n "$dir" ] || return 1
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
        grep -q start-slurm "/proc/$pid/cmdline" 2>/dev/null; then
        return 1
    fi
    ctld=$(tr -dc 0-9 <"$dir/run/slurmctld.pid" 2>/dev/null)
    if [ -n "$ctld" ] && [ "$(cat "/proc/$ctld/comm" 2>/dev/null)" = slurmctld ]; then
        return 1
    fi
    [ -z "$(net_pids)" ]
}

# net_claim WAIT_S: make $D the network's owner, waiting up to WAIT_S s for another owner.
net_claim() {
    local tmp dir deadline=$((SECONDS + $1))
    read -r dir _ <<<"$(net_owner)"
    [ "$dir" = "$D" ] && return 0
    while :; do
        tmp=$(mktemp -d "$PM_LOCK.XXXXXX")
        printf '%s %s\n' "$D" "$$" >"$tmp/owner"
        # Renaming a directory onto an existing, non-empty one fails: one claimant wins.
        if mv -T "$tmp" "$PM_LOCK" 2>/dev/null; then
            return 0
        fi
        rm -rf -- "$tmp"
        if net_stale; then
            read -r dir _ <<<"$(net_owner)"
            say "taking over the test network from $dir (its cluster is gone)"
            net_down_unowned
            rm -rf -- "$PM_LOCK"
            continue
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            return 1
        fi
        sleep 0.5
    done
}

# net_in_use: print what already uses the network's names or subnet (nothing: all free).
net_in_use() {
    local ns
    for ns in /run/netns/"$PM_PREFIX"-*; do
        [ -e "$ns" ] && printf 'namespace %s; ' "${ns##*/}"
    done
    ip link show "$PM_ROOT_IF" >/dev/null 2>&1 && printf 'interface %s; ' "$PM_ROOT_IF"
    ip route show | grep -F "$PM_NET." | sed 's/^/route /; s/$/; /' | tr -d '\n'
    return 0
}

# net_up NAME...: the switch, one namespace per node, the root veth. Undo with net_down.
net_up() {
    local i=0 name ns
    ip route add "${PM_BLACKHOLE[@]}" || return 1
    ip netns add "$PM_PREFIX-sw" || return 1
    ip netns exec "$PM_PREFIX-sw" ip link add br0 type bridge || return 1
    ip netns exec "$PM_PREFIX-sw" ip link set br0 up || return 1
    for name in "$@"; do
        i=$((i + 1))
        ns=$PM_PREFIX-$name
        ip netns add "$ns" || return 1
        ip link add "p-$name" netns "$PM_PREFIX-sw" type veth peer name eth0 netns "$ns" ||
            return 1
        ip netns exec "$PM_PREFIX-sw" ip link set "p-$name" master br0 up || return 1
        ip netns exec "$ns" ip link set lo up || return 1
        ip netns exec "$ns" ip addr add "$PM_NET.$i/24" dev eth0 || return 1
        ip netns exec "$ns" ip link set eth0 up || return 1
    done
    ip link add "$PM_ROOT_IF" type veth peer name p-root netns "$PM_PREFIX-sw" || return 1
    ip netns exec "$PM_PREFIX-sw" ip link set p-root master br0 up || return 1
    ip addr add "$PM_NET.254/24" dev "$PM_ROOT_IF" || return 1
    ip link set "$PM_ROOT_IF" up || return 1
}

# net_is_up NAME...: $D owns the network, and every namespace and the root address exist.
net_is_up() {
    local name dir
    read -r dir _ <<<"$(net_owner)"
    [ "$dir" = "$D" ] || return 1
    for name in sw "$@"; do
        [ -e "/run/netns/$PM_PREFIX-$name" ] || return 1
    done
    ip -4 addr show dev "$PM_ROOT_IF" 2>/dev/null | grep -qF "$PM_NET.254/24"
}

# net_down: take the network down if $D owns it (whatever part of it exists).
net_down() {
    local dir
    read -r dir _ <<<"$(net_owner)"
    [ "$dir" = "$D" ] || return 0
    net_down_unowned
    rm -rf -- "$PM_LOCK"
    say "removed the test network"
}

net_down_unowned() {
    local pids ns kept hosts_re="^${PM_NET//./\\.}\\..*# packmule-slurm "
    # Whatever still runs in the namespaces was started there by this cluster's slurmd.
    pids=$(net_pids | sort -u | tr '\n' ' ')
    if [ -n "${pids// /}" ]; then
        say "stopping processes left in the namespaces: $pids"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null
    fi
    for ns in /run/netns/"$PM_PREFIX"-*; do
        [ -e "$ns" ] && ip netns del "${ns##*/}"
    done
    ip link show "$PM_ROOT_IF" >/dev/null 2>&1 && ip link del "$PM_ROOT_IF"
    while ip route del "${PM_BLACKHOLE[@]}" 2>/dev/null; do :; done
    # The nodes' /etc/hosts lines (start-slurm.sh marks them), also a gone owner's. Rewrite
    # in place (not sed -i): /etc/hosts may be a bind mount that cannot be replaced.
    if grep -q "$hosts_re" /etc/hosts 2>/dev/null; then
        kept=$(grep -v "$hosts_re" /etc/hosts)
        printf '%s\n' "$kept" >/etc/hosts
    fi
    return 0
}
