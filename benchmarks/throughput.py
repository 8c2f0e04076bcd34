"""How fast packmule dispatches small tasks, and how tightly it packs them.

Run it with::

    python benchmarks/throughput.py            # full run, about half a minute
    python benchmarks/throughput.py --quick    # small sizes, for CI smoke runs

It prints one JSON object on stdout (progress goes to stderr) with:

``throughput``
    One manager and one local worker with 2 cores. N no-op Python tasks
    (``--tasks``, default 5000) are created and submitted at once, then all
    waited for: tasks per second, end to end. Measured with
    ``resources={"cores": 1}`` (two at a time) and with no request (each task
    takes the whole worker, one at a time).
``round_trip``
    The same worker: submit one no-op task and wait for its result, repeated
    (``--rounds``, default 500); median, p90 and p99 in milliseconds.
``packing``
    Two workers of 2 cores; tasks asking for 1 core that sleep (100 of
    0.2 s; 40 of 0.1 s with ``--quick``). The makespan is compared with the
    ideal, tasks x seconds / 4 cores (5.0 s): ``ratio`` = makespan / ideal.

``observe``
    The cost of the run records (the event log ``events.jsonl`` and the
    status file ``status.json``): the ``cores_1`` throughput with them
    (the default) and without (``Manager(observe=False)``), in ``--pairs``
    pairs (default 4; 2 with ``--quick``) of fresh clusters, the order
    alternating between pairs, since the machine is noisy.
    ``ratio`` = median with / median without; ``cost`` = 1 - ``ratio``
    (target: at most 5 %). The manager loop's CPU time per task (user +
    system, microseconds), which the records add to and which is less
    noisy than a rate, is given both ways too (``loop_cpu_us_per_task``).

As a peer, the same no-op throughput and round trip are measured with
``concurrent.futures.ProcessPoolExecutor(max_workers=2)`` in the same run;
``ratio_vs_peer`` is packmule / peer (above 1 is better for throughput, below
1 is better for round trip). Everything is warmed up before it is measured.

The targets (throughput >= 1000 tasks/s, median round trip <= 2 ms, packing
ratio <= 1.15, records cost <= 5 %) are in the JSON with a ``meets_targets`` boolean per metric.
The exit status is 0 whether or not they are met, non-zero if a task fails.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import packmule
from packmule.local import local_cluster

TARGET_TASKS_PER_S = 1000.0
TARGET_RTT_MEDIAN_MS = 2.0
TARGET_PACKING_RATIO = 1.15
#: The most the event log and status file may cost of the no-op throughput.
TARGET_OBSERVE_COST = 0.05

#: Every worker's size besides its cores (explicit, so runs compare across machines).
MEMORY_MB = 2000
DISK_MB = 2000
#: Seconds any one measurement may take before the benchmark gives up.
TIMEOUT = 300.0
#: Where the benchmark's managers keep their run directories (a temporary directory,
#: removed at the end: set by main()).
RUNS = tempfile.gettempdir()

Submit = Callable[[], "Future[Any]"]


def noop() -> None:
    """The task: nothing at all, so that only the system's overhead is measured."""


def nap(seconds: float) -> None:
    time.sleep(seconds)


def log(msg: str) -> None:
    print(f"[throughput] {msg}", file=sys.stderr, flush=True)


# ================================================================ measurements
def throughput(submit: Submit, n: int) -> dict[str, float]:
    """Submit ``n`` tasks at once, wait for all; tasks per second, end to end."""
    start = time.perf_counter()
    futures = [submit() for _ in range(n)]
    for f in futures:
        f.result(timeout=TIMEOUT)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 4), "tasks_per_s": round(n / seconds, 1)}


def round_trips(submit: Submit, rounds: int) -> dict[str, float]:
    """Submit one task and wait for it, ``rounds`` times; latency percentiles in ms."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        submit().result(timeout=TIMEOUT)
        samples.append((time.perf_counter() - start) * 1000)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "median": round(statistics.median(samples), 3),
        "p90": round(cuts[89], 3),
        "p99": round(cuts[98], 3),
        "min": round(min(samples), 3),
        "max": round(max(samples), 3),
    }


def wait_for_workers(manager: packmule.Manager, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while manager.stats().workers < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {manager.stats().workers} of {count} workers connected")
        time.sleep(0.05)


def python_task(
    manager: packmule.Manager, fn: Callable[..., Any], *args: Any,
    resources: Mapping[str, int] | None,
) -> Submit:
    """A function that submits one more such task and returns its future."""
    return lambda: manager.submit(packmule.PythonTask(fn, *args, resources=resources))


def run_dir(name: str) -> str:
    """A run directory for one cluster, under the benchmark's temporary directory."""
    return tempfile.mkdtemp(prefix=f"{name}-", dir=RUNS)


