"""A network partition of one worker, healed after the lease.

The worker runs in a network namespace that this test makes, joined to the
root namespace by a veth pair (root only; skipped otherwise). The manager
listens on the root side of the pair. Cutting the link inside the namespace
silences the worker: past the lease the manager declares it lost and reruns
its tasks on a worker in the root namespace. Once the link is back, the
worker reconnects and serves again; every task's result arrives exactly once.

The namespace, and its network safety, are ``tests/netns.py``'s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from ..netns import Veth, veth_pair
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

TASK_S = 1.0


@pytest.fixture
def veth() -> Iterator[Veth]:
    with veth_pair("pmchaos", "10.214") as (pair, why):
        if pair is None:
            pytest.skip(f"the partition test {why}")
        yield pair


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
