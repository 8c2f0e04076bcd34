"""Trace-driven allocation simulator: one machine, tasks in order, one attempt at a time.

The model of Phung et al. (WORKS 2021), used to compare allocation modes on
published task-resource traces (``workloads/README.md``):

* tasks run in file order, one attempt at a time, on one machine (the
  largest worker); every resource is left unspecified by the task, so the
  category decides everything, and the box rule (``core/allocation.box``)
  turns its request into an allocation;
* an attempt is charged its allocation x the task's full duration; it fails
  if the task's peak exceeds the allocation in any resource, and a failed
  attempt is all waste;
* what a retry knows (the same for every mode): for each exhausted resource
  the monitor's reading at the kill, taken as the least whole value above
  the limit (allocation + 1), not the true peak; for the other resources the
  true peak (the charging model assumes the kill came at the end of the
  run). The category records that reading as an exhausted attempt, and the
  retry gets the element-wise max of the task's readings so far;
* a task whose peak exceeds the machine in some resource can never succeed:
  it is counted ``unrunnable`` once an attempt at the machine's full size in
  that resource has failed (or the category asks for more than the machine);
  under ``fixed`` an exhausted task fails at once (Work Queue's ERROR label).

Negative memory values in a trace (``normal_large`` has 7) are clamped to 0.

Categories (``--categories``): ``one`` runs the whole trace through one
category; ``tag`` gives each value of the trace's ``tag`` column its own
category (as Parsl's ``autocategory`` gives each app its own), every one made
like the single one (same config; seed derived from the run's seed and the tag
name), tasks still in file order on the one machine, metrics over the whole
trace. Peaks above the machine (``--clip``): by default they are simulated as
given (such tasks fail and are counted ``unrunnable``); with ``clip`` each
peak is first clipped to the machine, as the published evaluation does.
Either way ``above_machine`` counts the tasks with a peak above the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time as _time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.alloc import (
    AllocationMode,
    Attempt,
    BucketCache,
    Category,
    CategoryConfig,
    GiveUp,
    Pool,
    after_exhaustion,
    denoise_cores,
)
from ..core.allocation import box
from ..resources import FIELDS, Resources

__all__ = [
    "CATEGORY_SETTINGS",
    "PROBABILISTIC",
    "TraceTask",
    "load_trace",
    "main",
    "simulate",
    "table",
]

#: Modes whose results depend on the seed (reported as the mean over seeds).
PROBABILISTIC = frozenset({AllocationMode.GREEDY_BUCKETING, AllocationMode.EXHAUSTIVE_BUCKETING})
#: The machine of Phung et al.: 16 cores, 64,000 MB memory, 64,000 MB disk.
PHUNG_MACHINE = Resources(16, 64000, 64000, 0)
REPORTED = ("cores", "memory", "disk")
HEADER = ("taskid", "core", "memory", "virtual_memory", "disk", "time", "average_cores", "tag")
#: Accepted spellings of the task id column (compared case-insensitively).
ID_NAMES = ("taskid", "task_id")
#: Columns a header must name besides the id; ``tag`` is optional (default "").
REQUIRED = ("core", "memory", "disk", "time")
#: ``--categories``: one category for the whole trace, or one per value of ``tag``.
CATEGORY_SETTINGS = ("one", "tag")
_SEP = re.compile(r"\s+--\s+")


def _ints(res: Resources) -> tuple[int, int, int, int]:
    """The four fields as whole numbers, unspecified as 0."""
    c, m, d, g = res.astuple()
    return (c or 0, m or 0, d or 0, g or 0)


@dataclass(frozen=True)
class TraceTask:
    """One task of a trace: its peaks (cores, memory MB, disk MB, gpus) and duration (s)."""

    id: str
    peak: tuple[int, int, int, int]
    time: float
    tag: str = ""


def _number(text: str, column: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"column {column!r} is not a number: {text!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"column {column!r} is not finite: {text!r}")
    return v


def _columns(fields: list[str], where: str) -> dict[str, int]:
    """The header's column positions by lower-case name (the id column as ``taskid``)."""
    names = [f.lower() for f in fields]
    cols: dict[str, int] = {}
    for i, name in enumerate(names):
        key = "taskid" if name in ID_NAMES else name
        if key in cols:
            raise ValueError(f"{where}: column {fields[i]!r} appears twice in the header")
        cols[key] = i
    missing = [n for n in ("taskid", *REQUIRED) if n not in cols]
    if missing:
        raise ValueError(
            f"{where}: the header lacks column(s) {', '.join(repr(n) for n in missing)} "
            f"(the id spelled taskid or task_id); found: {', '.join(fields)}")
    return cols


