"""Allocation modes on the public traces and the shift traces: does ``auto`` meet its targets?

Run it with::

    python benchmarks/alloc.py --jobs 2            # everything, seeds 0..9 (a few minutes)
    python benchmarks/alloc.py --quick             # 4 public traces, 3 shift traces, 2 seeds
    python benchmarks/alloc.py --quick --modes auto,max_throughput --seeds 1   # smoke test

It prints one JSON object on stdout (progress goes to stderr). Everything is the
trace-driven simulator (``packmule sim alloc``: one machine of 16 cores /
64,000 MB / 64,000 MB, tasks one at a time in trace order, failed attempts
charged in full), so the numbers are deterministic; the probabilistic modes
(bucketing) are the mean over ``--seeds`` seeds.

Settings (``settings``, each a block of results):

``public/{one,tag}/{as_given,clipped}``
    :func:`packmule.sim.alloc.table` on the twelve public traces
    (``workloads/phung2021``), one category for the whole trace or one per tag,
    peaks as given (tasks above the machine fail) or clipped to the machine (the
    published evaluation). Only ``exponential`` has peaks above the machine.
``shifts/{one,tag}``
    the same on the sixteen shift traces of :mod:`packmule.sim.shifts`, built
    into a temporary folder (clipped; none is above the machine).

Per setting and mode, the means over the traces of: memory efficiency and
retries (from ``table``), and cores and disk efficiency (from ``simulate``'s
``resources``, run again for every mode and seed; its memory efficiency is
checked against ``table``'s: ``consistent``). ``auto_vs_max_throughput`` gives
auto's ratios to ``max_throughput`` (``efficiency_ratio``, ``retries_ratio``),
and the traces where auto's memory efficiency is not above max_throughput's.
``per_trace`` gives auto's and max_throughput's [memory efficiency, retries] per
trace. ``max_throughput`` runs at Work Queue's default category-steady-n-tasks
(25; ``--steady-n``).

Targets (``targets``, each with its value and ``pass``):

* ``one``: auto's mean memory efficiency, public traces, one category, clipped, >= 0.665;
* ``tag``: the same per tag, >= 0.72;
* ``retries``: auto's mean retries <= 0.75 x max_throughput's, in every setting;
* ``cores_disk``: auto's mean cores and disk efficiency >= max_throughput's, in every setting;
* ``shifts``: auto's mean memory efficiency on the shift traces, one category, >= 0.75;
* ``beats_max_throughput``: auto's memory efficiency above max_throughput's on every trace
  of every setting.

``learning_cost`` is what learning costs the manager's loop: per mode, microseconds
per completed task (the next task's request and the completion's record, on a
category fed the trace's tasks in order, all succeeding; the best of ``repeats``
runs) on a trace whose memory peaks spread widely (``exponential``), a moderate
one (``normal_large``) and one peak for all (``constant``, 1,000 MB), and auto's
ratio to max_throughput on each.

``ceiling`` is what no learning mode can beat with one category on the public
traces (clipped): per trace, the optimal ladder (:func:`ladder_levels`, no retry
price) of the trace's own peaks, scored on the same tasks (``hindsight``), and
fitted on one half of the tasks and scored on the other, both ways, averaged
(``two_fold``: what a mode that had seen half the trace could do at best); a
peak above every level then costs the machine.

A target whose setting or modes were not run (``--modes`` without auto or
max_throughput) is reported with ``pass: null``. ``meets_targets`` is true when
every target that was measured passes. Exit status 0 (also when a target is
missed), 2 when the public traces are not found (``--workloads``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from packmule.core.alloc import AllocationMode, Attempt, BucketCache, Category, CategoryConfig, Pool
from packmule.core.alloc.auto import ladder_levels
from packmule.resources import Resources
from packmule.sim import shifts
from packmule.sim.alloc import PHUNG_MACHINE, PROBABILISTIC, load_trace, simulate, table
from packmule.sim.alloc import _positive as positive_int

#: --quick: the public traces and the shift traces run.
QUICK_PUBLIC = ("bimodal_small_std", "trimodal_small_std", "uniform_same", "normal_small")
QUICK_SHIFTS = ("bimodal_small_std-rising", "trimodal_small_std-phases",
                "uniform_small-then-uniform_large")
TARGET_ONE = 0.665
TARGET_TAG = 0.72
TARGET_RETRIES_RATIO = 0.75
TARGET_SHIFTS = 0.75
AUTO = AllocationMode.AUTO.value
XPUT = AllocationMode.MAX_THROUGHPUT.value

#: (setting name, trace group, categories, clip)
SETTINGS = (
    ("public/one/as_given", "public", "one", False),
    ("public/one/clipped", "public", "one", True),
    ("public/tag/as_given", "public", "tag", False),
    ("public/tag/clipped", "public", "tag", True),
    ("shifts/one", "shifts", "one", True),
    ("shifts/tag", "shifts", "tag", True),
)


def log(msg: str) -> None:
    print(f"[alloc] {msg}", file=sys.stderr, flush=True)


def _modes(text: str) -> tuple[AllocationMode, ...]:
    try:
        modes = tuple(AllocationMode.parse(t) for t in text.split(",") if t.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not modes:
        raise argparse.ArgumentTypeError("no modes given")
    return tuple(dict.fromkeys(modes))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--jobs", type=positive_int, default=1, help="worker processes (default 1)")
    p.add_argument("--seeds", type=positive_int, default=None,
                   help="seeds 0..K-1 for the probabilistic modes (default 10; 2 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"only {', '.join(QUICK_PUBLIC)} and the shift traces "
                        f"{', '.join(QUICK_SHIFTS)}")
    p.add_argument("--modes", type=_modes, default=tuple(AllocationMode), metavar="M1,M2,...",
                   help="the modes to run (default: all)")
    p.add_argument("--steady-n", type=positive_int, default=25, metavar="N",
                   help="Work Queue's category-steady-n-tasks for the histogram modes (25)")
    p.add_argument("--workloads", metavar="DIR",
                   help="folder of the public traces (default: found as packmule sim shifts "
                        "finds it)")
    args = p.parse_args(argv)
    if args.seeds is None:
        args.seeds = 2 if args.quick else 10
    return args


# --------------------------------------------------------------------- the runs
_Job = tuple[str, str, str, bool, tuple[str, ...], tuple[int, ...], int]


def _resources(job: _Job) -> tuple[str, str, dict[str, dict[str, float]]]:
    """One trace under one setting: per mode, the mean over seeds of each resource's
    efficiency (cores, memory, disk) and of the retries."""
    path, setting, categories, clip, modes, seeds, steady_n = job
    tasks = load_trace(path)
    out: dict[str, dict[str, float]] = {}
    for name in modes:
        mode = AllocationMode(name)
        cfg = CategoryConfig(mode=mode, steady_n=steady_n)
        runs = seeds if mode in PROBABILISTIC else seeds[:1]
        cache: BucketCache = {}
        sums = {"cores": 0.0, "memory": 0.0, "disk": 0.0, "retries": 0.0}
        for s in runs:
            res: dict[str, Any] = simulate(tasks, cfg, PHUNG_MACHINE, s, bucket_cache=cache,
                                           categories=categories, clip=clip)
            for r in ("cores", "memory", "disk"):
                sums[r] += res["resources"][r]["efficiency"]
            sums["retries"] += res["retries"]
        out[name] = {k: v / len(runs) for k, v in sums.items()}
    return setting, Path(path).stem, out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def summarise(setting: str, tab: dict[str, dict[str, tuple[float, float]]],
              res: dict[str, dict[str, dict[str, float]]], column: str,
              modes: Sequence[str]) -> dict[str, Any]:
    """One setting's block: per-mode means, auto vs max_throughput, per-trace figures."""
    traces = sorted(tab)
    means: dict[str, dict[str, float]] = {}
    consistent = True
    for m in modes:
        col = column.format(mode=m)
        effs = [tab[t][col][0] for t in traces]
        rets = [tab[t][col][1] for t in traces]
        for t in traces:
            if abs(res[t][m]["memory"] - tab[t][col][0]) > 1e-9 or \
                    abs(res[t][m]["retries"] - tab[t][col][1]) > 1e-9:
                consistent = False
        means[m] = {
            "memory_efficiency": round(_mean(effs), 4),
            "retries": round(_mean(rets), 1),
            "cores_efficiency": round(_mean([res[t][m]["cores"] for t in traces]), 4),
            "disk_efficiency": round(_mean([res[t][m]["disk"] for t in traces]), 4),
        }
    block: dict[str, Any] = {"traces": len(traces), "means": means, "consistent": consistent}
    if AUTO in modes and XPUT in modes:
        a, x = means[AUTO], means[XPUT]
        a_col, x_col = column.format(mode=AUTO), column.format(mode=XPUT)
        block["auto_vs_max_throughput"] = {
            "efficiency_ratio": _ratio(a["memory_efficiency"], x["memory_efficiency"]),
            "retries_ratio": _ratio(a["retries"], x["retries"]),
            "not_above_max_throughput": [t for t in traces
                                         if tab[t][a_col][0] <= tab[t][x_col][0]],
        }
        block["per_trace"] = {
            t: {AUTO: [round(tab[t][a_col][0], 4), tab[t][a_col][1]],
                XPUT: [round(tab[t][x_col][0], 4), tab[t][x_col][1]]} for t in traces}
    return block