def measure_packmule(n: int, rounds: int, warmup: int) -> dict[str, Any]:
    """Throughput and round trip on one manager with one 2-core worker."""
    out: dict[str, Any] = {}
    with local_cluster(1, cores=2, memory=MEMORY_MB, disk=DISK_MB,
                       run_dir=run_dir("packmule")) as manager:
        wait_for_workers(manager, 1)
        one_core = python_task(manager, noop, resources={"cores": 1})
        whole = python_task(manager, noop, resources=None)
        log("packmule: warming up")
        throughput(one_core, warmup)
        throughput(whole, warmup // 4)
        round_trips(one_core, min(rounds, 50))
        log(f"packmule: {n} no-op tasks, cores=1")
        out["cores_1"] = throughput(one_core, n)
        log(f"packmule: {n} no-op tasks, no request (whole worker)")
        out["whole_worker"] = throughput(whole, n)
        log(f"packmule: {rounds} round trips")
        out["round_trip_ms"] = round_trips(one_core, rounds)
        stats = manager.stats()
        if stats.tasks_failed:
            raise RuntimeError(f"{stats.tasks_failed} packmule task(s) failed")
    return out


def measure_observe(n: int, warmup: int, pairs: int) -> dict[str, Any]:
    """No-op throughput (cores=1) with and without the event log and status file, in
    ``pairs`` pairs of fresh clusters, alternating which goes first."""
    import psutil

    rates: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    for i in range(pairs):
        for observe in (True, False) if i % 2 == 0 else (False, True):
            with local_cluster(1, cores=2, memory=MEMORY_MB, disk=DISK_MB, observe=observe,
                               run_dir=run_dir(f"observe-{observe}")) as manager:
                wait_for_workers(manager, 1)
                one_core = python_task(manager, noop, resources={"cores": 1})
                throughput(one_core, warmup)
                log(f"observe: pair {i + 1}/{pairs}, records {'on' if observe else 'off'}, "
                    f"{n} no-op tasks")
                loop = psutil.Process(manager.loop_pid)
                before = sum(loop.cpu_times()[:2])
                rates[observe].append(throughput(one_core, n)["tasks_per_s"])
                cpu[observe].append(round((sum(loop.cpu_times()[:2]) - before) / n * 1e6, 1))
                if manager.stats().tasks_failed:
                    raise RuntimeError("a packmule task failed")
    on, off = statistics.median(rates[True]), statistics.median(rates[False])
    ratio = on / off
    return {
        "tasks": n,
        "pairs": pairs,
        "setup": "1 manager, 1 local worker with 2 cores; resources={'cores': 1}",
        "with_records_tasks_per_s": rates[True],
        "without_records_tasks_per_s": rates[False],
        "median_with": on,
        "median_without": off,
        "pair_ratios": [round(a / b, 3) for a, b in zip(rates[True], rates[False],
                                                         strict=True)],
        "ratio": round(ratio, 3),
        "cost": round(1 - ratio, 3),
        "loop_cpu_us_per_task": {
            "with_records": cpu[True], "without_records": cpu[False],
            "median_with": statistics.median(cpu[True]),
            "median_without": statistics.median(cpu[False]),
            "ratio": round(statistics.median(cpu[True]) / statistics.median(cpu[False]), 3),
        },
        "target_cost": TARGET_OBSERVE_COST,
        "meets_targets": 1 - ratio <= TARGET_OBSERVE_COST,
    }


def measure_peer(n: int, rounds: int, warmup: int) -> dict[str, Any]:
    """The same no-op throughput and round trip with a 2-process ProcessPoolExecutor."""
    out: dict[str, Any] = {"start_method": multiprocessing.get_start_method()}
    with ProcessPoolExecutor(max_workers=2) as pool:
        submit: Submit = lambda: pool.submit(noop)  # noqa: E731
        log("peer: warming up")
        throughput(submit, warmup)
        round_trips(submit, min(rounds, 50))
        log(f"peer: {n} no-op tasks")
        out["throughput"] = throughput(submit, n)
        log(f"peer: {rounds} round trips")
        out["round_trip_ms"] = round_trips(submit, rounds)
    return out


def measure_packing(tasks: int, seconds: float) -> dict[str, Any]:
    """Makespan of ``tasks`` 1-core sleeps on 2 workers x 2 cores, against the ideal."""
    workers, cores = 2, 2
    slots = workers * cores
    ideal = -(-tasks // slots) * seconds  # whole waves of 4 tasks
    with local_cluster(workers, cores=cores, memory=MEMORY_MB, disk=DISK_MB,
                       run_dir=run_dir("packing")) as manager:
        wait_for_workers(manager, workers)
        log("packing: warming up")
        throughput(python_task(manager, noop, resources={"cores": 1}), 100)
        log(f"packing: {tasks} tasks of {seconds} s on {workers} workers x {cores} cores")
        makespan = throughput(python_task(manager, nap, seconds, resources={"cores": 1}), tasks)
    ratio = makespan["seconds"] / ideal
    return {
        "workers": workers,
        "cores_per_worker": cores,
        "tasks": tasks,
        "task_seconds": seconds,
        "ideal_s": round(ideal, 3),
        "makespan_s": makespan["seconds"],
        "ratio": round(ratio, 4),
        "target_ratio": TARGET_PACKING_RATIO,
        "meets_targets": ratio <= TARGET_PACKING_RATIO,
    }


# ================================================================ report
def report(args: argparse.Namespace) -> dict[str, Any]:
    warmup = min(args.tasks, 500)
    pm = measure_packmule(args.tasks, args.rounds, warmup)
    observe = measure_observe(args.tasks, warmup, args.pairs)
    peer = measure_peer(args.tasks, args.rounds, warmup)
    packing = measure_packing(args.packing_tasks, args.packing_seconds)

    peer_tps = peer["throughput"]["tasks_per_s"]
    rtt, peer_rtt = pm["round_trip_ms"], peer["round_trip_ms"]
    tput = {
        "tasks": args.tasks,
        "setup": "1 manager, 1 local worker with 2 cores",
        "cores_1": pm["cores_1"],
        "whole_worker": pm["whole_worker"],
        "peer": {"name": "ProcessPoolExecutor(max_workers=2)",
                 "start_method": peer["start_method"], **peer["throughput"]},
        "ratio_vs_peer": {
            "cores_1": round(pm["cores_1"]["tasks_per_s"] / peer_tps, 3),
            "whole_worker": round(pm["whole_worker"]["tasks_per_s"] / peer_tps, 3),
        },
        "target_tasks_per_s": TARGET_TASKS_PER_S,
        "meets_targets": {
            "cores_1": pm["cores_1"]["tasks_per_s"] >= TARGET_TASKS_PER_S,
            "whole_worker": pm["whole_worker"]["tasks_per_s"] >= TARGET_TASKS_PER_S,
        },
    }
    round_trip = {
        "rounds": args.rounds,
        "setup": "1 manager, 1 local worker with 2 cores; resources={'cores': 1}",
        "packmule_ms": rtt,
        "peer_ms": peer_rtt,
        "ratio_vs_peer": {k: round(rtt[k] / peer_rtt[k], 3) for k in ("median", "p90", "p99")},
        "target_median_ms": TARGET_RTT_MEDIAN_MS,
        "meets_targets": rtt["median"] <= TARGET_RTT_MEDIAN_MS,
    }
    return {
        "benchmark": "packmule throughput",
        "packmule_version": packmule.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "throughput": tput,
        "round_trip": round_trip,
        "observe": observe,
        "packing": packing,
        "meets_targets": {
            "observe_cost": observe["meets_targets"],
            "throughput_cores_1": tput["meets_targets"]["cores_1"],
            "throughput_whole_worker": tput["meets_targets"]["whole_worker"],
            "round_trip_median": round_trip["meets_targets"],
            "packing_ratio": packing["meets_targets"],
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, for CI smoke runs")
    p.add_argument("--tasks", type=int, metavar="N",
                   help="no-op tasks per throughput run (default 5000; 500 with --quick)")
    p.add_argument("--rounds", type=int, metavar="N",
                   help="round trips to time (default 500; 100 with --quick)")
    p.add_argument("--packing-tasks", type=int, metavar="N",
                   help="1-core tasks in the packing run (default 100; 40 with --quick)")
    p.add_argument("--pairs", type=int, metavar="N",
                   help="pairs of runs with and without the records (default 4; 2 with --quick)")
    p.add_argument("--packing-seconds", type=float, metavar="S",
                   help="how long each packing task sleeps (default 0.2; 0.1 with --quick)")
    args = p.parse_args(argv)
    for name, full, small in (("tasks", 5000, 500), ("rounds", 500, 100), ("pairs", 4, 2),
                              ("packing_tasks", 100, 40), ("packing_seconds", 0.2, 0.1)):
        if getattr(args, name) is None:
            setattr(args, name, small if args.quick else full)
    for name, least in (("tasks", 1), ("rounds", 2), ("packing_tasks", 1), ("pairs", 1)):
        if getattr(args, name) < least:
            p.error(f"--{name.replace('_', '-')} must be at least {least}")
    if args.packing_seconds <= 0:
        p.error("--packing-seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    global RUNS
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="packmule-bench-") as RUNS:
        print(json.dumps(report(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
