"""A packmule tour: a few dozen different tasks packed onto two small workers.

Run it with::

    python examples/demo.py

It starts a :class:`packmule.Manager` and two local ``packmule worker``
processes of 2 cores, 4000 MB memory and 4000 MB disk each, and submits:

* tasks with no resource request at all: each takes a whole worker;
* memory-heavy Python tasks (1 core, 2500 MB): one per worker at a time;
* shell tasks asking for 1 core (memory and disk are filled in
  proportionally: half the worker);
* 2-core Python tasks that count primes;
* small 1-core, 300 MB Python tasks that checksum some bytes.

Higher priorities are placed first. A waiting 2-core task holds back a worker
from tasks of lower priority, so the priority-2 prime counters run before the
priority-0 checksums even though a free core would fit a checksum sooner.

Every task reports, from the worker side, when it started and ended and its
process id. The demo prints one line per task (sorted by start time; the id
is the submission order) and the most tasks and cores in use at once,
overall and per worker: a worker never runs more than its 2 cores' worth.
The workers log to files in the manager's run directory (the last line says
where); their warnings and errors would also reach stderr.

Exit status: 0 when every task succeeded, 1 otherwise.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import wait
from dataclasses import dataclass
from pathlib import Path

import packmule
from packmule.local import local_cluster, worker_log_dir

#: Two workers of this size, given explicitly so the demo runs the same anywhere.
WORKERS, CORES, MEMORY_MB, DISK_MB = 2, 2, 4000, 4000

#: What every Python task returns: its worker-side start and end
#: (time.time()), its pid, the worker daemon's pid, and a line of result.
Report = tuple[float, float, int, int, str]


# ================================================================ the tasks
# These run on the workers. Each does a little real work, then sleeps a
# moment so that the packing shows in the timings.


def _report(started: float, result: str) -> Report:
    # Python tasks run in a warm interpreter whose parent is the worker daemon.
    return (started, time.time(), os.getpid(), os.getppid(), result)


def node_report(seconds: float) -> Report:
    """No resource request: the task gets the whole worker."""
    started = time.time()
    time.sleep(seconds)
    return _report(started, f"CORES={os.environ['CORES']} MEMORY={os.environ['MEMORY']}")


def big_buffer(mb: int, seconds: float) -> Report:
    """Allocate and touch ``mb`` MB (a stand-in for a memory-hungry step)."""
    started = time.time()
    buf = bytearray(mb * 1024 * 1024)
    for i in range(0, len(buf), 4096):
        buf[i] = 1
    pages = sum(buf[::4096])
    del buf
    time.sleep(seconds)
    return _report(started, f"touched {pages} pages ({mb} MB)")


def count_primes(limit: int, seconds: float) -> Report:
    """Primes below ``limit`` (sieve of Eratosthenes); $CORES says how many cores it may use."""
    started = time.time()
    sieve = bytearray([1]) * limit
    sieve[:2] = b"\x00\x00"
    for i in range(2, int(limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, limit, i)))
    time.sleep(seconds)
    return _report(started, f"{sum(sieve)} primes < {limit} (CORES={os.environ['CORES']})")


def checksum(kib: int, seconds: float) -> Report:
    """SHA-256 of ``kib`` KiB of generated data."""
    started = time.time()
    digest = hashlib.sha256(bytes(i % 251 for i in range(kib * 1024))).hexdigest()
    time.sleep(seconds)
    return _report(started, f"sha256 {digest[:16]}")


#: Shell tasks print their result, then "start end pid" as the last line.
#: (``date +%s.%N`` is GNU; elsewhere the manager's timestamps are used.)
SHELL_TIMING = 'start=$(date +%s.%N); {work}; echo "$start $(date +%s.%N) $$"'

SHELL_JOBS = {
    "sum": "seq 1 200000 | awk '{s += $1} END {printf \"sum 1..200000 = %.0f\\n\", s}'",
    "cksum": "printf 'packmule %s\\n' $(seq 1 500) | cksum | awk '{print \"cksum\", $1}'",
    "sandbox": 'echo "in sandbox $(basename "$PACKMULE_SANDBOX"), CORES=$CORES"; sleep 0.2',
    "sort": "seq 1 5000 | sort -rn | head -n 1 | sed 's/^/max of 1..5000 = /'; sleep 0.1",
}


def build_tasks() -> list[packmule.Task]:
    """The workload: different shapes and priorities."""
    py = packmule.PythonTask
    tasks: list[packmule.Task] = []
    tasks += [py(node_report, 0.4, priority=10) for _ in range(2)]
    # Giving disk too keeps it from being filled in up to the worker's whole disk.
    big = {"cores": 1, "memory": 2500, "disk": 500}
    tasks += [py(big_buffer, 64, 0.3, priority=5, resources=big) for _ in range(4)]
    tasks += [
        packmule.Task(SHELL_TIMING.format(work=job), priority=1, resources={"cores": 1}, tag=name)
        for _ in range(2)
        for name, job in SHELL_JOBS.items()
    ]
    tasks += [
        py(count_primes, 100_000 * n, 0.25, priority=2, resources={"cores": 2, "memory": 800})
        for n in range(1, 7)
    ]
    tasks += [
        py(checksum, 16 * n, round(0.08 + 0.02 * n, 2), resources={"cores": 1, "memory": 300})
        for n in range(1, 15)
    ]
    return tasks


# ================================================================ results
@dataclass
class Row:
    """One finished task: what it reported itself, and the manager's bookkeeping."""

    id: int
    name: str
    kind: str
    priority: float
    request: str
    allocation: str
    cores: int
    worker: str
    worker_pid: int | None
    pid: int | None
    start: float
    end: float
    result: str
    ok: bool