def load_trace(path: str | Path) -> list[TraceTask]:
    """Read a trace: fields separated by `` -- `` (any whitespace around the ``--``).

    A header line names the columns (``taskid`` or ``task_id``, case-insensitive;
    ``core``, ``memory``, ``disk``, ``time`` required; ``tag`` optional; others
    ignored; any order). A file without a header must have the published eight
    columns ``taskid -- core -- memory -- virtual_memory -- disk -- time --
    average_cores -- tag``. Blank lines are skipped. What cannot be read raises
    ValueError naming the file, the line and the column. Cores are rounded up to whole
    cores (after Work Queue's de-noise rule), memory and disk up to whole MB; negative
    values are clamped to 0."""
    path = Path(path)
    tasks: list[TraceTask] = []
    cols: dict[str, int] | None = None
    width = 0
    names: tuple[str, ...] = HEADER
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text:
                continue
            parts = [p.strip() for p in _SEP.split(text)]
            where = f"{path}:{lineno}"
            if cols is None:
                if any(p.lower() in ID_NAMES for p in parts):
                    cols = _columns(parts, where)
                    width, names = len(parts), tuple(parts)
                    continue
                cols = {n: i for i, n in enumerate(HEADER)}
                width = len(HEADER)
            try:
                if len(parts) != width:
                    raise ValueError(
                        f"expected {width} fields separated by ' -- ' "
                        f"({' -- '.join(names)}), got {len(parts)}")
                cores = _number(parts[cols["core"]], "core")
                memory = _number(parts[cols["memory"]], "memory")
                disk = _number(parts[cols["disk"]], "disk")
                duration = _number(parts[cols["time"]], "time")
                if duration < 0:
                    raise ValueError(
                        f"column 'time' must not be negative: {parts[cols['time']]!r}")
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            peak = (denoise_cores(cores), max(0, math.ceil(memory)), max(0, math.ceil(disk)), 0)
            tag = parts[cols["tag"]] if "tag" in cols else ""
            tasks.append(TraceTask(parts[cols["taskid"]], peak, duration, tag))
    if not tasks:
        raise ValueError(f"{path}: no tasks in the trace")
    return tasks


