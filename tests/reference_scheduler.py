"""Reference models for the scheduling core's tests: plain scans over every worker.

:func:`reference_pass` is the scheduling pass as it was before workers were
indexed and tasks queued by shape: every waiting task in (priority,
submission) order, every worker looked at for each. It works on a copy of a
:class:`ManagerState`'s accounting and returns what it would assign, so that
tests can check that the indexed pass decides the same. The ``brute_*``
functions answer the worker pool's questions the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from packmule.core.alloc import Attempt
from packmule.core.allocation import box, with_minimum
from packmule.core.scheduler import ManagerState
from packmule.core.states import TaskState
from packmule.core.workers import PREFETCH_MAX, WorkerRecord
from packmule.resources import Resources

Allowed = Callable[[WorkerRecord], bool] | None


def brute_best_fit(workers: Iterable[WorkerRecord], request: Resources, minimum: Resources,
                   allowed: Allowed = None) -> tuple[int, int, int] | None:
    """(free cores left, free memory left, join number) of the best fit, by looking at all."""
    best = None
    for w in workers:
        if not w.has_room() or (allowed is not None and not allowed(w)):
            continue
        b = with_minimum(box(request, w.total), minimum)
        if b is None or not b.fits_in(w.free):
            continue
        key = ((w.free.cores or 0) - (b.cores or 0), (w.free.memory or 0) - (b.memory or 0), w.seq)
        if best is None or key < best:
            best = key
    return best


def brute_prefetch(workers: Iterable[WorkerRecord], request: Resources, minimum: Resources,
                   allowed: Allowed = None) -> tuple[int, int, int] | None:
    """(queue length, -free cores, join number) of the prefetch target, by looking at all."""
    best = None
    for w in workers:
        if not w.queue_room() or (allowed is not None and not allowed(w)):
            continue
        b = with_minimum(box(request, w.total), minimum)
        if b is None or not b.fits_in(w.total):
            continue
        key = (len(w.queued), -(w.free.cores or 0), w.seq)
        if best is None or key < best:
            best = key
    return best


def brute_closest(workers: Iterable[WorkerRecord], request: Resources) -> list[tuple[int, ...]]:
    """Closeness keys of the workers whose size fits ``request``, closest first."""
    return sorted((-(w.free.cores or 0), -(w.free.memory or 0), w.seq) for w in workers
                  if box(request, w.total) is not None)


@dataclass
class _Worker:
    id: str
    total: Resources
    committed: Resources
    running: int
    queued: dict[int, Resources] = field(default_factory=dict)

    @property
    def free(self) -> Resources:
        return self.total - self.committed

    def has_room(self) -> bool:
        f = self.free
        return bool(f.cores or f.gpus)

    def queue_room(self) -> bool:
        return len(self.queued) < min(PREFETCH_MAX, self.running)


def reference_pass(s: ManagerState, parked: set[int]) -> list[tuple[int, str, Resources, bool]]:
    """What the old pass assigns now: (task, worker, allocation, prefetched), in order.

    ``parked`` holds the tasks found to fit no worker since a worker last joined
    (they are skipped, and new ones are added). Priorities are taken as equal
    per pass only in the reservation rule's absence: it reserves as the old pass did.
    """
    workers = [_Worker(w.id, w.total, w.committed, len(w.running), dict(w.queued))
               for w in s.workers.values()]
    ready = sorted((-math.inf if t.label is Attempt.MAX else -t.priority, t.seq, t.id)
                   for t in s.tasks.values()
                   if t.state is TaskState.WAITING and t.id not in parked)
    out: list[tuple[int, str, Resources, bool]] = []
    if not workers:
        return out
    open_workers = [w for w in workers if w.has_room() or w.queue_room()]
    reserved: dict[str, float] = {}
    for _, _, tid in ready:
        if not open_workers:
            break
        t = s.tasks[tid]
        request = s.request_of(t)
        minimum = s.category(t.category).config.min
        allowed = [w for w in open_workers
                   if reserved.get(w.id, t.priority) <= t.priority and w.id not in t.avoid]
        choice = None
        for w in allowed:
            if not w.has_room():
                continue
            b = with_minimum(box(request, w.total), minimum)
            if b is None or not b.fits_in(w.free):
                continue
            left = w.free - b
            key = (left.cores or 0, left.memory or 0)
            if choice is None or key < choice[0]:
                choice = (key, w, b)
        queued = False
        if choice is None and s._prefetchable(t):
            for w in allowed:
                if not w.queue_room():
                    continue
                b = with_minimum(box(request, w.total), minimum)
                if b is None or not b.fits_in(w.total):
                    continue
                key = (len(w.queued), -(w.free.cores or 0))
                if choice is None or key < choice[0]:
                    choice = (key, w, b)
            queued = choice is not None
        if choice is None:
            if any(box(request, w.total) is not None for w in workers if w.id not in t.avoid):
                best = None
                for w in workers:
                    if w.id in reserved or w.id in t.avoid or box(request, w.total) is None:
                        continue
                    key = (-(w.free.cores or 0), -(w.free.memory or 0))
                    if best is None or key < best[0]:
                        best = (key, w)
                if best is not None:
                    reserved[best[1].id] = t.priority
            else:
                parked.add(t.id)
            continue
        _, w, alloc = choice
        if queued:
            w.queued[t.id] = alloc
        else:
            w.running += 1
            w.committed = w.committed + alloc
        out.append((t.id, w.id, alloc, queued))
        if not (w.has_room() or w.queue_room()):
            open_workers.remove(w)
    return out
