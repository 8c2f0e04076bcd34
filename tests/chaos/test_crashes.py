"""Crashes of the manager's two processes.

- The loop process SIGKILLed while tasks run: every unfinished future fails
  with ``ManagerCrashed`` naming the signal, within a second; results already
  delivered stay delivered, once; the workers kill their runners at once (their
  connection closed) and keep trying to reconnect until they are stopped.
- The user's process SIGKILLed (a script with a Manager, local workers and
  running tasks): the loop notices its socket pair close, tells the workers to
  exit and exits; the workers kill their runners and exit. Nothing the script
  started is left running after ``USER_DEATH_BOUND`` seconds (the promise in
  docs/errors-and-retries.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import psutil
import pytest

from packmule import ManagerCrashed

from .conftest import (
    ClusterFactory,
    Deliveries,
    ExecutionLog,
    PidTree,
    bounded,
    chaos_cluster,
    check_exactly_once,
    connected,
    wait_until,
)

#: After the loop process dies, every unfinished future fails within this (seconds).
CRASH_BOUND = 1.0
#: After the user's process dies, everything it started is gone within this (seconds):
#: the loop notices at once, gives its Exit messages STOP_LINGER (2 s) at most to leave,
#: and the workers kill their runners as they exit.
USER_DEATH_BOUND = 5.0

REPO = Path(__file__).resolve().parents[2]


def test_a_killed_loop_fails_every_unfinished_future_within_a_second(
    cluster: ClusterFactory, execution_log: ExecutionLog, pid_tree: PidTree,
    fleet_factory: Any, tmp_path: Path,
) -> None:
    log = execution_log
    crashing = ExecutionLog(tmp_path / "crashing.log")  # the tasks the crash ends
    with bounded(30, "the killed-loop run"), chaos_cluster(cluster) as mgr:
        deliveries = Deliveries(mgr)
        fleet = fleet_factory(mgr)
        workers = [fleet.start() for _ in range(2)]
        wait_until(connected(mgr, 2))
        done = {k: mgr.submit(log.task(k)) for k in range(4)}
        assert [f.result(timeout=20) for f in done.values()] == list(done)
        # Four run (one per core), four wait behind them.
        unfinished = {k: mgr.submit(crashing.task(k, 60)) for k in range(4, 12)}
        wait_until(lambda: sum(crashing.counts().values()) == 4)
        failed_at: dict[int, float] = {}
        lock = threading.Lock()

        def note(key: int) -> Any:
            def record(_: Future[Any]) -> None:
                with lock:
                    failed_at[key] = time.monotonic()
            return record

        for k, f in unfinished.items():
            f.add_done_callback(note(k))
        pid_tree.sample()  # the runners and their tasks, before they go
        os.kill(mgr.loop_pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: len(failed_at) == len(unfinished), timeout=5, interval=0.005)
        slowest = max(failed_at.values()) - killed
        assert slowest < CRASH_BOUND, f"the last future failed {slowest:.2f} s after the kill"
        print(f"\n{len(unfinished)} futures failed within {slowest:.3f} s of the loop's kill")
        for f in unfinished.values():
            exc = f.exception(timeout=0)
            assert isinstance(exc, ManagerCrashed), repr(exc)
            assert "killed by SIGKILL" in str(exc) and str(mgr.loop_log) in str(exc)
            assert exc.returncode == -signal.SIGKILL and exc.log == str(mgr.loop_log)
        with pytest.raises(ManagerCrashed, match="killed by SIGKILL"):
            mgr.submit(log.task(99))
        # The workers lost their connection: they kill their runners at once, and keep
        # trying to reconnect (a manager restarted on the same port gets them back).
        wait_until(lambda: set(pid_tree.alive()) <= {
            (w.pid, psutil.Process(w.pid).create_time()) for w in workers}, timeout=10)
        assert all(w.poll() is None for w in workers)
        fleet.stop_all()
    outcome = check_exactly_once(done, deliveries, log)
    assert outcome.executed_more_than_once == 0
    assert sum(deliveries.snapshot().values()) == len(done)  # none for the crashed ones
    assert sum(crashing.counts().values()) == 4  # the waiting ones never started
    pid_tree.assert_no_orphans()


SCRIPT = """
import sys, threading
from packmule import Manager, PythonTask
from packmule.local import start_worker
from tests.chaos.sidechannel import chaos_task

log, run_dir, workdir = sys.argv[1:4]
mgr = Manager(run_dir=run_dir)
workers = [start_worker(mgr, cores=2, memory=2000, disk=2000, extra_args=["--workdir", workdir])
           for _ in range(2)]
futures = [mgr.submit(PythonTask(chaos_task, log, k, 120,
                                 resources={"cores": 1, "memory": 100, "disk": 10}))
           for k in range(6)]
print(mgr.loop_pid, *(w.pid for w in workers), flush=True)
threading.Event().wait()  # until killed
"""


def test_when_the_users_process_is_killed_nothing_it_started_outlives_it(
    tmp_path: Path, execution_log: ExecutionLog, pid_tree: PidTree,
) -> None:
    script = tmp_path / "user.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path[1:]])}
    with bounded(40, "the killed-user run"):
        user = subprocess.Popen(
            [sys.executable, str(script), str(execution_log.path), str(tmp_path / "run"),
             str(tmp_path / "work")], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert user.stdout is not None
            loop_pid, *worker_pids = map(int, user.stdout.readline().split())
            # Four tasks run (two workers of two cores), two wait.
            wait_until(lambda: sum(execution_log.counts().values()) == 4, timeout=30)
            pid_tree.sample()
            seen = {pid for pid, _ in pid_tree.seen}
            assert {user.pid, loop_pid, *worker_pids} <= seen
            assert len(seen) >= 1 + 1 + 2 + 4  # the script, its loop, workers, >= 4 runners
            user.kill()
            killed = time.monotonic()
            user.wait(timeout=10)
            left = pid_tree.seen.keys()
            wait_until(lambda: not pid_tree.alive(), timeout=USER_DEATH_BOUND + 10,
                       interval=0.02)
            took = time.monotonic() - killed
            assert took < USER_DEATH_BOUND, f"the processes took {took:.1f} s to go"
            for pid in (loop_pid, *worker_pids):
                assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == \
                    psutil.STATUS_ZOMBIE
            print(f"\n{len(left)} processes gone {took:.2f} s after the user's process was "
                  "killed")
        finally:
            if user.poll() is None:
                user.kill()
                user.wait()
    assert sum(execution_log.counts().values()) == 4  # the waiting ones never started
    pid_tree.assert_no_orphans(timeout=1)
