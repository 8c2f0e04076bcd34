"""Worker churn: 2,000 tasks while a worker is SIGKILLed and replaced every second.

Each kill takes the worker's runners and their tasks with it (a runner ends
its process group once its worker is gone); the manager requeues what the
worker held and the replacement joins. Every task must run at least once,
deliver its result exactly once, and nothing may be left running.
"""

from __future__ import annotations

import signal
import sys
import time
from concurrent.futures import ALL_COMPLETED
from concurrent.futures import wait as wait_futures
from typing import Any

from .conftest import (
    ClusterFactory,
    Deliveries,
    ExecutionLog,
    PidTree,
    bounded,
    chaos_cluster,
    check_exactly_once,
    connected,
    descendants,
    still_running,
    wait_all,
    wait_until,
)

TASKS = 2000
WORKERS = 3
TASK_S = 0.02  # long enough that the run spans many kills
KILL_EVERY = 1.0
BOUND_S = 150


def test_worker_churn_delivers_every_result_exactly_once(
    cluster: ClusterFactory, execution_log: ExecutionLog, pid_tree: PidTree, fleet_factory: Any,
) -> None:
    log = execution_log
    with bounded(BOUND_S, "the churn run"):
        with chaos_cluster(cluster) as mgr:
            deliveries = Deliveries(mgr)
            fleet = fleet_factory(mgr)
            for _ in range(WORKERS):
                fleet.start()
            wait_until(connected(mgr, WORKERS))
            start = time.monotonic()
            futs = {k: mgr.submit(log.task(k, TASK_S)) for k in range(TASKS)}
            kills = 0
            while True:
                # The fault schedule: one kill a second until every task is done.
                _, pending = wait_futures(futs.values(), timeout=KILL_EVERY,
                                          return_when=ALL_COMPLETED)
                if not pending:
                    break
                assert time.monotonic() - start < BOUND_S - 30, (
                    f"{len(pending)} of {TASKS} tasks unfinished after {kills} kills")
                alive = fleet.alive()
                if alive:
                    fleet.signal(alive[0], signal.SIGKILL)  # the oldest
                    kills += 1
                fleet.start()
            took = time.monotonic() - start
            # Every worker still running has joined (none is half-started at shutdown).
            wait_until(lambda: mgr.stats().workers == len(fleet.alive()), timeout=20)
            joined = time.monotonic() - start
            stats = mgr.stats()
            assert stats.tasks_succeeded == TASKS and stats.tasks_failed == 0
            # (A worker killed before it joined is not lost: the two need not be equal.)
            assert stats.workers_joined - stats.workers_lost == stats.workers == len(fleet.alive())
        shut = time.monotonic() - start
        wait_until(lambda: not fleet.alive(), timeout=10)  # the rest told to exit
        exited = time.monotonic() - start
    outcome = check_exactly_once(futs, deliveries, log)
    assert kills >= 5, f"only {kills} kills: the run was too short to test churn"
    seen = pid_tree.assert_no_orphans()
    print(f"churn phases: tasks done {took:.1f} s, all joined {joined:.1f} s, shut down "
          f"{shut:.1f} s, workers exited {exited:.1f} s, orphans checked "
          f"{time.monotonic() - start:.1f} s", file=sys.stderr)
    print(f"churn: {TASKS} tasks in {took:.1f} s, {kills} workers SIGKILLed, "
          f"{outcome.executed_more_than_once} tasks ran more than once (at most "
          f"{outcome.max_executions} times), {seen} processes checked", file=sys.stderr)


def test_worker_sigterm_kills_its_tasks_and_hands_them_back(
    cluster: ClusterFactory, execution_log: ExecutionLog, pid_tree: PidTree, fleet_factory: Any,
) -> None:
    """SIGTERM: the worker says Goodbye, kills its running tasks (their process groups) and
    exits 0 at once; the manager requeues them without using their retries (max_retries=0)."""
    log = execution_log
    with bounded(40, "the SIGTERM run"):
        with chaos_cluster(cluster) as mgr:
            deliveries = Deliveries(mgr)
            fleet = fleet_factory(mgr)
            leaving = fleet.start()
            wait_until(connected(mgr, 1))
            futs = {k: mgr.submit(log.task(k, 2.0)) for k in range(2)}  # one per core
            wait_until(lambda: all(log.counts()[k] == 1 for k in futs))
            below = descendants(leaving.pid)  # its runners, running the tasks
            assert below
            fleet.signal(leaving, signal.SIGTERM)
            assert leaving.wait(timeout=5) == 0
            wait_until(lambda: not still_running(below), timeout=2)
            assert mgr.stats().workers_lost == 1  # its Goodbye came before it exited
            assert not any(f.done() for f in futs.values())
            fleet.start()
            wait_all(futs, timeout=20)
        wait_until(lambda: not fleet.alive(), timeout=10)
    outcome = check_exactly_once(futs, deliveries, log)
    assert outcome.executed_more_than_once == len(futs)
    pid_tree.assert_no_orphans()
