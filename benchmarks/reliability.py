"""How packmule holds up under faults: nothing lost, nothing delivered twice, nothing left running.

Run it with::

    python benchmarks/reliability.py            # 2,000 tasks, a fault a second (about a minute)
    python benchmarks/reliability.py --quick    # 300 tasks, a fault every 0.5 s, for CI smoke runs

It prints one JSON object on stdout (progress goes to stderr). Two runs in the
same invocation, on the same set-up: a manager (heartbeat 0.2 s, lease 2 s)
and ``--workers`` local ``packmule worker`` processes (2 cores each), ``--tasks``
Python tasks of ``--task-seconds`` each (one core), submitted at once and all
waited for.

``fault_free``
    Nothing is done to the workers: the reference makespan.
``faulty``
    Every ``--fault-every`` seconds until the last result, one fault, in turn:

    ``worker_sigkill``: the oldest running worker is SIGKILLed (its runners and
    their tasks die with it) and a fresh worker is started in its place;
    ``worker_sigstop_past_lease``: a worker is frozen with SIGSTOP for the lease
    plus one second, then resumed (the manager declares it lost and requeues its
    tasks; the results it finished meanwhile arrive late and must be dropped);
    ``network_partition_past_lease`` (root only, one more worker in a network
    namespace that this program makes, joined by a veth pair; a blackhole route
    for its /24 first): that worker's link is cut for the lease plus one second.

Each run reports what the user of the futures would see: ``results_lost``
(futures unresolved or failed, must be 0), ``delivered_twice`` (outcomes the
manager's loop delivered more than once for a task, counted where they arrive
in the Manager, must be 0), ``executed_more_than_once`` (tasks that ran more
than once, counted through a side channel: each execution appends a line to a
file; expected under faults: a killed or frozen worker's tasks run again
elsewhere), ``orphans`` (processes seen during the run, sampled every 0.1 s as
descendants of this program and its workers, still running 15 s after shutdown;
must be 0), the makespan and the manager's counts of workers joined and lost.
At the top: ``tasks``, ``faults_injected`` by kind, the four counts summed over
both runs, ``slowdown`` (faulty makespan / fault-free makespan) and ``ok``
(nothing lost, delivered twice or orphaned). The exit status is 0 when ``ok``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ALL_COMPLETED, Future
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.netns import Veth, veth_pair  # shared with the partition test
from vs_workqueue import load_average, machine_info  # the sibling benchmark

import packmule
from packmule.protocol.security import PASSWORD_ENV

HEARTBEAT_S = 0.2
LEASE_S = 2.0
WORKER_CORES = 2
ORPHAN_DEADLINE_S = 15.0
#: Seconds a run may take before the benchmark gives up on its unfinished tasks.
RUN_TIMEOUT_S = 600.0


def log(msg: str) -> None:
    print(f"[reliability] {msg}", file=sys.stderr, flush=True)


def chaos_task(path: str, key: int, seconds: float) -> int:
    """The task: note this execution in the side channel, take ``seconds``, return ``key``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key}\n".encode())
    finally:
        os.close(fd)
    time.sleep(seconds)
    return key


