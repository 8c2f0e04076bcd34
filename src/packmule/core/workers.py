"""Connected workers, indexed by what they have free (pure).

A :class:`WorkerPool` keeps each worker's free resources as stored state,
updated when an allocation is committed or released, and indexes workers by
them, so that the scheduler's questions cost time that does not grow with
the number of workers:

* :meth:`WorkerPool.best_fit`: the worker with room left with the fewest
  free cores, then the least free memory, after placing a request;
* :meth:`WorkerPool.prefetch_target`: the busy worker with the shortest
  queue of prefetched tasks (then the most free cores) that could run it;
* :meth:`WorkerPool.closest`: workers in order of how close they are to
  fitting it (most free cores, then memory), for reservations;
* :meth:`WorkerPool.fits_somewhere`: whether any worker could ever run it.

Ties go to the worker that joined first. The box a request gets depends on
the worker's size (:func:`~packmule.core.allocation.box`): when the request
gives both cores and memory, those two parts of the box are the same on
every worker and one index over all workers answers exactly; otherwise
workers are grouped by size class (cores, memory, GPUs), each class answers
for itself, and the cost grows with the number of classes, not workers.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from ..resources import ZERO, Resources
from .allocation import box, with_minimum
from .states import WorkerState

#: Prefetched tasks a worker holds at most: one per task running there, and
#: never more than this.
PREFETCH_MAX = 16

#: Index keys pack (free memory, join number) into one int: memory << _SEQ_BITS | seq.
_SEQ_BITS = 40
_SEQ_MASK = (1 << _SEQ_BITS) - 1

#: No minimum: requests are taken as they are.
UNSET = Resources()

#: (free cores after placing, free memory after placing, join number): smaller is a better fit.
FitKey = tuple[int, int, int]
#: A request's placement: the worker and the allocation it gets there.
Placement = tuple["WorkerRecord", Resources]


@dataclass(slots=True, eq=False)
class WorkerRecord:
    """The core's view of one connected worker."""

    id: str
    total: Resources
    last_seen: float
    #: Join number: ties between equally good workers go to the earlier one.
    seq: int
    committed: Resources = ZERO
    #: ``total - committed``, kept up to date by the pool.
    free: Resources = ZERO
    running: dict[int, Resources] = field(default_factory=dict)
    #: Prefetched attempts, in the order sent: the worker starts each as soon as
    #: it fits (the same rule as :meth:`WorkerPool.promote`), so this mirrors its queue.
    queued: dict[int, Resources] = field(default_factory=dict)
    state: WorkerState = WorkerState.ACTIVE
    #: Where the queue index holds it: (queue length, free cores), or None.
    _queue_slot: tuple[int, int] | None = None

    def has_room(self) -> bool:
        return bool(self.free.cores or self.free.gpus)

    def queue_room(self) -> bool:
        return len(self.queued) < min(PREFETCH_MAX, len(self.running))


class _Boxes:
    """The allocation one request (raised to a minimum) gets per worker size, memoised."""

    __slots__ = ("_cache", "minimum", "request")

    def __init__(self, request: Resources, minimum: Resources) -> None:
        self.request = request
        self.minimum = minimum
        self._cache: dict[Resources, Resources | None] = {}

    def on(self, total: Resources) -> Resources | None:
        try:
            return self._cache[total]
        except KeyError:
            got = self._cache[total] = with_minimum(box(self.request, total), self.minimum)
            return got


def _fits(a: Resources, free: Resources) -> bool:
    return (a.cores <= free.cores and a.memory <= free.memory  # type: ignore[operator]
            and a.disk <= free.disk and a.gpus <= free.gpus)  # type: ignore[operator]


