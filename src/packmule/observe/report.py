"""``packmule report``: one self-contained HTML page from a run's event log.

The page is plain HTML with inline CSS and inline SVG (tooltips are SVG
``<title>`` elements); its only script records script errors into the page
and the time the page took to lay out, for the tests and the benchmark.
Large runs are drawn downsampled: beyond :data:`MAX_BARS` attempts the
timeline draws one SVG path per worker, category and outcome (touching bars
joined) instead of an element per attempt, at most :data:`MAX_ROWS` worker
rows are drawn, time series are binned to :data:`BINS` points, and each
per-task plot (memory and cores per category) draws at most
:data:`PLOT_POINTS` steps per line. For 100,000 tasks the page is about
1.2 MB and opens in a fraction of a second (``benchmarks/report.py``).
"""

from __future__ import annotations

import argparse
import heapq
import html
import math
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

from .._version import __version__
from .events import EVENTS_FILE, EventLogError, read_events, read_header
from .rundir import RunDirError, resolve
from .units import cores as cores_text
from .units import duration, megabytes, resources

#: Up to this many attempts the timeline draws each as its own bar with a tooltip;
#: beyond, bars are drawn as one path per worker, category and outcome.
MAX_BARS = 5_000
#: In such paths, bars less than this many pixels apart are joined (see _compact).
MERGE_PX = 0.5
#: At most this many workers get a timeline row.
MAX_ROWS = 60
#: Time series are binned to about this many points when they have more steps.
BINS = 1_000
#: Points per line of a category's plots of allocated vs measured memory and cores.
PLOT_POINTS = 300
#: Failure groups and worker departures listed in full up to this many.
MAX_LIST = 100

#: Category colours (failure marks use red and black, so neither is here).
PALETTE = (
    "#3b75af", "#ef8a36", "#4c9f57", "#8e6bb8", "#2aa6a6", "#c9a227",
    "#a5654b", "#d46a9f", "#7f8c8d", "#5d9fd6", "#9bbb59", "#6b5b95",
)

#: Attempt outcomes as drawn: the CSS class of a bar and what the legend says.
OUTCOMES = {
    "ok": "succeeded",
    "failed": "failed (exception, timeout, crash, ...)",
    "exhausted": "exceeded its allocation (retried bigger)",
    "lost": "lost with its worker (dispatch to loss)",
    "cut": "cancelled or unfinished",
}
FAILED_STATUSES = {"exception", "timeout", "crashed", "setup_error", "forsaken", "pack_error"}

MB_PER_GB = 1000.0
DASH = "\u2013"


# ============================================================== reading


def read_run(run_dir: Path) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    """The header (checked) and the events of a run directory's event log."""
    path = run_dir / EVENTS_FILE
    return read_header(path), read_events(path)


# ============================================================== the model


#: attempt_finished statuses (and the states an attempt ends in otherwise) -> the outcome drawn.
_OUTCOME = {"success": "ok", "exhausted": "exhausted", "lost": "lost", "cancelled": "cut",
            "unfinished": "cut"}
#: Ends that are not a finish: the attempt held its allocation from dispatch to then.
#: ``failed``: its task failed before the attempt started (at dispatch).
_CUT_SHORT = ("lost", "cancelled", "unfinished", "failed")


class Attempt:
    """One attempt: dispatched to a worker, then finished, lost, cancelled, or still
    running when the log ends (unfinished)."""

    __slots__ = ("alloc_cores", "alloc_memory", "allocation", "attempt", "bar_start",
                 "category", "dispatched", "duration", "end", "meas_cores", "meas_memory",
                 "measured", "outcome", "started", "status", "task", "wall", "worker")

    def __init__(self, task: int, attempt: int, worker: str, category: str, dispatched: float,
                 allocation: dict[str, Any]) -> None:
        self.task, self.attempt, self.worker = task, attempt, worker
        self.category, self.dispatched = category, dispatched
        self.allocation = allocation
        self.started: float | None = None
        self.end = dispatched
        self.status = "unfinished"
        self.measured: dict[str, Any] = {}
        self.wall = 0.0
        # Filled in by finish():
        self.outcome = "cut"
        self.bar_start = dispatched
        self.duration = 0.0
        self.alloc_cores = self.alloc_memory = self.meas_cores = self.meas_memory = 0.0

    def finish(self) -> None:
        """Derive what the report draws: its outcome, where its bar starts, how long it
        held its allocation (the wall time of a finished attempt, else dispatch to loss,
        cancel or the end of the run), and its main resources as numbers."""
        self.outcome = _OUTCOME.get(self.status, "failed")
        if self.status in _CUT_SHORT or self.started is None:
            self.bar_start = self.dispatched
            self.duration = max(0.0, self.end - self.dispatched)
        else:
            self.bar_start = self.started
            self.duration = max(0.0, self.wall)
        self.alloc_cores = _get(self.allocation, "cores")
        self.alloc_memory = _get(self.allocation, "memory")
        self.meas_cores = mean_cores(self.measured, self.wall)
        self.meas_memory = _get(self.measured, "memory")


def _get(d: dict[str, Any], key: str) -> float:
    """A number from a resource object (0 when absent, null or not a number)."""
    v: Any = d.get(key)
    return float(v) if type(v) in (int, float) else 0.0


def mean_cores(measured: dict[str, Any], wall: float = 0.0) -> float:
    """An attempt's mean cores in use: ``cores_avg``, else ``cpu_time`` over its wall
    time, else (a log without either) ``cores``, which the worker measures as the peak.
    0 when nothing was measured."""
    numbers = (int, float)
    avg: Any = measured.get("cores_avg")
    if type(avg) in numbers:
        return float(avg)
    cpu: Any = measured.get("cpu_time")
    w: Any = measured.get("wall_time")
    w = float(w) if type(w) in numbers else wall
    if type(cpu) in numbers and w > 0:
        return float(cpu) / float(w)
    return _get(measured, "cores")


def has_cores(measured: dict[str, Any]) -> bool:
    """Whether an attempt's measurement gives its cores in use (see :func:`mean_cores`)."""
    return any(type(measured.get(k)) in (int, float) for k in ("cores_avg", "cpu_time", "cores"))


@dataclass
class Worker:
    worker: str
    host: str
    resources: dict[str, float]
    joined: float
    left: float | None = None
    why: str | None = None
    requeued: int = 0
    #: ``worker_left``'s ``lost``: the manager declared it lost (None in logs without it).
    lost: bool | None = None


def was_lost(w: Worker) -> bool:
    """Whether a worker that left was lost (rather than leaving or being let go): its
    ``worker_left`` event says so; in a log without ``lost``, tasks were requeued from it."""
    if w.left is None:
        return False
    if w.lost is not None:
        return w.lost
    return w.requeued > 0


@dataclass
class Failure:
    task: int
    category: str
    error: str
    message: str


@dataclass
class Run:
    header: dict[str, Any]
    start: float
    end: float
    stopped: dict[str, Any] | None
    attempts: list[Attempt]
    workers: dict[str, Worker]
    task_category: dict[int, str]
    task_request: dict[int, dict[str, float]]
    done_ok: set[int]
    failures: list[Failure]
    cancelled: set[int]
    retries: Counter[str]
    lost: Counter[str]
    category_changes: list[dict[str, Any]]