def task_name(task: packmule.Task) -> str:
    if isinstance(task, packmule.PythonTask):
        return f"{task.fn.__name__}({', '.join(map(str, task.args))})"
    return f"sh: {task.tag}"


def fmt_request(r: packmule.Resources) -> str:
    if r.is_empty:
        return "(none)"
    return " ".join(f"{k}={v}" for k, v in r.as_dict().items() if v is not None)


def to_row(task: packmule.Task) -> Row:
    assert task.future is not None and task.future.done()
    exc = task.future.exception()
    # The manager's times (dispatch, result received) unless the task reports its own.
    start, end, pid, worker_pid = task.start_time, task.finish_time, None, None
    ok = exc is None
    if exc is not None:
        result = f"FAILED: {type(exc).__name__}: {exc}"
    elif isinstance(task, packmule.PythonTask):
        start, end, pid, worker_pid, result = task.future.result()
    else:
        out: packmule.CommandResult = task.future.result()
        ok = out.ok
        lines = out.stdout.strip().splitlines()
        result = " / ".join(lines[:-1]) if ok else f"exit {out.exit_code}: {out.stderr.strip()}"
        try:
            s, e, p = lines[-1].split()
            start, end, pid = float(s), float(e), int(p)
        except (IndexError, ValueError):
            pass
    alloc = task.allocation
    return Row(
        id=task.id or 0, name=task_name(task), kind=task.kind, priority=task.priority,
        request=fmt_request(task.resources),
        allocation=f"{alloc.cores}/{alloc.memory}/{alloc.disk}" if alloc else "-",
        cores=(alloc.cores or 0) if alloc else 0,
        worker=task.worker or "-", worker_pid=worker_pid, pid=pid,
        start=start, end=end, result=result, ok=ok,
    )


def worker_labels(rows: Sequence[Row]) -> dict[str, str]:
    """Short names for the workers' ids: "w1 (pid)", in order of first use."""
    pids: dict[str, int | None] = {}
    for r in sorted(rows, key=lambda r: r.start):
        if pids.get(r.worker) is None:
            pids[r.worker] = r.worker_pid
    labels = {w: f"w{i} ({pid or '?'})" for i, (w, pid) in enumerate(pids.items(), 1)}
    labels["-"] = "-"
    return labels


def peak(spans: Sequence[tuple[float, float, int]]) -> int:
    """The largest total weight of (start, end, weight) spans at any instant."""
    # At equal times, ends sort before starts: back-to-back tasks do not overlap.
    events = sorted([(s, 1, w) for s, _, w in spans] + [(e, 0, -w) for _, e, w in spans])
    level = best = 0
    for _, _, w in events:
        level += w
        best = max(best, level)
    return best


# ================================================================ printing
def print_table(rows: Sequence[Row], labels: dict[str, str]) -> None:
    t0 = min(r.start for r in rows)
    header = ("id", "task", "kind", "prio", "request", "cores/mem/disk", "worker", "pid",
              "start", "wall", "result")
    table = [header] + [
        (str(r.id), r.name, r.kind, f"{r.priority:g}", r.request, r.allocation,
         labels[r.worker], str(r.pid or "-"), f"{r.start - t0:.2f}s", f"{r.end - r.start:.2f}s",
         r.result)
        for r in sorted(rows, key=lambda r: (r.start, r.id))
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def print_concurrency(rows: Sequence[Row], labels: dict[str, str]) -> None:
    by_worker: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_worker[labels[r.worker]].append(r)

    def summary(weight: Callable[[Row], int]) -> str:
        overall = peak([(r.start, r.end, weight(r)) for r in rows])
        each = ", ".join(f"{label} {peak([(r.start, r.end, weight(r)) for r in rs])}"
                         for label, rs in sorted(by_worker.items()))
        return f"{overall} overall; per worker: {each}"

    print(f"Most tasks running at once: {summary(lambda r: 1)}")
    print(f"Most cores in use at once:  {summary(lambda r: r.cores)} "
          f"(each worker has {CORES})")


# ================================================================ main
def run(tasks: list[packmule.Task]) -> tuple[packmule.ManagerStats, Path]:
    """Start the cluster, run every task, and stop the cluster; the manager's stats
    and where the workers' logs are.

    Leaving the ``with`` block stops the workers; a task still unfinished by
    then fails with :class:`packmule.TaskCancelled`.
    """
    with local_cluster(WORKERS, cores=CORES, memory=MEMORY_MB, disk=DISK_MB) as manager:
        for task in tasks:
            manager.submit(task)
        wait([t.future for t in tasks if t.future is not None], timeout=60)
        return manager.stats(), worker_log_dir(manager)


def main() -> int:
    began = time.monotonic()
    tasks = build_tasks()
    stats, logs = run(tasks)
    rows = [to_row(t) for t in tasks]
    labels = worker_labels(rows)
    print(f"\n{stats.tasks_submitted} tasks on {stats.workers_joined} workers of {CORES} cores, "
          f"{MEMORY_MB} MB memory, {DISK_MB} MB disk:\n")
    print_table(rows, labels)
    print()
    print_concurrency(rows, labels)
    failed = sum(not r.ok for r in rows)
    print(f"{len(rows) - failed} succeeded, {failed} failed, in {time.monotonic() - began:.1f} s.")
    print(f"The workers' logs: {shown(logs)}/worker-*.log")
    return 1 if failed else 0


def shown(path: Path) -> str:
    """``path`` relative to the current directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
