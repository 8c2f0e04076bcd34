"""Shared helpers of the chaos suite (``tests/chaos``, marked ``chaos``).

Every chaos test checks the same three things, with these helpers:

- **exactly-once delivery, at-least-once execution**: each task records its
  executions in a side channel (:class:`ExecutionLog`, an ``O_APPEND`` file
  written by the task itself, see ``sidechannel.py``), and
  :class:`Deliveries` counts the outcomes the loop delivers to the Manager per
  task; :func:`check_exactly_once` asserts that every future resolved to its
  own task's value, every outcome was delivered once, every task ran at least
  once, and reports how many ran more than once;
- **no orphans**: :class:`PidTree` samples the descendants of the test
  process (manager loop, workers, runners, tasks) and of the workers it is
  told about while the test runs; :meth:`PidTree.assert_no_orphans` polls,
  with a deadline, until every process it saw is gone;
- **bounded time**: :func:`bounded` fails a block that runs past its budget.

:class:`Fleet` starts, kills and replaces ``packmule worker`` processes for a
manager (made with the ``cluster`` fixture of ``tests/conftest.py``, with
``workers=0``), recording each in the pid tree.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from packmule import Manager, PythonTask
from packmule.protocol.security import PASSWORD_ENV

from ..conftest import FAST, ClusterFactory, connected, wait_until
from .sidechannel import chaos_task, executions

__all__ = [
    "FAST", "ClusterFactory", "Deliveries", "ExecutionLog", "Fleet", "Outcome", "PidTree",
    "bounded", "check_exactly_once", "connected", "descendants", "still_running", "wait_all",
    "wait_until", "zmq_context",
]

#: Manager settings for chaos runs: the ``cluster`` defaults (heartbeat 0.2 s,
#: lease 2 s), without the per-event invariant check, which is O(tasks) per
#: event and would dominate a run of thousands of tasks.
CHAOS_MANAGER: dict[str, Any] = {"validate": False}


# ------------------------------------------------------------------ side channel
@dataclass
class ExecutionLog:
    """Where tasks record each of their executions (one line per execution)."""

    path: Path

    def task(self, key: int, seconds: float = 0.0, **task_args: Any) -> PythonTask:
        """A one-core task that records its execution, takes ``seconds``, returns ``key``."""
        task_args.setdefault("resources", {"cores": 1, "memory": 100, "disk": 10})
        return PythonTask(chaos_task, str(self.path), key, seconds, **task_args)

    def counts(self) -> Counter[int]:
        """Executions per key so far."""
        return executions(self.path)


@pytest.fixture
def execution_log(tmp_path: Path) -> ExecutionLog:
    return ExecutionLog(tmp_path / "executions.log")


class Deliveries:
    """Counts the outcomes (``Done`` messages) the loop delivers to a Manager, per task id.

    A second outcome for a task would be dropped silently by the Manager (its
    future is already resolved), so it is counted where it arrives: the
    Manager's reader thread, by wrapping ``Manager._done`` on this instance.
    """

    def __init__(self, manager: Manager) -> None:
        self.counts: Counter[int] = Counter()
        self._lock = threading.Lock()
        original = manager._done

        def counting(done: Any) -> None:
            with self._lock:
                self.counts[int(done[0])] += 1
            original(done)

        manager._done = counting  # type: ignore[method-assign]

    def snapshot(self) -> Counter[int]:
        with self._lock:
            return Counter(self.counts)


# ------------------------------------------------------------------ outcomes
@dataclass
class Outcome:
    """What :func:`check_exactly_once` found (all of it already asserted)."""

    tasks: int
    executions: int
    executed_more_than_once: int
    max_executions: int


def wait_all(futures: Mapping[int, Future[Any]], timeout: float) -> None:
    """Wait for every future; fail naming the unfinished ones after ``timeout`` s."""
    _, pending = wait_futures(list(futures.values()), timeout=timeout)
    if pending:
        keys = sorted(k for k, f in futures.items() if not f.done())
        raise AssertionError(f"{len(keys)} of {len(futures)} tasks unfinished after {timeout} s "
                             f"(results lost?): keys {keys[:20]}")


def _task_id(fut: Future[Any]) -> int:
    """The id of the task behind a Manager's future (``TaskFuture._task_id``)."""
    tid = fut.__dict__.get("_task_id")
    assert isinstance(tid, int) and tid > 0, f"not a packmule task future: {fut!r}"
    return tid


