"""The status file, ``status.json`` in the run directory: a snapshot of the manager
(tasks, categories, workers, unfinished and failed tasks), built by the loop
from what it keeps anyway, and written atomically (a new file renamed over
the old one).

The format is in docs/observability.md. A snapshot must stay cheap with
10,000 workers and a million waiting tasks: counts come from counters kept
on each transition (no scan of the tasks); why tasks wait is judged once per
shape queue (the core keeps waiting tasks of one shape in one queue, with
how many of them were requeued), not per task; ``unfinished`` lists at most
:data:`RUNNING_LIMIT` running and :data:`WAITING_LIMIT` waiting tasks (the
waiting ones chosen so that every reason shows), ``failed`` keeps the last
:data:`FAILED_LIMIT`, and the loop spaces its writes out by
:data:`STATUS_SPACING` times the last one's duration.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..core.alloc import AllocationMode, Attempt
from ..core.states import TaskState
from ..resources import Resources
from .events import resources

if TYPE_CHECKING:
    from ..core.scheduler import ManagerState, TaskRecord
    from ..core.waiting import ShapeQueue
    from ..manager.loop import Loop

log = logging.getLogger("packmule.manager")

#: The status file's name in the run directory.
STATUS_FILE = "status.json"
#: The ``format`` field.
FORMAT = "packmule-status"
#: The format version (a changed field changes it).
VERSION = 1
#: How often the loop rewrites the status file while something changes (s).
STATUS_INTERVAL = 1.0
#: A rewrite waits at least this many times the last one's duration: a snapshot of a
#: huge manager costs the loop at most about 1/20 of its time.
STATUS_SPACING = 20
#: Running and waiting tasks listed at most; either may use what the other leaves.
RUNNING_LIMIT = 500
WAITING_LIMIT = 500
#: Unfinished tasks listed at most.
UNFINISHED_LIMIT = RUNNING_LIMIT + WAITING_LIMIT
#: Queue entries looked at, at most, to pick the waiting tasks listed, shared between the
#: reasons (entries of tasks that left are skipped; requeued tasks may be few among many).
SCAN_LIMIT = 50_000
#: Failed tasks kept for the status file (the last ones).
FAILED_LIMIT = 1000

#: Why a waiting task waits, in the order a task's reason is chosen.
NO_WORKERS = "no workers"
NO_FIT = "no worker fits"
REQUEUED = "requeued after a lost worker"
NO_ROOM = "waiting for room"
REASONS = (NO_WORKERS, NO_FIT, REQUEUED, NO_ROOM)
#: Why a running task has not started yet (None: it runs).
PACK_PENDING = "waiting for a pack"
SENT_AHEAD = "sent ahead, waits for room"

_dumps = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
_NONE = {"cores": 0, "memory": 0, "disk": 0, "gpus": 0}


def worker_command(address: str, password_file: str | os.PathLike[str] | None) -> str:
    """The command that starts a worker for the manager at ``address`` (the secret read
    from ``password_file``; None: from the environment)."""
    if password_file:
        return f"packmule worker {address} --password-file {password_file}"
    from ..protocol.security import PASSWORD_ENV  # (zmq: not for the status CLI's sake)

    return f"{PASSWORD_ENV}=<the secret> packmule worker {address}"


def header(loop: Loop, state: str) -> dict[str, Any]:
    """The fields every status file has, even one written after an internal error."""
    return {
        "format": FORMAT, "version": VERSION, "packmule": __version__,
        "address": loop.address, "run_dir": str(loop.cfg.run_dir), "pid": os.getpid(),
        "started": round(loop.started, 3), "updated": round(time.time(), 3), "state": state,
    }


def snapshot(loop: Loop, state: str = "running", brief: bool = False) -> dict[str, Any]:
    """What the manager's loop is doing now, as ``status.json`` holds it. ``brief``: the
    counts only (no ``workers``, ``waiting_reasons``, ``unfinished`` nor ``failed``).
    Once the loop has stopped (``state`` is not ``running``) it is connected to no
    worker: none is listed, and the resources are zero."""
    core = loop.core
    snap = header(loop, state)
    wall = snap["updated"]
    to_wall = wall - time.monotonic()  # the loop's clock to Unix time
    counts = core.counts()
    c = loop.counters
    running = state == "running"
    committed, total = core.totals()
    largest = core.largest_worker()
    by_category = core.category_counts()
    categories = []
    for name, cat in core.categories.items():
        n = by_category.get(name, {})
        categories.append({
            "name": name, "mode": cat.mode.value,
            "waiting": n.get("waiting", 0), "running": n.get("running", 0),
            "done": n.get("done", 0), "failed": n.get("failed", 0),
            "allocation": resources(cat.current_allocation(largest)),
            "peak": resources(cat.measured_peak),
        })
    snap.update({
        "tasks": {"waiting": counts["waiting"], "running": counts["running"],
                  "done": c["tasks_succeeded"], "failed": c["tasks_failed"],
                  "cancelled": c["tasks_cancelled"]},
        "resources": ({"committed": resources(committed), "total": resources(total)}
                      if running else {"committed": dict(_NONE), "total": dict(_NONE)}),
        "categories": categories,
    })
    if brief:
        return snap
    reasons, queues = _waiting_reasons(core)
    unfinished = _unfinished(loop, to_wall, reasons, queues)
    failed = list(loop.failures)
    snap.update({
        "workers": _workers(loop, to_wall) if running else [],
        "waiting_reasons": reasons,
        "unfinished": unfinished,
        "unfinished_omitted": max(0, counts["waiting"] + counts["running"] - len(unfinished)),
        "failed": failed,
        "failed_omitted": max(0, c["tasks_failed"] - len(failed)),
    })
    return snap


def _workers(loop: Loop, to_wall: float) -> list[dict[str, Any]]:
    workers = []
    get = loop.core.workers.get
    for wid, conn in loop.net.workers.items():
        w = get(wid)
        if w is None:
            continue
        # (a worker's size is complete: every field a number; spelt out, this is the
        # loop's cost per worker, 10,000 of them)
        t, f = w.total, w.free
        tc, tm, td, tg = t.cores or 0, t.memory or 0, t.disk or 0, t.gpus or 0
        workers.append({
            "worker": wid, "host": conn.hostname, "pid": conn.pid,
            "resources": {"cores": tc, "memory": tm, "disk": td, "gpus": tg},
            "committed": {"cores": tc - (f.cores or 0), "memory": tm - (f.memory or 0),
                          "disk": td - (f.disk or 0), "gpus": tg - (f.gpus or 0)},
            "tasks": len(w.running) + len(w.queued),
            "joined": round(conn.joined, 3), "last_heard": round(w.last_seen + to_wall, 3),
        })
    return workers


# ---------------------------------------------------------------- why tasks wait
def _waiting_reasons(core: ManagerState) -> tuple[dict[str, int], list[tuple[ShapeQueue, bool]]]:
    """How many waiting tasks wait for each reason, judged per shape queue (its tasks'
    request against the connected workers; its count of requeued tasks): the cost is the
    number of queues, not of tasks. Also each queue with whether its tasks fit nowhere."""
    out = dict.fromkeys(REASONS, 0)
    waiting = core.counts()["waiting"]
    queues: list[tuple[ShapeQueue, bool]] = []
    if not waiting:
        return out, queues
    if not core.workers:
        out[NO_WORKERS] = waiting
        return out, queues
    # Waiting tasks outside every queue were set aside on their own: they fit nowhere.
    out[NO_FIT] = waiting - len(core.waiting)
    fits: dict[tuple[str, Resources, frozenset[str], bool], bool] = {}
    for q in core.waiting.queues():
        if not q.waiting:
            continue
        key = (q.category, q.request, q.avoid, q.each)
        fit = fits.get(key)
        if q.parked:
            fit = False  # the scheduler found it fits no connected worker
        elif fit is None:
            fit = fits[key] = core.pool.fits_somewhere(_request(core, q), q.avoid)
        queues.append((q, not fit))
        if not fit:
            out[NO_FIT] += q.waiting
        else:
            out[REQUEUED] += q.requeued
            out[NO_ROOM] += q.waiting - q.requeued
    return out, queues


def _request(core: ManagerState, q: ShapeQueue) -> Resources:
    """What a queue's tasks ask the box rule for, without drawing anything."""
    cat = core.categories.get(q.category)
    if cat is None:
        return q.request
    if not q.each:  # first attempts: the request depends only on the task's own
        return cat.request_for(q.request, Attempt.FIRST, core.largest_worker(), 0)
    if cat.mode is AllocationMode.FIXED:  # a retry bigger: the rest is the largest worker's
        return q.request
    # Drawn per task, or a retry bigger: the task's own values, and the category's max
    # where it gave none (what is learned or drawn is capped at the largest worker).
    limit = cat.config.max.astuple()
    return Resources(*(t if t is not None else c
                       for t, c in zip(q.request.astuple(), limit, strict=True)))


