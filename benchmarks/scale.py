"""The scheduling core at cluster scale: decisions per second, passes that place
nothing, and memory per queued task.

Run it with::

    python benchmarks/scale.py                       # 10 to 10,000 workers, 1,000,000 tasks
    python benchmarks/scale.py --workers 10000 --tasks 1000000
    python benchmarks/scale.py --quick               # small sizes, for CI smoke runs

It drives the pure core (:class:`packmule.core.scheduler.ManagerState`, no
sockets) as the manager's loop does, and prints one JSON object on stdout
(progress on stderr). For each worker count W (``--workers``):

``decisions_per_s``
    W workers of 16 cores / 64,000 MB memory / 64,000 MB disk, and Q tasks
    (``--tasks``) submitted at once, each asking for one of S shapes
    (``--shapes``, default 256, drawn once: cores 1-8, memory 500-16,000 MB
    and disk 500-16,000 MB in 500 MB steps; Parsl requires all three when
    autolabel is off). Then, until every task is done, the loop's cycle:
    complete the attempts that have ended, then one scheduling pass. Each task
    runs a random whole number of virtual seconds (1-120), so the attempts
    that end in one virtual second are completed together, as the loop reads
    all the results that arrived while it was busy. Decisions are
    assignments plus completions; the rate is over the whole cycle, in wall
    time and in CPU time (``decisions_per_cpu_s``: steadier on a shared
    machine); submissions are timed apart (``submit_per_s``).
    ``per_completion`` repeats a shorter run (``--per-completion-tasks``)
    with a scheduling pass after every single completion: the worst case, a
    loop that sees one result at a time. ``box_disk`` repeats the run at the
    largest W with disk left out of the requests, so that the box rule fills
    it in proportion to the cores or memory: disk then runs out before cores,
    and many workers have cores and memory free but not the disk for a task
    (the hardest case for the index).
``idle_pass_ms``
    With the cluster full and the deep queue still waiting: a pass when
    nothing happened since the last one, ``no_fit_pass_ms`` a pass after one
    attempt ended whose room fits none of the waiting shapes (so every shape
    that could fit there is asked about, and nothing is placed), and
    ``no_fit_pass_many_ms`` the same after attempts ended on 100 workers.
``bytes_per_queued_task``
    What the core holds per waiting task (tracemalloc, with 100,000 tasks).

As peers, the same runs are repeated at W = 10 in the same process: the
``growth`` ratio is the cost per decision at each W over the cost at the
smallest W (target: at most 2 from 10 to 10,000 workers). Targets: at least
50,000 decisions/s with 10,000 workers and 1,000,000 tasks, a pass that
places nothing under 2 ms with 10,000 workers.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import random
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_workqueue import load_average, machine_info

import packmule
from packmule import Resources
from packmule.core.scheduler import ManagerState
from packmule.core.states import Outcome

TARGET_DECISIONS_PER_S = 50_000
TARGET_GROWTH = 2.0
TARGET_NO_FIT_MS = 2.0
WORKER = Resources(16, 64_000, 64_000, 0)
#: Virtual task durations, in whole seconds.
DURATION = (1, 120)


def log(msg: str) -> None:
    print(f"[scale] {msg}", file=sys.stderr, flush=True)


def shapes(count: int, rng: random.Random, disk: bool = True) -> list[Resources]:
    """``count`` requests with cores 1-8 and memory (and disk, unless ``disk`` is false)
    500-16,000 MB in 500 MB steps."""
    out = []
    for _ in range(count):
        cores, memory, size = rng.randint(1, 8), rng.randint(1, 32) * 500, rng.randint(1, 32)
        out.append(Resources(cores=cores, memory=memory, disk=size * 500 if disk else None))
    return out


def build(workers: int, tasks: int, shape_count: int, seed: int, disk: bool = True
          ) -> tuple[ManagerState, dict[int, int], float]:
    """A core with ``workers`` workers and ``tasks`` waiting tasks; (core, durations, submit s)."""
    rng = random.Random(seed)
    s = ManagerState()
    for i in range(workers):
        s.add_worker(f"w{i}", WORKER, now=0.0)
    kinds = shapes(shape_count, rng, disk)
    requests = [rng.choice(kinds) for _ in range(tasks)]
    durations = {i: rng.randint(*DURATION) for i in range(tasks)}
    start = time.perf_counter()
    for i, req in enumerate(requests):
        s.submit(i, req, now=0.0)
    return s, durations, time.perf_counter() - start


def run(s: ManagerState, durations: dict[int, int], tasks: int, per_completion: bool
        ) -> dict[str, Any]:
    """The loop's cycle until every task is done; decisions per second."""
    ends: list[tuple[int, int, int]] = []  # (virtual end, task, attempt)
    now, done, assigned, completed, passes, batches = 0, 0, 0, 0, 0, 0
    measured = Resources(1, 100, 0, 0)
    gc.collect()
    gc.disable()
    start, cpu = time.perf_counter(), time.process_time()
    try:
        while done < tasks:
            for a in s.schedule(float(now)):
                heapq.heappush(ends, (now + durations[a.task_id], a.task_id, a.attempt))
                assigned += 1
            passes += 1
            if not ends:
                raise RuntimeError(f"nothing running and {tasks - done} tasks not done")
            now = ends[0][0]
            batches += 1
            while ends and ends[0][0] == now:
                _, tid, attempt = heapq.heappop(ends)
                s.result(tid, attempt, Outcome.SUCCEEDED, float(now), measured=measured,
                         wall_time=float(durations[tid]))
                s.forget(tid)
                completed += 1
                done += 1
                if per_completion and ends and ends[0][0] == now:
                    for a in s.schedule(float(now)):
                        heapq.heappush(ends, (now + durations[a.task_id], a.task_id,
                                              a.attempt))
                        assigned += 1
                    passes += 1
    finally:
        gc.enable()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    decisions = assigned + completed
    return {
        "seconds": round(seconds, 3),
        "decisions": decisions,
        "decisions_per_s": round(decisions / seconds),
        "decisions_per_cpu_s": round(decisions / cpu),
        "us_per_decision": round(seconds / decisions * 1e6, 3),
        "passes": passes,
        "completions_per_batch": round(completed / max(batches, 1), 1),
        "virtual_makespan_s": now,
    }