def targets(blocks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each target: its value(s) and ``pass`` (None when not measured)."""

    def auto_mean(setting: str, what: str = "memory_efficiency") -> float | None:
        block = blocks.get(setting)
        if block is None or AUTO not in block["means"]:
            return None
        value: float = block["means"][AUTO][what]
        return value

    def at_least(value: float | None, bound: float) -> dict[str, Any]:
        return {"value": value, "bound": bound,
                "pass": None if value is None else value >= bound}

    both = [s for s, b in blocks.items() if "auto_vs_max_throughput" in b]
    out: dict[str, dict[str, Any]] = {
        "one": at_least(auto_mean("public/one/clipped"), TARGET_ONE),
        "tag": at_least(auto_mean("public/tag/clipped"), TARGET_TAG),
    }
    ratios = {s: blocks[s]["auto_vs_max_throughput"]["retries_ratio"] for s in both}
    out["retries"] = {
        "retries_ratio": ratios, "bound": TARGET_RETRIES_RATIO,
        "pass": all(r is not None and r <= TARGET_RETRIES_RATIO for r in ratios.values())
        if both else None}
    worse: dict[str, list[str]] = {}
    for s in both:
        a, x = blocks[s]["means"][AUTO], blocks[s]["means"][XPUT]
        worse[s] = [r for r in ("cores", "disk")
                    if a[f"{r}_efficiency"] < x[f"{r}_efficiency"]]
    out["cores_disk"] = {
        "below_max_throughput": {s: w for s, w in worse.items() if w},
        "pass": not any(worse.values()) if both else None}
    out["shifts"] = at_least(auto_mean("shifts/one"), TARGET_SHIFTS)
    losses = {s: blocks[s]["auto_vs_max_throughput"]["not_above_max_throughput"] for s in both}
    out["beats_max_throughput"] = {
        "not_above_on": {s: t for s, t in losses.items() if t},
        "pass": not any(losses.values()) if both else None}
    return out


#: The traces of ``learning_cost`` (``constant`` is made up: every task 1,000 MB).
COST_TRACES = ("exponential", "normal_large", "constant")


def _cost_per_task(tasks: Sequence[tuple[Resources, float]], mode: AllocationMode,
                   repeats: int) -> float:
    """Microseconds per task of asking a category for a task's first allocation and then
    recording its completion, the best of ``repeats`` runs."""
    best = float("inf")
    worker = PHUNG_MACHINE
    for _ in range(repeats):
        cat = Category("bench", CategoryConfig(mode=mode), pool=Pool())
        nothing = Resources()
        started = time.perf_counter()
        for key, (peak, wall) in enumerate(tasks):
            cat.request_for(nothing, Attempt.FIRST, worker, key)
            cat.record(peak, wall, False, task_key=key)
        best = min(best, time.perf_counter() - started)
    return best / len(tasks) * 1e6


def learning_cost(source: Path, modes: Sequence[AllocationMode], repeats: int
                  ) -> dict[str, Any]:
    """``learning_cost``: per trace and mode, microseconds per completion."""
    cap = PHUNG_MACHINE.astuple()
    out: dict[str, Any] = {"unit": "us per completion", "repeats": repeats, "traces": {}}
    for name in COST_TRACES:
        if name == "constant":
            tasks = [(Resources(cores=1, memory=1000, disk=1000), 10.0)] * 2000
        else:
            tasks = [(Resources(*(min(p, c or p) for p, c in zip(t.peak, cap, strict=True))),
                      t.time) for t in load_trace(source / f"{name}.txt")]
        out["traces"][name] = {m.value: round(_cost_per_task(tasks, m, repeats), 1)
                               for m in modes}
    if AllocationMode.AUTO in modes and AllocationMode.MAX_THROUGHPUT in modes:
        out["auto_vs_max_throughput"] = {
            name: _ratio(got[AUTO], got[XPUT]) for name, got in out["traces"].items()}
    return out


def _fit(tasks: Sequence[tuple[int, float]]) -> list[float]:
    """The optimal ladder of (peak, time) tasks, no price per retry."""
    mass: dict[int, float] = {}
    for peak, t in tasks:
        mass[peak] = mass.get(peak, 0.0) + t
    values = sorted(mass)
    total = sum(mass.values())
    return ladder_levels(values, [mass[v] / total for v in values])


def _score(ladder: Sequence[float], tasks: Sequence[tuple[int, float]], top: int) -> float:
    """Memory efficiency of ``ladder`` on ``tasks`` (then ``top``), failures charged in full."""
    used = charged = 0.0
    for peak, t in tasks:
        used += peak * t
        for level in [*ladder, top]:
            charged += level * t
            if level >= peak:
                break
    return used / charged


def ceiling(public: Path) -> dict[str, Any]:
    """``ceiling``: the best fixed ladder per trace, in hindsight and two-fold."""
    top = PHUNG_MACHINE.memory or 0
    per: dict[str, dict[str, float]] = {}
    for path in sorted(public.glob("*.txt")):
        tasks = [(min(t.peak[1], top), t.time) for t in load_trace(path)]
        half = len(tasks) // 2
        a, b = tasks[:half], tasks[half:]
        per[path.stem] = {
            "hindsight": round(_score(_fit(tasks), tasks, top), 4),
            "two_fold": round((_score(_fit(a), b, top) + _score(_fit(b), a, top)) / 2, 4)}
    return {"one_category": {
        "hindsight": round(_mean([v["hindsight"] for v in per.values()]), 4),
        "two_fold": round(_mean([v["two_fold"] for v in per.values()]), 4),
        "per_trace": per}}


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    source = Path(args.workloads) if args.workloads else shifts.find_source()
    if source is None or not source.is_dir():
        raise FileNotFoundError(
            f"the public traces were not found ({args.workloads or 'looked for '}"
            f"{'' if args.workloads else ' or '.join(str(d) for d in shifts.SOURCE_DIRS)}); "
            "pass --workloads DIR")
    public = source
    chosen = [s for s in shifts.SHIFTS if not args.quick or s.name in QUICK_SHIFTS]
    if args.quick:
        public = tmp / "public"
        public.mkdir()
        for name in QUICK_PUBLIC:
            (public / f"{name}.txt").symlink_to((source / f"{name}.txt").resolve())
    shift_dir = tmp / "shifts"
    log(f"building {len(chosen)} shift traces from {source}")
    shifts.build(source, shift_dir, chosen)
    dirs = {"public": public, "shifts": shift_dir}
    modes = tuple(m.value for m in args.modes)
    seeds = tuple(range(args.seeds))
    tables: dict[tuple[str, bool], dict[str, dict[str, tuple[float, float]]]] = {}
    for group, clip in (("public", False), ("public", True), ("shifts", True)):
        started = time.monotonic()
        _, tables[group, clip] = table(dirs[group], modes=args.modes, seeds=seeds,
                                       steady_n=args.steady_n, jobs=args.jobs,
                                       categories=("one", "tag"), clip=clip)
        log(f"table {group} clip={clip}: {time.monotonic() - started:.0f} s")
    jobs: list[_Job] = [
        (str(p), setting, categories, clip, modes, seeds, args.steady_n)
        for setting, group, categories, clip in SETTINGS
        for p in sorted(dirs[group].glob("*.txt"))]
    started = time.monotonic()
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as ex:
            done = list(ex.map(_resources, jobs))
    else:
        done = [_resources(j) for j in jobs]
    log(f"resources: {time.monotonic() - started:.0f} s")
    per: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for setting, trace, got in done:
        per.setdefault(setting, {})[trace] = got
    blocks: dict[str, dict[str, Any]] = {}
    for setting, group, categories, clip in SETTINGS:
        blocks[setting] = summarise(setting, tables[group, clip], per[setting],
                                    f"{{mode}} ({categories})", modes)
    tgt = targets(blocks)
    started = time.monotonic()
    cost = learning_cost(source, args.modes, 1 if args.quick else 3)
    log(f"learning cost: {time.monotonic() - started:.0f} s")
    bound = ceiling(public)
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_avg": os.getloadavg()},
        "config": {"quick": args.quick, "modes": list(modes), "seeds": len(seeds),
                   "steady_n": args.steady_n, "jobs": args.jobs, "workloads": str(source),
                   "public_traces": sorted(p.stem for p in public.glob("*.txt")),
                   "shift_traces": [s.name for s in chosen],
                   "simulated_machine": PHUNG_MACHINE.as_dict()},
        "settings": blocks,
        "learning_cost": cost,
        "ceiling": bound,
        "targets": tgt,
        "meets_targets": all(t["pass"] is not False for t in tgt.values()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="alloc-bench-") as tmp:
        try:
            out = run(args, Path(tmp))
        except FileNotFoundError as e:
            print(f"benchmarks/alloc.py: {e}", file=sys.stderr)
            return 2
    out["duration_s"] = round(time.monotonic() - start, 1)
    print(json.dumps(out, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