def _resources(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {k: float(v) for k, v in value.items() if type(v) in (int, float)}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def build(header: dict[str, Any], events: Iterable[dict[str, Any]]) -> Run:
    """The run an event log describes."""
    start = float(header.get("t") or 0.0)
    last = start
    attempts: list[Attempt] = []
    open_: dict[tuple[Any, Any], Attempt] = {}
    open_by_task: dict[Any, tuple[Any, Any]] = {}
    workers: dict[str, Worker] = {}
    task_category: dict[int, str] = {}
    task_request: dict[int, dict[str, float]] = {}
    done_ok: set[int] = set()
    failures: list[Failure] = []
    cancelled: set[int] = set()
    retries: Counter[str] = Counter()
    lost: Counter[str] = Counter()
    changes: list[dict[str, Any]] = []
    stopped: dict[str, Any] | None = None
    numbers = (int, float)
    pop = open_.pop

    t: Any
    tid: Any
    for ev in events:
        t = ev.get("t")
        if type(t) not in numbers:
            continue
        if t > last:
            last = t
        kind = ev.get("event")
        if kind == "attempt_finished":
            a = pop((ev.get("task"), ev.get("attempt")), None)
            if a is None:
                continue
            a.end = t
            a.status = str(ev.get("status") or "success")
            a.measured = _dict(ev.get("measured"))
            wall: Any = ev.get("wall_time")
            a.wall = float(wall) if type(wall) in numbers else max(0.0, t - a.dispatched)
            started: Any = ev.get("started")
            a.started = float(started) if type(started) in numbers else t - a.wall
        elif kind == "attempt_dispatched":
            tid = ev.get("task")
            key = (tid, ev.get("attempt"))
            old = pop(key, None)
            if old is not None:  # dispatched again without an end: it was lost
                old.status, old.end = "lost", t
            new = Attempt(tid if type(tid) is int else -1, int(ev.get("attempt") or 0),
                          str(ev.get("worker")), task_category.get(tid, "default"), t,
                          _dict(ev.get("allocation")))
            attempts.append(new)
            open_[key] = new
            open_by_task[tid] = key
        elif kind == "task_done":
            tid = ev.get("task")
            if type(tid) is not int:
                continue
            # An attempt still open failed before it finished (at dispatch: no
            # attempt_finished): it ends here, not at the end of the run.
            a = pop(open_by_task.pop(tid, (None, None)), None)
            if a is not None:
                a.status, a.end = ("unfinished" if ev.get("ok") else "failed"), t
            if ev.get("ok"):
                done_ok.add(tid)
            else:
                failures.append(Failure(tid, task_category.get(tid, "default"),
                                        str(ev.get("error") or "error"),
                                        str(ev.get("message") or "")))
        elif kind == "task_submitted":
            tid = ev.get("task")
            if type(tid) is int:
                task_category[tid] = str(ev.get("category") or "default")
                task_request[tid] = _dict(ev.get("request"))
        elif kind == "task_lost":
            a = pop((ev.get("task"), ev.get("attempt")), None)
            if a is not None:
                a.status, a.end = "lost", t
                lost[a.category] += 1
        elif kind == "task_retried":
            tid = ev.get("task")
            retries[task_category.get(tid, "default")] += 1
        elif kind == "task_cancelled":
            tid = ev.get("task")
            if type(tid) is int:
                cancelled.add(tid)
            a = pop(open_by_task.get(tid, (None, None)), None)
            if a is not None:
                a.status, a.end = "cancelled", t
        elif kind == "worker_joined":
            wid = str(ev.get("worker"))
            workers[wid] = Worker(wid, str(ev.get("host") or "?"),
                                  _resources(ev.get("resources")), t)
        elif kind == "worker_left":
            wid = str(ev.get("worker"))
            w = workers.get(wid)
            if w is None:  # joined before the log began
                w = workers[wid] = Worker(wid, str(ev.get("host") or "?"), {}, start)
            w.left, w.why = t, str(ev.get("why") or "")
            req = ev.get("requeued")
            w.requeued = req if type(req) is int else len(req) if isinstance(req, list) else 0
            was: Any = ev.get("lost")
            w.lost = was if type(was) is bool else None
        elif kind == "category_changed":
            changes.append(ev)
        elif kind == "manager_stopped":
            stopped = ev

    end = float(stopped["t"]) if stopped else last
    end = max(end, start)
    # A cancelled task is counted as cancelled, not failed.
    failures = [f for f in failures if f.task not in cancelled]
    done_ok -= cancelled
    for a in open_.values():
        a.status, a.end = "unfinished", end
    for a in attempts:
        a.finish()
    return Run(header, start, end, stopped, attempts, workers, task_category,
               task_request, done_ok, failures, cancelled, retries, lost, changes)


# ============================================================== formatting

_esc = html.escape


def _num(v: float, digits: int = 1) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100 or float(v).is_integer():
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _f(v: float) -> str:
    """A coordinate: at most one decimal."""
    r = round(float(v), 1)
    return str(int(r)) if r.is_integer() else str(r)


_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
               21600, 43200, 86400, 172800, 604800)


def _time_ticks(span: float, target: int = 10) -> list[float]:
    if span <= 0:
        return [0.0]
    raw = span / target
    step = _nice(raw) if raw < 1 else next((s for s in _TIME_STEPS if s >= raw), _TIME_STEPS[-1])
    n = int(span / step + 1e-9)
    return [i * step for i in range(n + 1)]


def _time_label(s: float) -> str:
    """Seconds since the start, short: 45s, 1.5s, 12m, 12m30s, 2h, 2h15m."""
    if s < 60:
        if s < 1 and s != 0:
            return f"{s:.3g}s"
        return f"{s:.0f}s" if abs(s - round(s)) < 0.05 else f"{s:.1f}s"
    if s < 3600:
        m, sec = divmod(round(s), 60)
        return f"{m}m{sec:02d}s" if sec else f"{m}m"
    h, rest = divmod(round(s), 3600)
    return f"{h}h{rest // 60:02d}m" if rest // 60 else f"{h}h"


def _nice(x: float) -> float:
    """The 1-2-5 number at or above ``x``."""
    if x <= 0:
        return 1.0
    e = math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        if m * 10**e >= x * (1 - 1e-9):
            return float(m * 10**e)
    return float(10 ** (e + 1))


def _value_ticks(top: float, target: int = 4) -> tuple[float, list[float]]:
    """A rounded top of the axis and its ticks."""
    if top <= 0:
        return 1.0, [0.0, 1.0]
    step = _nice(top / target)
    n = math.ceil(top / step - 1e-9)
    return n * step, [i * step for i in range(n + 1)]


# ============================================================== series


def _step_series(times: list[float], changes: Iterable[float], t0: float, t1: float
                 ) -> tuple[list[tuple[float, float]], float]:
    """A step function from its changes at ``times`` (sorted): its (time, value)
    corners and its maximum."""
    if times[0] < t0 or times[-1] > t1:
        times = [min(max(t, t0), t1) for t in times]
    pts: list[tuple[float, float]] = [(t0, 0.0)]
    peak = 0.0
    for t, v in zip(times, accumulate(changes), strict=True):
        v = 0.0 if abs(v) < 1e-6 else v  # float sums leave crumbs
        peak = max(peak, v)
        if pts[-1][0] == t:
            pts[-1] = (t, v)
        else:
            pts.append((t, v))
    return pts, peak


