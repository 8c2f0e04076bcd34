"""The tasks one worker holds, by where they are in their life there (pure).

A worker takes every task the manager sends it, whether or not it has room for
it yet, and keeps each in one slot::

    add ---fits what is free--------------> READY ---start---> RUNNING
     |                                      ^ ^  |
     |                              promote | |  +---wait (its pack is arriving)---> WAITING
     +---fits only the worker---> QUEUED ---+ |                                        |
                                              +-----unwait (it arrived, or failed)-----+

    QUEUED, READY, WAITING, RUNNING --release (ended, killed, not started)--> gone

A task in READY, WAITING or RUNNING *holds* its allocation: it is taken from
what is free when the task gets room and given back when it is released. A
QUEUED task holds nothing. When room frees, queued tasks start by the one
:func:`promote` rule, which the manager's mirror of each worker's queue
(:class:`~packmule.core.workers.WorkerPool`) applies too: both agree on what
runs as long as they see the same events in the same order.

:class:`Slots` takes events and changes state; it does no I/O, keeps no clock
and knows nothing of processes or packs beyond their digests. The worker
daemon is its shell: it starts what is READY, makes a task WAIT when its
environment pack has not arrived, and releases what ends, is killed or could
not start.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..resources import Resources

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
H = TypeVar("H")


def promote(queued: dict[K, Resources], free: Resources) -> list[tuple[K, Resources]]:
    """The promotion rule: queued tasks that fit start, in the order sent.

    ``queued`` maps each queued task to its allocation, in the order the tasks
    were sent. Each in turn starts if it fits in what is free once those before
    it that started hold theirs; one that does not fit keeps its place and does
    not stop those behind it. The tasks that start are removed from ``queued``
    and returned, in order, with their allocations: the caller takes each
    allocation from what is free. Allocations and ``free`` are complete (no field
    None): the manager's core calls this on every release, so it reads them as they are.
    """
    if not queued:
        return []
    c, m, d, g = free.cores, free.memory, free.disk, free.gpus
    started: list[tuple[K, Resources]] = []
    for key, a in queued.items():
        if (a.cores <= c and a.memory <= m  # type: ignore[operator]
                and a.disk <= d and a.gpus <= g):  # type: ignore[operator]
            c -= a.cores  # type: ignore[operator]
            m -= a.memory  # type: ignore[operator]
            d -= a.disk  # type: ignore[operator]
            g -= a.gpus  # type: ignore[operator]
            started.append((key, a))
    for key, _ in started:
        del queued[key]
    return started


class Slot(enum.Enum):
    """Where a task is on its worker."""

    __hash__ = object.__hash__

    QUEUED = "queued"
    """Sent ahead of room (prefetched): holds nothing; starts when it fits (:func:`promote`)."""
    READY = "ready"
    """Holds its allocation; the shell starts it now (or makes it wait for its pack)."""
    WAITING = "waiting"
    """Holds its allocation; waits for its environment pack to be unpacked."""
    RUNNING = "running"
    """Holds its allocation; started: the shell keeps its handle."""


#: The moves :class:`Slots` makes (None: not held). Every slot may also be released.
MOVES: frozenset[tuple[Slot | None, Slot]] = frozenset({
    (None, Slot.READY),  # add: it fits what is free
    (None, Slot.QUEUED),  # add: it fits only the whole worker
    (Slot.QUEUED, Slot.READY),  # promote: room freed
    (Slot.READY, Slot.WAITING),  # wait: its pack has not arrived
    (Slot.WAITING, Slot.READY),  # unwait: its pack arrived, or failed
    (Slot.READY, Slot.RUNNING),  # start
})


class InvalidSlotMove(RuntimeError):
    """A task was asked to make a move :data:`MOVES` does not allow (a bug in packmule)."""

    def __init__(self, key: object, start: Slot | None, finish: Slot) -> None:
        was = "absent" if start is None else start.value
        super().__init__(f"task {key!r}: invalid move {was} -> {finish.value}")
        self.key = key
        self.start = start
        self.finish = finish


@dataclass(slots=True, eq=False)
class Entry(Generic[T]):
    """One task on the worker: what the shell gave for it, its allocation, its slot."""

    task: T
    alloc: Resources
    slot: Slot
    #: The digest of the pack it waits for (WAITING), else "".
    pack: str = ""


class Slots(Generic[K, T, H]):
    """A worker's tasks by slot, and what is free: one owner, no I/O.

    ``K`` is a task's key (the worker: ``(task id, attempt)``), ``T`` what is kept
    for a task (its spec), ``H`` the handle of a started one (its process). The
    attributes are views for reading; only the methods change them.
    """

    def __init__(self, total: Resources) -> None:
        self.total = total.filled()
        #: What no READY, WAITING or RUNNING task holds.
        self.free = self.total
        self.entries: dict[K, Entry[T]] = {}
        #: QUEUED tasks' allocations, in the order sent (the input of :func:`promote`).
        self.queued: dict[K, Resources] = {}
        #: READY tasks, in the order they got room.
        self.ready: dict[K, None] = {}
        #: WAITING tasks by the pack they wait for, each in the order it began waiting.
        self.waiting: dict[str, dict[K, None]] = {}
        #: RUNNING tasks' handles.
        self.running: dict[K, H] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def slot(self, key: K) -> Slot | None:
        """Where the task is (None: not here)."""
        e = self.entries.get(key)
        return None if e is None else e.slot

    # ------------------------------------------------------------ events
    def add(self, key: K, task: T, alloc: Resources) -> Slot | None:
        """A task arrived: READY (it holds ``alloc`` now) if that fits what is free,
        QUEUED if it fits only the whole worker, None (nothing kept) if it never fits."""
        if key in self.entries:
            raise InvalidSlotMove(key, self.entries[key].slot, Slot.READY)
        alloc = alloc.filled()
        if alloc.fits_in(self.free):
            self.entries[key] = Entry(task, alloc, Slot.READY)
            self.ready[key] = None
            self.free = _minus(self.free, alloc)
            return Slot.READY
        if alloc.fits_in(self.total):
            self.entries[key] = Entry(task, alloc, Slot.QUEUED)
            self.queued[key] = alloc
            return Slot.QUEUED
        return None

    def take_ready(self) -> list[tuple[K, Entry[T]]]:
        """The READY tasks, in the order they got room. They stay READY until the shell
        moves each: :meth:`start`, :meth:`wait` or :meth:`release`."""
        entries = self.entries
        return [(key, entries[key]) for key in self.ready]

    def start(self, key: K, handle: H) -> None:
        """READY -> RUNNING: the shell started it; ``handle`` is kept in :attr:`running`."""
        self._move(key, Slot.RUNNING)
        del self.ready[key]
        self.running[key] = handle

    def wait(self, key: K, pack: str) -> None:
        """READY -> WAITING: its environment pack ``pack`` has not arrived; it keeps
        holding its allocation (the manager counts it as running)."""
        e = self._move(key, Slot.WAITING)
        del self.ready[key]
        e.pack = pack
        self.waiting.setdefault(pack, {})[key] = None

    def unwait(self, pack: str) -> list[K]:
        """WAITING -> READY for every task waiting for ``pack`` (it arrived, or failed:
        the shell then releases them), in the order they began waiting."""
        keys = list(self.waiting.pop(pack, ()))
        for key in keys:
            e = self.entries[key]
            e.slot, e.pack = Slot.READY, ""
            self.ready[key] = None
        return keys

    def release(self, key: K) -> Entry[T] | None:
        """The task is gone (it ended, was killed, or could not start): what it held is
        free again, and queued tasks that now fit become READY (:func:`promote`).
        Returns its entry (None: it was not here)."""
        e = self.entries.pop(key, None)
        if e is None:
            return None
        slot = e.slot
        if slot is Slot.QUEUED:
            del self.queued[key]
            return e
        if slot is Slot.READY:
            del self.ready[key]
        elif slot is Slot.WAITING:
            waiting = self.waiting[e.pack]
            del waiting[key]
            if not waiting:
                del self.waiting[e.pack]
        else:
            del self.running[key]
        self.free = self.free + e.alloc
        for started, alloc in promote(self.queued, self.free):
            self.entries[started].slot = Slot.READY
            self.ready[started] = None
            self.free = _minus(self.free, alloc)
        return e

    def _move(self, key: K, finish: Slot) -> Entry[T]:
        e = self.entries.get(key)
        if e is None or (e.slot, finish) not in MOVES:
            raise InvalidSlotMove(key, None if e is None else e.slot, finish)
        e.slot = finish
        return e

    # ------------------------------------------------------------ views
    def held(self) -> Resources:
        """What READY, WAITING and RUNNING tasks hold, summed."""
        c = m = d = g = 0
        for e in self.entries.values():
            if e.slot is not Slot.QUEUED:
                a = e.alloc
                c, m, d, g = (c + (a.cores or 0), m + (a.memory or 0), d + (a.disk or 0),
                              g + (a.gpus or 0))
        return Resources._raw(c, m, d, g)

    def check(self) -> None:
        """Raise AssertionError if the slots disagree with each other or with what is free."""
        assert all(v >= 0 for v in self.free.astuple() if v is not None), f"free {self.free}"
        assert self.free + self.held() == self.total, (
            f"free {self.free} + held {self.held()} != total {self.total}")
        by_slot: dict[Slot, list[K]] = {s: [] for s in Slot}
        for key, e in self.entries.items():
            by_slot[e.slot].append(key)
            assert (e.slot is Slot.WAITING) == bool(e.pack), f"task {key!r}: pack {e.pack!r}"
            assert e.alloc.fits_in(self.total), f"task {key!r}: {e.alloc} exceeds {self.total}"
        assert list(self.queued) == by_slot[Slot.QUEUED], "queued tasks out of step"
        assert all(self.queued[k] is self.entries[k].alloc for k in self.queued), "queued"
        assert set(self.ready) == set(by_slot[Slot.READY]), "ready tasks out of step"
        waiting = [k for keys in self.waiting.values() for k in keys]
        assert len(waiting) == len(set(waiting)) == len(by_slot[Slot.WAITING]), "waiting"
        assert set(waiting) == set(by_slot[Slot.WAITING]), "waiting tasks out of step"
        assert all(keys and all(self.entries[k].pack == p for k in keys)
                   for p, keys in self.waiting.items()), "waiting tasks filed under another pack"
        assert set(self.running) == set(by_slot[Slot.RUNNING]), "running tasks out of step"


def _minus(a: Resources, b: Resources) -> Resources:
    """``a - b``, not floored at zero (unlike ``Resources.__sub__``): :meth:`Slots.check`
    is to see a slip."""
    return Resources._raw((a.cores or 0) - (b.cores or 0), (a.memory or 0) - (b.memory or 0),
                          (a.disk or 0) - (b.disk or 0), (a.gpus or 0) - (b.gpus or 0))


__all__ = ["MOVES", "Entry", "InvalidSlotMove", "Slot", "Slots", "promote"]