def full_cluster(workers: int, queued: int, shape_count: int, seed: int
                 ) -> tuple[ManagerState, list[tuple[int, int]]]:
    """Every worker full with 8 tasks of 2 cores / 8,000 MB; ``queued`` tasks of shapes
    that need more than 2 cores or 8,000 MB wait. Returns the core and one running
    (task, attempt) per worker."""
    rng = random.Random(seed)
    s = ManagerState()
    for i in range(workers):
        s.add_worker(f"w{i}", WORKER, now=0.0)
    filler = Resources(cores=2, memory=8000)
    for i in range(workers * 8):
        s.submit(i, filler, now=0.0)
    placed = s.schedule(0.0)
    assert len(placed) == workers * 8, "the filler tasks did not fill the cluster"
    running = list({a.worker: (a.task_id, a.attempt) for a in placed}.values())
    kinds = [k for k in shapes(shape_count, rng)
             if (k.cores or 0) > 2 or (k.memory or 0) > 8000 or (k.disk or 0) > 8000]
    base = workers * 8
    for i in range(queued):
        s.submit(base + i, rng.choice(kinds), now=1.0)
    s.schedule(1.0)  # every shape asked once: none fits
    return s, running


def no_fit(workers: int, queued: int, shape_count: int, seed: int) -> dict[str, Any]:
    """Passes that place nothing, on a full cluster with a deep queue."""
    s, running = full_cluster(workers, queued, shape_count, seed)
    start = time.perf_counter()
    assert s.schedule(2.0) == []
    unchanged = (time.perf_counter() - start) * 1000
    samples = []
    for tid, attempt in running[:5]:  # one attempt ends: 2 cores / 8,000 MB free, too small
        s.result(tid, attempt, Outcome.SUCCEEDED, 2.0)
        start = time.perf_counter()
        assert s.schedule(2.0) == []
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    for tid, attempt in running[5:105]:  # one ends on each of (up to) 100 more workers
        s.result(tid, attempt, Outcome.SUCCEEDED, 3.0)
    start = time.perf_counter()
    assert s.schedule(3.0) == []
    many = (time.perf_counter() - start) * 1000
    return {
        "queued": queued,
        "idle_pass_ms": round(unchanged, 4),
        "no_fit_pass_ms": round(samples[len(samples) // 2], 4),
        "no_fit_pass_many_ms": round(many, 4),
    }


def bytes_per_task(tasks: int, shape_count: int, seed: int) -> float:
    """Memory the core holds per waiting task."""
    rng = random.Random(seed)
    kinds = shapes(shape_count, rng)
    requests = [rng.choice(kinds) for _ in range(tasks)]
    s = ManagerState()
    s.add_worker("w", WORKER, now=0.0)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, req in enumerate(requests):
        s.submit(i, req, now=0.0)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return round((after - before) / tasks, 1)


def report(args: argparse.Namespace) -> dict[str, Any]:
    load_before = load_average()
    rows = []
    for w in args.workers:
        log(f"{w} workers: submitting {args.tasks} tasks of {args.shapes} shapes")
        s, durations, submit_s = build(w, args.tasks, args.shapes, args.seed)
        log(f"{w} workers: running them")
        row: dict[str, Any] = {"workers": w, "tasks": args.tasks,
                               "submit_per_s": round(args.tasks / submit_s)}
        row.update(run(s, durations, args.tasks, per_completion=False))
        del s, durations
        gc.collect()
        n = min(args.tasks, args.per_completion_tasks)
        log(f"{w} workers: {n} tasks with a pass after every completion")
        s, durations, _ = build(w, n, args.shapes, args.seed)
        row["per_completion"] = run(s, durations, n, per_completion=True)
        del s, durations
        gc.collect()
        log(f"{w} workers: passes that place nothing")
        row.update(no_fit(w, args.queued, args.shapes, args.seed))
        log(f"{w} workers: {row['decisions_per_s']} decisions/s "
            f"({row['per_completion']['decisions_per_s']} with a pass per completion), "
            f"no-fit pass {row['no_fit_pass_ms']} ms")
        rows.append(row)
    w = args.workers[-1]
    log(f"{w} workers: {args.tasks} tasks with disk left to the box rule")
    s, durations, _ = build(w, args.tasks, args.shapes, args.seed, disk=False)
    box_disk = {"workers": w, "tasks": args.tasks,
                **run(s, durations, args.tasks, per_completion=False)}
    del s, durations
    gc.collect()
    base = rows[0]
    for row in rows:
        row["growth"] = round(row["us_per_decision"] / base["us_per_decision"], 3)
        row["growth_per_completion"] = round(
            row["per_completion"]["us_per_decision"] / base["per_completion"]["us_per_decision"],
            3)
    largest = rows[-1]
    log("memory per queued task")
    per_task = bytes_per_task(min(args.tasks, 100_000), args.shapes, args.seed)
    return {
        "benchmark": "packmule scheduling core at scale",
        "packmule_version": packmule.__version__,
        "machine": {**machine_info(), "load_average_before": load_before,
                    "load_average_after": load_average()},
        "setup": {"worker": WORKER.as_dict(), "shapes": args.shapes,
                  "task_virtual_seconds": list(DURATION), "seed": args.seed,
                  "quick": args.quick},
        "runs": rows,
        "box_disk": box_disk,
        "bytes_per_queued_task": per_task,
        "targets": {
            "decisions_per_s": TARGET_DECISIONS_PER_S,
            "growth_10_to_largest": TARGET_GROWTH,
            "no_fit_pass_ms": TARGET_NO_FIT_MS,
        },
        "meets_targets": {
            "decisions_per_s": largest["decisions_per_s"] >= TARGET_DECISIONS_PER_S,
            "decisions_per_s_box_disk": box_disk["decisions_per_s"] >= TARGET_DECISIONS_PER_S,
            "growth": largest["growth"] <= TARGET_GROWTH,
            "no_fit_pass": largest["no_fit_pass_ms"] <= TARGET_NO_FIT_MS,
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, for CI smoke runs")
    p.add_argument("--workers", metavar="W,W,...",
                   help="worker counts, smallest first (default 10,100,1000,10000; "
                        "10,100 with --quick)")
    p.add_argument("--tasks", type=int, metavar="Q",
                   help="tasks per run (default 1,000,000; 20,000 with --quick)")
    p.add_argument("--per-completion-tasks", type=int, metavar="N",
                   help="tasks in the pass-per-completion run (default 100,000; 5,000 quick)")
    p.add_argument("--queued", type=int, metavar="N",
                   help="deep queue for the passes that place nothing (default 1,000,000; "
                        "10,000 with --quick)")
    p.add_argument("--shapes", type=int, default=256, metavar="S",
                   help="distinct requests the tasks draw from (default 256)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    quick = args.quick
    args.workers = [int(x) for x in (args.workers or ("10,100" if quick else
                                                       "10,100,1000,10000")).split(",")]
    for name, full, small in (("tasks", 1_000_000, 20_000),
                              ("per_completion_tasks", 100_000, 5_000),
                              ("queued", 1_000_000, 10_000)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if min(args.workers) < 1 or args.tasks < 1 or args.shapes < 1:
        p.error("workers, tasks and shapes must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(report(parse_args(argv)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