class FreeIndex:
    """A set of workers ordered by free GPUs, then free cores, then free memory and join order.

    Each level (free GPUs, free cores) holds a sorted list of int keys
    ``free memory << 40 | seq``; the levels present are kept sorted too.
    """

    __slots__ = ("_cores", "_gpus", "_levels")

    def __init__(self) -> None:
        self._levels: dict[int, dict[int, list[int]]] = {}
        self._cores: dict[int, list[int]] = {}  # free gpus -> sorted free cores present
        self._gpus: list[int] = []  # sorted free gpus present

    def __len__(self) -> int:
        return sum(len(keys) for lv in self._levels.values() for keys in lv.values())

    def add(self, free: Resources, seq: int) -> None:
        g, c = free.gpus or 0, free.cores or 0
        by_cores = self._levels.get(g)
        if by_cores is None:
            by_cores = self._levels[g] = {}
            self._cores[g] = []
            bisect.insort(self._gpus, g)
        keys = by_cores.get(c)
        if keys is None:
            keys = by_cores[c] = []
            bisect.insort(self._cores[g], c)
        bisect.insort(keys, (free.memory or 0) << _SEQ_BITS | seq)

    def remove(self, free: Resources, seq: int) -> None:
        g, c = free.gpus or 0, free.cores or 0
        by_cores = self._levels[g]
        keys = by_cores[c]
        key = (free.memory or 0) << _SEQ_BITS | seq
        i = bisect.bisect_left(keys, key)
        if i == len(keys) or keys[i] != key:
            raise KeyError(f"worker {seq} is not indexed at {free}")
        del keys[i]
        if not keys:
            del by_cores[c]
            cores = self._cores[g]
            del cores[bisect.bisect_left(cores, c)]
            if not by_cores:
                del self._levels[g], self._cores[g]
                del self._gpus[bisect.bisect_left(self._gpus, g)]

    def has_room(self) -> bool:
        """Whether some worker has a free core or GPU."""
        return bool(self._gpus) and (self._gpus[-1] > 0 or self._cores[0][-1] > 0)

    def first_fit(self, gpus: int, cores: int, memory: int,
                  accept: Callable[[int], Resources | None]
                  ) -> tuple[int, int, int, Resources] | None:
        """The smallest (free cores, free memory, seq) with at least ``gpus``,
        ``cores`` and ``memory`` free that ``accept`` (given the seq) gives an
        allocation for; as (free cores, key, seq, allocation). Workers with
        neither a free core nor a free GPU are never offered."""
        best: tuple[int, int, int, Resources] | None = None
        lo_key = memory << _SEQ_BITS
        for g in self._gpus[bisect.bisect_left(self._gpus, gpus):]:
            by_cores = self._levels[g]
            for c in self._cores[g][bisect.bisect_left(self._cores[g], cores):]:
                if best is not None and c > best[0]:
                    break
                if c == 0 and g == 0:
                    continue  # no room at all
                keys = by_cores[c]
                for i in range(bisect.bisect_left(keys, lo_key), len(keys)):
                    key = keys[i]
                    if best is not None and c == best[0] and key >= best[1]:
                        break
                    alloc = accept(key & _SEQ_MASK)
                    if alloc is not None:
                        best = (c, key, key & _SEQ_MASK, alloc)
                        break
                else:
                    continue
                break  # the first level with a fit is this GPU level's best
        return best

    def descending(self) -> Iterator[tuple[int, int]]:
        """(free cores, seq) from the most free cores, then memory, down; ties by join order."""
        for c in sorted({c for cores in self._cores.values() for c in cores}, reverse=True):
            keys = list(heapq.merge(*(lv[c] for lv in self._levels.values() if c in lv)))
            hi = len(keys)
            while hi:
                lo = bisect.bisect_left(keys, keys[hi - 1] & ~_SEQ_MASK, 0, hi)
                for key in keys[lo:hi]:
                    yield c, key & _SEQ_MASK
                hi = lo


class _QueueIndex:
    """Busy workers with room in their prefetch queue: by queue length, then free cores."""

    __slots__ = ("_cores", "_lengths", "_levels")

    def __init__(self) -> None:
        self._levels: dict[int, dict[int, list[int]]] = {}  # qlen -> free cores -> sorted seqs
        self._cores: dict[int, list[int]] = {}
        self._lengths: list[int] = []

    def __bool__(self) -> bool:
        return bool(self._lengths)

    def add(self, q: int, c: int, seq: int) -> None:
        by_cores = self._levels.get(q)
        if by_cores is None:
            by_cores = self._levels[q] = {}
            self._cores[q] = []
            bisect.insort(self._lengths, q)
        seqs = by_cores.get(c)
        if seqs is None:
            seqs = by_cores[c] = []
            bisect.insort(self._cores[q], c)
        bisect.insort(seqs, seq)

    def remove(self, q: int, c: int, seq: int) -> None:
        by_cores = self._levels[q]
        seqs = by_cores[c]
        del seqs[bisect.bisect_left(seqs, seq)]
        if not seqs:
            del by_cores[c]
            cores = self._cores[q]
            del cores[bisect.bisect_left(cores, c)]
            if not by_cores:
                del self._levels[q], self._cores[q]
                del self._lengths[bisect.bisect_left(self._lengths, q)]

    def first(self, accept: Callable[[int], Resources | None]
              ) -> tuple[int, Resources] | None:
        """The first worker (shortest queue, most free cores, join order) ``accept`` takes."""
        for q in self._lengths:
            by_cores = self._levels[q]
            for c in reversed(self._cores[q]):
                for seq in by_cores[c]:
                    alloc = accept(seq)
                    if alloc is not None:
                        return seq, alloc
        return None