def check_exactly_once(futures: Mapping[int, Future[Any]], deliveries: Deliveries,
                       log: ExecutionLog) -> Outcome:
    """Assert exactly-once delivery and at-least-once execution of tasks made by ``log.task``.

    ``futures`` maps each task's key to its future; call this after the
    futures resolved (best: after the manager shut down, so that a late
    duplicate outcome has had every chance to show up).
    """
    pending = sorted(k for k, f in futures.items() if not f.done())
    assert not pending, f"results lost: {len(pending)} futures unresolved, keys {pending[:20]}"
    wrong: list[str] = []
    for key, fut in futures.items():
        exc = fut.exception(timeout=0)
        if exc is not None:
            wrong.append(f"{key}: {type(exc).__name__}: {exc}")
        elif fut.result(timeout=0) != key:
            wrong.append(f"{key}: got {fut.result(timeout=0)!r}")
    assert not wrong, f"{len(wrong)} tasks did not deliver their own value: {wrong[:10]}"
    ids = {_task_id(f): k for k, f in futures.items()}
    assert len(ids) == len(futures), "futures of the same task given twice"
    delivered = deliveries.snapshot()
    twice = {t: n for t, n in delivered.items() if n > 1}
    assert not twice, f"outcomes delivered more than once (task id: count): {twice}"
    missing = sorted(k for t, k in ids.items() if delivered[t] != 1)
    assert not missing, f"tasks whose outcome was not delivered through the loop: {missing[:20]}"
    ran = log.counts()
    never = sorted(k for k in futures if ran[k] == 0)
    assert not never, f"tasks with a result but no recorded execution: {never[:20]}"
    extra = sorted(k for k in ran if k not in futures)
    assert not extra, f"executions of unknown tasks: {extra[:20]}"
    again = [k for k in futures if ran[k] > 1]
    return Outcome(tasks=len(futures), executions=sum(ran[k] for k in futures),
                   executed_more_than_once=len(again),
                   max_executions=max((ran[k] for k in futures), default=0))


@contextmanager
def bounded(seconds: float, what: str = "the test") -> Iterator[None]:
    """Fail if the block takes longer than ``seconds``."""
    start = time.monotonic()
    yield
    took = time.monotonic() - start
    assert took <= seconds, f"{what} took {took:.1f} s, over its bound of {seconds} s"


@contextmanager
def zmq_context() -> Iterator[zmq.Context[Any]]:
    """A ZeroMQ context of the test's own (for sockets that pose as peers), destroyed at
    the end without waiting for unsent messages."""
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