def _shares(counts: dict[str, int], limit: int) -> dict[str, int]:
    """How many tasks of each reason to list, ``limit`` in all: the rarest first, each
    its fair share of what is left, so that every reason shows."""
    out = dict.fromkeys(counts, 0)
    present = sorted((n, i, r) for i, (r, n) in enumerate(counts.items()) if n)
    left = limit
    for k, (n, _, r) in enumerate(present):
        take = min(n, left // (len(present) - k))
        out[r] = take
        left -= take
    return out


def _waiting_tasks(core: ManagerState, reasons: dict[str, int],
                   queues: list[tuple[ShapeQueue, bool]], limit: int
                   ) -> list[tuple[TaskRecord, str]]:
    """Up to ``limit`` waiting tasks with their reason, every reason that has tasks
    shown (see :func:`_shares`)."""
    if limit <= 0 or not any(reasons.values()):
        return []
    want = _shares(reasons, limit)
    tasks = core.tasks
    budget = [SCAN_LIMIT]

    def in_queue(q: ShapeQueue, requeued: bool | None) -> Iterator[TaskRecord]:
        """The queue's waiting tasks (those requeued, or not, or all: None). Requeued tasks
        came back behind later ones: they are looked for among those first."""
        entries = chain(q.late, q.fifo, q.deferred) if requeued else q.scan()
        for seq, tid in entries:
            budget[0] -= 1
            if budget[0] < 0:
                return
            t = tasks.get(tid)
            if (t is not None and t.queue is q and t.seq == seq
                    and t.state is TaskState.WAITING
                    and (requeued is None or bool(t.requeues) == requeued)):
                yield t

    def parked() -> Iterator[TaskRecord]:
        for t in core.parked():
            budget[0] -= 1
            if budget[0] < 0:
                return
            yield t

    sources: dict[str, Iterator[TaskRecord]]
    if not core.workers:
        sources = {NO_WORKERS: chain(parked(), chain.from_iterable(
            in_queue(q, None) for q in core.waiting.queues()))}
    else:
        sources = {
            NO_FIT: chain(parked(), chain.from_iterable(
                in_queue(q, None) for q, nofit in queues if nofit)),
            REQUEUED: chain.from_iterable(
                in_queue(q, True) for q, nofit in queues if not nofit and q.requeued),
            NO_ROOM: chain.from_iterable(
                in_queue(q, False) for q, nofit in queues
                if not nofit and q.waiting > q.requeued),
        }
    out: list[tuple[TaskRecord, str]] = []
    for reason, source in sources.items():
        budget[0] = SCAN_LIMIT // len(sources)  # (one reason's search leaves the others some)
        out.extend((t, reason) for t in itertools.islice(source, want.get(reason, 0)))
    out.sort(key=lambda pair: pair[0].seq)  # in the order they were submitted
    return out


def _unfinished(loop: Loop, to_wall: float, reasons: dict[str, int],
                queues: list[tuple[ShapeQueue, bool]]) -> list[dict[str, Any]]:
    """Running tasks (worker by worker), then waiting ones (in the order they were
    submitted), :data:`RUNNING_LIMIT` and :data:`WAITING_LIMIT` at most (either may use
    what the other leaves), each with why it waits."""
    core, jobs, transfers = loop.core, loop.jobs, loop.transfers
    counts = core.counts()
    running_limit = max(RUNNING_LIMIT, UNFINISHED_LIMIT - counts["waiting"])
    out: list[dict[str, Any]] = []
    for w in core.workers.values() if counts["running"] else ():
        queued = w.queued
        for tid in chain(w.running, queued):
            if len(out) >= running_limit:
                break
            t = core.tasks.get(tid)
            job = jobs.get(tid)
            if t is None or job is None:
                continue
            if job.pack is not None and transfers.pack_pending(w.id, job.pack.digest):
                reason: str | None = PACK_PENDING
            elif tid in queued:
                reason = SENT_AHEAD
            else:
                reason = None
            out.append({"task": tid, "category": t.category, "label": job.label,
                        "state": "running", "attempt": t.attempt, "worker": w.id,
                        "reason": reason, "since": round(t.since + to_wall, 3)})
        if len(out) >= running_limit:
            break
    for t, reason in _waiting_tasks(core, reasons, queues, UNFINISHED_LIMIT - len(out)):
        job = jobs.get(t.id)
        out.append({"task": t.id, "category": t.category,
                    "label": job.label if job is not None else None,
                    "state": "waiting", "attempt": t.attempt, "worker": None,
                    "reason": reason, "since": round(t.since + to_wall, 3)})
    return out


class StatusFile:
    """Writes snapshots atomically: a temporary file in the run directory, renamed over
    ``status.json``. A failure is said once; later writes are still tried (a full disk
    may pass)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._failed = False

    def write(self, snap: dict[str, Any]) -> None:
        try:
            data = _dumps(snap)
            with open(self._temp, "w", encoding="utf-8") as f:
                f.write(data)
            os.replace(self._temp, self.path)
        except (OSError, ValueError, TypeError) as exc:
            if not self._failed:
                log.error("cannot write the status file %s: %s; the manager goes on without "
                          "it (said once)", self.path, exc)
            self._failed = True
