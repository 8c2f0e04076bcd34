"""Waiting tasks, in one queue per shape (pure).

Tasks that would get the same allocation wait in one :class:`ShapeQueue`:
same priority, category, request and avoided workers. The scheduler asks a
queue's question once ("is there room for this shape?") instead of once per
task. Queues stand in one order, by their first task (higher priority
first, then submission order), so tasks leave in the same order as from one
priority queue of tasks; a scheduling pass sweeps that order.

A queue remembers what its last look found. A queue that found no room
(``no_room``) can only find it on a worker touched since: it leaves the
order for an index by what it needs at least (cores, then memory), and a
pass takes back only the queues whose need fits the room on those workers.

Some tasks cannot share an answer: a retry with a larger allocation, whose
request depends on what its earlier attempts used, and tasks of categories
that draw each allocation at random. Their queues are marked ``each``: every
task is asked about on its own.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..resources import Resources
from .states import TaskState

if TYPE_CHECKING:
    from .scheduler import TaskRecord
    from .workers import Shape

#: A queue's place in the order: (first, its head's submission number, queue id).
_Entry = tuple[float, int, int]


@dataclass(slots=True, eq=False)
class ShapeQueue:
    """Waiting tasks of one shape, in submission order."""

    id: int
    #: Where the queue stands: -priority, or -inf for retries with a larger allocation.
    first: float
    priority: float
    category: str
    request: Resources
    avoid: frozenset[str]
    #: Each task's request is worked out on its own (it may differ from its neighbours').
    each: bool
    #: (submission number, task id) in submission order, and a heap of the entries that
    #: came back out of order (requeued); entries of tasks that left are skipped lazily.
    fifo: deque[tuple[int, int]] = field(default_factory=deque)
    late: list[tuple[int, int]] = field(default_factory=list)
    #: Tasks waiting in it, and how many of them were requeued (their worker was lost, or
    #: handed them back) at least once.
    waiting: int = 0
    requeued: int = 0
    #: Its shape fits no connected worker: it waits for a new worker, out of the order.
    parked: bool = False
    #: The scheduler said so once.
    warned: bool = False
    #: The head's submission number under which the queue is in the order, or None.
    ordered_at: int | None = None
    #: Heads put aside for the current scheduling pass (``each`` queues).
    deferred: list[tuple[int, int]] = field(default_factory=list)
    #: The scheduler's memory of its shape: what it resolved to, and what that depended on.
    shape: Shape | None = None
    stamp: object = None
    #: The last look found no room for it (only touched workers may have some now): it
    #: is out of the order, in the index of such queues at ``stalled_at`` (cores, memory).
    no_room: bool = False
    stalled_at: tuple[int, int] = (0, 0)

    def push(self, entry: tuple[int, int]) -> None:
        if not self.fifo or entry > self.fifo[-1]:
            self.fifo.append(entry)
        else:
            heapq.heappush(self.late, entry)

    def peek(self) -> tuple[int, int] | None:
        """The first entry, or None."""
        fifo, late = self.fifo, self.late
        if late and (not fifo or late[0] < fifo[0]):
            return late[0]
        return fifo[0] if fifo else None

    def pop(self) -> tuple[int, int]:
        """Remove and return the first entry."""
        fifo, late = self.fifo, self.late
        if late and (not fifo or late[0] < fifo[0]):
            return heapq.heappop(late)
        return fifo.popleft()

    def entries(self) -> list[tuple[int, int]]:
        return [*self.fifo, *self.late, *self.deferred]

    def scan(self) -> Iterator[tuple[int, int]]:
        """Its entries, without a copy (the fifo in order, then the others; some may be
        stale: of tasks that left). Nothing may change the queue while this is read."""
        return itertools.chain(self.fifo, self.late, self.deferred)


class WaitingTasks:
    """All waiting tasks, as shape queues in one order."""

    def __init__(self, tasks: Mapping[int, TaskRecord]) -> None:
        self._tasks = tasks
        self._queues: dict[Hashable, ShapeQueue] = {}
        self._by_id: dict[int, ShapeQueue] = {}
        self._ids = itertools.count()
        #: Sorted; an entry is current when its queue's ``ordered_at`` is its number.
        self._order: list[_Entry] = []
        self._parked: dict[int, ShapeQueue] = {}
        self._with_deferred: list[ShapeQueue] = []
        self._extra: list[_Entry] = []
        #: Waiting tasks per priority, with a heap of the priorities (stale entries skipped).
        self._priorities: dict[float, int] = {}
        self._lowest: list[float] = []
        self._count = 0
        #: Queues that found no room, out of the order: by the cores they need, then
        #: sorted (memory needed, queue id).
        self._stalled: dict[int, list[tuple[int, int]]] = {}
        self._stalled_cores: list[int] = []

    def __len__(self) -> int:
        """Tasks waiting in queues."""
        return self._count

    def queues(self) -> Iterator[ShapeQueue]:
        return iter(self._queues.values())

    # ------------------------------------------------------------ tasks in and out
    def add(self, t: TaskRecord, first: float, each: bool) -> None:
        """Put a waiting task into the queue of its shape (at its submission place)."""
        key = (first, t.priority, t.category, t.request, t.avoid, each)
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = ShapeQueue(next(self._ids), first, t.priority, t.category,
                                               t.request, t.avoid, each)
            self._by_id[q.id] = q
        q.push((t.seq, t.id))
        t.queue = q
        q.waiting += 1
        if t.requeues:
            q.requeued += 1
        self._count += 1
        n = self._priorities.get(t.priority, 0)
        if not n:
            heapq.heappush(self._lowest, t.priority)
        self._priorities[t.priority] = n + 1
        if not q.parked and not q.no_room and (q.ordered_at is None or t.seq < q.ordered_at):
            self._order_at(q, t.seq)

    def discard(self, t: TaskRecord) -> None:
        """A waiting task leaves (cancelled): its entry is skipped when reached."""
        q = t.queue
        if q is None:
            return
        t.queue = None
        self._left(q, t)

    def _left(self, q: ShapeQueue, t: TaskRecord) -> None:
        q.waiting -= 1
        if t.requeues:
            q.requeued -= 1
        self._count -= 1
        self._priorities[t.priority] -= 1
        if not self._priorities[t.priority]:
            del self._priorities[t.priority]

    def _drop(self, q: ShapeQueue) -> None:
        """Forget an empty queue."""
        self._unorder(q)
        key = (q.first, q.priority, q.category, q.request, q.avoid, q.each)
        if self._queues.get(key) is q:
            del self._queues[key]
            del self._by_id[q.id]

    def lowest_priority(self) -> float | None:
        """The lowest priority among waiting tasks (None when none wait)."""
        while self._lowest and self._lowest[0] not in self._priorities:
            heapq.heappop(self._lowest)
        return self._lowest[0] if self._lowest else None

    # ------------------------------------------------------------ the order
    def _order_at(self, q: ShapeQueue, seq: int) -> None:
        q.ordered_at = seq
        bisect.insort(self._order, (q.first, seq, q.id))

    def _unorder(self, q: ShapeQueue) -> None:
        q.ordered_at = None
        if q.no_room:
            self._unstall(q)

    def _stall(self, q: ShapeQueue) -> None:
        assert q.shape is not None
        _, c, m, _ = q.shape.need
        lst = self._stalled.get(c)
        if lst is None:
            lst = self._stalled[c] = []
            bisect.insort(self._stalled_cores, c)
        bisect.insort(lst, (m, q.id))
        q.no_room = True
        q.stalled_at = (c, m)

    def _unstall(self, q: ShapeQueue) -> None:
        c, m = q.stalled_at
        lst = self._stalled[c]
        del lst[bisect.bisect_left(lst, (m, q.id))]
        if not lst:
            del self._stalled[c]
            del self._stalled_cores[bisect.bisect_left(self._stalled_cores, c)]
        q.no_room = False

    def stall(self, q: ShapeQueue) -> None:
        """The queue (just swept, with its shape resolved) found no room: out of the order,
        until :meth:`candidates` finds room for what it needs, or :meth:`forget_no_room`."""
        if not q.no_room:
            q.ordered_at = None  # its entry in the order goes stale
            self._stall(q)

    def forget_no_room(self, categories: set[str] | None = None) -> None:
        """Queues (of ``categories``, or all) that found no room go back into the order,
        to be looked at afresh on every worker."""
        for q in list(self._queues.values()):
            if q.no_room and (categories is None or q.category in categories):
                self._unstall(q)
                head = self._clean_head(q)
                if head is not None:
                    self._order_at(q, head.seq)

    def candidates(self, room: tuple[int, int, int, int]) -> list[ShapeQueue]:
        """Queues that found no room and whose need fits ``room`` (GPUs, cores, memory,
        disk): they may fit on the workers touched since."""
        g, c, m, d = room
        out = []
        by_id = self._by_id
        for cores in self._stalled_cores[:bisect.bisect_right(self._stalled_cores, c)]:
            lst = self._stalled[cores]
            for _, qid in lst[:bisect.bisect_right(lst, (m, 1 << 62))]:
                q = by_id[qid]
                assert q.shape is not None
                need = q.shape.need
                if need[0] <= g and need[3] <= d:
                    out.append(q)
        return out

    def _clean_head(self, q: ShapeQueue) -> TaskRecord | None:
        tasks = self._tasks
        while (entry := q.peek()) is not None:
            seq, tid = entry
            t = tasks.get(tid)
            if t is not None and t.queue is q and t.seq == seq and t.state is TaskState.WAITING:
                return t
            q.pop()
        return None

    def sweep(self, extra: list[ShapeQueue], still: Callable[[ShapeQueue], bool]
              ) -> Iterator[tuple[ShapeQueue, TaskRecord]]:
        """The queues in the order, and the ``extra`` ones (out of the order: they found
        no room before) for which ``still`` holds when their turn comes, in order, each
        with a task at its head. While sweeping, a queue is re-ordered only later than
        where the sweep is (its head dispatched). Yields each queue with its head."""
        order, by_id = self._order, self._by_id
        # The extra queues by where their heads stood (checked when their turn comes).
        pending = sorted((e.first, head[0], e.id) for e in extra
                         if (head := e.peek()) is not None)
        self._extra = pending
        i = 0
        while True:
            if pending and (i >= len(order) or pending[0] < order[i]):
                _, seq, qid = pending.pop(0)
                sq = by_id.get(qid)
                if sq is None or not sq.no_room or not still(sq):
                    continue
                t = self._clean_head(sq)
                if t is None:
                    continue
                if t.seq != seq:  # its head left: its turn comes where its new head stands
                    bisect.insort(pending, (sq.first, t.seq, sq.id))
                    continue
                yield sq, t
                continue
            if i >= len(order):
                return
            _, seq, qid = order[i]
            i += 1
            q = by_id.get(qid)
            if q is None or q.ordered_at != seq:
                continue  # stale: the queue was ordered again since, or left
            t = self._clean_head(q)
            if t is None:
                if q.deferred:
                    self._unorder(q)
                else:
                    self._drop(q)
                continue
            if t.seq != seq:  # its head left: it stands where its new head does
                self._order_at(q, t.seq)
                continue
            yield q, t

    def take_head(self, q: ShapeQueue, t: TaskRecord) -> None:
        """Remove the queue's first task ``t`` (the sweep's; it is being dispatched); the
        queue stands where its next task does."""
        q.pop()
        t.queue = None
        self._left(q, t)
        self._reorder(q)

    def _reorder(self, q: ShapeQueue) -> None:
        nxt = self._clean_head(q)
        if nxt is None:
            if not q.waiting and not q.deferred:
                self._drop(q)
            elif not q.no_room:
                self._unorder(q)
        elif q.no_room:
            bisect.insort(self._extra, (q.first, nxt.seq, q.id))  # looked at again this pass
        else:
            self._order_at(q, nxt.seq)

    def defer_head(self, q: ShapeQueue) -> None:
        """Put the head of an ``each`` queue aside until :meth:`end_pass`."""
        entry = q.pop()
        if not q.deferred:
            self._with_deferred.append(q)
        q.deferred.append(entry)
        self._reorder(q)

    def end_pass(self) -> None:
        """Heads put aside return to their queues, and stale entries leave the order."""
        for q in self._with_deferred:
            for entry in q.deferred:
                q.push(entry)
            q.deferred.clear()
            head = self._clean_head(q)
            if head is None:
                if not q.waiting:
                    self._drop(q)
            elif not q.parked and (q.ordered_at is None or head.seq < q.ordered_at):
                self._order_at(q, head.seq)
        self._with_deferred.clear()
        self._extra = []
        by_id = self._by_id
        self._order = [e for e in self._order
                       if (sq := by_id.get(e[2])) is not None and sq.ordered_at == e[1]]

    # ------------------------------------------------------------ parking
    def park(self, q: ShapeQueue) -> None:
        """The queue's shape fits no connected worker: out of the order until :meth:`unpark`."""
        self._unorder(q)
        q.parked = True
        self._parked[q.id] = q

    def unpark(self) -> None:
        """A worker joined: parked queues go back into the order."""
        parked, self._parked = self._parked, {}
        for q in parked.values():
            q.parked = False
            head = self._clean_head(q)
            if head is not None:
                self._order_at(q, head.seq)
            elif not q.waiting:
                self._drop(q)

    # ------------------------------------------------------------ checks
    def check(self) -> None:
        """Raise AssertionError if the counts disagree with the tasks."""
        live = 0
        current = {(e[1], e[2]) for e in self._order}
        stalled = {qid for lst in self._stalled.values() for _, qid in lst}
        for q in self._queues.values():
            assert self._by_id.get(q.id) is q, f"queue {q.id} is not known by its id"
            n = sum(1 for seq, tid in set(q.entries())
                    if (t := self._tasks.get(tid)) is not None and t.queue is q
                    and t.seq == seq and t.state is TaskState.WAITING)
            assert n == q.waiting, f"queue {q.id}: {n} waiting, counted {q.waiting}"
            r = sum(1 for seq, tid in set(q.entries())
                    if (t := self._tasks.get(tid)) is not None and t.queue is q
                    and t.seq == seq and t.state is TaskState.WAITING and t.requeues)
            assert r == q.requeued, f"queue {q.id}: {r} requeued, counted {q.requeued}"
            assert not q.deferred, f"queue {q.id} still has deferred heads"
            assert q.parked == (q.id in self._parked), f"queue {q.id} parking"
            assert q.no_room == (q.id in stalled), f"queue {q.id} stalling"
            if q.waiting and not q.parked and not q.no_room:
                assert q.ordered_at is not None, f"queue {q.id} is out of the order"
            if q.ordered_at is not None:
                assert not q.no_room and not q.parked, f"queue {q.id} ordered and out"
                assert (q.ordered_at, q.id) in current, f"queue {q.id} has no entry"
            live += n
        assert live == self._count, f"{live} waiting in queues, counted {self._count}"
        assert stalled <= set(self._by_id), "a stalled queue was dropped"
        assert sum(self._priorities.values()) == self._count, "priority counts"
        assert self._order == sorted(self._order), "the order is not sorted"
