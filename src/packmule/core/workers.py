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
from .slots import promote
from .states import WorkerState

#: Prefetched tasks a worker holds at most: one per task running there, and
#: never more than this.
PREFETCH_MAX = 16
#: No minimum: requests are taken as they are.
UNSET = Resources()

#: Index keys pack (free memory, join number) into one int: memory << _SEQ_BITS | seq.
_SEQ_BITS = 40
_SEQ_MASK = (1 << _SEQ_BITS) - 1
#: Keys per block of an index level (a block knows the most free disk among its workers).
_BLOCK = 64

#: (free cores after placing, free memory after placing, join number): smaller is a better fit.
FitKey = tuple[int, int, int]
#: A request's placement: the worker and the allocation it gets there.
Placement = tuple["WorkerRecord", Resources]
#: (GPUs, cores, memory, disk): at least this much, wherever the request is placed.
Need = tuple[int, int, int, int]
#: Whether a worker may be used (not avoided, not held for others); None: any.
Allowed = Callable[["WorkerRecord"], bool] | None


@dataclass(slots=True, eq=False)
class WorkerRecord:
    """The core's view of one connected worker."""

    id: str
    total: Resources
    last_seen: float
    #: Join number: ties between equally good workers go to the earlier one.
    seq: int
    #: What is not committed to running attempts, kept up to date by the pool.
    free: Resources = ZERO
    running: dict[int, Resources] = field(default_factory=dict)
    #: Prefetched attempts, in the order sent: the worker starts each as soon as it
    #: fits, by the one rule both apply (:func:`~packmule.core.slots.promote`), so this
    #: mirrors its queue.
    queued: dict[int, Resources] = field(default_factory=dict)
    state: WorkerState = WorkerState.ACTIVE
    #: Where the queue index holds it: (queue length, free cores), or None.
    _queue_slot: tuple[int, int] | None = None

    @property
    def committed(self) -> Resources:
        """What running attempts hold."""
        return self.total - self.free

    def has_room(self) -> bool:
        return bool(self.free.cores or self.free.gpus)

    def queue_room(self) -> bool:
        return len(self.queued) < min(PREFETCH_MAX, len(self.running))


class Shape:
    """A request raised to a category minimum, as the pool sees it: the allocation it
    gets on each worker size (memoised) and what it needs at least, anywhere
    (:attr:`need`; valid while the pool's :attr:`~WorkerPool.epoch` stays the same)."""

    __slots__ = ("_boxes", "minimum", "need", "request")

    def __init__(self, request: Resources, minimum: Resources = UNSET) -> None:
        self.request = request
        self.minimum = minimum
        self._boxes: dict[Resources, Resources | None] = {}
        self.need: Need = (0, 0, 0, 0)

    def on(self, total: Resources) -> Resources | None:
        """The allocation on a worker of size ``total`` (None: it never fits there)."""
        try:
            return self._boxes[total]
        except KeyError:
            got = self._boxes[total] = with_minimum(box(self.request, total), self.minimum)
            return got

    @property
    def same_everywhere(self) -> bool:
        """Cores and memory given: those parts of the box are the same on every worker."""
        return self.request.cores is not None and self.request.memory is not None


def _fits(a: Resources, free: Resources) -> bool:
    return (a.cores <= free.cores and a.memory <= free.memory  # type: ignore[operator]
            and a.disk <= free.disk and a.gpus <= free.gpus)  # type: ignore[operator]


