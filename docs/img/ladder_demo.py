"""Make docs/img/ladder.svg: one ``auto`` category's memory ladder over a real run.

Run from the repository root (about a minute; no dependency beyond packmule)::

    python docs/img/ladder_demo.py [--keep DIR] [--out PATH] [--seed N]

One local worker of 1 core and 300 MB runs 200 Python tasks of one category in
mode ``auto``, one attempt at a time (1 core, prefetching off), in three phases:
a bimodal one (three in four tasks peak near 30 MB, the others near 90 MB), a
shift to tasks near 120 MB, then small tasks again. Each task really holds its
memory (as in tests/test_alloc_live.py): it touches what fits its allocation at
once and, near the end of its duration, the rest; one that does not fit grows
just past its allocation and waits for the worker to kill it (``--enforce
poll``: exact, and no root needed). The run's event log is then read back and
drawn, as hand-written SVG: each attempt at its allocation, coloured by outcome,
the measured peak of each success, and the category's first-attempt allocation
as a step line. The run directory goes to a temporary directory (or ``--keep
DIR``), never to ./packmule-runs.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

HERE = Path(__file__).resolve().parent
CATEGORY = "ladder"
#: The worker: 1 core (one attempt at a time), memory in MB.
WORKER_MB = 300
MB = 1 << 20

sys.path.insert(0, str(HERE.parent.parent))  # the repository root: its tests package
from tests.test_alloc_live import TASK  # noqa: E402  (every task's body, shared)


@dataclass
class Phase:
    label: str
    tasks: int
    peaks: list[tuple[float, int, int]]  # (probability, low MB, high MB)


PHASES = [
    Phase("bimodal: ~30 MB, 1 in 4 ~90 MB", 100, [(0.75, 25, 35), (0.25, 85, 95)]),
    Phase("shift: ~120 MB", 50, [(1.0, 110, 130)]),
    Phase("back to ~30 MB", 50, [(1.0, 25, 35)]),
]


def workload(seed: int) -> list[tuple[int, int, float]]:
    """(phase, peak MB, duration s) of every task, in submission order."""
    rng = random.Random(seed)
    out = []
    for p, phase in enumerate(PHASES):
        for _ in range(phase.tasks):
            r, acc = rng.random(), 0.0
            lo, hi = phase.peaks[-1][1:]
            for prob, low, high in phase.peaks:
                acc += prob
                if r < acc:
                    lo, hi = low, high
                    break
            out.append((p, rng.randint(lo, hi), rng.uniform(0.05, 0.2)))
    return out


def run(work: list[tuple[int, int, float]], tmp: Path) -> Path:
    """Run the workload; the path of its event log."""
    from packmule import PythonTask
    from packmule.local import local_cluster

    with local_cluster(1, cores=1, memory=WORKER_MB, disk=1000, run_dir=tmp / "run",
                       prefetch=False,
                       worker_args=["--workdir", str(tmp / "work"), "--enforce", "poll"]) as mgr:
        deadline = time.monotonic() + 30
        while mgr.stats().workers < 1:  # sized against the worker from the first task
            if time.monotonic() > deadline:
                sys.exit("the local worker did not connect")
            time.sleep(0.05)
        mgr.configure_category(CATEGORY, "auto")
        tasks = [PythonTask(exec, TASK, {"size": peak * MB - MB // 4, "duration": duration,
                                         "gap": MB, "over": MB // 4, "lead": 0.05,
                                         "patience": 1.0}, category=CATEGORY)
                 for _, peak, duration in work]
        futures = [mgr.submit(t) for t in tasks]
        for f in futures:
            f.result(timeout=300)
        events_path = Path(mgr.events_path)
    return events_path  # read after the manager has shut down: the log is complete


@dataclass
class Attempt:
    task: str
    phase: int  # of PHASES, from the task's place in the order of submission
    attempt: int
    allocation: float  # MB
    status: str = ""
    wall: float = 0.0
    peak: float = 0.0  # MB


def attempts_from(events_path: Path) -> list[Attempt]:
    """Every attempt of the category, in dispatch order, from the event log."""
    from packmule.observe.events import read_events

    ends = [sum(p.tasks for p in PHASES[:k + 1]) for k in range(len(PHASES))]
    out: list[Attempt] = []
    by_key: dict[tuple[str, int], Attempt] = {}
    phase: dict[str, int] = {}  # task id: its phase
    for e in read_events(events_path):
        kind = e["event"]
        if kind == "task_submitted" and e.get("category") == CATEGORY:
            phase[e["task"]] = next((k for k, end in enumerate(ends) if len(phase) < end), -1)
        elif kind == "attempt_dispatched" and e["task"] in phase:
            a = Attempt(e["task"], phase[e["task"]], e["attempt"], e["allocation"]["memory"])
            by_key[e["task"], e["attempt"]] = a
            out.append(a)
        elif kind == "attempt_finished" and (e["task"], e["attempt"]) in by_key:
            a = by_key[e["task"], e["attempt"]]
            a.status, a.wall = e["status"], e["wall_time"]
            a.peak = (e.get("measured") or {}).get("memory") or 0.0
    return out


def numbers(attempts: list[Attempt]) -> dict[str, Any]:
    ok = [a for a in attempts if a.status == "success"]
    allocated = sum(a.allocation * a.wall for a in attempts)
    used = sum(a.peak * a.wall for a in ok)
    return {"tasks": len(ok), "attempts": len(attempts),
            "retries": sum(a.status == "exhausted" for a in attempts),
            "other": sum(a.status not in ("success", "exhausted") for a in attempts),
            "efficiency": used / allocated if allocated else 0.0,
            "whole_worker": used / sum(WORKER_MB * a.wall for a in ok) if ok else 0.0}


# ---------------------------------------------------------------------------- drawing
W, H = 800, 440
LEFT, RIGHT, TOP, BOTTOM = 62, 16, 70, 82
OK, BAD, PEAK, STEP = "#2f6db5", "#d62728", "#222222", "#f28e1c"


def nice_step(span: float, ticks: int) -> float:
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def svg(attempts: list[Attempt], stats: dict[str, Any]) -> str:
    n = len(attempts)
    ymax_data = max(max(a.allocation for a in attempts), max(a.peak for a in attempts))
    ystep = nice_step(ymax_data, 6)
    ymax = ystep * math.ceil(ymax_data * 1.1 / ystep)  # room for the phases' labels
    x0, x1, y0, y1 = LEFT, W - RIGHT, H - BOTTOM, TOP  # plot box (y0 is the bottom)

    def X(i: float) -> float:  # attempt number (1..n), at the middle of its slot
        return x0 + (i - 0.5) * (x1 - x0) / n

    def Y(mb: float) -> float:
        return y0 - mb * (y0 - y1) / ymax

    o: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" '
        'font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">'
        "auto: one category\u2019s memory ladder over a run (from events.jsonl)</text>",
    ]
    # phases: shaded bands, labelled at the top of the plot
    starts: list[tuple[int, int]] = []  # (phase, first attempt number)
    for i, a in enumerate(attempts, 1):
        p = a.phase
        if not starts or (p != starts[-1][0] and a.attempt == 1):
            starts.append((p, i))
    for k, (p, first) in enumerate(starts):
        last = starts[k + 1][1] - 1 if k + 1 < len(starts) else n
        left, right = X(first - 0.5), X(last + 0.5)
        if k % 2 == 1:
            o.append(f'<rect x="{left:.1f}" y="{y1}" width="{right - left:.1f}" '
                     f'height="{y0 - y1}" fill="#f1f1f1"/>')
        label = PHASES[p].label if 0 <= p < len(PHASES) else ""
        o.append(f'<text x="{(left + right) / 2:.1f}" y="{y1 + 15}" text-anchor="middle" '
                 f'fill="#555">{escape(label)}</text>')
    # grid and axes
    for k in range(int(ymax / ystep) + 1):
        v = k * ystep
        o.append(f'<line x1="{x0}" x2="{x1}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" '
                 f'stroke="{"#999" if k == 0 else "#e0e0e0"}"/>')
        o.append(f'<text x="{x0 - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    xstep = int(nice_step(n, 8))
    for i in range(0, n + 1, xstep):
        xi = X(max(i, 1))
        o.append(f'<line x1="{xi:.1f}" x2="{xi:.1f}" y1="{y0}" y2="{y0 + 5}" stroke="#999"/>')
        o.append(f'<text x="{xi:.1f}" y="{y0 + 18}" text-anchor="middle">{max(i, 1)}</text>')
    o.append(f'<line x1="{x0}" x2="{x0}" y1="{y0}" y2="{y1}" stroke="#999"/>')
    o.append(f'<text x="{(x0 + x1) / 2}" y="{y0 + 36}" text-anchor="middle">'
             "attempt (in dispatch order; one at a time on a 1-core worker)</text>")
    o.append(f'<text transform="translate(16 {(y0 + y1) / 2}) rotate(-90)" '
             'text-anchor="middle">memory (MB)</text>')
    # the first-attempt allocation, a step line from each first attempt to the next
    pts: list[str] = []
    level = None
    for i, a in enumerate(attempts, 1):
        if a.attempt == 1 and a.allocation != level:
            if level is not None:
                pts.append(f"{X(i - 0.5):.1f},{Y(level):.1f}")
            level = a.allocation
            pts.append(f"{X(i - 0.5):.1f},{Y(level):.1f}")
    if level is not None:
        pts.append(f"{X(n + 0.5):.1f},{Y(level):.1f}")
    o.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{STEP}" '
             'stroke-width="2" stroke-linejoin="round"/>')
    # attempts: a dot at the allocation (success), a cross (exhausted), a dash at the peak
    for i, a in enumerate(attempts, 1):
        x, y = X(i), Y(a.allocation)
        if a.status == "success":
            o.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.6" fill="{OK}"/>')
            yp = Y(a.peak)
            o.append(f'<line x1="{x - 2.2:.1f}" x2="{x + 2.2:.1f}" y1="{yp:.1f}" '
                     f'y2="{yp:.1f}" stroke="{PEAK}" stroke-width="1.3"/>')
        else:
            o.append(f'<path d="M{x - 3.2:.1f},{y - 3.2:.1f}l6.4,6.4m0,-6.4l-6.4,6.4" '
                     f'stroke="{BAD}" stroke-width="1.8"/>')
    first = attempts[0]
    if first.allocation >= WORKER_MB:
        o.append(f'<text x="{X(1) + 8:.1f}" y="{Y(first.allocation) + 4:.1f}" '
                 f'font-size="11.5" fill="#444">\u2190 cold start: the probe (1,000 MB) '
                 f"capped at the worker\u2019s {WORKER_MB} MB</text>")
    # legend, between the title and the plot
    items = [("step", "first-attempt allocation"), ("ok", "attempt succeeded"),
             ("bad", "attempt exhausted its memory"), ("peak", "its measured peak")]
    widths = [23 + 6.1 * len(text) + 24 for _, text in items]  # 12 px DejaVu Sans
    lx, ly = (W - sum(widths) + 24) / 2, 48
    for (kind, text), width in zip(items, widths, strict=True):
        if kind == "step":
            o.append(f'<line x1="{lx}" x2="{lx + 18}" y1="{ly}" y2="{ly}" stroke="{STEP}" '
                     'stroke-width="2"/>')
        elif kind == "ok":
            o.append(f'<circle cx="{lx + 9}" cy="{ly}" r="3" fill="{OK}"/>')
        elif kind == "bad":
            o.append(f'<path d="M{lx + 5.5},{ly - 3.5}l7,7m0,-7l-7,7" stroke="{BAD}" '
                     'stroke-width="1.8"/>')
        else:
            o.append(f'<line x1="{lx + 5}" x2="{lx + 13}" y1="{ly}" y2="{ly}" '
                     f'stroke="{PEAK}" stroke-width="1.5"/>')
        o.append(f'<text x="{lx + 23}" y="{ly + 4}">{escape(text)}</text>')
        lx += width
    foot = [f"Dots and crosses: each attempt at its allocation. {stats['tasks']} tasks, "
            f"{stats['attempts']} attempts ({stats['retries']} retried higher); "
            f"worker: 1 core, {WORKER_MB} MB.",
            f"Memory efficiency {stats['efficiency']:.2f}: measured peak \u00d7 wall time "
            "of successes / allocation \u00d7 wall time of every attempt."]
    for k, line in enumerate(foot):
        o.append(f'<text x="{x0}" y="{H - 24 + 15 * k}" font-size="11.5" fill="#444">'
                 f"{escape(line)}</text>")
    o.append("</svg>")
    return "\n".join(o) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", metavar="DIR", help="keep the run directory here")
    ap.add_argument("--events", metavar="PATH",
                    help="draw this run's events.jsonl (a run of this script) instead of "
                         "running the workload again")
    ap.add_argument("--out", default=str(HERE / "ladder.svg"))
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    took = None
    if args.events:
        attempts = attempts_from(Path(args.events))
    else:
        with tempfile.TemporaryDirectory(prefix="packmule-ladder-demo-") as tmp:
            started = time.monotonic()
            events_path = run(workload(args.seed), Path(args.keep or tmp))
            took = time.monotonic() - started
            attempts = attempts_from(events_path)
            if args.keep:
                print(events_path)
    stats = numbers(attempts)
    Path(args.out).write_text(svg(attempts, stats))
    print(args.out)
    print(f"{stats['tasks']} tasks" + (f" in {took:.0f} s" if took is not None else "")
          + f": {stats['attempts']} attempts, {stats['retries']} retries (exhausted memory)"
          + (f", {stats['other']} other failed attempts" if stats["other"] else ""))
    print(f"memory efficiency {stats['efficiency']:.3f} (measured peak x wall of successes "
          f"/ allocated MB x wall of every attempt); a whole {WORKER_MB} MB worker per task "
          f"would be {stats['whole_worker']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