def _binned(spans: list[tuple[float, float, float, float]], t0: float, t1: float,
            bins: int) -> tuple[list[float], list[float]]:
    """The mean of two step functions (the sums of spans' cores and memory) over each
    of ``bins`` equal intervals, straight from the spans: no sorting."""
    width = (t1 - t0) / bins
    area_c, area_m = [0.0] * bins, [0.0] * bins
    # A span covering whole bins adds its value to each: kept as changes at their edges.
    diff_c, diff_m = [0.0] * (bins + 1), [0.0] * (bins + 1)
    last = bins - 1
    for s, e, c, m in spans:
        s, e = max(s, t0), min(e, t1)
        if e <= s or not (c or m):
            continue
        ks = int((s - t0) / width)
        ke = int((e - t0) / width)
        ks = 0 if ks < 0 else last if ks > last else ks
        ke = 0 if ke < 0 else last if ke > last else ke
        if ks == ke:
            area_c[ks] += c * (e - s)
            area_m[ks] += m * (e - s)
            continue
        head = t0 + (ks + 1) * width - s
        tail = e - (t0 + ke * width)
        area_c[ks] += c * head
        area_m[ks] += m * head
        area_c[ke] += c * tail
        area_m[ke] += m * tail
        diff_c[ks + 1] += c
        diff_c[ke] -= c
        diff_m[ks + 1] += m
        diff_m[ke] -= m
    full_c = accumulate(diff_c)
    full_m = accumulate(diff_m)
    return ([max(0.0, a / width + f) for a, f in zip(area_c, full_c, strict=False)],
            [max(0.0, a / width + f) for a, f in zip(area_m, full_m, strict=False)])


def _series(spans: list[tuple[float, float, float, float]], t0: float, t1: float
            ) -> tuple[tuple[list[tuple[float, float]], float],
                       tuple[list[tuple[float, float]], float]]:
    """Two step functions (cores, memory) from (start, end, cores, memory) spans: each
    its points and its highest value (exact; when binned, the highest mean drawn)."""
    bins = BINS
    if 2 * len(spans) > bins and t1 > t0:
        cores, memory = _binned(spans, t0, t1, bins)
        width = (t1 - t0) / bins
        times = [t0 + k * width for k in range(bins)]
        return ((list(zip(times, cores, strict=True)), max(cores)),
                (list(zip(times, memory, strict=True)), max(memory)))
    changes = [(s, c, m) for s, _, c, m in spans if c or m]
    changes += [(e, -c, -m) for _, e, c, m in spans if c or m]
    if not changes:
        return ([(t0, 0.0)], 0.0), ([(t0, 0.0)], 0.0)
    changes.sort()  # by time; at one time ends (negative) before starts
    at, cores_d, memory_d = zip(*changes, strict=True)
    return (_step_series(list(at), cores_d, t0, t1),
            _step_series(list(at), memory_d, t0, t1))


def _step_path(pts: list[tuple[float, float]], x: Any, y: Any, t1: float) -> str:
    if not pts:
        return ""
    out = [f"M{_f(x(pts[0][0]))} {_f(y(pts[0][1]))}"]
    for t, v in pts[1:]:
        out.append(f"H{_f(x(t))}V{_f(y(v))}")
    out.append(f"H{_f(x(t1))}")
    return "".join(out)


# ============================================================== SVG pieces


class _Frame:
    """A plot area inside an SVG: time (or any) on x, values on y."""

    def __init__(self, width: float, height: float, left: float, right: float, top: float,
                 bottom: float, x0: float, x1: float, y1: float) -> None:
        self.width, self.height = width, height
        self.l, self.r, self.t, self.b = left, right, top, bottom
        self.x0, self.x1 = x0, (x1 if x1 > x0 else x0 + 1)
        self.y1 = y1 if y1 > 0 else 1.0
        self.pw = width - left - right
        self.ph = height - top - bottom

    def x(self, v: float) -> float:
        return self.l + (v - self.x0) / (self.x1 - self.x0) * self.pw

    def y(self, v: float) -> float:
        return self.t + self.ph - v / self.y1 * self.ph

    def time_axis(self, start: float, label: bool = True) -> str:
        out = []
        base = self.t + self.ph
        for s in _time_ticks(self.x1 - self.x0):
            xx = _f(self.x(self.x0 + s))
            out.append(f'<line class="grid" x1="{xx}" x2="{xx}" y1="{_f(self.t)}" '
                       f'y2="{_f(base)}"/>')
            if label:
                out.append(f'<text class="tick" x="{xx}" y="{_f(base + 14)}" '
                           f'text-anchor="middle">{_time_label(s)}</text>')
        out.append(f'<line class="axis" x1="{_f(self.l)}" x2="{_f(self.l + self.pw)}" '
                   f'y1="{_f(base)}" y2="{_f(base)}"/>')
        return "".join(out)

    def value_axis(self, ticks: list[float], fmt: Any = _num) -> str:
        out = []
        for v in ticks:
            yy = _f(self.y(v))
            out.append(f'<line class="grid" x1="{_f(self.l)}" x2="{_f(self.l + self.pw)}" '
                       f'y1="{yy}" y2="{yy}"/>')
            out.append(f'<text class="tick" x="{_f(self.l - 5)}" y="{yy}" dy="0.35em" '
                       f'text-anchor="end">{fmt(v)}</text>')
        return "".join(out)


def _svg(width: float, height: float, body: str, cls: str, label: str) -> str:
    return (f'<svg class="{cls}" role="img" aria-label="{_esc(label)}" width="{_f(width)}" '
            f'height="{_f(height)}" viewBox="0 0 {_f(width)} {_f(height)}" '
            f'xmlns="http://www.w3.org/2000/svg">{body}</svg>')


def _legend_html(items: list[tuple[str, str]]) -> str:
    """A legend in HTML: (swatch markup, text) pairs."""
    return '<div class="legend">' + "".join(
        f'<span class="key">{sw}{_esc(text)}</span>' for sw, text in items) + "</div>"


def _swatch(style: str, cls: str = "") -> str:
    return (f'<svg class="sw" width="22" height="12" viewBox="0 0 22 12">'
            f'<rect x="1" y="1" width="20" height="10" class="{cls}" style="{style}"/></svg>')


def _line_swatch(cls: str) -> str:
    return (f'<svg class="sw" width="22" height="12" viewBox="0 0 22 12">'
            f'<line x1="1" x2="21" y1="6" y2="6" class="{cls}"/></svg>')


# ============================================================== the timeline


def _measured_text(a: Attempt) -> str:
    """What a tooltip says was measured: mean (and peak) cores, peak memory and disk."""
    parts = []
    if has_cores(a.measured):
        peak = a.measured.get("cores")
        parts.append(f"{cores_text(a.meas_cores)}c mean"
                     + (f" ({cores_text(peak)}c peak)" if type(peak) in (int, float) else ""))
    for key, what in (("memory", ""), ("disk", "disk:")):
        v: Any = a.measured.get(key)
        if type(v) in (int, float):
            parts.append(f"{what}{megabytes(v)}" + (" peak" if key == "memory" else ""))
    return " ".join(parts) or "-"


def _lanes(attempts: list[Attempt]) -> tuple[list[int], int]:
    """Lanes (sub-rows in which bars do not overlap) for one worker's attempts, given
    in start order; and how many lanes."""
    free: list[int] = []
    busy: list[tuple[float, int]] = []
    lanes: list[int] = []
    count = 0
    push, pop = heapq.heappush, heapq.heappop
    for a in attempts:
        s = a.bar_start
        while busy and busy[0][0] <= s:
            push(free, pop(busy)[1])
        if free:
            lane = pop(free)
        else:
            lane, count = count, count + 1
        lanes.append(lane)
        push(busy, (max(a.end, s), lane))
    return lanes, count