class _Level:
    """The workers at one (free GPUs, free cores): keys ``free memory << 40 | seq`` in
    sorted blocks, with each worker's free disk beside its key; each block keeps a bound
    on the most free disk in it (raised on insert, made exact when a search of the whole
    block finds too little), so that a search for disk skips whole blocks."""

    __slots__ = ("blocks", "disks", "lasts", "most")

    def __init__(self) -> None:
        self.blocks: list[list[int]] = []
        self.disks: list[list[int]] = []  # free disk of each key, block by block
        self.lasts: list[int] = []  # each block's largest key
        self.most: list[int] = []  # at least each block's most free disk

    def __len__(self) -> int:
        return sum(len(b) for b in self.blocks)

    def add(self, key: int, disk: int) -> None:
        if not self.blocks:
            self.blocks.append([key])
            self.disks.append([disk])
            self.lasts.append(key)
            self.most.append(disk)
            return
        lasts = self.lasts
        i = bisect.bisect_left(lasts, key)
        if i == len(lasts):
            i -= 1
        block = self.blocks[i]
        j = bisect.bisect_left(block, key)
        block.insert(j, key)
        self.disks[i].insert(j, disk)
        if j == len(block) - 1:
            lasts[i] = key
        if disk > self.most[i]:
            self.most[i] = disk
        if len(block) > 2 * _BLOCK:
            disks = self.disks[i]
            self.blocks.insert(i + 1, block[_BLOCK:])
            self.disks.insert(i + 1, disks[_BLOCK:])
            del block[_BLOCK:], disks[_BLOCK:]
            self.lasts[i] = block[-1]
            self.lasts.insert(i + 1, self.blocks[i + 1][-1])
            self.most[i] = max(disks)
            self.most.insert(i + 1, max(self.disks[i + 1]))

    def remove(self, key: int) -> bool:
        """Remove a key; False if it was not there."""
        i = bisect.bisect_left(self.lasts, key)
        if i == len(self.blocks):
            return False
        block = self.blocks[i]
        j = bisect.bisect_left(block, key)
        if j == len(block) or block[j] != key:
            return False
        del block[j]
        del self.disks[i][j]
        if not block:
            del self.blocks[i], self.disks[i], self.lasts[i], self.most[i]
            return True
        self.lasts[i] = block[-1]
        return True

    def top(self) -> tuple[int, int]:
        """(most free memory, most free disk) at this level."""
        return self.lasts[-1] >> _SEQ_BITS, max(self.most)

    def first(self, lo_key: int, disk: int, stop: int | None,
              accept: Callable[[int], Resources | None]) -> tuple[int, Resources] | None:
        """The first key from ``lo_key`` on (below ``stop``) whose worker has ``disk``
        free and that ``accept`` gives an allocation for."""
        blocks, most = self.blocks, self.most
        i = bisect.bisect_left(self.lasts, lo_key)
        j = 0
        if i < len(blocks):
            j = bisect.bisect_left(blocks[i], lo_key)
        while i < len(blocks):
            block = blocks[i]
            if stop is not None and block[j] >= stop:
                return None
            if most[i] >= disk:
                disks = self.disks[i]
                # The keys with enough disk, found in C (map and index), not key by key.
                enough = list(map(disk.__le__, disks))
                k = j - 1
                while True:
                    try:
                        k = enough.index(True, k + 1)
                    except ValueError:
                        break
                    key = block[k]
                    if stop is not None and key >= stop:
                        return None
                    alloc = accept(key & _SEQ_MASK)
                    if alloc is not None:
                        return key, alloc
                if not j:
                    most[i] = max(disks)  # the whole block was looked at: the bound is exact
            j = 0
            i += 1
        return None

    def __iter__(self) -> Iterator[int]:
        for block in self.blocks:
            yield from block


