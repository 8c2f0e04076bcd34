"""The manager's pure state: tasks, workers, and the packing decisions.

:class:`ManagerState` takes events (a task submitted, a worker joined, an
attempt ended, time passed) and returns decisions (which task runs where, with
what allocation; what to requeue or deliver). It owns the authoritative
accounting of what each worker has committed; it does no I/O and reads no
clock: callers pass ``now``.

Costs do not grow with the cluster: workers are indexed by what they have
free (:mod:`.workers`), waiting tasks wait in one queue per shape
(:mod:`.waiting`), and :meth:`ManagerState.schedule` asks about a shape
with no room once per pass. :attr:`ManagerState.changed` says whether a
pass could place anything new since the last one.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..resources import ZERO, Resources, maximum
from .alloc import AllocationMode, Attempt, Category, CategoryConfig, Pool, after_exhaustion
from .states import (
    ALLOWED_TRANSITIONS,
    FINAL_STATES,
    Failure,
    InvalidTransition,
    Outcome,
    Ruling,
    TaskState,
    Verdict,
)
from .waiting import ShapeQueue, WaitingTasks
from .workers import PREFETCH_MAX, Need, Shape, WorkerPool, WorkerRecord

__all__ = [
    "HISTORY_LIMIT",
    "MAX_REQUEUES",
    "PREFETCH_MAX",
    "PREFETCH_WALL_TIME",
    "RESERVE_DEPTH",
    "SCHEDULE_DEPTH",
    "Assignment",
    "ManagerState",
    "Outcome",
    "Ruling",
    "TaskRecord",
    "Unplaceable",
    "WorkerRecord",
]

#: Shapes (queues of tasks that would get the same allocation) one scheduling
#: pass asks about at most without placing anything. Placements are not
#: counted: a pass places everything that fits (or ``limit`` of them).
SCHEDULE_DEPTH = 1000
#: Workers one waiting shape holds at most, per pass, against tasks of lower
#: priority (one per waiting task of the shape, up to this many).
RESERVE_DEPTH = 1000
#: A shape that found no room in the last pass can only find it on a worker
#: touched since; with at most this many touched, those are looked at one by
#: one instead of asking the index.
TOUCHED_SCAN = 32
#: How often a task may be requeued through no fault of its own (worker lost,
#: forsaken) before it fails with WorkerLost: a task that kills every worker
#: it lands on must not go round forever.
MAX_REQUEUES = 5
#: Transitions kept per task for error messages and tests.
HISTORY_LIMIT = 32
#: A task whose category's typical wall time (s) is below this may be
#: *prefetched*: sent to a worker with no room yet, which starts it the moment
#: room frees there. That saves the manager round trip (1-2 ms) between short
#: tasks; a longer task gains nothing and could wait on one busy worker while
#: another frees up, so it waits in the manager instead.
PREFETCH_WALL_TIME = 0.1

#: The core's rulings, made once (one is returned per result).
_DONE = Ruling(Verdict.DONE)
_RETRY = Ruling(Verdict.RETRY)
_REQUEUED = Ruling(Verdict.REQUEUED)
_STALE = Ruling(Verdict.STALE)
_FAILED_TASK = Ruling(Verdict.FAILED, Failure.TASK)
_FAILED_EXHAUSTED = Ruling(Verdict.FAILED, Failure.EXHAUSTED)
_FATAL = Ruling(Verdict.FAILED, Failure.FATAL)
_GAVE_UP = Ruling(Verdict.FAILED, Failure.REQUEUES)
_UNUSABLE = Ruling(Verdict.FAILED, Failure.UNUSABLE)

#: One entry of a task's history: (time, from, to, why, arguments for why).
_Entry = tuple[float, TaskState, TaskState, str, tuple[object, ...]]
#: What an exhausted attempt without a reading was measured to use: nothing.
_UNMEASURED = Resources()
#: Each state's place in a category's counts (see :meth:`ManagerState.category_counts`).
_SLOT = {s: i for i, s in enumerate(TaskState)}


@dataclass(slots=True, eq=False)
class TaskRecord:
    """The core's view of one task."""

    id: int
    request: Resources
    priority: float
    seq: int
    retries_left: int | None  # None: unlimited
    category: str = "default"
    submitted: float = 0.0
    state: TaskState = TaskState.WAITING
    attempt: int = 0
    worker: str | None = None
    allocation: Resources | None = None
    requeues: int = 0
    #: Workers that cannot run this task (say, its environment pack is unusable
    #: there): it is not placed on them again.
    avoid: frozenset[str] = frozenset()
    #: FIRST, or MAX after it exhausted an allocation packmule chose: it then
    #: runs again, bigger, ahead of the other waiting tasks.
    label: Attempt = Attempt.FIRST
    #: Element-wise max of what its exhausted attempts were measured to use.
    measured_before: Resources | None = None
    exceeded: tuple[str, ...] = ()
    exhaustions: int = 0
    warned_unplaceable: bool = False
    #: Its queue while it waits (None while it runs, or when parked on its own).
    queue: ShapeQueue | None = None
    _history: list[_Entry] | None = None

    @property
    def since(self) -> float:
        """When it entered its current state (the caller's clock, as ``now``)."""
        h = self._history
        return h[-1][0] if h else self.submitted

    @property
    def history(self) -> list[str]:
        """Its transitions, oldest first (the last :data:`HISTORY_LIMIT`), as text."""
        out = [f"{self.submitted:.3f} submitted"]
        for now, start, end, why, args in self._history or ():
            out.append(f"{now:.3f} {start.value}->{end.value} ({why % args if args else why})")
        return out[-HISTORY_LIMIT:]


