"""How fast ``packmule report`` is on a large run, and how fast its page opens.
Prints one JSON object.

Run::

    python benchmarks/report.py [--tasks 100000] [--workers 100] [--quick]

It writes the event log of a synthetic run (``--tasks`` tasks in five
categories on ``--workers`` workers of 8 cores and 32 GB, with failures,
retries after exceeding an allocation, a lost worker and its requeued
tasks; the schedule is simulated, nothing runs) in the format of
docs/observability.md, then measures:

* **generation**: ``python -m packmule report RUN_DIR -o FILE`` wall time and
  CPU time (interpreter start and reading the log included; on a shared
  machine the CPU time is the steadier figure, and ``load_average`` says how
  shared it was), and the page's size. Targets: a few seconds; under 5 MB.
* **browser** (when ``chromium`` is on PATH): headless Chromium opening the
  page. ``load_ms`` is the page's own ``performance.now()`` at its load event
  after forcing style and layout (written into the DOM by the page's script
  and read back with ``--dump-dom``, best of three); ``page_cost_s`` is the
  wall time of a full ``--screenshot`` (start, load, layout, paint, encode)
  of the page minus the same for an empty page, the cost the page itself
  adds (best of five each, interleaved).
  Target: under 1 s.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: name: (share of tasks, cores, memory MB requested, mean seconds, chance of an exception)
CATEGORIES = {
    "align": (0.35, 1, 2000, 20.0, 0.01),
    "assemble": (0.05, 4, 12000, 120.0, 0.02),
    "count": (0.30, 1, 500, 4.0, 0.002),
    "plot": (0.20, 1, 1000, 2.0, 0.0),
    "merge": (0.10, 2, 4000, 30.0, 0.05),
}
WORKER_CORES, WORKER_MEMORY = 8, 32000


def synthetic_events(tasks: int, workers: int, seed: int = 1) -> Iterator[dict[str, Any]]:
    """A plausible run's events (without the header), in time order."""
    rng = random.Random(seed)
    t0 = 1_764_790_000.0
    out: list[tuple[float, int, dict[str, Any]]] = []
    seq = 0

    def emit(t: float, ev: dict[str, Any]) -> None:
        nonlocal seq
        seq += 1
        out.append((t, seq, {"t": round(t, 4), **ev}))

    names = list(CATEGORIES)
    weights = [CATEGORIES[n][0] for n in names]
    wids = [f"{i:04x}{rng.getrandbits(32):08x}" for i in range(workers)]
    free = {w: [WORKER_CORES, WORKER_MEMORY] for w in wids}
    for i, w in enumerate(wids):
        emit(t0 + 0.5 + i * 0.01, {"event": "worker_joined", "worker": w,
                                   "host": f"node{i:03d}", "pid": 1000 + i,
                                   "resources": {"cores": WORKER_CORES, "memory": WORKER_MEMORY,
                                                 "disk": 100000}})
    queue: list[tuple[int, int]] = []  # (task, attempt)
    info: dict[int, tuple[str, int, int]] = {}
    for tid in range(tasks):
        cat = rng.choices(names, weights)[0]
        _, cores, mem, _, _ = CATEGORIES[cat]
        info[tid] = (cat, cores, mem)
        emit(t0 + 0.2 + tid * 1e-5, {"event": "task_submitted", "task": tid, "category": cat,
                                     "label": cat, "request": {"cores": cores},
                                     "priority": 0})
        queue.append((tid, 1))
    queue.reverse()
    # (end, worker, task, attempt, cores, memory, wall time)
    running: list[tuple[float, str, int, int, int, int, float]] = []
    now = t0 + 1.0
    lost_worker = wids[len(wids) // 2] if workers > 1 else None
    lose_at = None
    alive = set(wids)
    while queue or running:
        # Dispatch onto free room, first fit.
        i = len(queue) - 1
        while i >= 0:
            tid, att = queue[i]
            cat, cores, mem = info[tid]
            mem = mem * (2 if att > 1 else 1)
            target = next((w for w in wids if w in alive and free[w][0] >= cores
                           and free[w][1] >= mem), None)
            if target is None:
                break
            w = target
            queue.pop(i)
            i -= 1
            free[w][0] -= cores
            free[w][1] -= mem
            mean = CATEGORIES[cat][3]
            wall = round(max(0.05, rng.lognormvariate(0, 0.5) * mean), 3)
            emit(now, {"event": "attempt_dispatched", "task": tid, "attempt": att, "worker": w,
                       "allocation": {"cores": cores, "memory": mem, "disk": 1000},
                       "prefetched": False})
            heapq.heappush(running, (now + 0.01 + wall, w, tid, att, cores, mem, wall))
        if lose_at is None and lost_worker and now > t0 + 60:
            lose_at = now
        if not running:
            break
        end, w, tid, att, cores, mem, wall = heapq.heappop(running)
        if lose_at is not None and lost_worker in alive and end > lose_at + 5:
            # The worker is lost: its running attempts go back to the queue.
            alive.discard(lost_worker)
            tl = lose_at + 5
            mine = [r for r in running if r[1] == lost_worker]
            if w == lost_worker:
                mine.append((end, w, tid, att, cores, mem, wall))
            else:
                heapq.heappush(running, (end, w, tid, att, cores, mem, wall))
            running = [r for r in running if r[1] != lost_worker]
            heapq.heapify(running)
            for _, _, lt, la, _, _, _ in mine:
                emit(tl, {"event": "task_lost", "task": lt, "attempt": la,
                          "worker": lost_worker, "why": "worker lost"})
                queue.append((lt, la + 1))
            emit(tl, {"event": "worker_left", "worker": lost_worker,
                      "host": f"node{wids.index(lost_worker):03d}",
                      "why": "silent for 30 s (lease expired)", "requeued": len(mine),
                      "lost": True})
            now = max(now, tl)
            continue
        now = end
        free[w][0] += cores
        free[w][1] += mem
        cat = info[tid][0]
        roll = rng.random()
        exceeded = att == 1 and cat == "assemble" and roll < 0.1
        failed = not exceeded and roll < CATEGORIES[cat][4]
        status = "exhausted" if exceeded else "exception" if failed else "success"
        # As a worker measures: the peak cores, their mean (cores_avg = cpu_time / wall).
        mean = round(cores * rng.uniform(0.4, 0.98), 3)
        measured = {"cores": round(min(cores * 1.1, mean * rng.uniform(1.0, 1.5)), 3),
                    "cores_avg": mean, "cpu_time": round(mean * wall, 3), "wall_time": wall,
                    "memory": round(mem * (1.01 if exceeded else rng.uniform(0.2, 0.9)), 1),
                    "disk": round(rng.uniform(1, 50), 1)}
        emit(end, {"event": "attempt_finished", "task": tid, "attempt": att, "worker": w,
                   "status": status, "started": round(end - wall, 4), "wall_time": wall,
                   "measured": measured, "exceeded": ["memory"] if exceeded else [],
                   "exit_code": 1 if failed else 0})
        if exceeded:
            emit(end, {"event": "task_retried", "task": tid, "attempt": att + 1,
                       "why": "exhausted", "exceeded": ["memory"]})
            queue.append((tid, att + 1))
        elif failed:
            emit(end, {"event": "task_done", "task": tid, "ok": False, "attempts": att,
                       "error": rng.choice(["ValueError", "FileNotFoundError"]),
                       "message": f"input {tid % 97} has {rng.randint(1, 9)} bad rows"})
        else:
            emit(end, {"event": "task_done", "task": tid, "ok": True, "attempts": att})
    for w in sorted(alive):
        emit(now + 1, {"event": "worker_left", "worker": w, "host": f"node{wids.index(w):03d}",
                       "why": "shutdown", "requeued": 0, "lost": False})
    emit(now + 1.1, {"event": "manager_stopped", "why": "shutdown", "tasks": tasks,
                     "failed": 0})
    out.sort(key=lambda e: (e[0], e[1]))
    for _, _, ev in out:
        yield ev


def write_run(run_dir: Path, tasks: int, workers: int) -> int:
    """Write ``run_dir/events.jsonl``; returns its size in bytes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "events.jsonl"
    with path.open("w") as f:
        f.write(json.dumps({"format": "packmule-events", "version": 1, "packmule": "bench",
                            "t": 1_764_790_000.0, "address": "bench:9123", "host": "bench",
                            "pid": 1, "run_dir": str(run_dir)}) + "\n")
        for ev in synthetic_events(tasks, workers):
            f.write(json.dumps(ev, separators=(",", ":")) + "\n")
    return path.stat().st_size


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _chrome(binary: str, profile: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def browser(page: Path, tmp: Path) -> dict[str, Any]:
    binary = chromium()
    if binary is None:
        return {"skipped": "chromium is not on PATH"}
    profile = str(tmp / "profile")
    empty = tmp / "empty.html"
    empty.write_text("<!DOCTYPE html><html><body></body></html>")
    loads = []
    for _ in range(3):
        dom = _chrome(binary, profile, "--dump-dom", page.as_uri())
        m = re.search(r'data-loaded-ms="(\d+)"', dom.stdout)
        if m:
            loads.append(int(m.group(1)))
    errors = re.search(r'data-errors="([^"]*)"', dom.stdout)

    def shot(target: Path) -> float:
        t = time.perf_counter()
        _chrome(binary, profile, f"--screenshot={tmp / 'shot.png'}", "--window-size=1400,2000",
                target.as_uri())
        return time.perf_counter() - t

    shot(empty)  # warm the profile and the page cache
    bases, fulls = [], []
    for _ in range(5):  # interleaved, so that a busy spell of the machine hits both
        bases.append(shot(empty))
        fulls.append(shot(page))
    base, full = min(bases), min(fulls)
    return {"load_ms": min(loads) if loads else None, "load_ms_all": loads,
            "page_errors": errors.group(1) if errors else "",
            "screenshot_s": round(full, 3), "empty_page_screenshot_s": round(base, 3),
            "page_cost_s": round(full - base, 3)}


def python_speed() -> float:
    """CPU seconds of a 10-million-step Python loop: about 0.5 s on a current desktop;
    a larger figure says this machine (or its share of it) is that much slower."""
    t = time.process_time()
    total = 0
    for i in range(10_000_000):
        total += i
    return round(time.process_time() - t, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="2,000 tasks on 10 workers")
    ap.add_argument("--no-browser", action="store_true", help="skip the browser part")
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.workers = 2000, 10
    with tempfile.TemporaryDirectory(prefix="packmule-report-bench-") as d:
        tmp = Path(d)
        run_dir = tmp / "001-bench"
        t = time.perf_counter()
        log_size = write_run(run_dir, args.tasks, args.workers)
        synth_s = time.perf_counter() - t
        page = tmp / "report.html"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "packmule", "report", str(run_dir), "-o",
                              str(page)], capture_output=True, text=True, check=False)
        gen_s = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        gen_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
            return 1
        size = page.stat().st_size
        text = page.read_text()
        out: dict[str, Any] = {
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "platform": platform.platform()},
            "settings": {"tasks": args.tasks, "workers": args.workers,
                         "worker": {"cores": WORKER_CORES, "memory": WORKER_MEMORY}},
            "event_log": {"mb": round(log_size / 1e6, 2), "lines": sum(
                1 for _ in (run_dir / "events.jsonl").open()), "synthesis_s": round(synth_s, 2)},
            "generation": {
                "seconds": round(gen_s, 2), "cpu_s": round(gen_cpu, 2),
                "peak_rss_mb": round(after.ru_maxrss / 1024, 1),
                "size_mb": round(size / 1e6, 3),
                "timeline_elements": text.count('class="bar '),
                "timeline_rectangles": text.count('class="bar ') - text.count("<path class=\"bar ")
                + sum(seg.count("M") for seg in re.findall(r'<path class="bar [^"]*" '
                                                            r'data-n="\d+" d="([^"]*)"', text)),
                "attempts_drawn": sum(int(n) for n in re.findall(r'data-n="(\d+)"', text))
                + text.count("data-attempt="),
            },
            "load_average": os.getloadavg(),
            "python_loop_10m_cpu_s": python_speed(),
            "browser": ({"skipped": "--no-browser"} if args.no_browser
                        else browser(page, tmp)),
            "targets": {"open_s": 1.0, "size_mb": 5.0},
        }
        b = out["browser"]
        out["meets_targets"] = {
            "size": size < 5e6,
            "open": None if "skipped" in b else (
                b["load_ms"] is not None and b["load_ms"] < 1000 and b["page_cost_s"] < 1.0),
        }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
