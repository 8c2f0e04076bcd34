"""A network partition of one worker, healed after the lease.

The worker runs in a network namespace that this test makes, joined to the
root namespace by a veth pair (root only; skipped otherwise). The manager
listens on the root side of the pair. Cutting the link inside the namespace
silences the worker: past the lease the manager declares it lost and reruns
its tasks on a worker in the root namespace. Once the link is back, the
worker reconnects and serves again; every task's result arrives exactly once.

Network safety (docs DESIGN, "Network rules for tests"): a blackhole route
for the private /24 goes into the root namespace before any address is given,
so a packet for it never leaves the machine; everything is removed at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import (
    ClusterFactory,
    Deliveries,
    ExecutionLog,
    PidTree,
    bounded,
    chaos_cluster,
    check_exactly_once,
    connected,
    wait_all,
    wait_until,
)

pytestmark = pytest.mark.chaos

TASK_S = 1.0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res


class Veth:
    """A namespace ``ns`` holding ``eth0`` = ``net.1``, paired with ``root_if`` = ``net.254``."""

    def __init__(self, tag: int) -> None:
        self.net = f"10.214.{tag % 250 + 1}"
        self.ns = f"pmchaos-{tag}"
        self.root_if = f"pmc{tag}r"[:15]
        self.blackhole = ["blackhole", f"{self.net}.0/24", "metric", "4242"]
        self.host = f"{self.net}.254"

    def up(self) -> None:
        _ip("route", "add", *self.blackhole)  # first: nothing for the /24 leaves the machine
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.root_if, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        _ip("addr", "add", f"{self.host}/24", "dev", self.root_if)
        _ip("link", "set", self.root_if, "up")
        self.inside("link", "set", "lo", "up")
        self.inside("addr", "add", f"{self.net}.1/24", "dev", "eth0")
        self.inside("link", "set", "eth0", "up")

    def inside(self, *args: str) -> None:
        _ip("-n", self.ns, *args)

    def cut(self) -> None:
        """Take the namespace's end down: its route to the manager goes with it."""
        self.inside("link", "set", "eth0", "down")

    def heal(self) -> None:
        self.inside("link", "set", "eth0", "up")

    def down(self) -> None:
        _ip("netns", "del", self.ns, check=False)  # takes the pair with it
        _ip("link", "del", self.root_if, check=False)
        while _ip("route", "del", *self.blackhole, check=False).returncode == 0:
            pass

    @property
    def prefix(self) -> list[str]:
        """Run a command in the namespace (nsenter keeps /sys and its cgroup mounts)."""
        return ["nsenter", f"--net=/run/netns/{self.ns}"]


@pytest.fixture
def veth() -> Iterator[Veth]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the partition test makes a network namespace and a veth pair")
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (iproute2, util-linux) to make a network namespace")
    pair = Veth(os.getpid())
    try:
        pair.up()
    except RuntimeError as exc:
        pair.down()
        pytest.skip(f"cannot make a network namespace and veth pair here: {exc}")
    try:
        yield pair
    finally:
        pair.down()


def test_partitioned_worker_is_replaced_then_reconnects_after_healing(
    cluster: ClusterFactory, execution_log: ExecutionLog, pid_tree: PidTree, fleet_factory: Any,
    veth: Veth,
) -> None:
    log = execution_log
    with bounded(60, "the partition run"):
        with chaos_cluster(cluster, host=veth.host) as mgr:
            deliveries = Deliveries(mgr)
            fleet = fleet_factory(mgr)
            fleet.start(prefix=veth.prefix)  # the worker behind the link
            wait_until(connected(mgr, 1))
            futs = {k: mgr.submit(log.task(k, TASK_S)) for k in range(2)}  # one per core
            wait_until(lambda: all(log.counts()[k] == 1 for k in futs))
            veth.cut()
            cut = time.monotonic()
            wait_until(lambda: mgr.stats().workers_lost == 1, timeout=mgr.lease + 5)
            assert time.monotonic() - cut >= mgr.lease - 2 * mgr.heartbeat_interval
            assert not any(f.done() for f in futs.values()), "a result crossed the partition"
            fleet.start()  # in the root namespace: reruns the requeued tasks
            wait_until(lambda: all(log.counts()[k] == 2 for k in futs), timeout=20)
            veth.heal()
            wait_all(futs, timeout=20)
            # The partitioned worker comes back: three sessions in all, two connected.
            wait_until(lambda: mgr.stats().workers_joined == 3 and mgr.stats().workers == 2,
                       timeout=30)
            more = {k: mgr.submit(log.task(k, 0.2)) for k in range(2, 12)}
            wait_all(more, timeout=30)
            assert mgr.stats().tasks_succeeded == len(futs) + len(more)
        wait_until(lambda: not fleet.alive(), timeout=10)  # told to exit at shutdown
    outcome = check_exactly_once({**futs, **more}, deliveries, log)
    assert outcome.executed_more_than_once == len(futs)  # the partitioned worker's attempts
    for p in fleet.procs:  # both exited on the manager's word, not a signal
        assert p.returncode == 0, p.args
    pid_tree.assert_no_orphans()