class FreeIndex:
    """A set of workers ordered by free GPUs, then free cores, then free memory and join
    order; the levels (free GPUs, free cores) present are kept sorted. Workers with
    neither a free core nor a free GPU (full) are only counted, by key: no request can
    be placed there, and they are the last to be close to fitting one."""

    __slots__ = ("_cores", "_full", "_gpus", "_levels")

    def __init__(self) -> None:
        self._levels: dict[int, dict[int, _Level]] = {}
        self._cores: dict[int, list[int]] = {}  # free gpus -> sorted free cores present
        self._gpus: list[int] = []  # sorted free gpus present
        self._full: set[int] = set()  # keys of the full workers

    def __len__(self) -> int:
        return len(self._full) + sum(len(lv) for by_cores in self._levels.values()
                                     for lv in by_cores.values())

    def add(self, free: Resources, seq: int) -> None:
        g, c = free.gpus or 0, free.cores or 0
        if not (g or c):
            self._full.add((free.memory or 0) << _SEQ_BITS | seq)
            return
        by_cores = self._levels.get(g)
        if by_cores is None:
            by_cores = self._levels[g] = {}
            self._cores[g] = []
            bisect.insort(self._gpus, g)
        level = by_cores.get(c)
        if level is None:
            level = by_cores[c] = _Level()
            bisect.insort(self._cores[g], c)
        level.add((free.memory or 0) << _SEQ_BITS | seq, free.disk or 0)

    def remove(self, free: Resources, seq: int) -> None:
        g, c = free.gpus or 0, free.cores or 0
        key = (free.memory or 0) << _SEQ_BITS | seq
        if not (g or c):
            self._full.remove(key)
            return
        by_cores = self._levels.get(g)
        level = None if by_cores is None else by_cores.get(c)
        if level is None or not level.remove(key):
            raise KeyError(f"worker {seq} is not indexed at {free}")
        if not level.blocks:
            assert by_cores is not None
            del by_cores[c]
            cores = self._cores[g]
            del cores[bisect.bisect_left(cores, c)]
            if not by_cores:
                del self._levels[g], self._cores[g]
                del self._gpus[bisect.bisect_left(self._gpus, g)]

    def has_room(self) -> bool:
        """Whether some worker has a free core or GPU."""
        return bool(self._gpus)

    def first_fit(self, need: Need, accept: Callable[[int], Resources | None]
                  ) -> tuple[int, int, Resources] | None:
        """The smallest (free cores, free memory, seq) with at least ``need`` (GPUs,
        cores, memory, disk) free that ``accept`` (given the seq) gives an allocation
        for, as (free cores, key, allocation). Workers with neither a free core nor a
        free GPU are never offered."""
        gpus, cores, memory, disk = need
        best: tuple[int, int, Resources] | None = None
        lo_key = memory << _SEQ_BITS
        for g in self._gpus[bisect.bisect_left(self._gpus, gpus):]:
            by_cores = self._levels[g]
            levels = self._cores[g]
            for c in levels[bisect.bisect_left(levels, cores):]:
                if best is not None and c > best[0]:
                    break
                stop = best[1] if best is not None and c == best[0] else None
                got = by_cores[c].first(lo_key, disk, stop, accept)
                if got is not None:
                    best = (c, got[0], got[1])
                    break  # the first level with a fit is this GPU level's best
        return best

    def most_free(self) -> Need | None:
        """Element-wise most (GPUs, cores, memory, disk) free on workers with room."""
        out: list[int] | None = None
        for g, by_cores in self._levels.items():
            for c, level in by_cores.items():
                m, d = level.top()
                out = [g, c, m, d] if out is None else [max(out[0], g), max(out[1], c),
                                                         max(out[2], m), max(out[3], d)]
        return None if out is None else (out[0], out[1], out[2], out[3])

    def descending(self) -> Iterator[tuple[int, int]]:
        """(free cores, seq) from the most free cores, then memory, down; ties by join order."""
        cores = sorted({c for cs in self._cores.values() for c in cs}, reverse=True)
        if self._full and 0 not in cores:
            cores.append(0)
        for c in cores:
            keys = list(heapq.merge(*(lv[c] for lv in self._levels.values() if c in lv)))
            if c == 0 and self._full:
                keys = sorted([*keys, *self._full])
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

    def __len__(self) -> int:
        return sum(len(s) for lv in self._levels.values() for s in lv.values())

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
    """Workers of one size class (cores, memory, GPUs); their disks may differ. Its own
    index is kept only while there are other classes (else the pool's index is its)."""

    __slots__ = ("disks", "index", "key")

    def __init__(self, key: tuple[int, int, int]) -> None:
        self.key = key
        self.index: FreeIndex | None = None
        self.disks: dict[int, int] = {}  # disk size -> workers

    def size(self, disk: int) -> Resources:
        c, m, g = self.key
        return Resources._raw(c, m, disk, g)

    def extremes(self) -> tuple[int, int]:
        return min(self.disks), max(self.disks)