class _Class:
    """Workers of one size class (cores, memory, GPUs); their disks may differ."""

    __slots__ = ("disks", "index", "max_disk", "size")

    def __init__(self, size: Resources) -> None:
        self.size = size  # with the largest disk of the class
        self.index = FreeIndex()
        self.disks: dict[int, int] = {}  # disk size -> workers
        self.max_disk = 0


class WorkerPool:
    """Connected workers with stored free resources and the indexes over them."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerRecord] = {}
        self._by_seq: dict[int, WorkerRecord] = {}
        self._seqs = itertools.count()
        self._all = FreeIndex()
        self._classes: dict[tuple[int, int, int], _Class] = {}
        self._queues = _QueueIndex()
        #: Worker ids in the order they were last heard from (dicts keep insertion order).
        self._by_seen: dict[str, None] = {}
        self._sizes: list[dict[int, int]] = [{}, {}, {}, {}]  # per field: size -> workers
        self._largest = ZERO
        self._committed = [0, 0, 0, 0]
        self._total = [0, 0, 0, 0]
        #: Changes when a worker joins or leaves (what could ever fit may have changed).
        self.generation = 0
        self._fits_cache: dict[tuple[Resources, frozenset[str]], bool] = {}
        #: Workers taken out of the indexes for a while (:meth:`hold`).
        self._held: set[int] = set()
        #: Join numbers of workers that joined, or whose free room or prefetch queue
        #: changed, since :meth:`take_touched`: only they can have room for a request
        #: that found none before.
        self.touched: set[int] = set()

    # ------------------------------------------------------------ membership
    def add(self, worker_id: str, total: Resources, now: float) -> WorkerRecord:
        if worker_id in self.workers:
            raise ValueError(f"worker {worker_id} is already connected")
        w = WorkerRecord(worker_id, total, now, next(self._seqs), free=total.filled())
        self.workers[worker_id] = w
        self._by_seq[w.seq] = w
        self._by_seen[worker_id] = None
        cls = self._class_of(total)
        if cls is None:
            cls = self._classes[_class_key(total)] = _Class(total.filled())
        d = total.disk or 0
        cls.disks[d] = cls.disks.get(d, 0) + 1
        if d > cls.max_disk:
            cls.max_disk = d
            cls.size = total.filled()
        self._index(w)
        for i, v in enumerate(total.astuple()):
            counts = self._sizes[i]
            counts[v or 0] = counts.get(v or 0, 0) + 1
            self._total[i] += v or 0
        self._largest = Resources._raw(*(max(a or 0, b or 0) for a, b in
                                         zip(self._largest.astuple(), total.astuple(),
                                             strict=True)))
        self._changed()
        return w

    def remove(self, worker_id: str) -> WorkerRecord | None:
        w = self.workers.pop(worker_id, None)
        if w is None:
            return None
        if w.seq in self._held:
            self._held.discard(w.seq)
        else:
            self._unindex(w)
        del self._by_seq[w.seq]
        self.touched.discard(w.seq)
        del self._by_seen[worker_id]
        key = _class_key(w.total)
        cls = self._classes[key]
        d = w.total.disk or 0
        cls.disks[d] -= 1
        if not cls.disks[d]:
            del cls.disks[d]
            if not cls.disks:
                del self._classes[key]
            elif d == cls.max_disk:
                cls.max_disk = max(cls.disks)
                cls.size = Resources._raw(key[0], key[1], cls.max_disk, key[2])
        largest = list(self._largest.astuple())
        for i, v in enumerate(w.total.astuple()):
            counts = self._sizes[i]
            counts[v or 0] -= 1
            if not counts[v or 0]:
                del counts[v or 0]
                if v == largest[i]:  # the only one that large: find the next largest
                    largest[i] = max(counts, default=0)
            self._total[i] -= v or 0
        self._largest = Resources._raw(*largest)  # type: ignore[arg-type]
        for i, v in enumerate(w.committed.astuple()):
            self._committed[i] -= v or 0
        self._changed()
        return w

    def _changed(self) -> None:
        self.generation += 1
        self._fits_cache.clear()

    def _class_of(self, total: Resources) -> _Class | None:
        return self._classes.get(_class_key(total))

    # ------------------------------------------------------------ leases
    def seen(self, worker_id: str, now: float) -> None:
        """Anything arrived from the worker: its lease is renewed."""
        w = self.workers.get(worker_id)
        if w is not None:
            w.last_seen = now
            del self._by_seen[worker_id]
            self._by_seen[worker_id] = None

    def expired(self, now: float, lease: float) -> list[str]:
        """Workers not heard from within ``lease`` seconds (oldest first; cost: their number)."""
        out = []
        for wid in self._by_seen:
            if now - self.workers[wid].last_seen <= lease:
                break
            out.append(wid)
        return out

    # ------------------------------------------------------------ allocations
    def commit(self, w: WorkerRecord, task_id: int, alloc: Resources) -> None:
        """The attempt runs on ``w`` now: its allocation is taken from what is free."""
        self._unindex(w)
        w.running[task_id] = alloc
        self._take(w, alloc)
        self._index(w)

    def enqueue(self, w: WorkerRecord, task_id: int, alloc: Resources) -> None:
        """The attempt waits in ``w``'s queue (prefetched): it holds nothing yet."""
        self._unindex_queue(w)
        w.queued[task_id] = alloc
        self._index_queue(w)

    def release(self, w: WorkerRecord, task_id: int) -> None:
        """The attempt left ``w``: what it held is free again; queued attempts that fit start."""
        if task_id in w.running:
            self._unindex(w)
            alloc = w.running.pop(task_id)
            w.committed = w.committed - alloc
            f = w.free
            w.free = Resources._raw(f.cores + (alloc.cores or 0),  # type: ignore[operator]
                                    f.memory + (alloc.memory or 0),  # type: ignore[operator]
                                    f.disk + (alloc.disk or 0),  # type: ignore[operator]
                                    f.gpus + (alloc.gpus or 0))  # type: ignore[operator]
            for i, v in enumerate(alloc.astuple()):
                self._committed[i] -= v or 0
            self._promote(w)
            self._index(w)
        elif task_id in w.queued:
            self._unindex_queue(w)
            del w.queued[task_id]
            self._index_queue(w)

    def _take(self, w: WorkerRecord, alloc: Resources) -> None:
        w.committed = w.committed + alloc
        f = w.free
        w.free = Resources._raw(f.cores - (alloc.cores or 0),  # type: ignore[operator]
                                f.memory - (alloc.memory or 0),  # type: ignore[operator]
                                f.disk - (alloc.disk or 0),  # type: ignore[operator]
                                f.gpus - (alloc.gpus or 0))  # type: ignore[operator]
        for i, v in enumerate(alloc.astuple()):
            self._committed[i] += v or 0

    def _promote(self, w: WorkerRecord) -> None:
        """Start the queued attempts that fit now, in the order they were sent."""
        for tid, alloc in list(w.queued.items()):
            if _fits(alloc, w.free):
                del w.queued[tid]
                w.running[tid] = alloc
                self._take(w, alloc)

    # ------------------------------------------------------------ index upkeep
    def _index(self, w: WorkerRecord) -> None:
        self.touched.add(w.seq)
        if w.seq in self._held:
            return
        self._all.add(w.free, w.seq)
        self._classes_index(w).add(w.free, w.seq)
        self._index_queue(w)

    def _unindex(self, w: WorkerRecord) -> None:
        if w.seq in self._held:
            return
        self._all.remove(w.free, w.seq)
        self._classes_index(w).remove(w.free, w.seq)
        self._unindex_queue(w)

    def _index_queue(self, w: WorkerRecord) -> None:
        self.touched.add(w.seq)
        if w.queue_room() and w.seq not in self._held:
            w._queue_slot = (len(w.queued), w.free.cores or 0)
            self._queues.add(*w._queue_slot, w.seq)

    def _unindex_queue(self, w: WorkerRecord) -> None:
        if w._queue_slot is not None:
            self._queues.remove(*w._queue_slot, w.seq)
            w._queue_slot = None

    def _classes_index(self, w: WorkerRecord) -> FreeIndex:
        return self._classes[_class_key(w.total)].index

    def hold(self, worker_id: str) -> None:
        """Take a worker out of the indexes (reserved for others) until :meth:`unhold_all`."""
        w = self.workers[worker_id]
        if w.seq not in self._held:
            self._unindex(w)
            self._held.add(w.seq)

    def unhold_all(self) -> None:
        held, self._held = self._held, set()
        for seq in held:
            self._index(self._by_seq[seq])

    def take_touched(self) -> set[int]:
        """The workers touched since the last call (see :attr:`touched`)."""
        touched, self.touched = self.touched, set()
        return touched

    def touch(self, worker_id: str) -> None:
        """Count a worker as touched (say, a reservation on it was lifted)."""
        w = self.workers.get(worker_id)
        if w is not None:
            self.touched.add(w.seq)

    # ------------------------------------------------------------ questions
    @property
    def largest(self) -> Resources:
        """Element-wise maximum over connected workers."""
        return self._largest

    def totals(self) -> tuple[Resources, Resources]:
        """(committed, total) summed over connected workers."""
        return Resources._raw(*self._committed), Resources._raw(*self._total)

    def open(self) -> bool:
        """Whether some worker has room, or room in its prefetch queue."""
        return self._all.has_room() or bool(self._queues)

    def best_fit(self, request: Resources, minimum: Resources = UNSET,
                 allowed: Callable[[WorkerRecord], bool] | None = None) -> Placement | None:
        """The worker with room that is left with the fewest free cores, then the least
        free memory, after placing ``request`` (raised to ``minimum``); ties by join order.
        ``allowed`` may rule workers out (avoided, reserved for others)."""
        boxes = _Boxes(request, minimum)
        by_seq = self._by_seq

        def accept(seq: int) -> Resources | None:
            w = by_seq[seq]
            a = boxes.on(w.total)
            if a is None or not _fits(a, w.free) or (allowed is not None and not allowed(w)):
                return None
            return a

        if request.cores is not None and request.memory is not None:
            lo = with_minimum(Resources._raw(request.cores, request.memory, 0,
                                             request.gpus or 0), minimum)
            assert lo is not None
            got = self._all.first_fit(lo.gpus or 0, lo.cores or 0, lo.memory or 0, accept)
            return None if got is None else (by_seq[got[2]], got[3])
        best: tuple[FitKey, Placement] | None = None
        for cls in self._classes.values():
            if request.disk is not None:  # the box may differ with each worker's disk
                cand = self._scan_class(cls, boxes, accept)
            else:
                rep = boxes.on(cls.size)
                if rep is None:
                    continue
                got = cls.index.first_fit(rep.gpus or 0, rep.cores or 0, rep.memory or 0,
                                          accept)
                if got is None:
                    continue
                w = by_seq[got[2]]
                cand = (_fit_key(w, got[3]), (w, got[3]))
            if cand is not None and (best is None or cand[0] < best[0]):
                best = cand
        return None if best is None else best[1]

    def _scan_class(self, cls: _Class, boxes: _Boxes, accept: Callable[[int], Resources | None]
                    ) -> tuple[FitKey, Placement] | None:
        best: tuple[FitKey, Placement] | None = None
        for _, seq in cls.index.descending():
            w = self._by_seq[seq]
            if not w.has_room():
                continue
            a = accept(seq)
            if a is not None:
                cand = (_fit_key(w, a), (w, a))
                if best is None or cand[0] < best[0]:
                    best = cand
        return best

    def best_fit_among(self, seqs: Iterable[int], request: Resources,
                       minimum: Resources = UNSET,
                       allowed: Callable[[WorkerRecord], bool] | None = None
                       ) -> Placement | None:
        """:meth:`best_fit` among the given workers only (by join number), by looking
        at each: for a few workers, when the others are known to have no room."""
        boxes = _Boxes(request, minimum)
        best: tuple[FitKey, Placement] | None = None
        for seq in seqs:
            w = self._by_seq.get(seq)
            if w is None or seq in self._held or not w.has_room():
                continue
            a = boxes.on(w.total)
            if a is None or not _fits(a, w.free) or (allowed is not None and not allowed(w)):
                continue
            key = _fit_key(w, a)
            if best is None or key < best[0]:
                best = (key, (w, a))
        return None if best is None else best[1]

    def prefetch_among(self, seqs: Iterable[int], request: Resources,
                       minimum: Resources = UNSET,
                       allowed: Callable[[WorkerRecord], bool] | None = None
                       ) -> Placement | None:
        """:meth:`prefetch_target` among the given workers only (by join number)."""
        boxes = _Boxes(request, minimum)
        best: tuple[tuple[int, int, int], Placement] | None = None
        for seq in seqs:
            w = self._by_seq.get(seq)
            if w is None or w._queue_slot is None:
                continue
            a = boxes.on(w.total)
            if a is None or not _fits(a, w.total) or (allowed is not None and not allowed(w)):
                continue
            key = (len(w.queued), -(w.free.cores or 0), seq)
            if best is None or key < best[0]:
                best = (key, (w, a))
        return None if best is None else best[1]

    def prefetch_target(self, request: Resources, minimum: Resources = UNSET,
                        allowed: Callable[[WorkerRecord], bool] | None = None
                        ) -> Placement | None:
        """The worker with room in its prefetch queue, the shortest queue, then the most
        free cores, whose size fits ``request``: it starts the attempt when room frees."""
        boxes = _Boxes(request, minimum)
        by_seq = self._by_seq

        def accept(seq: int) -> Resources | None:
            w = by_seq[seq]
            a = boxes.on(w.total)
            if a is None or not _fits(a, w.total) or (allowed is not None and not allowed(w)):
                return None
            return a

        got = self._queues.first(accept)
        return None if got is None else (by_seq[got[0]], got[1])

    def closest(self, request: Resources,
                allowed: Callable[[WorkerRecord], bool] | None = None
                ) -> Iterator[WorkerRecord]:
        """Workers whose size fits ``request``, from the closest to having room for it (most
        free cores, then memory) on; ties by join order. For reservations."""
        boxes = _Boxes(request, UNSET)
        streams = [cls.index.descending() for cls in self._classes.values()
                   if not (request.disk is None and boxes.on(cls.size) is None)]
        by_seq = self._by_seq
        if len(streams) == 1:
            merged: Iterator[tuple[int, int]] = streams[0]
        else:
            merged = heapq.merge(*streams, key=lambda cs: _closeness(by_seq[cs[1]]))
        for _, seq in merged:
            w = by_seq[seq]
            if boxes.on(w.total) is not None and (allowed is None or allowed(w)):
                yield w

    def fits_somewhere(self, request: Resources, avoid: frozenset[str] = frozenset()) -> bool:
        """Whether some connected worker (not in ``avoid``) is big enough for ``request``."""
        key = (request, avoid)
        got = self._fits_cache.get(key)
        if got is None:
            if avoid:
                got = any(box(request, w.total) is not None
                          for w in self.workers.values() if w.id not in avoid)
            else:
                got = any(box(request, cls.size) is not None for cls in self._classes.values())
            self._fits_cache[key] = got
        return got

    # ------------------------------------------------------------ checks
    def check(self) -> None:
        """Raise AssertionError if stored state or an index disagrees with the workers."""
        assert not self._held, "workers still held after a scheduling pass"
        committed, total = [0, 0, 0, 0], [0, 0, 0, 0]
        queued = 0
        for w in self.workers.values():
            assert w.free == w.total.filled() - w.committed, f"worker {w.id}: free {w.free}"
            assert w.committed.fits_in(w.total), f"worker {w.id} overcommitted: {w.committed}"
            slot = (len(w.queued), w.free.cores or 0) if w.queue_room() else None
            assert w._queue_slot == slot, f"worker {w.id}: queue slot {w._queue_slot} != {slot}"
            queued += slot is not None
            for i, (c, t) in enumerate(zip(w.committed.astuple(), w.total.astuple(),
                                           strict=True)):
                committed[i] += c or 0
                total[i] += t or 0
        assert len(self._all) == len(self.workers), "the free index lost a worker"
        assert sum(len(c.index) for c in self._classes.values()) == len(self.workers)
        assert sum(len(s) for lv in self._queues._levels.values() for s in lv.values()) == queued
        assert (committed, total) == (self._committed, self._total), "totals drifted"
        largest = ZERO
        for w in self.workers.values():
            largest = Resources._raw(*(max(a or 0, b or 0) for a, b in
                                       zip(largest.astuple(), w.total.astuple(), strict=True)))
        assert largest == self._largest, f"largest {self._largest} != {largest}"
        seen = [self.workers[wid].last_seen for wid in self._by_seen]
        assert seen == sorted(seen), "lease order"


def _class_key(total: Resources) -> tuple[int, int, int]:
    return (total.cores or 0, total.memory or 0, total.gpus or 0)


def _fit_key(w: WorkerRecord, alloc: Resources) -> FitKey:
    return ((w.free.cores or 0) - (alloc.cores or 0), (w.free.memory or 0) - (alloc.memory or 0),
            w.seq)


def _closeness(w: WorkerRecord) -> tuple[int, int, int]:
    return (-(w.free.cores or 0), -(w.free.memory or 0), w.seq)