def _compact(lane: list[tuple[float, float, int, str]], merge: float,
             out: dict[tuple[int, str], list[list[float]]]) -> None:
    """Join one lane's bars (x0, x1, category, outcome; in order) into runs: a bar
    starting within ``merge`` pixels of the run before joins it when both have the
    same category and outcome, or when both succeeded and the bar is narrower than
    ``merge`` (it takes the run's colour). Runs go to ``out`` by (category, outcome)
    as [x0, x1, attempts]."""
    cur: list[float] | None = None
    ckey = (-1, "")
    for x0, x1, cat, outcome in lane:
        if cur is not None and x0 - cur[1] < merge and (
                (cat, outcome) == ckey
                or (outcome == "ok" and ckey[1] == "ok" and x1 - x0 < merge)):
            if x1 > cur[1]:
                cur[1] = x1
            cur[2] += 1
            continue
        ckey = (cat, outcome)
        cur = [x0, x1, 1.0]
        out.setdefault(ckey, []).append(cur)


def _timeline(run: Run, cats: dict[str, int]) -> tuple[str, dict[str, Any]]:
    """The timeline SVG: one row per worker, one lane per attempt running at once.
    Up to MAX_BARS attempts, one <rect> each (with a tooltip); beyond, one <path> per
    worker, category and outcome, touching bars joined (see _compact)."""
    by_worker: dict[str, list[Attempt]] = defaultdict(list)
    for a in run.attempts:
        by_worker[a.worker].append(a)
    order = sorted(by_worker, key=lambda w: (run.workers[w].joined if w in run.workers
                                             else run.start, w))
    hidden = order[MAX_ROWS:]
    order = order[:MAX_ROWS]
    drawn_attempts = sum(len(by_worker[w]) for w in order)
    detailed = drawn_attempts <= MAX_BARS
    left, right, width = 170.0, 16.0, 1180.0
    t0 = run.start
    span = max(run.end - t0, 1e-3)
    pw = width - left - right
    scale = pw / span
    row_budget = 40.0 if len(order) <= 20 else 20.0
    catnames = {v: k for k, v in cats.items()}

    top = 8.0
    y = top
    rows = []
    for w in order:
        atts = sorted(by_worker[w], key=lambda a: a.bar_start)
        lanes, count = _lanes(atts)
        lanes_n = max(1, count)
        lane_h = max(1.0, min(12.0, row_budget / lanes_n))
        row_h = lanes_n * lane_h + 6
        rows.append((w, atts, lanes, lane_h, y, row_h))
        y += row_h
    frame = _Frame(width, y + 24, left, right, top, 24, t0, t0 + span, 1.0)
    body = [frame.time_axis(t0)]
    elements = 0
    for w, atts, lanes, lane_h, ry, row_h in rows:
        info = run.workers.get(w)
        host = info.host if info else "?"
        name = f"{host} \u00b7 {w[:6]}"
        title = f"worker {w} on {host}"
        if info is not None and info.resources:
            title += ": " + resources(info.resources)
        if info is not None and info.left is not None:
            title += f"; left after {duration(info.left - t0)}: {info.why}"
        body.append(f'<g class="row" data-worker="{_esc(w)}">'
                    f'<rect class="rowbg" x="0" y="{_f(ry)}" width="{_f(width)}" '
                    f'height="{_f(row_h)}"/>'
                    f'<text class="rowlabel" x="{_f(left - 6)}" y="{_f(ry + row_h / 2)}" '
                    f'dy="0.35em" text-anchor="end">{_esc(name[:28])}<title>{_esc(title)}'
                    f"</title></text>")
        inset = 0.5 if lane_h >= 4 else 0.0
        bh = _f(max(0.6, lane_h - 2 * inset))
        if detailed:
            for a, lane in zip(atts, lanes, strict=True):
                x0 = left + (a.bar_start - t0) * scale
                bw = max((a.end - a.bar_start) * scale, 0.6)
                by = ry + 3 + lane * lane_h + inset
                tip = (f"task {a.task} attempt {a.attempt} [{a.category}] {a.status}: "
                       f"{duration(a.bar_start - t0)} + {duration(a.end - a.bar_start)}")
                if a.allocation:
                    tip += "; allocated " + resources(a.allocation)
                if a.measured:
                    tip += "; measured " + _measured_text(a)
                body.append(
                    f'<rect class="bar c{cats[a.category]} {a.outcome}" data-task="{a.task}" '
                    f'data-attempt="{a.attempt}" x="{_f(x0)}" y="{_f(by)}" width="{_f(bw)}" '
                    f'height="{bh}"><title>{_esc(tip)}</title></rect>')
                elements += 1
            body.append("</g>")
            continue
        per_lane: dict[int, list[tuple[float, float, int, str]]] = defaultdict(list)
        for a, lane in zip(atts, lanes, strict=True):
            x0 = left + (a.bar_start - t0) * scale
            per_lane[lane].append((x0, left + (a.end - t0) * scale, cats[a.category],
                                   a.outcome))
        runs: dict[tuple[int, str], list[list[float]]] = {}
        for lane, bars in per_lane.items():
            part: dict[tuple[int, str], list[list[float]]] = {}
            _compact(bars, MERGE_PX, part)
            lane_y = ry + 3 + lane * lane_h + inset
            for key, segs in part.items():
                for seg in segs:
                    seg.append(lane_y)
                runs.setdefault(key, []).extend(segs)
        for (cat, outcome), segs in sorted(runs.items()):
            n = int(sum(seg[2] for seg in segs))
            d = "".join(f"M{_f(x0)} {_f(sy)}h{_f(max(x1 - x0, 0.6))}v{bh}h-"
                        f"{_f(max(x1 - x0, 0.6))}z" for x0, x1, _, sy in segs)
            tip = f"{host}: {n:,} attempts of {catnames[cat]}, {OUTCOMES[outcome]}"
            body.append(f'<path class="bar c{cat} {outcome}" data-n="{n}" d="{d}">'
                        f"<title>{_esc(tip)}</title></path>")
            elements += len(segs)
        body.append("</g>")
    label = f"timeline of {len(run.attempts)} attempts on {len(by_worker)} workers"
    meta = {"detailed": detailed, "segments": elements, "hidden_workers": len(hidden),
            "hidden_attempts": sum(len(by_worker[w]) for w in hidden)}
    return _svg(width, frame.height, "".join(body), "timeline", label), meta


# ============================================================== resources over time


def _resource_charts(run: Run) -> str:
    out = []
    committed = _series([(a.dispatched, a.end, a.alloc_cores, a.alloc_memory)
                         for a in run.attempts], run.start, run.end)
    measured = _series([(a.bar_start, a.end, a.meas_cores, a.meas_memory)
                        for a in run.attempts], run.start, run.end)
    total = _series([(w.joined, w.left if w.left is not None else run.end + 1,
                      w.resources.get("cores", 0.0), w.resources.get("memory", 0.0))
                     for w in run.workers.values()], run.start, run.end)
    for i, (res, title) in enumerate((("cores", "Cores"), ("memory", "Memory"))):
        series = {"total": total[i][0], "committed": committed[i][0],
                  "measured": measured[i][0]}
        peaks = {"total": total[i][1], "committed": committed[i][1],
                 "measured": measured[i][1]}
        top = max((v for pts in series.values() for _, v in pts), default=0.0)
        ytop, ticks = _value_ticks(top)
        frame = _Frame(555, 230, 56, 12, 10, 24, run.start, run.end, ytop)
        body = [frame.time_axis(run.start),
                frame.value_axis(ticks, megabytes if res == "memory" else _num)]
        for k in ("total", "committed", "measured"):
            path = _step_path(series[k], frame.x, frame.y, run.end)
            body.append(f'<path class="series {k}" data-series="{k}" '
                        f'data-max="{peaks[k]:.6g}" d="{path}"/>')
        body.append(f'<text class="axistitle" x="6" y="{_f(frame.t + frame.ph / 2)}" '
                    f'transform="rotate(-90 10 {_f(frame.t + frame.ph / 2)})" '
                    f'text-anchor="middle">{title.lower()}</text>')
        out.append(f'<figure class="chart" id="res-{res}"><figcaption>{title}</figcaption>'
                   + _svg(frame.width, frame.height, "".join(body), "series-chart",
                          f"{title} over time")
                   + "</figure>")
    legend = _legend_html([
        (_line_swatch("series total"), "total of connected workers"),
        (_line_swatch("series committed"), "committed (allocations of dispatched attempts)"),
        (_line_swatch("series measured"), "measured in use (mean cores, peak memory)"),
    ])
    return legend + '<div class="charts">' + "".join(out) + "</div>"