class WorkerPool:
    """Connected workers with stored free resources and the indexes over them."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerRecord] = {}
        self._by_seq: dict[int, WorkerRecord] = {}
        self._seqs = itertools.count()
        self._all = FreeIndex()
        self._classes: dict[tuple[int, int, int], _Class] = {}
        #: Per class: the sizes with its smallest and its largest disk.
        self._class_sizes: dict[tuple[int, int, int], tuple[Resources, Resources]] = {}
        self._queues = _QueueIndex()
        self._interned: dict[Resources, Resources] = {}
        #: Whether each size class has an index of its own (there are several classes).
        self._by_class = False
        #: Whether the index of prefetch queues is kept (see :meth:`index_queues`).
        self._queue_indexed = False
        #: Worker ids in the order they were last heard from (dicts keep insertion order).
        self._by_seen: dict[str, None] = {}
        self._sizes: list[dict[int, int]] = [{}, {}, {}, {}]  # per field: size -> workers
        self._largest = ZERO
        self._committed = [0, 0, 0, 0]
        self._total = [0, 0, 0, 0]
        #: Changes when the largest worker or the worker sizes present change: requests
        #: worked out against the largest worker, and what a shape needs at least
        #: (:attr:`Shape.need`), may then differ.
        self.epoch = 0
        self._epoch_largest = ZERO
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
        # Workers of one size share one value: lookups by size then hit by identity.
        total = self._interned.setdefault(total.filled(), total.filled())
        w = WorkerRecord(worker_id, total, now, next(self._seqs), free=total)
        self.workers[worker_id] = w
        self._by_seq[w.seq] = w
        self._by_seen[worker_id] = None
        key = _class_key(total)
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = _Class(key)
            if self._by_class:
                cls.index = FreeIndex()
        d = total.disk or 0
        cls.disks[d] = cls.disks.get(d, 0) + 1
        self._index(w)
        for i, v in enumerate(total.astuple()):
            counts = self._sizes[i]
            counts[v or 0] = counts.get(v or 0, 0) + 1
            self._total[i] += v or 0
        self._largest = Resources._raw(*(max(a or 0, b or 0) for a, b in
                                         zip(self._largest.astuple(), total.astuple(),
                                             strict=True)))
        self._sizes_changed(cls)
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
        self._sizes_changed(cls)
        return w

    def _sizes_changed(self, cls: _Class) -> None:
        """A worker joined or left: what could ever fit may differ, and the epoch moves
        when the largest worker or a class's extreme disks change."""
        self._fits_cache.clear()
        sizes = None
        if cls.disks:
            lo, hi = cls.extremes()
            sizes = (cls.size(lo), cls.size(hi))
        if sizes != self._class_sizes.get(cls.key) or self._largest != self._epoch_largest:
            self.epoch += 1
            self._epoch_largest = self._largest
            if sizes is None:
                del self._class_sizes[cls.key]
            else:
                self._class_sizes[cls.key] = sizes

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
        self._give(w, alloc, 1)
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
            self._give(w, w.running.pop(task_id), -1)
            if w.queued:  # start what fits, in the order sent (the worker's own rule)
                for tid, alloc in promote(w.queued, w.free):
                    w.running[tid] = alloc
                    self._give(w, alloc, 1)
            self._index(w)
        elif task_id in w.queued:
            self._unindex_queue(w)
            del w.queued[task_id]
            self._index_queue(w)

    def _give(self, w: WorkerRecord, alloc: Resources, sign: int) -> None:
        """Commit (``sign`` 1) or release (-1) an allocation on ``w``: its committed and
        free amounts, and the pool's total committed."""
        c, m = sign * (alloc.cores or 0), sign * (alloc.memory or 0)
        d, g = sign * (alloc.disk or 0), sign * (alloc.gpus or 0)
        f = w.free
        w.free = Resources._raw(f.cores - c, f.memory - m,  # type: ignore[operator]
                                f.disk - d, f.gpus - g)  # type: ignore[operator]
        total = self._committed
        total[0] += c
        total[1] += m
        total[2] += d
        total[3] += g

    # ------------------------------------------------------------ index upkeep
    def _index(self, w: WorkerRecord) -> None:
        seq = w.seq
        self.touched.add(seq)
        if self._held and seq in self._held:
            return
        self._all.add(w.free, seq)
        if self._by_class:
            self._class_index(w).add(w.free, seq)
        if self._queue_indexed:
            self._index_queue(w)

    def _unindex(self, w: WorkerRecord) -> None:
        if self._held and w.seq in self._held:
            return
        self._all.remove(w.free, w.seq)
        if self._by_class:
            self._class_index(w).remove(w.free, w.seq)
        if w._queue_slot is not None:
            self._unindex_queue(w)

    def _class_index(self, w: WorkerRecord) -> FreeIndex:
        index = self._classes[_class_key(w.total)].index
        assert index is not None
        return index

    def class_indexes(self) -> list[tuple[_Class, FreeIndex]]:
        """Each size class with its index (one class: the pool's own index)."""
        if len(self._classes) == 1:
            (cls,) = self._classes.values()
            return [(cls, self._all)]
        if not self._by_class:  # a second class appeared: index each from now on
            self._by_class = True
            for cls in self._classes.values():
                cls.index = FreeIndex()
            for w in self.workers.values():
                if w.seq not in self._held:
                    self._class_index(w).add(w.free, w.seq)
        return [(cls, cls.index) for cls in self._classes.values()
                if cls.index is not None]

    def index_queues(self) -> None:
        """Keep the index of prefetch queues from now on (prefetching has begun)."""
        if not self._queue_indexed:
            self._queue_indexed = True
            for w in self.workers.values():
                self._index_queue(w)

    def _index_queue(self, w: WorkerRecord) -> None:
        self.touched.add(w.seq)
        if self._queue_indexed and w.queue_room() and w.seq not in self._held:
            w._queue_slot = (len(w.queued), w.free.cores or 0)
            self._queues.add(*w._queue_slot, w.seq)

    def _unindex_queue(self, w: WorkerRecord) -> None:
        if w._queue_slot is not None:
            self._queues.remove(*w._queue_slot, w.seq)
            w._queue_slot = None

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
        """Whether some worker has room, or (once indexed) room in its prefetch queue."""
        return self._all.has_room() or bool(self._queues)

    def shape(self, request: Resources, minimum: Resources = UNSET) -> Shape:
        """``request`` raised to ``minimum``, with what it needs at least on the workers
        connected now (GPUs, cores, memory, disk)."""
        s = Shape(request, minimum)
        need: list[int] | None = None
        for small, large in self._class_sizes.values():
            # The largest disk gives the smallest box elsewhere; the smallest, the least disk.
            b, d = s.on(large), s.on(small)
            if b is None:
                continue
            got = [b.gpus or 0, b.cores or 0, b.memory or 0,
                   min(b.disk or 0, d.disk or 0) if d is not None else b.disk or 0]
            need = got if need is None else [min(x, y) for x, y in zip(need, got, strict=True)]
        if need is not None:
            s.need = (need[0], need[1], need[2], need[3])
        return s

    def best_fit(self, shape: Shape, allowed: Allowed = None) -> Placement | None:
        """The worker with room that is left with the fewest free cores, then the least
        free memory, after placing ``shape``; ties by join order. ``allowed`` may rule
        workers out (avoided, reserved for others)."""
        by_seq = self._by_seq

        def accept(seq: int) -> Resources | None:
            w = by_seq[seq]
            a = shape.on(w.total)
            if a is None or not _fits(a, w.free) or (allowed is not None and not allowed(w)):
                return None
            return a

        if shape.same_everywhere:
            got = self._all.first_fit(shape.need, accept)
            return None if got is None else (by_seq[got[1] & _SEQ_MASK], got[2])
        best: tuple[FitKey, Placement] | None = None
        for cls, index in self.class_indexes():
            small, large = self._class_sizes[cls.key]
            if shape.request.disk is not None:  # the box may differ with each worker's disk
                cand = self._scan_class(index, shape, accept)
            else:
                rep = shape.on(large)
                if rep is None:
                    continue
                low = shape.on(small)
                disk = min(rep.disk or 0, (low or rep).disk or 0)
                got = index.first_fit((rep.gpus or 0, rep.cores or 0, rep.memory or 0, disk),
                                      accept)
                if got is None:
                    continue
                w = by_seq[got[1] & _SEQ_MASK]
                cand = (_fit_key(w, got[2]), (w, got[2]))
            if cand is not None and (best is None or cand[0] < best[0]):
                best = cand
        return None if best is None else best[1]

    def _scan_class(self, index: FreeIndex, shape: Shape,
                    accept: Callable[[int], Resources | None]
                    ) -> tuple[FitKey, Placement] | None:
        best: tuple[FitKey, Placement] | None = None
        for _, seq in index.descending():
            w = self._by_seq[seq]
            if not w.has_room():
                continue
            a = accept(seq)
            if a is not None:
                cand = (_fit_key(w, a), (w, a))
                if best is None or cand[0] < best[0]:
                    best = cand
        return best

    def best_fit_among(self, seqs: Iterable[int], shape: Shape, allowed: Allowed = None
                       ) -> Placement | None:
        """:meth:`best_fit` among the given workers only (by join number), by looking
        at each: for a few workers, when the others are known to have no room."""
        best: tuple[FitKey, Placement] | None = None
        for seq in seqs:
            w = self._by_seq.get(seq)
            if w is None or seq in self._held or not w.has_room():
                continue
            a = shape.on(w.total)
            if a is None or not _fits(a, w.free) or (allowed is not None and not allowed(w)):
                continue
            key = _fit_key(w, a)
            if best is None or key < best[0]:
                best = (key, (w, a))
        return None if best is None else best[1]

    def prefetch_target(self, shape: Shape, allowed: Allowed = None) -> Placement | None:
        """The worker with room in its prefetch queue, the shortest queue, then the most
        free cores, whose size fits ``shape``: it starts the attempt when room frees."""
        by_seq = self._by_seq

        def accept(seq: int) -> Resources | None:
            w = by_seq[seq]
            a = shape.on(w.total)
            if a is None or not _fits(a, w.total) or (allowed is not None and not allowed(w)):
                return None
            return a

        got = self._queues.first(accept)
        return None if got is None else (by_seq[got[0]], got[1])

    def most_free(self) -> Need | None:
        """Element-wise most (GPUs, cores, memory, disk) free on any worker with room."""
        return self._all.most_free()

    def room_among(self, seqs: Iterable[int]) -> Need | None:
        """Element-wise most (GPUs, cores, memory, disk) free on the given workers with
        room (None: none has room)."""
        free: list[int] | None = None
        for seq in seqs:
            w = self._by_seq.get(seq)
            if w is None or seq in self._held:
                continue
            f = w.free
            if f.cores or f.gpus:
                got = [f.gpus or 0, f.cores or 0, f.memory or 0, f.disk or 0]
                free = got if free is None else [max(x, y) for x, y in zip(free, got,
                                                                           strict=True)]
        return None if free is None else (free[0], free[1], free[2], free[3])

    def closest(self, request: Resources, allowed: Allowed = None) -> Iterator[WorkerRecord]:
        """Workers whose size fits ``request``, from the closest to having room for it (most
        free cores, then memory) on; ties by join order. For reservations."""
        s = Shape(request)
        streams = [index.descending() for cls, index in self.class_indexes()
                   if not (request.disk is None and s.on(self._class_sizes[cls.key][1]) is None)]
        by_seq = self._by_seq
        if len(streams) == 1:
            merged: Iterator[tuple[int, int]] = streams[0]
        else:
            merged = heapq.merge(*streams, key=lambda cs: _closeness(by_seq[cs[1]]))
        for _, seq in merged:
            w = by_seq[seq]
            if box(request, w.total) is not None and (allowed is None or allowed(w)):
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
                got = any(box(request, large) is not None
                          for _, large in self._class_sizes.values())
            self._fits_cache[key] = got
        return got

    # ------------------------------------------------------------ checks
    def check(self) -> None:
        """Raise AssertionError if stored state or an index disagrees with the workers."""
        assert not self._held, "workers still held after a scheduling pass"
        committed, total = [0, 0, 0, 0], [0, 0, 0, 0]
        queued = 0
        for w in self.workers.values():
            assert all((v or 0) >= 0 for v in w.free.astuple()), f"worker {w.id}: free {w.free}"
            assert w.committed.fits_in(w.total), f"worker {w.id} overcommitted: {w.committed}"
            slot = ((len(w.queued), w.free.cores or 0)
                    if w.queue_room() and self._queue_indexed else None)
            assert w._queue_slot == slot, f"worker {w.id}: queue slot {w._queue_slot} != {slot}"
            queued += slot is not None
            for i, (c, t) in enumerate(zip(w.committed.astuple(), w.total.astuple(),
                                           strict=True)):
                committed[i] += c or 0
                total[i] += t or 0
        assert len(self._all) == len(self.workers), "the free index lost a worker"
        classes = [c.index for c in self._classes.values() if c.index is not None]
        if self._by_class:
            assert sum(map(len, classes)) == len(self.workers), "a class index lost a worker"
        for index in (self._all, *classes):
            for by_cores in index._levels.values():
                for level in by_cores.values():
                    for block, disks, most in zip(level.blocks, level.disks, level.most,
                                                  strict=True):
                        assert block and disks == [self._by_seq[k & _SEQ_MASK].free.disk
                                                   for k in block], "disks"
                        assert most >= max(disks), "the bound on a block's most free disk"
        assert len(self._queues) == queued, "the queue index lost a worker"
        assert (committed, total) == (self._committed, self._total), "totals drifted"
        largest = ZERO
        for w in self.workers.values():
            largest = Resources._raw(*(max(a or 0, b or 0) for a, b in
                                       zip(largest.astuple(), w.total.astuple(), strict=True)))
        assert largest == self._largest, f"largest {self._largest} != {largest}"
        assert set(self._class_sizes) == set(self._classes), "class sizes"
        seen = [self.workers[wid].last_seen for wid in self._by_seen]
        assert seen == sorted(seen), "lease order"


def _class_key(total: Resources) -> tuple[int, int, int]:
    return (total.cores or 0, total.memory or 0, total.gpus or 0)


def _fit_key(w: WorkerRecord, alloc: Resources) -> FitKey:
    return ((w.free.cores or 0) - (alloc.cores or 0), (w.free.memory or 0) - (alloc.memory or 0),
            w.seq)


def _closeness(w: WorkerRecord) -> tuple[int, int, int]:
    return (-(w.free.cores or 0), -(w.free.memory or 0), w.seq)