def tag_seed(seed: int, tag: str) -> int:
    """The seed of the category of ``tag`` under ``--categories tag`` (deterministic)."""
    digest = hashlib.sha256(f"{seed}:{tag}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def simulate(tasks: Sequence[TraceTask], config: CategoryConfig, machine: Resources,
             seed: int = 0, *, bucket_cache: BucketCache | None = None,
             categories: str = "one", clip: bool = False) -> dict[str, object]:
    """Run ``tasks`` with ``config`` on ``machine``; return the metrics.

    ``categories``: ``"one"``, one category (seed ``seed``) for every task;
    ``"tag"``, one category per value of the task's tag, seeded with
    :func:`tag_seed`. ``clip``: clip every peak to the machine first.
    ``above_machine`` counts the tasks whose peak exceeds the machine in some
    resource (before clipping).

    Per resource (cores, memory, disk): ``allocated`` and ``used``
    (resource x seconds), ``waste`` = allocated - used, ``efficiency`` = 1 -
    waste / allocated, and ``mean_task_efficiency`` (per task, used / the sum
    of its attempts' allocations; 0 for a task that never completed).
    ``retries`` counts every attempt after a task's first. ``throughput`` is
    completed tasks per hour if the attempts were packed perfectly by the
    binding resource: completed / max_r(sum of alloc_r x t / capacity_r).
    ``bucket_cache`` memoises the bucketing between runs over the same trace.
    """
    if categories not in CATEGORY_SETTINGS:
        raise ValueError(f"categories must be one of {', '.join(CATEGORY_SETTINGS)}, "
                         f"got {categories!r}")
    cats: dict[str, Category] = {}
    pool = Pool()  # what ``auto`` categories share, as in the manager
    cap = _ints(machine)
    above = 0
    empty = Resources()
    allocated = [0.0] * 4
    used = [0.0] * 4
    task_eff_sum = [0.0] * 4
    task_eff_n = [0] * 4
    retries = attempts = completed = failed = unrunnable = 0
    for key, task in enumerate(tasks):
        peak = task.peak
        if any(peak[r] > cap[r] for r in range(4)):
            above += 1
            if clip:
                peak = (min(peak[0], cap[0]), min(peak[1], cap[1]), min(peak[2], cap[2]),
                        min(peak[3], cap[3]))
        name = task.tag if categories == "tag" else ""
        cat = cats.get(name)
        if cat is None:
            cat = cats[name] = Category(
                name or "sim", config, tag_seed(seed, name) if categories == "tag" else seed,
                bucket_cache=bucket_cache, pool=pool)
        t = task.time
        label = Attempt.FIRST
        before: list[int] | None = None
        exceeded: list[str] | None = None
        attempt = 0
        task_alloc = [0.0] * 4
        ok = False
        while True:
            request = cat.request_for(
                empty, label, machine, key,
                None if before is None else Resources._raw(*before),
                attempt=attempt, exceeded=exceeded)
            alloc_r = box(request, machine)
            if alloc_r is None:  # asks for more than the machine: it can never run
                unrunnable += 1
                failed += 1
                cat.forget(key)
                break
            alloc = _ints(alloc_r)
            attempts += 1
            for r in range(4):
                a = alloc[r]
                allocated[r] += a * t
                task_alloc[r] += a * t
            over = [r for r in range(4) if peak[r] > alloc[r]]
            if not over:
                for r in range(4):
                    used[r] += peak[r] * t
                cat.record(Resources._raw(*peak), t, False, task_key=key)
                completed += 1
                ok = True
                break
            exceeded = [FIELDS[r] for r in over]
            # what the monitor read: the true peaks, and nothing of the exceeded resources
            # (the decision takes those as allocation + 1)
            decision = after_exhaustion(
                config, empty, alloc_r, Resources._raw(*(0 if r in over else peak[r]
                                                          for r in range(4))),
                exceeded, machine, attempt + 1)
            reading = _ints(decision.used)
            cat.record(decision.used, t, True, task_key=key,
                       gave_up=decision.give_up is not None)
            if decision.give_up is not None:
                failed += 1
                unrunnable += decision.give_up is GiveUp.LARGEST
                break
            before = list(reading) if before is None else [
                max(a, b) for a, b in zip(before, reading, strict=True)]
            label = Attempt.MAX
            attempt += 1
            retries += 1
        for r in range(4):
            if task_alloc[r] > 0:
                task_eff_n[r] += 1
                if ok:
                    task_eff_sum[r] += peak[r] * t / task_alloc[r]
    resources: dict[str, dict[str, float]] = {}
    for r, name in enumerate(FIELDS):
        if name not in REPORTED:
            continue
        waste = allocated[r] - used[r]
        resources[name] = {
            "allocated": allocated[r],
            "used": used[r],
            "waste": waste,
            "efficiency": 1.0 - waste / allocated[r] if allocated[r] > 0 else 0.0,
            "mean_task_efficiency": task_eff_sum[r] / task_eff_n[r] if task_eff_n[r] else 0.0,
        }
    busy = max((allocated[r] / cap[r] for r in range(4) if cap[r] > 0), default=0.0)
    return {
        "strategy": config.mode.value,
        "seed": seed,
        "steady_n": config.steady_n,
        "categories": categories,
        "category_count": len(cats),
        "peaks": "clipped" if clip else "as given",
        "machine": dict(zip(FIELDS, cap, strict=True)),
        "tasks": len(tasks),
        "above_machine": above,
        "completed": completed,
        "failed": failed,
        "unrunnable": unrunnable,
        "attempts": attempts,
        "retries": retries,
        "resources": resources,
        "throughput": completed / busy * 3600.0 if busy > 0 else 0.0,
    }


# ------------------------------------------------------------------------ table
ALL_MODES = tuple(AllocationMode)