# ============================================================== workers


def _workers_chart(run: Run) -> str:
    (pts, peak), _ = _series([(w.joined, w.left if w.left is not None else run.end + 1, 1.0,
                               0.0) for w in run.workers.values()], run.start, run.end)
    top = max((v for _, v in pts), default=0.0)
    ytop, ticks = _value_ticks(top, 3)
    frame = _Frame(1180, 150, 56, 16, 10, 24, run.start, run.end, ytop)
    body = [frame.time_axis(run.start), frame.value_axis(ticks),
            f'<path class="series workers" data-max="{peak:.6g}" '
            f'd="{_step_path(pts, frame.x, frame.y, run.end)}"/>']
    gone = [w for w in run.workers.values() if w.left is not None and w.left < run.end]
    gone.sort(key=lambda w: (not was_lost(w), w.left or 0.0))
    for w in gone[:2000]:
        assert w.left is not None
        xx = _f(frame.x(w.left))
        yb = frame.t + frame.ph
        cls = "loss" if was_lost(w) else "leave"
        body.append(f'<path class="{cls}" d="M{xx} {_f(yb - 9)}l-4 -7h8z">'
                    f'<title>{_esc(w.host)} ({_esc(w.worker)}) left: {_esc(w.why or "")}'
                    f'</title></path>')
    body.append(f'<text class="axistitle" x="6" y="{_f(frame.t + frame.ph / 2)}" '
                f'transform="rotate(-90 10 {_f(frame.t + frame.ph / 2)})" '
                f'text-anchor="middle">workers</text>')
    return _svg(frame.width, frame.height, "".join(body), "workers-chart",
                "connected workers over time")


