"""Waiting tasks, in one queue per shape (pure).

Tasks that would get the same allocation wait in one :class:`ShapeQueue`:
same priority, category, request and avoided workers. The scheduler asks a
queue's question once ("is there room for this shape?") instead of once per
task, and a shape with no room costs one question per scheduling pass however
many tasks have it. Queues are served in the order of their first task
(higher priority first, then submission order), so tasks leave in the same
order as from one priority queue of tasks.

Some tasks cannot share an answer: a retry with a larger allocation, whose
request depends on what its earlier attempts used, and tasks of categories
that draw each allocation at random. Their queues are marked ``each``: every
task is asked about on its own.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..resources import Resources
from .states import TaskState

if TYPE_CHECKING:
    from .scheduler import TaskRecord


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
    #: (submission number, task id); entries of tasks that left are skipped lazily.
    heap: list[tuple[int, int]] = field(default_factory=list)
    #: Tasks waiting in it.
    waiting: int = 0
    #: Its shape fits no connected worker: it waits for a new worker, out of the order.
    parked: bool = False
    #: The scheduler said so once.
    warned: bool = False
    #: The head's submission number under which the queue is in the order, or None.
    ordered_at: int | None = None
    #: Heads put aside for the current scheduling pass (``each`` queues).
    deferred: list[tuple[int, int]] = field(default_factory=list)


class WaitingTasks:
    """All waiting tasks, as shape queues in (first, head submission number) order."""

    def __init__(self, tasks: Mapping[int, TaskRecord]) -> None:
        self._tasks = tasks
        self._queues: dict[Hashable, ShapeQueue] = {}
        self._ids = itertools.count()
        #: (first, head's submission number, queue id, queue); stale entries are skipped.
        self._order: list[tuple[float, int, int, ShapeQueue]] = []
        self._parked: dict[int, ShapeQueue] = {}
        self._with_deferred: list[ShapeQueue] = []
        #: Waiting tasks per priority, with a heap of the priorities (stale entries skipped).
        self._priorities: dict[float, int] = {}
        self._lowest: list[float] = []
        self._count = 0

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
        heapq.heappush(q.heap, (t.seq, t.id))
        t.queue = q
        q.waiting += 1
        self._count += 1
        n = self._priorities.get(t.priority, 0)
        if not n:
            heapq.heappush(self._lowest, t.priority)
        self._priorities[t.priority] = n + 1
        if not q.parked and (q.ordered_at is None or t.seq < q.ordered_at):
            self._order_by(q, t.seq)

    def discard(self, t: TaskRecord) -> None:
        """A waiting task leaves (cancelled): its entry is skipped when reached."""
        q = t.queue
        if q is None:
            return
        t.queue = None
        self._left(q, t)

    def _left(self, q: ShapeQueue, t: TaskRecord) -> None:
        q.waiting -= 1
        self._count -= 1
        self._priorities[t.priority] -= 1
        if not self._priorities[t.priority]:
            del self._priorities[t.priority]
        if not q.waiting and not q.parked and q.ordered_at is None:
            self._drop(q)

    def _drop(self, q: ShapeQueue) -> None:
        key = (q.first, q.priority, q.category, q.request, q.avoid, q.each)
        if self._queues.get(key) is q:
            del self._queues[key]

    def lowest_priority(self) -> float | None:
        """The lowest priority among waiting tasks (None when none wait)."""
        while self._lowest and self._lowest[0] not in self._priorities:
            heapq.heappop(self._lowest)
        return self._lowest[0] if self._lowest else None

    # ------------------------------------------------------------ serving queues
    def _order_by(self, q: ShapeQueue, seq: int) -> None:
        q.ordered_at = seq
        heapq.heappush(self._order, (q.first, seq, q.id, q))

    def _clean_head(self, q: ShapeQueue) -> TaskRecord | None:
        heap, tasks = q.heap, self._tasks
        while heap:
            seq, tid = heap[0]
            t = tasks.get(tid)
            if t is not None and t.queue is q and t.seq == seq and t.state is TaskState.WAITING:
                return t
            heapq.heappop(heap)
        return None

    def next_queue(self) -> ShapeQueue | None:
        """Take the queue whose head comes first out of the order (give it back with
        :meth:`put_back`); None when no queue is in the order."""
        order = self._order
        while order:
            _first, seq, _, q = heapq.heappop(order)
            if q.ordered_at != seq:
                continue  # stale: the queue was ordered again since
            q.ordered_at = None
            t = self._clean_head(q)
            if t is None:
                if not q.waiting and not q.deferred:
                    self._drop(q)
                continue
            if t.seq != seq:  # its head left: it stands where its new head does
                self._order_by(q, t.seq)
                continue
            return q
        return None

    def head(self, q: ShapeQueue) -> TaskRecord:
        """The first waiting task of a queue taken with :meth:`next_queue`."""
        t = self._clean_head(q)
        assert t is not None, "head() of an empty queue"
        return t

    def take_head(self, q: ShapeQueue) -> TaskRecord:
        """Remove and return the queue's first task (it is being dispatched)."""
        t = self.head(q)
        heapq.heappop(q.heap)
        t.queue = None
        self._left(q, t)
        return t

    def put_back(self, q: ShapeQueue) -> None:
        """Return a queue taken with :meth:`next_queue` to the order, at its (new) head."""
        t = self._clean_head(q)
        if t is not None:
            self._order_by(q, t.seq)
        elif not q.waiting and not q.deferred:
            self._drop(q)

    def defer_head(self, q: ShapeQueue) -> TaskRecord:
        """Put the head of an ``each`` queue aside until :meth:`restore_deferred`."""
        t = self.head(q)
        entry = heapq.heappop(q.heap)
        if not q.deferred:
            self._with_deferred.append(q)
        q.deferred.append(entry)
        return t

    def restore_deferred(self) -> None:
        """Heads put aside return to their queues, and the queues to the order."""
        for q in self._with_deferred:
            for entry in q.deferred:
                heapq.heappush(q.heap, entry)
            q.deferred.clear()
            if not q.parked and q.ordered_at is None:
                self.put_back(q)
            elif q.ordered_at is not None and q.heap[0][0] < q.ordered_at:
                self._order_by(q, q.heap[0][0])
        self._with_deferred.clear()

    # ------------------------------------------------------------ parking
    def park(self, q: ShapeQueue) -> None:
        """The queue's shape fits no connected worker: out of the order until :meth:`unpark`."""
        q.parked = True
        self._parked[q.id] = q

    def unpark(self) -> None:
        """A worker joined: parked queues go back into the order."""
        parked, self._parked = self._parked, {}
        for q in parked.values():
            q.parked = False
            self.put_back(q)

    def parked(self) -> Iterator[ShapeQueue]:
        return iter(self._parked.values())

    # ------------------------------------------------------------ checks
    def check(self) -> None:
        """Raise AssertionError if the counts disagree with the tasks."""
        live = 0
        for q in self._queues.values():
            n = sum(1 for seq, tid in {*q.heap, *q.deferred}
                    if (t := self._tasks.get(tid)) is not None and t.queue is q
                    and t.seq == seq and t.state is TaskState.WAITING)
            assert n == q.waiting, f"queue {q.id}: {n} waiting, counted {q.waiting}"
            assert not q.deferred, f"queue {q.id} still has deferred heads"
            assert q.parked == (q.id in self._parked), f"queue {q.id} parking"
            if q.waiting and not q.parked:
                assert q.ordered_at is not None, f"queue {q.id} is out of the order"
            live += n
        assert live == self._count, f"{live} waiting in queues, counted {self._count}"
        assert sum(self._priorities.values()) == self._count, "priority counts"