# ================================================================ observers
class PidTree:
    """Samples the descendants of this process and of the workers; who outlived the run."""

    def __init__(self) -> None:
        self.roots: set[int] = {os.getpid()}
        self.seen: set[tuple[int, float]] = set()
        self._lock = threading.Lock()
        self.baseline = self._now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pid-tree", daemon=True)
        self._thread.start()

    def _now(self) -> set[tuple[int, float]]:
        with self._lock:
            roots = list(self.roots)
        found: set[tuple[int, float]] = set()
        for pid in roots:
            try:
                root = psutil.Process(pid)
                procs = root.children(recursive=True) + ([root] if pid != os.getpid() else [])
            except psutil.Error:
                continue
            for p in procs:
                with suppress(psutil.Error):
                    found.add((p.pid, p.create_time()))
        return found

    def sample(self) -> None:
        fresh = self._now() - self.baseline
        with self._lock:
            self.seen |= fresh

    def add_root(self, pid: int) -> None:
        with self._lock:
            self.roots.add(pid)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.sample()

    def alive(self) -> list[int]:
        left = []
        for pid, created in self.seen:
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
            except psutil.Error:
                pass
        return left

    def orphans(self) -> tuple[int, int]:
        """(processes seen, still running after ORPHAN_DEADLINE_S); those are then killed."""
        self.sample()
        self._stop.set()
        self._thread.join()
        deadline = time.monotonic() + ORPHAN_DEADLINE_S
        while (left := self.alive()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in left:  # ours: started during this run
            log(f"orphan: pid {pid} still running; killing it")
            with suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return len(self.seen), len(left)


def count_deliveries(manager: packmule.Manager) -> Counter[int]:
    """Count the outcomes the loop delivers to ``manager``, per task id, where they arrive
    (a second one would be dropped there silently: its future is already resolved)."""
    counts: Counter[int] = Counter()
    original = manager._done

    def counting(done: Any) -> None:
        counts[int(done[0])] += 1
        original(done)

    manager._done = counting  # type: ignore[method-assign]
    return counts


# ================================================================ the partition
@contextmanager
def partition_network(wanted: bool) -> Iterator[tuple[Veth | None, str]]:
    """A veth pair when asked for and possible, else None with the reason."""
    if not wanted:
        yield None, "not asked for (--no-partition)"
        return
    with veth_pair("pmrel", "10.215") as found:
        yield found


# ================================================================ one run
class Fleet:
    """The run's workers: started, signalled and stopped by their pids."""

    def __init__(self, manager: packmule.Manager, tree: PidTree, workdir: Path) -> None:
        self.manager = manager
        self.tree = tree
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.netns: subprocess.Popen[bytes] | None = None
        self.stopped: dict[int, float] = {}  # pid: when to resume it

    def start(self, prefix: list[str] | None = None) -> subprocess.Popen[bytes]:
        cmd = [*(prefix or []), sys.executable, "-m", "packmule", "worker", self.manager.address,
               "--cores", str(WORKER_CORES), "--memory", "2000", "--disk", "2000",
               "--workdir", str(self.workdir)]
        path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        env = {**os.environ, "PYTHONPATH": path, PASSWORD_ENV: self.manager._secret.decode()}
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        self.tree.add_root(proc.pid)
        return proc

    def plain(self) -> list[subprocess.Popen[bytes]]:
        """Running workers in this namespace, not frozen."""
        return [p for p in self.procs
                if p.poll() is None and p is not self.netns and p.pid not in self.stopped]

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def stop_all(self, timeout: float = 10.0) -> int:
        """SIGTERM (then SIGKILL) what still runs; returns how many needed it."""
        left = self.alive()
        for p in left:
            p.send_signal(signal.SIGCONT)
            p.terminate()
        for p in left:
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return len(left)


def wait_until(pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def one_run(args: argparse.Namespace, tmp: Path, name: str, faults: bool,
            veth: Veth | None) -> dict[str, Any]:
    run_dir = tmp / name
    run_dir.mkdir()
    side = run_dir / "executions.log"
    tree = PidTree()
    injected: Counter[str] = Counter()
    kinds = ["worker_sigkill"] * 3 + ["worker_sigstop_past_lease"]
    if veth is not None:
        kinds.append("network_partition_past_lease")
    host = veth.host if veth is not None else "127.0.0.1"
    out: dict[str, Any] = {}
    manager = packmule.Manager(host=host, run_dir=run_dir / "manager",
                               heartbeat_interval=HEARTBEAT_S, lease=LEASE_S)
    fleet = Fleet(manager, tree, run_dir / "work")
    heal_at: float | None = None
    try:
        deliveries = count_deliveries(manager)
        for _ in range(args.workers):
            fleet.start()
        if veth is not None:
            fleet.netns = fleet.start(veth.prefix)
        wanted = len(fleet.procs)
        if not wait_until(lambda: manager.stats().workers == wanted, 60):
            raise RuntimeError(f"only {manager.stats().workers} of {wanted} workers connected")
        log(f"{name}: {args.tasks} tasks on {wanted} workers")
        start = time.monotonic()
        futs: dict[int, Future[Any]] = {
            k: manager.submit(packmule.PythonTask(
                chaos_task, str(side), k, args.task_seconds,
                resources={"cores": 1, "memory": 100, "disk": 10}))
            for k in range(args.tasks)}
        next_fault = start + args.fault_every
        turn = 0
        pending: set[Future[Any]] = set(futs.values())
        while pending and time.monotonic() - start < RUN_TIMEOUT_S:
            now = time.monotonic()
            wakes = [next_fault] if faults else [start + RUN_TIMEOUT_S]
            wakes += list(fleet.stopped.values()) + ([heal_at] if heal_at else [])
            _, pending = wait_futures(pending, timeout=max(0.0, min(wakes) - now),
                                      return_when=ALL_COMPLETED)
            if not pending:
                break
            now = time.monotonic()
            for p in fleet.alive():  # the fault schedule: resume what is due
                if fleet.stopped.get(p.pid, now + 1) <= now:
                    p.send_signal(signal.SIGCONT)
                    del fleet.stopped[p.pid]
            if heal_at is not None and heal_at <= now and veth is not None:
                veth.heal()
                heal_at = None
            if faults and now >= next_fault:
                next_fault += args.fault_every
                kind = kinds[turn % len(kinds)]
                turn += 1
                tree.sample()  # see the victim's runners before they go
                if kind == "network_partition_past_lease":
                    if veth is not None and not veth.is_cut:
                        veth.cut()
                        heal_at = now + LEASE_S + 1
                        injected[kind] += 1
                    continue
                plain = fleet.plain()
                if not plain:
                    fleet.start()
                    continue
                victim = plain[0]  # the oldest
                if kind == "worker_sigkill":
                    victim.kill()
                    victim.wait()
                    fleet.start()
                else:
                    victim.send_signal(signal.SIGSTOP)
                    fleet.stopped[victim.pid] = now + LEASE_S + 1
                injected[kind] += 1
        makespan = time.monotonic() - start
        log(f"{name}: done in {makespan:.1f} s; faults {dict(injected)}")
        # Resume and heal everything, let every live worker join, then shut down.
        for p in fleet.alive():
            p.send_signal(signal.SIGCONT)
        fleet.stopped.clear()
        if veth is not None and veth.is_cut:
            veth.heal()
        joined = wait_until(lambda: manager.stats().workers == len(fleet.alive()), 30)
        stats = manager.stats()
    finally:
        manager.shutdown()
        exited = wait_until(lambda: not fleet.alive(), 10)
        terminated = fleet.stop_all()
        if veth is not None and veth.is_cut:
            veth.heal()
    seen, orphans = tree.orphans()
    ran = Counter(int(line) for line in side.read_text().split()) if side.exists() else Counter()
    lost = [k for k, f in futs.items()
            if not f.done() or f.exception(timeout=0) is not None or f.result(timeout=0) != k]
    task_ids = {int(f.__dict__["_task_id"]) for f in futs.values()}
    out.update(
        tasks=args.tasks,
        makespan_s=round(makespan, 2),
        tasks_per_s=round(args.tasks / makespan, 1),
        faults=dict(injected),
        results_lost=len(lost),
        delivered_twice=sum(1 for t, n in deliveries.items() if n > 1),
        delivered_never=sum(1 for t in task_ids if deliveries[t] == 0),
        executed_more_than_once=sum(1 for k in futs if ran[k] > 1),
        max_executions=max((ran[k] for k in futs), default=0),
        never_executed=sum(1 for k in futs if ran[k] == 0),
        orphans=orphans,
        processes_checked=seen,
        workers_started=len(fleet.procs),
        workers_joined=stats.workers_joined,
        workers_lost=stats.workers_lost,
        # (a worker not connected when the manager shuts down keeps trying to reconnect
        # until its --connect-timeout: whether every live one had joined says which)
        workers_joined_before_shutdown=joined,
        workers_exited_on_shutdown=exited,
        workers_terminated=terminated,
    )
    if lost:
        out["lost_keys"] = lost[:20]
    return out


# ================================================================ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, for CI smoke runs")
    p.add_argument("--tasks", type=int, metavar="N",
                   help="tasks per run (default 2000; 300 with --quick)")
    p.add_argument("--workers", type=int, default=3, metavar="N",
                   help="workers of 2 cores in this namespace (default 3)")
    p.add_argument("--task-seconds", type=float, default=0.02, metavar="S",
                   help="how long each task takes (default 0.02)")
    p.add_argument("--fault-every", type=float, metavar="S",
                   help="seconds between faults (default 1.0; 0.5 with --quick)")
    p.add_argument("--no-partition", dest="partition", action="store_false",
                   help="no network-partition faults even as root")
    args = p.parse_args(argv)
    for name, full, small in (("tasks", 2000, 300), ("fault_every", 1.0, 0.5)):
        if getattr(args, name) is None:
            setattr(args, name, small if args.quick else full)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: dict[str, Any] = {
        "machine": {**machine_info(), "load_average_before": load_average()},
        "settings": {"tasks": args.tasks, "workers": args.workers,
                     "worker_cores": WORKER_CORES, "task_seconds": args.task_seconds,
                     "fault_every_s": args.fault_every, "heartbeat_interval_s": HEARTBEAT_S,
                     "lease_s": LEASE_S, "quick": args.quick},
    }
    start = time.monotonic()
    status = 1
    try:
        with tempfile.TemporaryDirectory(prefix="reliability-") as tmp, \
                partition_network(args.partition) as (veth, why):
            out["partition"] = {"available": veth is not None, "reason": why}
            runs = {"fault_free": one_run(args, Path(tmp), "fault_free", False, veth),
                    "faulty": one_run(args, Path(tmp), "faulty", True, veth)}
        out.update(runs)
        summed = {key: sum(r[key] for r in runs.values())
                  for key in ("results_lost", "delivered_twice", "orphans")}
        out.update(
            tasks=args.tasks,
            faults_injected=runs["faulty"]["faults"],
            **summed,
            executed_more_than_once=runs["faulty"]["executed_more_than_once"],
            slowdown=round(runs["faulty"]["makespan_s"] / runs["fault_free"]["makespan_s"], 2),
        )
        out["ok"] = not any(summed.values()) and not any(
            r["delivered_never"] or r["never_executed"] for r in runs.values())
        status = 0 if out["ok"] else 1
    finally:
        out["duration_s"] = round(time.monotonic() - start, 1)
        print(json.dumps(out, indent=2), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