def _workers_table(run: Run) -> str:
    left = [w for w in run.workers.values() if w.left is not None]
    lost = sorted((w for w in left if was_lost(w)), key=lambda w: w.left or 0.0)
    normal = len(left) - len(lost)
    said = (f"{len(run.workers):,} workers joined; {len(lost):,} were lost"
            f"{', ' if normal else ' and '}"
            + (f"{normal:,} left normally (shut down or idle), " if normal else "")
            + f"{len(run.workers) - len(left):,} were connected at the end.")
    note = f'<p class="note">{_esc(said)}</p>'
    if not lost:
        return note
    rows = []
    for w in lost[:MAX_LIST]:
        assert w.left is not None
        rows.append(f"<tr><td>{duration(w.left - run.start)}</td><td>{_esc(w.host)}</td>"
                    f"<td><code>{_esc(w.worker)}</code></td><td>{_esc(w.why or '')}</td>"
                    f'<td class="n">{w.requeued}</td></tr>')
    more = (f'<p class="note">and {len(lost) - MAX_LIST:,} more</p>'
            if len(lost) > MAX_LIST else "")
    return (note + '<table id="workers-lost"><thead><tr><th>after</th><th>host</th>'
            '<th>worker</th><th>why</th><th>tasks requeued</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>" + more)


# ============================================================== categories


@dataclass
class CategoryStats:
    name: str
    tasks: int = 0
    succeeded: int = 0
    failed: int = 0
    attempts: int = 0
    retries: int = 0
    lost: int = 0
    requested: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    allocated: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    measured: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    wall: list[float] = field(default_factory=list)
    alloc_core_s: float = 0.0
    used_core_s: float = 0.0
    alloc_mem_s: float = 0.0
    peak_mem_s: float = 0.0
    failed_core_s: float = 0.0
    failed_mem_s: float = 0.0
    over_core_s: float = 0.0
    over_mem_s: float = 0.0
    #: Per task: its last allocation's memory and its highest measured peak.
    memory_points: list[tuple[float, float]] = field(default_factory=list)
    #: Per task: its last finished attempt's allocated cores and measured mean cores.
    core_points: list[tuple[float, float]] = field(default_factory=list)

    @property
    def cpu_efficiency(self) -> float | None:
        return self.used_core_s / self.alloc_core_s if self.alloc_core_s > 0 else None

    @property
    def memory_efficiency(self) -> float | None:
        return self.peak_mem_s / self.alloc_mem_s if self.alloc_mem_s > 0 else None


def category_stats(run: Run) -> list[CategoryStats]:
    """Per category (and a last ``all`` line): counts, resources and efficiency.

    CPU efficiency is measured core-seconds (mean cores x wall time) over
    allocated core-seconds; memory efficiency the same with peak memory: both
    over every attempt, an attempt without measurement using nothing. Waste by
    failed attempts is the whole allocation of every attempt that did not
    succeed, for as long as it held it; waste by over-allocation is allocation
    minus measured use (not below zero) of the attempts that succeeded."""
    stats: dict[str, CategoryStats] = {}

    def get(name: str) -> CategoryStats:
        if name not in stats:
            stats[name] = CategoryStats(name)
        return stats[name]

    numbers = (int, float)
    tasks: dict[str, list[int]] = defaultdict(list)
    for tid, cat in run.task_category.items():
        tasks[cat].append(tid)
    for cat, tids in tasks.items():
        s = get(cat)
        s.tasks = len(tids)
        reqs: list[Any] = [run.task_request.get(t) or {} for t in tids]
        for k in ("cores", "memory"):
            s.requested[k] = [float(v) for r in reqs if type(v := r.get(k)) in numbers]
    category_of = run.task_category.get
    for cat, n in Counter(category_of(t, "default") for t in run.done_ok).items():
        get(cat).succeeded = n
    for cat, n in Counter(category_of(t, "default")
                          for t in {f.task for f in run.failures}).items():
        get(cat).failed = n
    final: dict[int, Attempt] = {}
    peak: dict[int, float] = {}
    cut = _CUT_SHORT
    current: str | None = None
    s = CategoryStats("")
    # One pass, on locals: this is the report's hottest loop after reading.
    for a in run.attempts:
        if a.category != current:
            current, s = a.category, get(a.category)
        s.attempts += 1
        d, ac, am = a.duration, a.alloc_cores, a.alloc_memory
        mc, mm = a.meas_cores, a.meas_memory
        alloc, meas = a.allocation, a.measured
        if "cores" in alloc:
            s.allocated["cores"].append(ac)
        if "memory" in alloc:
            s.allocated["memory"].append(am)
        s.alloc_core_s += ac * d
        s.alloc_mem_s += am * d
        s.used_core_s += mc * d
        s.peak_mem_s += mm * d
        if a.status == "success":
            if ac > mc:
                s.over_core_s += (ac - mc) * d
            if am > mm:
                s.over_mem_s += (am - mm) * d
        else:
            s.failed_core_s += ac * d
            s.failed_mem_s += am * d
        if a.status in cut:
            continue
        if has_cores(meas):
            s.measured["cores"].append(mc)
        if "memory" in meas:
            s.measured["memory"].append(mm)
            if mm >= peak.get(a.task, 0.0):
                peak[a.task] = mm
        s.wall.append(a.wall)
        f = final.get(a.task)
        if f is None or a.attempt >= f.attempt:
            final[a.task] = a
    for tid, a in final.items():
        if tid in peak and "memory" in a.allocation:
            get(a.category).memory_points.append((a.alloc_memory, peak[tid]))
        if "cores" in a.allocation and has_cores(a.measured):
            get(a.category).core_points.append((a.alloc_cores, a.meas_cores))
    for name, n in run.retries.items():
        get(name).retries += n
    for name, n in run.lost.items():
        get(name).lost += n
    out = sorted(stats.values(), key=lambda s: s.name)
    total = CategoryStats("all")
    for s in out:
        for attr in ("tasks", "succeeded", "failed", "attempts", "retries", "lost",
                     "alloc_core_s", "used_core_s", "alloc_mem_s", "peak_mem_s",
                     "failed_core_s", "failed_mem_s", "over_core_s", "over_mem_s"):
            setattr(total, attr, getattr(total, attr) + getattr(s, attr))
        for src, dst in ((s.requested, total.requested), (s.allocated, total.allocated),
                         (s.measured, total.measured)):
            for k, vs in src.items():
                dst[k].extend(vs)
        total.wall.extend(s.wall)
    return [*out, total]


def _time_unit(seconds: float) -> tuple[float, str]:
    """The largest of hours, minutes and seconds in which ``seconds`` is at least 1."""
    for div, name in ((3600.0, "hours"), (60.0, "minutes")):
        if seconds >= div:
            return div, name
    return 1.0, "seconds"


def _amount(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    return f"{v:,.1f}" if v >= 10 else f"{v:.3f}"


def _mean_max(values: list[float], fmt: Any = cores_text) -> str:
    if not values:
        return DASH
    return f"{fmt(sum(values) / len(values))} / {fmt(max(values))}"


def _category_tables(stats: list[CategoryStats], cats: dict[str, int]) -> str:
    def name_cell(s: CategoryStats) -> str:
        if s.name == "all":
            return "<th>all</th>"
        return (f'<th><span class="dot c{cats.get(s.name, 0)}"></span>'
                f"{_esc(s.name)}</th>")

    rows = []
    for s in stats:
        cls = ' class="total"' if s.name == "all" else ""
        rows.append(
            f"<tr{cls}>{name_cell(s)}"
            f'<td class="n">{s.tasks:,}</td><td class="n">{s.succeeded:,}</td>'
            f'<td class="n">{s.failed:,}</td><td class="n">{s.attempts:,}</td>'
            f'<td class="n">{s.retries:,}</td><td class="n">{s.lost:,}</td>'
            f'<td class="n">{_mean_max(s.requested["cores"])}</td>'
            f'<td class="n">{_mean_max(s.allocated["cores"])}</td>'
            f'<td class="n">{_mean_max(s.measured["cores"])}</td>'
            f'<td class="n">{_mean_max(s.requested["memory"], megabytes)}</td>'
            f'<td class="n">{_mean_max(s.allocated["memory"], megabytes)}</td>'
            f'<td class="n">{_mean_max(s.measured["memory"], megabytes)}</td>'
            f'<td class="n">{_mean_max(s.wall, duration)}</td></tr>')
    usage = (
        '<table id="categories"><thead>'
        '<tr><th rowspan="2">category</th><th rowspan="2">tasks</th><th rowspan="2">ok</th>'
        '<th rowspan="2">failed</th><th rowspan="2">attempts</th><th rowspan="2">retries</th>'
        '<th rowspan="2">lost</th>'
        '<th colspan="3">cores: mean / max</th><th colspan="3">memory: mean / max</th>'
        '<th rowspan="2">wall time<br>mean / max</th></tr>'
        "<tr><th>requested</th><th>allocated</th><th>measured mean</th>"
        "<th>requested</th><th>allocated</th><th>measured peak</th></tr>"
        "</thead><tbody>" + "".join(rows) + "</tbody></table>")

    total = stats[-1]
    cdiv, cunit = _time_unit(total.alloc_core_s)
    mdiv, munit = _time_unit(total.alloc_mem_s / MB_PER_GB)
    mdiv *= MB_PER_GB
    erows = []
    for s in stats:
        cls = ' class="total"' if s.name == "all" else ""
        ce, me = s.cpu_efficiency, s.memory_efficiency
        erows.append(
            f"<tr{cls}>{name_cell(s)}"
            f'<td class="n eff">{DASH if ce is None else f"{100 * ce:.1f}%"}</td>'
            f'<td class="n eff">{DASH if me is None else f"{100 * me:.1f}%"}</td>'
            f'<td class="n">{_amount(s.alloc_core_s / cdiv)}</td>'
            f'<td class="n">{_amount(s.failed_core_s / cdiv)}</td>'
            f'<td class="n">{_amount(s.over_core_s / cdiv)}</td>'
            f'<td class="n">{_amount(s.alloc_mem_s / mdiv)}</td>'
            f'<td class="n">{_amount(s.failed_mem_s / mdiv)}</td>'
            f'<td class="n">{_amount(s.over_mem_s / mdiv)}</td></tr>')
    efficiency = (
        '<table id="efficiency"><thead>'
        '<tr><th rowspan="2">category</th><th rowspan="2">CPU<br>efficiency</th>'
        '<th rowspan="2">memory<br>efficiency</th>'
        f'<th colspan="3">core-{cunit}</th><th colspan="3">memory GB-{munit}</th></tr>'
        "<tr><th>allocated</th><th>wasted by failed attempts</th>"
        "<th>wasted by over-allocation</th>"
        "<th>allocated</th><th>wasted by failed attempts</th>"
        "<th>wasted by over-allocation</th></tr>"
        "</thead><tbody>" + "".join(erows) + "</tbody></table>")
    return usage + efficiency


def _quantiles(values: list[float], k: int) -> list[float]:
    """``values`` sorted, or ``k`` evenly spaced of them (first and last kept)."""
    values = sorted(values)
    n = len(values)
    if n <= k:
        return values
    return [values[round(i * (n - 1) / (k - 1))] for i in range(k)]


def _task_plot(s: CategoryStats, cat: int, what: str) -> str:
    """Allocated and measured ``memory`` (peak) or ``cores`` (mean) of a category's
    tasks, each sorted on its own: two distributions, the gap between them allocated
    and not used."""
    points = s.memory_points if what == "memory" else s.core_points
    measure = "peak memory" if what == "memory" else "mean cores"
    n = len(points)
    head = (f'<figure class="catplot" data-category="{_esc(s.name)}" data-what="{what}">'
            f'<figcaption><span class="dot c{cat}"></span>{_esc(s.name)}: {what}</figcaption>')
    if n == 0:
        return head + f'<p class="note">no measured {measure}</p></figure>'
    alloc = _quantiles([a for a, _ in points], PLOT_POINTS)
    meas = _quantiles([m for _, m in points], PLOT_POINTS)
    ytop, ticks = _value_ticks(max(alloc[-1], meas[-1]), 3)
    frame = _Frame(270, 170, 54, 10, 8, 22, 0.0, 1.0, ytop)
    body = [frame.value_axis(ticks, megabytes if what == "memory" else _num)]
    base = frame.t + frame.ph
    body.append(f'<line class="axis" x1="{_f(frame.l)}" x2="{_f(frame.l + frame.pw)}" '
                f'y1="{_f(base)}" y2="{_f(base)}"/>')
    body.append(f'<text class="tick" x="{_f(frame.l + frame.pw / 2)}" y="{_f(base + 15)}" '
                f'text-anchor="middle">{n:,} tasks, smallest to largest</text>')

    def line(values: list[float]) -> str:
        k = len(values)
        out = [f"M{_f(frame.x(0))} {_f(frame.y(values[0]))}"]
        for i, v in enumerate(values):
            if i:
                out.append(f"V{_f(frame.y(v))}")
            out.append(f"H{_f(frame.x((i + 1) / k))}")
        return "".join(out)

    body.append(f'<path class="alloc c{cat}" d="{line(alloc)}"/>')
    body.append(f'<path class="meas" d="{line(meas)}"/>')
    body.append(f'<text class="axistitle" x="6" y="{_f(frame.t + frame.ph / 2)}" '
                f'transform="rotate(-90 10 {_f(frame.t + frame.ph / 2)})" '
                f'text-anchor="middle">{what}</text>')
    return (head + _svg(frame.width, frame.height, "".join(body),
                        "memplot" if what == "memory" else "coreplot",
                        f"allocated and measured {what} of {s.name}") + "</figure>")


# ============================================================== failures

_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\d+(?:\.\d+)?")


def normalise(message: str) -> str:
    """A failure's first line with numbers replaced, to group failures by cause."""
    line = message.strip().splitlines()[0] if message.strip() else ""
    return _NUMBERS.sub("N", line)[:300]


def _failures(run: Run) -> str:
    if not run.failures:
        return '<p class="note">No task failed.</p>'
    groups: dict[tuple[str, str], list[Failure]] = defaultdict(list)
    for f in run.failures:
        groups[(f.error, normalise(f.message))].append(f)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    rows = []
    for (error, _), fs in ordered[:MAX_LIST]:
        example = fs[0].message.strip().splitlines()[0] if fs[0].message.strip() else ""
        cats = ", ".join(sorted({f.category for f in fs}))
        ids = ", ".join(str(f.task) for f in fs[:5]) + (", …" if len(fs) > 5 else "")
        rows.append(f'<tr><td class="n">{len(fs):,}</td><td><code>{_esc(error)}</code></td>'
                    f"<td>{_esc(example[:300])}</td><td>{_esc(cats)}</td>"
                    f"<td>{ids}</td></tr>")
    more = (f'<p class="note">and {len(ordered) - MAX_LIST:,} more causes</p>'
            if len(ordered) > MAX_LIST else "")
    return ('<table id="failures"><thead><tr><th>tasks</th><th>error</th>'
            "<th>first line (an example)</th><th>categories</th><th>example tasks</th></tr>"
            "</thead><tbody>" + "".join(rows) + "</tbody></table>" + more)


# ============================================================== the page

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
margin:0;background:#f6f7f9}
main{max-width:1200px;margin:0 auto;padding:16px 10px 40px}
h1{font-size:22px;margin:4px 0 10px}h2{font-size:17px;margin:26px 0 6px;
border-bottom:1px solid #d8dbe0;padding-bottom:3px}
section{background:#fff;border:1px solid #e1e4e8;border-radius:6px;padding:8px 10px;
margin:12px 0}
.summary{display:grid;grid-template-columns:repeat(4,minmax(0,1fr));gap:4px 18px;margin:0}
.summary div{display:flex;justify-content:space-between;border-bottom:1px dotted #ddd}
.summary div.wide{grid-column:span 2}.summary dt{color:#666;white-space:nowrap;
margin-right:12px}.summary dd{margin:0;font-weight:600;text-align:right;
overflow-wrap:anywhere}
.note{color:#666;font-size:13px;margin:4px 0}
svg text{font-size:11px;fill:#333}
.tick{fill:#555}.grid{stroke:#e8e8e8;stroke-width:1}.axis{stroke:#888;stroke-width:1}
.axistitle{fill:#555}
.rowbg{fill:#fff}.row:nth-child(even) .rowbg{fill:#f5f6f8}.rowlabel{font-size:11px}
.bar{stroke:none}.bar.failed{stroke:#d00;stroke-width:1.2}
.bar.exhausted{stroke:#111;stroke-width:1;stroke-dasharray:3 2}
.bar.lost{fill-opacity:.35;stroke:#555;stroke-width:1;stroke-dasharray:2 2}
.bar.cut{fill-opacity:.45;stroke:#777;stroke-width:1;stroke-dasharray:1 2}
.series{fill:none;stroke-width:1.6}.series.total{stroke:#888;stroke-dasharray:5 3}
.series.committed{stroke:#3b75af}.series.measured{stroke:#e0662a}.series.workers{stroke:#3b75af}
.loss{fill:#d00}.leave{fill:#999}
.charts{display:flex;gap:16px;flex-wrap:wrap}
figure{margin:0}figcaption{font-weight:600;font-size:13px;margin:4px 0}
.catplots{display:flex;flex-wrap:wrap;gap:10px 30px}.catpair{display:flex;gap:10px}
.alloc{fill:none;stroke-width:2}.meas{fill:none;stroke:#222;stroke-width:1.2}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;font-size:12px;margin:4px 0 6px}
.key{display:inline-flex;align-items:center;gap:5px}.sw{vertical-align:middle}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0;width:100%}
th,td{border:1px solid #e1e4e8;padding:3px 6px;text-align:left}
tbody th{white-space:nowrap;font-weight:500}
thead th{background:#f0f2f5;font-weight:600;text-align:center}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.total{font-weight:600;background:#fafbfc}
.dot{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px}
code{font-size:12px}
footer{color:#888;font-size:12px;margin-top:20px}
"""

# Records script errors (read back by the tests) and when the page was laid out.
_SCRIPT = """
window.onerror=function(m){var d=document.documentElement;
d.setAttribute('data-errors',(d.getAttribute('data-errors')||'')+m+';');};
window.addEventListener('load',function(){var d=document.documentElement;
d.getBoundingClientRect();document.body.offsetHeight;
d.setAttribute('data-loaded-ms',String(Math.round(performance.now())));});
"""


def _palette_css(n: int) -> str:
    out = []
    for i in range(n):
        c = PALETTE[i % len(PALETTE)]
        out.append(f".c{i}{{fill:{c}}}"
                   f".bar.c{i}.failed,.bar.c{i}.exhausted{{fill:url(#h{i})}}"
                   f".dot.c{i}{{background:{c}}}.alloc.c{i}{{fill:none;stroke:{c}}}")
    return "".join(out)


def _patterns(n: int) -> str:
    defs = []
    for i in range(n):
        c = PALETTE[i % len(PALETTE)]
        defs.append(f'<pattern id="h{i}" width="6" height="6" patternUnits="userSpaceOnUse" '
                    f'patternTransform="rotate(45)"><rect width="6" height="6" fill="{c}"/>'
                    f'<rect width="2.4" height="6" fill="#fff" fill-opacity=".75"/></pattern>')
    return ('<svg width="0" height="0" style="position:absolute" aria-hidden="true">'
            f'<defs>{"".join(defs)}</defs></svg>')


def render(run: Run, run_dir: Path | None = None) -> str:
    """The report page of a run."""
    names = sorted({*run.task_category.values(), *(a.category for a in run.attempts)})
    cats = {name: i for i, name in enumerate(names)}
    timeline, meta = _timeline(run, cats)
    stats = category_stats(run)
    total = stats[-1]
    h = run.header
    state = (f"stopped ({_esc(str(run.stopped.get('why')))})" if run.stopped
             else "still running, or ended without its last event")
    max_workers = 0
    live = 0
    for _, d in sorted([(w.joined, 1) for w in run.workers.values()]
                       + [(w.left, -1) for w in run.workers.values() if w.left is not None]):
        live += d
        max_workers = max(max_workers, live)
    where = str(run_dir) if run_dir is not None else str(h.get("run_dir", ""))
    summary_items = [
        ("run directory", where),
        ("manager", f"{h.get('address', '?')} (pid {h.get('pid', '?')} on "
                    f"{h.get('host', '?')})"),
        ("started", _clock(run.start)),
        ("ended", _clock(run.end)),
        ("duration", duration(run.end - run.start)),
        ("state", state),
        ("tasks", f"{len(run.task_category):,}"),
        ("succeeded", f"{len(run.done_ok):,}"),
        ("failed", f"{len(run.failures):,}"),
        ("cancelled", f"{len(run.cancelled):,}"),
        ("attempts", f"{len(run.attempts):,}"),
        ("retries", f"{sum(run.retries.values()):,}"),
        ("workers", f"{len(run.workers):,} (at most {max_workers:,} at once)"),
        ("workers lost", f"{sum(1 for w in run.workers.values() if was_lost(w)):,}"),
        ("CPU efficiency", DASH if total.cpu_efficiency is None
         else f"{100 * total.cpu_efficiency:.1f}%"),
        ("memory efficiency", DASH if total.memory_efficiency is None
         else f"{100 * total.memory_efficiency:.1f}%"),
    ]
    summary = '<dl class="summary" id="summary">' + "".join(
        f'<div data-key="{_esc(k)}"{wide}><dt>{_esc(k)}</dt><dd>{_esc(v)}</dd></div>'
        for k, v in summary_items
        for wide in [' class="wide"' if k in ("run directory", "manager") else ""]) + "</dl>"

    legend_items = [(_swatch("", f"c{i}"), name) for name, i in cats.items()]
    legend_items += [(_swatch("fill:#c9ccd1", f"bar {cls}") if cls not in ("failed", "exhausted")
                      else _swatch("fill:url(#hx)", f"bar {cls}"), text)
                     for cls, text in OUTCOMES.items() if cls != "ok"]
    notes = []
    if not meta["detailed"]:
        notes.append(f"More than {MAX_BARS:,} attempts: bars have no tooltip each (hover "
                     "one for its worker, category and outcome), touching bars of one "
                     "category and outcome are joined, and successful bars under "
                     f"{MERGE_PX:g} px take the colour of the bar before them.")
    if meta["hidden_workers"]:
        notes.append(f"{meta['hidden_workers']:,} more workers ({meta['hidden_attempts']:,} "
                     f"attempts) are not drawn: the first {MAX_ROWS} to join are.")
    notes_html = "".join(f'<p class="note">{_esc(n)}</p>' for n in notes)

    catplots = '<div class="catplots">' + "".join(
        '<div class="catpair">' + _task_plot(s, cats.get(s.name, 0), "memory")
        + _task_plot(s, cats.get(s.name, 0), "cores") + "</div>"
        for s in stats[:-1]) + "</div>"
    changes = ""
    if run.category_changes:
        crow = []
        for ev in run.category_changes[:MAX_LIST]:
            crow.append(
                f"<tr><td>{duration(ev['t'] - run.start)}</td>"
                f"<td>{_esc(str(ev.get('category')))}</td>"
                f"<td>{_esc(resources(ev.get('old')))}</td>"
                f"<td>{_esc(resources(ev.get('new')))}</td><td>{_esc(str(ev.get('why', '')))}"
                "</td></tr>")
        changes = ("<h3>Allocation changes</h3><table id=\"changes\"><thead><tr><th>after</th>"
                   "<th>category</th><th>old</th><th>new</th><th>why</th></tr></thead><tbody>"
                   + "".join(crow) + "</tbody></table>")

    hatch_legend = ('<pattern id="hx" width="6" height="6" patternUnits="userSpaceOnUse" '
                    'patternTransform="rotate(45)"><rect width="6" height="6" fill="#9aa0a8"/>'
                    '<rect width="2.4" height="6" fill="#fff" fill-opacity=".75"/></pattern>')
    patterns = _patterns(len(cats)).replace("</defs>", hatch_legend + "</defs>")
    title = f"packmule run report: {Path(where).name or where}"
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{_esc(title)}</title>",
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<script>{_SCRIPT}</script>",
        f"<style>{_CSS}{_palette_css(len(cats))}</style></head><body>",
        patterns,
        "<main>",
        f"<h1>{_esc(title)}</h1>",
        f'<section id="overview">{summary}</section>',
        '<h2>Timeline</h2><section id="timeline">',
        '<p class="note">One row per worker (sub-rows for attempts at once), one bar per '
        "attempt from its start to its end; hover a bar for the task.</p>",
        _legend_html(legend_items), notes_html, timeline, "</section>",
        '<h2>Cores and memory over time</h2><section id="resources">',
        _resource_charts(run),
        f'<p class="note">Series with more than {BINS:,} steps are shown as the mean over '
        f"{BINS:,} equal intervals.</p></section>",
        '<h2>Categories</h2><section id="category-section">',
        _category_tables(stats, cats),
        '<p class="note">CPU efficiency: measured core-seconds (mean cores, '
        "<code>cores_avg</code>, \u00d7 wall time) over allocated core-seconds; memory "
        "efficiency: measured peak \u00d7 wall time over allocated memory \u00d7 wall time; "
        "both over every attempt. Wasted by failed attempts: the whole allocation of "
        "attempts that did not succeed, for as long as they held it. Wasted by "
        "over-allocation: allocated minus measured (mean cores, peak memory), on attempts "
        "that succeeded.</p>",
        "<h3>Memory and cores per task: allocated (coloured) and measured (black: peak "
        "memory, mean cores)</h3>",
        '<p class="note">Per task, its last attempt (memory: its highest peak over its '
        "attempts). Each line is sorted on its own, smallest to largest: the area between "
        "them is allocated and not used.</p>",
        catplots, changes, "</section>",
        '<h2>Failures by cause</h2><section id="failure-section">', _failures(run),
        "</section>",
        '<h2>Workers</h2><section id="workers">', _workers_chart(run),
        _workers_table(run), "</section>",
        f"<footer>Made by <code>packmule report</code> {__version__} from events.jsonl, "
        f"written by packmule {_esc(str(h.get('packmule', '?')))} on "
        f"{_esc(str(h.get('host', '?')))}.</footer></main></body></html>\n",
    ])


def write_report(run_dir: Path, output: Path | None = None) -> Path:
    """Write the report of the run in ``run_dir``; returns the file written."""
    header, events = read_run(run_dir)
    page = render(build(header, events), run_dir)
    out = output or run_dir / "report.html"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


def add_parser(sub: Any) -> None:
    """Add ``report`` to the ``packmule`` subcommands."""
    p = sub.add_parser(
        "report", help="write an HTML report of a run from its event log",
        description=(
            "Write one self-contained HTML page (no network needed to view it) from a run's "
            "events.jsonl: a timeline of attempts per worker, cores and memory committed and "
            "measured over time, per category resources (a table, and plots of allocated and "
            "measured memory and cores per task) and efficiency, failures by cause, and "
            "workers over time."),
    )
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                   help="the run directory, its events.jsonl, or a directory holding run "
                        "directories (then the latest of them; default: the latest under "
                        "$PACKMULE_RUNS_DIR or ./packmule-runs, as packmule status picks it)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="where to write the page (default: RUN_DIR/report.html)")


def main(args: argparse.Namespace) -> int:
    try:
        run_dir = resolve(args.run_dir)
    except RunDirError as exc:
        print(f"packmule report: {exc}", file=sys.stderr)
        return 1
    events = run_dir / EVENTS_FILE
    if not events.is_file():
        print(f"packmule report: no event log at {events}", file=sys.stderr)
        return 1
    try:
        out = write_report(run_dir, Path(args.output) if args.output else None)
    except (OSError, EventLogError) as exc:
        print(f"packmule report: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0