class Assignment(NamedTuple):
    """Decision: run ``attempt`` of ``task_id`` on ``worker`` with ``allocation``."""

    task_id: int
    attempt: int
    worker: str
    allocation: Resources
    #: Sent ahead to a busy worker, which starts it when room frees there.
    prefetched: bool = False


@dataclass(frozen=True, slots=True)
class Unplaceable:
    """Notice: tasks of this shape fit no connected worker (said once per shape)."""

    task_id: int
    request: Resources
    largest: Resources
    #: Tasks of the shape waiting when it was noticed.
    waiting: int = 1


class ManagerState:
    """Tasks and workers, with the packing policy. Not thread-safe: one owner."""

    def __init__(self, validate: bool = False,
                 default_category: CategoryConfig | None = None, prefetch: bool = True) -> None:
        self.tasks: dict[int, TaskRecord] = {}
        self.pool = WorkerPool()
        self.categories: dict[str, Category] = {}
        self.default_category = default_category or CategoryConfig()
        #: What ``auto`` categories share: every one's peaks (a new category's prior).
        self._peaks = Pool()
        #: ``auto`` categories that have learned nothing yet: they use the pooled peaks.
        self._cold: set[str] = set()
        self.validate = validate
        self.prefetch = prefetch
        self.waiting = WaitingTasks(self.tasks)
        #: Waiting tasks whose own request fits no connected worker (``each`` queues).
        self._parked: list[TaskRecord] = []
        self._seq = itertools.count()
        self._counts: dict[TaskState, int] = dict.fromkeys(TaskState, 0)
        #: Per category, tasks in each state (:data:`_SLOT` order); the final states count
        #: every task that reached them (forgetting a task does not uncount it).
        self._by_category: dict[str, list[int]] = {}
        self.notices: list[Unplaceable] = []
        #: Something happened since the last full pass that may let a task start.
        self.changed = False
        #: Per category: whether its tasks are short (prefetchable), and a number that
        #: changes when what its tasks ask for may have changed.
        self._short: dict[str, bool] = {}
        self._epochs: dict[str, int] = {}
        #: Categories whose queues are to be looked at afresh in the next pass.
        self._relearn: set[str] = set()
        self._epoch = -1
        #: The lowest priority of the waiting tasks at the last pass.
        self._lowest = math.inf

    @property
    def workers(self) -> dict[str, WorkerRecord]:
        return self.pool.workers

    # ------------------------------------------------------------ transitions
    def _move(self, t: TaskRecord, to: TaskState, now: float, why: str,
              *args: object) -> None:
        if (t.state, to) not in ALLOWED_TRANSITIONS:
            raise InvalidTransition(t.id, t.state, to, t.history)
        h = t._history
        if h is None:
            h = t._history = []
        h.append((now, t.state, to, why, args))
        if len(h) > HISTORY_LIMIT:
            del h[0]
        self._counts[t.state] -= 1
        self._counts[to] += 1
        c = self._by_category[t.category]
        c[_SLOT[t.state]] -= 1
        c[_SLOT[to]] += 1
        t.state = to

    def _enqueue(self, t: TaskRecord) -> None:
        if t.label is Attempt.MAX:
            self.waiting.add(t, -math.inf, each=True)
        else:
            self.waiting.add(t, -t.priority, each=self.category(t.category).draws_each)
        self.changed = True

    # ------------------------------------------------------------ categories
    def configure_category(self, name: str, config: CategoryConfig) -> None:
        """Set a category's allocation policy (before its tasks arrive, or it starts afresh)."""
        self.categories[name] = self._new_category(name, config)
        self._short.pop(name, None)
        self._epochs[name] = self._epochs.get(name, 0) + 1
        self._relearn.add(name)
        self._unpark()

    def category(self, name: str) -> Category:
        cat = self.categories.get(name)
        if cat is None:
            cat = self.categories[name] = self._new_category(name, self.default_category)
        return cat

    def _new_category(self, name: str, config: CategoryConfig) -> Category:
        cat = Category(name, config, seed=_seed(name), pool=self._peaks)
        if config.mode is AllocationMode.AUTO:
            self._cold.add(name)
        else:
            self._cold.discard(name)
        return cat

    def request_of(self, t: TaskRecord) -> Resources:
        """What this attempt asks the box rule for: the task's own values, plus learned ones."""
        return self.category(t.category).request_for(
            t.request, t.label, self.pool.largest, t.id, t.measured_before,
            attempt=t.attempt, exceeded=t.exceeded)

    def _release(self, t: TaskRecord) -> None:
        """Give back the task's allocation on its worker."""
        if t.worker is not None:
            w = self.pool.workers.get(t.worker)
            if w is not None:
                self.pool.release(w, t.id)
            self.changed = True
        t.worker = None
        t.allocation = None

    # ------------------------------------------------------------ task events
    def submit(
        self,
        task_id: int,
        request: Resources,
        now: float,
        priority: float = 0.0,
        max_retries: int | None = 0,
        category: str = "default",
    ) -> None:
        """A new task joins the queue."""
        if task_id in self.tasks:
            raise ValueError(f"task {task_id} was already submitted")
        t = TaskRecord(task_id, request, priority, next(self._seq), max_retries,
                       category=category, submitted=now)
        self.tasks[task_id] = t
        self._counts[TaskState.WAITING] += 1
        c = self._by_category.get(category)
        if c is None:
            c = self._by_category[category] = [0] * len(_SLOT)
        c[_SLOT[TaskState.WAITING]] += 1
        self._enqueue(t)
        self._check()

    def current(self, task_id: int, attempt: int, worker: str | None) -> bool:
        """Whether ``attempt`` is the task's running attempt (on ``worker``, when given)."""
        return self._current(task_id, attempt, worker) is not None

    def _current(self, task_id: int, attempt: int, worker: str | None) -> TaskRecord | None:
        """The task if ``attempt`` is its running attempt (on ``worker``, when given)."""
        t = self.tasks.get(task_id)
        if t is None or t.state is not TaskState.RUNNING or t.attempt != attempt:
            return None
        if worker is not None and t.worker != worker:
            return None
        return t

    def result(
        self, task_id: int, attempt: int, outcome: Outcome, now: float,
        worker: str | None = None, *, measured: Resources | None = None,
        wall_time: float = 0.0, cores: float | None = None, exceeded: Sequence[str] = (),
        why: str = "",
    ) -> Ruling:
        """An attempt ended with ``outcome``: the one event for every kind of result.

        Returns what to do about it: DONE (deliver the value), RETRY or REQUEUED
        (back in the queue: nothing to deliver), FAILED with the :class:`Failure`
        that names the user's error, or STALE when ``attempt`` is not the task's
        running attempt (or, given ``worker``, runs elsewhere): the result is
        discarded and nothing changes. ``measured`` (what the attempt used, with
        ``wall_time`` and ``cores``) is learned from by the task's category when
        the outcome says the attempt ran; ``exceeded`` names the resources an
        EXHAUSTED attempt went over; ``why`` goes into the task's history.
        """
        t = self._current(task_id, attempt, worker)
        if t is None:
            return _STALE
        if outcome is Outcome.SUCCEEDED or outcome is Outcome.RAISED:
            ruling = self._ran(t, outcome is Outcome.SUCCEEDED, now, measured, wall_time, cores)
        elif outcome is Outcome.BROKE:
            ruling = self._ran(t, False, now, None, wall_time, cores)
        elif outcome is Outcome.EXHAUSTED:
            ruling = self._exhausted(t, exceeded, now, measured, wall_time, cores)
        elif outcome is Outcome.FATAL:
            self._release(t)
            if measured is not None:
                self._learn(t, measured, wall_time, cores)
            self._move(t, TaskState.FAILED, now, "failed for good: %s", why)
            ruling = _FATAL
        elif outcome is Outcome.FORSAKEN:
            ruling = self._requeue(t, now, why or "handed back", _GAVE_UP)
        elif outcome is Outcome.UNUSABLE:
            ruling = self._unusable(t, now, why)
        else:
            raise ValueError(f"unknown outcome {outcome!r}")
        self._check()
        return ruling

    def _learn(self, t: TaskRecord, measured: Resources, wall_time: float,
               cores: float | None) -> None:
        cat = self.category(t.category)
        cat.record(measured, wall_time, False, cores=cores, task_key=t.id)
        self._learned(cat)

    def _ran(self, t: TaskRecord, success: bool, now: float, measured: Resources | None,
             wall_time: float, cores: float | None) -> Ruling:
        """Success, or the task's own failure: a retry while it has some, else FAILED."""
        self._release(t)
        if measured is not None:
            self._learn(t, measured, wall_time, cores)
        if success:
            self._move(t, TaskState.DONE, now, "succeeded")
            return _DONE
        if t.retries_left is None or t.retries_left > 0:
            if t.retries_left is not None:
                t.retries_left -= 1
            self._move(t, TaskState.WAITING, now, "failed, retrying (%s left)", t.retries_left)
            self._enqueue(t)
            return _RETRY
        self._move(t, TaskState.FAILED, now, "failed")
        return _FAILED_TASK

    def _requeue(self, t: TaskRecord, now: float, why: str, capped: Ruling) -> Ruling:
        """Back in the queue through no fault of its own, or ``capped`` past the requeue cap."""
        self._release(t)
        t.requeues += 1
        if t.requeues > MAX_REQUEUES:
            self._move(t, TaskState.FAILED, now, "%s; gave up after %d requeues", why,
                       MAX_REQUEUES)
            return capped
        self._move(t, TaskState.WAITING, now, why)
        self._enqueue(t)
        return _REQUEUED

    def _unusable(self, t: TaskRecord, now: float, why: str) -> Ruling:
        """The worker can never run the task: elsewhere, if any connected worker is left
        that it has not found unusable; else it fails."""
        worker = t.worker
        if worker is not None:
            t.avoid = t.avoid | {worker}
        # Connected workers it may still use: the count costs the avoided ones, not the pool.
        workers = self.pool.workers
        if len(workers) > sum(1 for w in t.avoid if w in workers):
            return self._requeue(t, now, why or "unusable there", _UNUSABLE)
        self._release(t)
        self._move(t, TaskState.FAILED, now, "%s; no other worker to run it", why)
        return _UNUSABLE

    def _exhausted(
        self, t: TaskRecord, exceeded: Sequence[str], now: float, measured: Resources | None,
        wall_time: float, cores: float | None,
    ) -> Ruling:
        """Killed for using more of ``exceeded`` than it was allocated.

        It RETRIES at once, ahead of the other waiting tasks, with a larger
        allocation (its category decides how much; at most the largest
        worker's), or FAILS as :func:`~.alloc.after_exhaustion` decides.
        """
        had = t.allocation or ZERO
        self._release(t)
        cat = self.category(t.category)
        t.exhaustions += 1
        decision = after_exhaustion(cat.config, t.request, had, measured, exceeded,
                                    self.pool.largest, t.exhaustions)
        used = decision.used
        give_up = decision.give_up is not None
        cat.record(used, wall_time, True, cores=cores, task_key=t.id, gave_up=give_up,
                   reading=measured or _UNMEASURED)
        self._learned(cat)
        what = ", ".join(exceeded)
        if give_up:
            self._move(t, TaskState.FAILED, now, "exceeded %s", what)
            return _FAILED_EXHAUSTED
        t.label = Attempt.MAX
        t.exceeded = tuple(exceeded)
        t.measured_before = used if t.measured_before is None else maximum(
            t.measured_before, used)
        self._move(t, TaskState.WAITING, now, "exceeded %s; retry bigger", what)
        self._enqueue(t)
        return _RETRY

    def cancel(self, task_id: int, now: float) -> Assignment | None:
        """Cancel a task; returns the running attempt to kill, if any."""
        t = self.tasks.get(task_id)
        if t is None or t.state in FINAL_STATES:
            return None
        running = None
        if t.state is TaskState.RUNNING and t.worker is not None and t.allocation is not None:
            running = Assignment(t.id, t.attempt, t.worker, t.allocation)
        self.waiting.discard(t)
        self._release(t)
        self._move(t, TaskState.CANCELLED, now, "cancelled")
        self._check()
        return running

    def forget(self, task_id: int) -> None:
        """Drop a finished task's record."""
        t = self.tasks.get(task_id)
        if t is not None and t.state in FINAL_STATES:
            del self.tasks[task_id]
            self._counts[t.state] -= 1
            self.category(t.category).forget(task_id)

    # ------------------------------------------------------------ worker events
    def add_worker(self, worker_id: str, total: Resources, now: float) -> None:
        """A worker finished its handshake."""
        if not total.is_complete:
            raise ValueError(f"worker {worker_id} reported an incomplete size {total}")
        self.pool.add(worker_id, total, now)
        self._unpark()
        self.changed = True
        self._check()

    def _unpark(self) -> None:
        self.waiting.unpark()
        parked, self._parked = self._parked, []
        for t in parked:
            if t.state is TaskState.WAITING and t.queue is None:
                self._enqueue(t)
        self.changed = True

    def seen(self, worker_id: str, now: float) -> None:
        """Anything arrived from the worker: its lease is renewed."""
        self.pool.seen(worker_id, now)

    def remove_worker(self, worker_id: str, now: float, why: str) -> list[tuple[int, Verdict]]:
        """A worker is gone: its tasks go back to the queue (or fail after too many requeues)."""
        w = self.pool.remove(worker_id)
        if w is None:
            return []
        out = []
        for tid in [*w.running, *w.queued]:
            t = self.tasks[tid]
            t.worker = None  # its worker's accounting is gone with it
            ruling = self._requeue(t, now, f"worker {worker_id} lost: {why}", _GAVE_UP)
            out.append((tid, ruling.verdict))
        self._check()
        return out

    def expired(self, now: float, lease: float) -> list[str]:
        """Workers not heard from within ``lease`` seconds."""
        return self.pool.expired(now, lease)

    # ------------------------------------------------------------ scheduling
    def largest_worker(self) -> Resources:
        """Element-wise maximum over connected workers."""
        return self.pool.largest

    def _prefetchable(self, t: TaskRecord) -> bool:
        """Short tasks (by their category's record) on their first allocation."""
        return self.prefetch and t.label is Attempt.FIRST and self._short.get(t.category, False)

    def _learned(self, cat: Category) -> None:
        """A category recorded an attempt: what its queues ask for may have changed."""
        if cat.mode is AllocationMode.AUTO and cat.tasks_recorded:
            # the pooled peaks may have changed: categories still cold ask anew
            self._cold.discard(cat.name)
            for name in self._cold:
                self.categories[name].borrowed_changed()
                self._epochs[name] = self._epochs.get(name, 0) + 1
                self._relearn.add(name)
        wall = cat.typical_wall_time()
        short = wall is not None and wall < PREFETCH_WALL_TIME
        if cat.mode is not AllocationMode.FIXED or short != self._short.get(cat.name, False):
            self._short[cat.name] = short
            if short and self.prefetch:
                self.pool.index_queues()  # prefetching may begin
            self._epochs[cat.name] = self._epochs.get(cat.name, 0) + 1
            self._relearn.add(cat.name)
            self.changed = True

    def schedule(self, now: float, limit: int | None = None) -> list[Assignment]:
        """Assign waiting tasks to workers with room, highest priority first.

        Tasks of equal priority backfill: a small task may start while a larger
        one ahead of it waits for room. A task of *higher* priority that does
        not fit yet, while tasks of lower priority wait, reserves the workers
        closest to fitting it (one per waiting task of its shape): tasks of
        lower priority do not start there in this pass. A short task (see
        :data:`PREFETCH_WALL_TIME`) that fits nowhere now is prefetched to a
        busy worker instead, which starts it when room frees there.

        At most ``limit`` assignments (None: all that fit); :attr:`changed`
        stays true when the pass stopped at the limit. A pass when nothing
        changed since the last one returns at once; a shape that found no room
        before is only looked for on the workers touched since.
        """
        out: list[Assignment] = []
        pool, waiting = self.pool, self.waiting
        if not self.changed:
            return out  # nothing happened that could let a task start
        self.changed = False
        if not pool.workers or not len(waiting) or not pool.open():
            return out
        near = pool.take_touched()
        epoch = pool.epoch
        lowest = waiting.lowest_priority()
        if epoch != self._epoch or (lowest is not None and lowest < self._lowest):
            # The worker sizes changed, or tasks of a lower priority than any before wait
            # now: every shape is looked at afresh (a higher one may have to reserve).
            self._epoch = epoch
            waiting.forget_no_room()
        elif self._relearn:
            waiting.forget_no_room(self._relearn)
        self._relearn.clear()
        self._lowest = math.inf if lowest is None else lowest
        # Shapes that found no room may only fit on the workers touched since; with many
        # touched, on any worker, but only if what they need fits what some worker has.
        full = len(near) > TOUCHED_SCAN
        room: list[Need | None] = [pool.most_free() if full else pool.room_among(near)]
        extra = [] if room[0] is None else waiting.candidates(room[0])

        def still(q: ShapeQueue) -> bool:
            """Whether the touched workers may still have room for what ``q`` needs."""
            free = room[0]
            assert q.shape is not None
            g, c, m, d = q.shape.need
            return (free is not None and g <= free[0] and c <= free[1] and m <= free[2]
                    and d <= free[3])

        commits = 0
        reserved: dict[str, float] = {}  # worker id -> the priority it is held for
        to_hold: list[tuple[float, str]] = []  # reservations not yet taken out of the indexes
        failed: set[tuple[object, ...]] = set()  # shapes with no room in this pass
        examined = 0
        try:
            for q, t in waiting.sweep(extra, still):
                if limit is not None and len(out) >= limit:
                    self.changed = True
                    break
                retrying = q.first == -math.inf
                if not retrying:
                    # Workers held for higher priorities leave the indexes for the pass.
                    while to_hold and -to_hold[0][0] > q.priority:
                        pool.hold(heapq.heappop(to_hold)[1])
                shape = self._shape(q, t, epoch)
                prefetchable = self._prefetchable(t)
                key = (shape.request, shape.minimum, q.avoid, prefetchable, q.priority)
                placement = None
                prefetched = False
                if key not in failed:
                    allowed = _allowed(q.avoid, reserved if retrying else {}, q.priority)
                    if q.no_room and not full:
                        # It found no room before: only touched workers may have some now.
                        placement = pool.best_fit_among(near, shape, allowed)
                    else:
                        examined += 1
                        placement = pool.best_fit(shape, allowed)
                        if placement is None and prefetchable:
                            placement = pool.prefetch_target(shape, allowed)
                            prefetched = placement is not None
                if placement is not None:
                    waiting.take_head(q, t)
                    out.append(self._dispatch(t, *placement, prefetched, now))
                    commits += not prefetched
                    if not pool.open():
                        break
                    if extra and not full:  # the touched workers have less room now
                        near |= pool.touched
                        room[0] = pool.room_among(near)
                    continue
                failed.add(key)
                if q.each:
                    waiting.defer_head(q)
                if not pool.fits_somewhere(shape.request, q.avoid):
                    self._park(q, t, shape.request)
                elif lowest is not None and lowest < q.priority:
                    # It stays in the order: it reserves again in every pass.
                    n = 1 if q.each else min(q.waiting, RESERVE_DEPTH)
                    self._reserve(shape.request, q, n, reserved, to_hold)
                elif not q.each and not prefetchable:  # a short one may find a prefetch queue
                    waiting.stall(q)
                if examined >= SCHEDULE_DEPTH:
                    break
        finally:
            pool.unhold_all()
            for wid in reserved:
                pool.touch(wid)  # held in this pass only: look at it again next time
            waiting.end_pass()
        # A task that runs gives its worker room in its prefetch queue, so prefetchable
        # shapes that found none are asked again.
        if commits and any(k[3] for k in failed):
            self.changed = True
        self._check()
        return out

    def _shape(self, q: ShapeQueue, t: TaskRecord, epoch: int) -> Shape:
        """The shape the queue's tasks get now (remembered while what it depends on stays
        the same: the category's learning and the workers' sizes)."""
        if q.each:
            return self.pool.shape(self.request_of(t), self.category(t.category).config.min)
        stamp = (self._epochs.get(q.category, 0), epoch)
        if q.shape is None or q.stamp != stamp:
            q.shape = self.pool.shape(self.request_of(t), self.category(t.category).config.min)
            q.stamp = stamp
        return q.shape

    def _dispatch(self, t: TaskRecord, w: WorkerRecord, alloc: Resources, prefetched: bool,
                  now: float) -> Assignment:
        t.attempt += 1
        t.worker = w.id
        t.allocation = alloc
        if prefetched:
            self.pool.enqueue(w, t.id, alloc)
        else:
            self.pool.commit(w, t.id, alloc)
        self._move(t, TaskState.RUNNING, now, "attempt %d on %s with %s%s", t.attempt, w.id,
                   alloc, " (prefetched)" if prefetched else "")
        return Assignment(t.id, t.attempt, w.id, alloc, prefetched)

    def _park(self, q: ShapeQueue, t: TaskRecord, request: Resources) -> None:
        """The shape fits no connected worker: it waits, out of the order, for a new one."""
        if q.each:
            self.waiting.discard(t)  # parked on its own: its request is its own
            self._parked.append(t)
            if t.warned_unplaceable:
                return
            t.warned_unplaceable = True
            waiting = 1
        else:
            self.waiting.park(q)
            if q.warned:
                return
            q.warned = True
            waiting = q.waiting
        self.notices.append(Unplaceable(t.id, request, self.pool.largest, waiting))

    def _reserve(self, request: Resources, q: ShapeQueue, n: int, reserved: dict[str, float],
                 to_hold: list[tuple[float, str]]) -> None:
        """Hold the ``n`` workers closest to fitting ``request`` against lower priorities."""
        avoid = q.avoid
        for w in itertools.islice(self.pool.closest(
                request, lambda w: w.id not in avoid and w.id not in reserved), n):
            reserved[w.id] = q.priority
            heapq.heappush(to_hold, (-q.priority, w.id))

    def take_notices(self) -> list[Unplaceable]:
        """The notices since the last call."""
        notices, self.notices = self.notices, []
        return notices

    # ------------------------------------------------------------ views
    def counts(self) -> dict[str, int]:
        """Number of tasks in each state."""
        return {s.value: self._counts[s] for s in TaskState}

    def totals(self) -> tuple[Resources, Resources]:
        """(committed, total) summed over connected workers."""
        return self.pool.totals()

    def parked(self) -> Iterator[TaskRecord]:
        """Waiting tasks set aside on their own (outside every shape queue) because their
        own request fits no connected worker; they number ``counts()["waiting"]`` minus
        ``len(waiting)``. Lazily, from a list that may hold tasks that left since."""
        return (t for t in self._parked if t.state is TaskState.WAITING and t.queue is None)

    def category_counts(self) -> dict[str, dict[str, int]]:
        """Per category that has had tasks: how many wait and run now, and how many have
        ended done, failed and cancelled (kept on each transition: no scan)."""
        return {name: {s.value: c[i] for s, i in _SLOT.items()}
                for name, c in self._by_category.items()}

    # ------------------------------------------------------------ invariants
    def _check(self) -> None:
        if self.validate:
            self.check_invariants()

    def check_invariants(self) -> None:
        """Raise AssertionError if the accounting is inconsistent."""
        self.pool.check()
        self.waiting.check()
        for w in self.workers.values():
            summed = ZERO
            for tid, alloc in w.running.items():
                t = self.tasks[tid]
                assert t.state is TaskState.RUNNING, f"task {tid} on {w.id} is {t.state}"
                assert t.worker == w.id and t.allocation == alloc, f"task {tid} accounting"
                summed = summed + alloc
            assert summed == w.committed, f"worker {w.id}: committed {w.committed} != {summed}"
            assert len(w.queued) <= PREFETCH_MAX, f"worker {w.id}: {len(w.queued)} prefetched"
            for tid, alloc in w.queued.items():
                t = self.tasks[tid]
                assert tid not in w.running, f"task {tid} both queued and running on {w.id}"
                assert t.state is TaskState.RUNNING and t.worker == w.id, f"queued task {tid}"
                assert t.allocation == alloc and alloc.fits_in(w.total), f"queued task {tid}"
        parked = {t.id for t in self._parked if t.state is TaskState.WAITING and t.queue is None}
        counted = Counter(t.state for t in self.tasks.values())
        for s in TaskState:
            assert counted[s] == self._counts[s], f"{s.value}: {counted[s]} != {self._counts[s]}"
        live = Counter((t.category, t.state) for t in self.tasks.values())
        for name, c in self._by_category.items():
            for s in (TaskState.WAITING, TaskState.RUNNING):
                assert live[name, s] == c[_SLOT[s]], f"category {name}: {s.value} count"
        for t in self.tasks.values():
            if t.state is TaskState.RUNNING:
                assert t.worker in self.workers, f"task {t.id} runs on unknown worker {t.worker}"
                w = self.workers[t.worker]
                assert t.id in w.running or t.id in w.queued, f"task {t.id} lost on {w.id}"
            else:
                assert t.worker is None, f"task {t.id} in {t.state} holds worker {t.worker}"
            if t.state is TaskState.WAITING:
                assert t.queue is not None or t.id in parked, f"task {t.id} waits nowhere"
            else:
                assert t.queue is None, f"task {t.id} in {t.state} is still queued"


def _allowed(avoid: frozenset[str], reserved: dict[str, float], priority: float
             ) -> Callable[[WorkerRecord], bool] | None:
    """A filter for workers: not avoided, and not held for a higher priority (None: any)."""
    if not avoid and not reserved:
        return None
    return lambda w: w.id not in avoid and reserved.get(w.id, priority) <= priority


def _seed(name: str) -> int:
    """A category's random seed: stable across runs, different per category."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little")