_Work = tuple[str, tuple[str, ...], tuple[int, ...], tuple[int, ...], int, tuple[str, ...], bool]


def _column(mode: str, setting: str, settings: Sequence[str]) -> str:
    """A table column's name: the mode, with the category setting when several are run."""
    return mode if len(settings) == 1 else f"{mode} ({setting})"


def _run_workload(args: _Work) -> dict[str, tuple[float, float]]:
    path, mode_names, seeds, machine, steady_n, settings, clip = args
    tasks = load_trace(path)
    m = Resources(*machine)
    out: dict[str, tuple[float, float]] = {}
    for setting in settings:
        for name in mode_names:
            mode = AllocationMode(name)
            cfg = CategoryConfig(mode=mode, steady_n=steady_n)
            runs = seeds if mode in PROBABILISTIC else seeds[:1]
            cache: BucketCache = {}
            effs = []
            rets = []
            for s in runs:
                res = simulate(tasks, cfg, m, s, bucket_cache=cache, categories=setting,
                               clip=clip)
                mem = res["resources"]
                assert isinstance(mem, dict)
                effs.append(mem["memory"]["efficiency"])
                rets.append(float(res["retries"]))  # type: ignore[arg-type]
            out[_column(name, setting, settings)] = (sum(effs) / len(effs),
                                                     sum(rets) / len(rets))
    return out


Results = dict[str, dict[str, tuple[float, float]]]
"""workload -> mode -> (mean memory efficiency, mean retries)."""


def table(directory: str | Path, modes: Iterable[AllocationMode] = ALL_MODES,
          seeds: Sequence[int] = tuple(range(10)), machine: Resources = PHUNG_MACHINE,
          steady_n: int = 25, jobs: int = 1, categories: Sequence[str] = ("one",),
          clip: bool = False) -> tuple[str, Results]:
    """Run every mode on every ``*.txt`` trace in ``directory``; return (Markdown, raw results).

    Probabilistic modes run once per seed and report the mean. The Markdown
    table has one row per workload and one column per mode: memory
    efficiency / retries, with the mean over workloads in the last row. With
    several ``categories`` settings there is a block of columns per setting,
    named ``MODE (SETTING)`` (also the keys of the raw results).
    """
    paths = sorted(Path(directory).glob("*.txt"))
    if not paths:
        raise ValueError(f"{directory}: no *.txt traces")
    settings = tuple(categories)
    if not settings or any(c not in CATEGORY_SETTINGS for c in settings):
        raise ValueError(f"categories must be from {', '.join(CATEGORY_SETTINGS)}, "
                         f"got {settings!r}")
    modes_run = tuple(m.value for m in modes)
    mode_list = tuple(_column(m, c, settings) for c in settings for m in modes_run)
    work: list[_Work] = [(str(p), modes_run, tuple(seeds), _ints(machine), steady_n, settings,
                          clip) for p in paths]
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as ex:
            rows = list(ex.map(_run_workload, work))
    else:
        rows = [_run_workload(w) for w in work]
    results = {p.stem: row for p, row in zip(paths, rows, strict=True)}
    lines = ["| workload | " + " | ".join(mode_list) + " |",
             "|---|" + "---|" * len(mode_list)]
    for name, row in results.items():
        cells = [f"{row[m][0]:.3f} / {row[m][1]:.0f}" for m in mode_list]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    means = []
    for m in mode_list:
        e = sum(r[m][0] for r in results.values()) / len(results)
        n = sum(r[m][1] for r in results.values()) / len(results)
        means.append(f"**{e:.3f} / {n:.0f}**")
    lines.append("| **mean** | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n", results


# ------------------------------------------------------------------------ CLI
def _machine(text: str) -> Resources:
    parts = text.split(",")
    if len(parts) not in (3, 4):
        raise argparse.ArgumentTypeError(
            f"expected CORES,MEMORY_MB,DISK_MB[,GPUS], e.g. 16,64000,64000; got {text!r}")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"machine sizes must be whole numbers: {text!r}") \
            from None
    if any(v < 0 for v in vals) or vals[0] < 1:
        raise argparse.ArgumentTypeError(f"machine needs >= 1 core and no negatives: {text!r}")
    return Resources(*vals)