# ------------------------------------------------------------------ pid tree
def descendants(pid: int) -> list[psutil.Process]:
    """The processes below ``pid`` now (a worker's runners and their tasks, say)."""
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def still_running(procs: Sequence[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running (the same processes: pid reuse is noticed)."""
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
        except psutil.Error:
            continue
    return left


ProcKey = tuple[int, float]  # (pid, create time): a pid reused later is another process


class PidTree:
    """The processes a test started, recorded while it runs, to check none outlives it.

    A thread samples, every ``interval`` seconds, the descendants of the test
    process and of every root added with :meth:`add_root`; what existed
    before :meth:`start` is not counted. A runner or task whose worker was
    SIGKILLed is reparented (to init), but it was seen while its worker lived.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.me = os.getpid()
        self.roots: set[int] = {self.me}
        self.seen: dict[ProcKey, str] = {}
        self.baseline: set[ProcKey] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _key(p: psutil.Process) -> ProcKey | None:
        try:
            return p.pid, p.create_time()
        except psutil.Error:
            return None

    def _descendants(self) -> list[psutil.Process]:
        with self._lock:
            roots = list(self.roots)
        out: list[psutil.Process] = []
        for pid in roots:
            try:
                root = psutil.Process(pid)
                if pid != self.me:
                    out.append(root)
                out.extend(root.children(recursive=True))
            except psutil.Error:
                continue
        return out

    def start(self) -> PidTree:
        for p in self._descendants():
            key = self._key(p)
            if key is not None:
                self.baseline.add(key)
        self._thread = threading.Thread(target=self._run, name="pid-tree", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """Record the current descendants now (also done every ``interval`` s)."""
        for p in self._descendants():
            key = self._key(p)
            if key is None or key in self.baseline:
                continue
            with self._lock:
                if key in self.seen:
                    continue
            try:
                what = " ".join(p.cmdline()[:6]) or p.name()
            except psutil.Error:
                what = "?"
            with self._lock:
                self.seen[key] = what

    def add_root(self, pid: int) -> None:
        """Also follow the descendants of ``pid`` (a worker, say), and ``pid`` itself."""
        with self._lock:
            self.roots.add(pid)
        self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def alive(self) -> dict[ProcKey, str]:
        """Recorded processes still running (zombies count as gone: they run nothing)."""
        with self._lock:
            seen = dict(self.seen)
        left: dict[ProcKey, str] = {}
        for (pid, created), what in seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    left[(pid, created)] = what
            except psutil.Error:
                continue
        return left

    def assert_no_orphans(self, timeout: float = 15.0) -> int:
        """Stop sampling; poll until every recorded process is gone. Returns how many were seen."""
        self.sample()
        self.stop()
        deadline = time.monotonic() + timeout
        while True:
            left = self.alive()
            if not left:
                return len(self.seen)
            if time.monotonic() > deadline:
                listing = "; ".join(f"pid {pid}: {what}" for (pid, _), what in left.items())
                raise AssertionError(f"{len(left)} of {len(self.seen)} processes started during "
                                     f"the test still run {timeout} s after shutdown: {listing}")
            time.sleep(0.05)


@pytest.fixture
def pid_tree() -> Iterator[PidTree]:
    """A started :class:`PidTree`; the test calls ``assert_no_orphans()`` after shutdown."""
    tree = PidTree().start()
    yield tree
    tree.stop()


# ------------------------------------------------------------------ workers
class Fleet:
    """``packmule worker`` processes for one manager, started, killed and replaced by a test."""

    def __init__(self, manager: Manager, tree: PidTree | None, workdir: Path, *,
                 cores: int = 2, memory: int = 2000, disk: int = 2000,
                 extra_args: Sequence[str] = ()) -> None:
        self.manager = manager
        self.tree = tree
        self.workdir = workdir
        self.size = ["--cores", str(cores), "--memory", str(memory), "--disk", str(disk)]
        self.extra_args = list(extra_args)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.killed: Counter[str] = Counter()  # signal name: how many sent

    def start(self, prefix: Sequence[str] = (), address: str | None = None,
              **popen: Any) -> subprocess.Popen[bytes]:
        """Start one worker (its command after ``prefix``, e.g. ``ip netns exec NS``)."""
        cmd = [*prefix, sys.executable, "-m", "packmule", "worker",
               address or self.manager.address, *self.size,
               "--workdir", str(self.workdir), *self.extra_args]
        path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        env = {**os.environ, "PYTHONPATH": path,
               PASSWORD_ENV: self.manager._secret.decode()}
        popen.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(cmd, env=env, **popen)
        self.procs.append(proc)
        if self.tree is not None:
            self.tree.add_root(proc.pid)
        return proc

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def signal(self, proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        """Send ``sig`` to one of this fleet's workers (by its pid)."""
        if self.tree is not None:
            self.tree.sample()  # record its runners and tasks before they go
        if proc.poll() is None:
            proc.send_signal(sig)
            self.killed[sig.name] += 1
        if sig is signal.SIGKILL:
            proc.wait(timeout=10)

    def stop_all(self, timeout: float = 10) -> None:
        """SIGTERM every worker still running, then SIGKILL what is left after ``timeout``."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)  # a stopped worker cannot act on SIGTERM
                p.terminate()
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def fleet_factory(tmp_path: Path, pid_tree: PidTree) -> Iterator[Any]:
    """``make(manager, **kw) -> Fleet``; every fleet made is stopped at teardown."""
    fleets: list[Fleet] = []

    def make(manager: Manager, **kw: Any) -> Fleet:
        fleet = Fleet(manager, pid_tree, tmp_path / "work", **kw)
        fleets.append(fleet)
        return fleet

    yield make
    for f in fleets:
        f.stop_all()


def chaos_cluster(cluster: ClusterFactory, **kw: Any) -> Any:
    """A manager (no workers of its own) with the chaos settings; start workers with a Fleet."""
    return cluster(0, **{**CHAOS_MANAGER, **kw})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/chaos is in the ``chaos`` suite (and ``slow``)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.chaos)
            item.add_marker(pytest.mark.slow)
