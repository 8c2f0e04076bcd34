"""A worker frozen (SIGSTOP) past its lease, then resumed.

The manager declares it lost after the lease and reruns its tasks elsewhere;
when it wakes up, the results its runners finished meanwhile reach the
manager late and are discarded (each outcome delivered once), and the worker
starts a fresh session and serves again.
"""

from __future__ import annotations

import logging
import signal
import time
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

TASK_S = 1.0


def test_stalled_worker_is_replaced_and_its_late_results_are_discarded(
    cluster: ClusterFactory, execution_log: ExecutionLog, pid_tree: PidTree,
    fleet_factory: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="packmule")  # the loop forwards INFO records too
    log = execution_log
    with bounded(45, "the stalled-worker run"):
        with chaos_cluster(cluster) as mgr:
            deliveries = Deliveries(mgr)
            fleet = fleet_factory(mgr)
            frozen = fleet.start()
            wait_until(connected(mgr, 1))
            futs = {k: mgr.submit(log.task(k, TASK_S)) for k in range(2)}  # one per core
            wait_until(lambda: all(log.counts()[k] == 1 for k in futs))
            fleet.signal(frozen, signal.SIGSTOP)
            stopped = time.monotonic()
            # Its runners are not stopped: they finish within TASK_S, and their results
            # wait in the frozen worker's pipes.
            wait_until(lambda: mgr.stats().workers_lost == 1, timeout=mgr.lease + 5)
            assert time.monotonic() - stopped >= mgr.lease - 2 * mgr.heartbeat_interval
            assert not any(f.done() for f in futs.values()), "a frozen worker's result arrived"
            fleet.start()  # the replacement runs the requeued tasks
            wait_until(lambda: all(log.counts()[k] == 2 for k in futs), timeout=20)
            # Wake the frozen worker while the replacement still runs the second attempts:
            # its first attempts' results are now stale.
            fleet.signal(frozen, signal.SIGCONT)
            wait_until(lambda: "told it to reconnect" in caplog.text, timeout=10)
            wait_all(futs, timeout=20)
            # The resumed worker starts afresh and serves again.
            wait_until(lambda: mgr.stats().workers_joined == 3 and mgr.stats().workers == 2,
                       timeout=20)
            more = {k: mgr.submit(log.task(k, 0.2)) for k in range(2, 12)}
            wait_all(more, timeout=30)
            stats = mgr.stats()
            assert stats.tasks_succeeded == len(futs) + len(more)
        wait_until(lambda: not fleet.alive(), timeout=10)  # told to exit at shutdown
    outcome = check_exactly_once({**futs, **more}, deliveries, log)
    assert outcome.executed_more_than_once == len(futs)  # the frozen worker's attempts
    pid_tree.assert_no_orphans()