def _mode(text: str) -> AllocationMode:
    try:
        return AllocationMode.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _modes(text: str) -> tuple[AllocationMode, ...]:
    return tuple(_mode(t) for t in text.split(",") if t.strip())


def _categories(text: str) -> tuple[str, ...]:
    vals = tuple(t.strip().lower() for t in text.split(",") if t.strip())
    bad = [v for v in vals if v not in CATEGORY_SETTINGS]
    if bad or not vals:
        raise argparse.ArgumentTypeError(
            f"expected {' or '.join(CATEGORY_SETTINGS)} (comma-separated with --table), "
            f"got {text!r}")
    return tuple(dict.fromkeys(vals))


def _positive(text: str) -> int:
    # Not cli.whole_number: the simulator does not import the command line (and zmq).
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def build_parser(prog: str = "packmule sim alloc") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Simulate an allocation mode on a task-resource trace (one machine, tasks in "
            "order, failed attempts charged in full) and print the metrics as JSON. With "
            "--table DIR, run every mode on every trace in DIR and print a Markdown table "
            "of memory efficiency / retries. Exit codes: 0 done, 2 bad command line or trace."
        ),
    )
    p.add_argument("--workload", metavar="FILE", help="trace file (taskid -- core -- ...)")
    p.add_argument("--strategy", type=_mode, metavar="MODE",
                   help="allocation mode: " + ", ".join(m.value for m in AllocationMode))
    p.add_argument("--machine", type=_machine, default=PHUNG_MACHINE,
                   metavar="CORES,MEMORY,DISK[,GPUS]",
                   help="the machine (largest worker); default 16,64000,64000")
    p.add_argument("--seed", type=int, default=0, help="seed of the probabilistic modes")
    p.add_argument("--steady-n", type=_positive, default=25, metavar="N",
                   help="Work Queue's category-steady-n-tasks (default 25)")
    p.add_argument("--table", metavar="DIR",
                   help="run every mode on every *.txt trace in DIR (seeds 0..9)")
    p.add_argument("--seeds", type=_positive, default=10, metavar="K",
                   help="with --table: seeds 0..K-1 for the probabilistic modes (default 10)")
    p.add_argument("--modes", type=_modes, default=ALL_MODES, metavar="M1,M2,...",
                   help="with --table: the modes to run (default: all)")
    p.add_argument("--jobs", type=_positive, default=1, metavar="J",
                   help="with --table: worker processes (default 1)")
    p.add_argument("--categories", type=_categories, default=("one",), metavar="one|tag",
                   help="one: one category for the whole trace (default); tag: one category "
                        "per value of the tag column; with --table a comma-separated list "
                        "(one,tag) gives a block of columns per setting")
    p.add_argument("--clip", action="store_true",
                   help="clip every peak to the machine before simulating (the published "
                        "evaluation); by default tasks above the machine fail and are counted")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``packmule sim alloc`` (also ``python -m packmule.sim.alloc``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 2
    if args.table:
        started = _time.perf_counter()
        try:
            text, _ = table(args.table, modes=args.modes, seeds=tuple(range(args.seeds)),
                            machine=args.machine, steady_n=args.steady_n, jobs=args.jobs,
                            categories=args.categories, clip=args.clip)
        except (OSError, ValueError) as e:
            print(f"packmule sim alloc: {e}", file=sys.stderr)
            return 2
        sys.stdout.write(text)
        print(f"({_time.perf_counter() - started:.0f} s)", file=sys.stderr)
        return 0
    if not args.workload or args.strategy is None:
        parser.print_usage(sys.stderr)
        print("packmule sim alloc: --workload and --strategy are required (or --table DIR)",
              file=sys.stderr)
        return 2
    if len(args.categories) != 1:
        print("packmule sim alloc: --categories takes one setting without --table",
              file=sys.stderr)
        return 2
    try:
        tasks = load_trace(args.workload)
        config = CategoryConfig(mode=args.strategy, steady_n=args.steady_n)
    except (OSError, ValueError) as e:
        print(f"packmule sim alloc: {e}", file=sys.stderr)
        return 2
    result = simulate(tasks, config, args.machine, args.seed, categories=args.categories[0],
                      clip=args.clip)
    result = {"workload": str(args.workload), **result}
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
