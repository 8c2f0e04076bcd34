"""The manager's pure state: tasks, workers, and the packing decisions.

:class:`ManagerState` takes events (a task submitted, a worker joined, an
attempt ended, time passed) and returns decisions (which task runs where, with
what allocation; what to requeue or deliver). It owns the authoritative
accounting of what each worker has committed; it does no I/O and reads no
clock: callers pass ``now``.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..resources import ZERO, Resources, maximum
from .allocation import box
from .categories import AllocationMode, Attempt, Category, CategoryConfig
from .states import ALLOWED_TRANSITIONS, InvalidTransition, TaskState, Verdict, WorkerState

#: How many waiting tasks one scheduling pass examines at most (Work Queue: 100).
SCHEDULE_DEPTH = 1000
#: How often a task may be requeued through no fault of its own (worker lost,
#: forsaken) before it fails with WorkerLost: a task that kills every worker
#: it lands on must not go round forever.
MAX_REQUEUES = 5
#: Transitions kept per task for error messages and tests.
HISTORY_LIMIT = 32
#: How often a task may exhaust its allocation and be retried bigger before it
#: fails (each retry needs a larger allocation, so this is only a backstop).
MAX_EXHAUSTIONS = 10
#: A task whose category's typical wall time (s) is below this may be
#: *prefetched*: sent to a worker with no room yet, which starts it the moment
#: room frees there. That saves the manager round trip (1-2 ms) between short
#: tasks; a longer task gains nothing and could wait on one busy worker while
#: another frees up, so it waits in the manager instead.
PREFETCH_WALL_TIME = 0.1
#: Prefetched tasks a worker holds at most: one per task running there, and
#: never more than this.
PREFETCH_MAX = 16


@dataclass
class TaskRecord:
    """The core's view of one task."""

    id: int
    request: Resources
    priority: float
    seq: int
    retries_left: int | None  # None: unlimited
    state: TaskState = TaskState.WAITING
    attempt: int = 0
    worker: str | None = None
    allocation: Resources | None = None
    requeues: int = 0
    #: Workers that cannot run this task (say, its environment pack is unusable
    #: there): it is not placed on them again.
    avoid: frozenset[str] = frozenset()
    category: str = "default"
    #: FIRST, or MAX after it exhausted an allocation packmule chose: it then
    #: runs again, bigger, ahead of the other waiting tasks.
    label: Attempt = Attempt.FIRST
    #: Element-wise max of what its exhausted attempts were measured to use.
    measured_before: Resources | None = None
    exceeded: tuple[str, ...] = ()
    exhaustions: int = 0
    warned_unplaceable: bool = False
    history: list[str] = field(default_factory=list)


@dataclass
class WorkerRecord:
    """The core's view of one connected worker."""

    id: str
    total: Resources
    last_seen: float
    committed: Resources = ZERO
    running: dict[int, Resources] = field(default_factory=dict)
    #: Prefetched attempts, in the order sent: the worker starts each as soon as
    #: it fits (the same rule as :meth:`promote`), so this mirrors its queue.
    queued: dict[int, Resources] = field(default_factory=dict)
    state: WorkerState = WorkerState.ACTIVE

    @property
    def free(self) -> Resources:
        return self.total - self.committed

    def has_room(self) -> bool:
        f = self.free
        return bool(f.cores or f.gpus)

    def queue_room(self) -> bool:
        return len(self.queued) < min(PREFETCH_MAX, len(self.running))

    def promote(self) -> None:
        """Start the queued attempts that fit now, in the order they were sent."""
        for tid, alloc in list(self.queued.items()):
            if alloc.fits_in(self.free):
                del self.queued[tid]
                self.running[tid] = alloc
                self.committed = self.committed + alloc


@dataclass(frozen=True)
class Assignment:
    """Decision: run ``attempt`` of ``task_id`` on ``worker`` with ``allocation``."""

    task_id: int
    attempt: int
    worker: str
    allocation: Resources
    #: Sent ahead to a busy worker, which starts it when room frees there.
    prefetched: bool = False


@dataclass(frozen=True)
class Unplaceable:
    """Notice: the task fits no connected worker (said once per task)."""

    task_id: int
    request: Resources
    largest: Resources


class ManagerState:
    """Tasks and workers, with the packing policy. Not thread-safe: one owner."""

    def __init__(self, validate: bool = False,
                 default_category: CategoryConfig | None = None, prefetch: bool = True) -> None:
        self.tasks: dict[int, TaskRecord] = {}
        self.workers: dict[str, WorkerRecord] = {}
        self.categories: dict[str, Category] = {}
        self.default_category = default_category or CategoryConfig()
        self.validate = validate
        self.prefetch = prefetch
        self._largest = ZERO
        self._ready: list[tuple[float, int, int]] = []  # (-priority, seq, task_id)
        self._parked: list[int] = []  # tasks that fit no connected worker
        self._seq = itertools.count()
        self.notices: list[Unplaceable] = []

    # ------------------------------------------------------------ transitions
    def _move(self, t: TaskRecord, to: TaskState, now: float, why: str) -> None:
        if (t.state, to) not in ALLOWED_TRANSITIONS:
            raise InvalidTransition(t.id, t.state, to, t.history)
        t.history.append(f"{now:.3f} {t.state.value}->{to.value} ({why})")
        del t.history[:-HISTORY_LIMIT]
        t.state = to

    def _enqueue(self, t: TaskRecord) -> None:
        first = -math.inf if t.label is Attempt.MAX else -t.priority
        heapq.heappush(self._ready, (first, t.seq, t.id))

    # ------------------------------------------------------------ categories
    def configure_category(self, name: str, config: CategoryConfig) -> None:
        """Set a category's allocation policy (before its tasks arrive, or it starts afresh)."""
        self.categories[name] = Category(name, config, seed=_seed(name))

    def category(self, name: str) -> Category:
        cat = self.categories.get(name)
        if cat is None:
            cat = self.categories[name] = Category(name, self.default_category, seed=_seed(name))
        return cat

    def request_of(self, t: TaskRecord) -> Resources:
        """What this attempt asks the box rule for: the task's own values, plus learned ones."""
        cat = self.category(t.category)
        if t.label is Attempt.MAX and cat.mode is AllocationMode.FIXED:
            # Nothing is learned in FIXED mode: what it exceeded gets the largest worker's.
            fields = t.request.as_dict()
            for r in t.exceeded:
                fields[r] = getattr(self._largest, r)
            return Resources(**fields)
        return cat.request_for(t.request, t.label, self._largest, t.id, t.measured_before,
                               attempt=t.attempt, exceeded=t.exceeded)

    def _release(self, t: TaskRecord) -> None:
        """Give back the task's allocation on its worker."""
        if t.worker is not None:
            w = self.workers.get(t.worker)
            if w is not None and t.id in w.running:
                w.committed = w.committed - w.running.pop(t.id)
                w.promote()
            elif w is not None:
                w.queued.pop(t.id, None)
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
                       category=category)
        t.history.append(f"{now:.3f} submitted")
        self.tasks[task_id] = t
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

    def complete(
        self, task_id: int, attempt: int, success: bool, now: float, worker: str | None = None,
        measured: Resources | None = None, wall_time: float = 0.0, cores: float | None = None,
    ) -> Verdict:
        """An attempt ended: ``success`` false means the task itself failed.

        A result for any other than the current attempt (or from a worker other
        than the one running it) is STALE and changes nothing.
        """
        t = self._current(task_id, attempt, worker)
        if t is None:
            return Verdict.STALE
        self._release(t)
        if measured is not None:
            self.category(t.category).record(measured, wall_time, False, cores=cores,
                                             task_key=t.id)
        if success:
            self._move(t, TaskState.DONE, now, "succeeded")
            verdict = Verdict.DONE
        elif t.retries_left is None or t.retries_left > 0:
            if t.retries_left is not None:
                t.retries_left -= 1
            self._move(t, TaskState.WAITING, now, f"failed, retrying ({t.retries_left} left)")
            self._enqueue(t)
            verdict = Verdict.RETRY
        else:
            self._move(t, TaskState.DONE, now, "failed")
            verdict = Verdict.FAILED
        self._check()
        return verdict

    def forsake(
        self, task_id: int, attempt: int, now: float, why: str, worker: str | None = None,
        avoid: bool = False,
    ) -> Verdict:
        """The attempt ended through no fault of the task (worker could not run it);
        with ``avoid``, that worker never can, and the task is not placed there again."""
        t = self._current(task_id, attempt, worker)
        if t is None:
            return Verdict.STALE
        if avoid and t.worker is not None:
            t.avoid = t.avoid | {t.worker}
        verdict = self._requeue(t, now, why)
        self._check()
        return verdict

    def _requeue(self, t: TaskRecord, now: float, why: str) -> Verdict:
        self._release(t)
        t.requeues += 1
        if t.requeues > MAX_REQUEUES:
            self._move(t, TaskState.DONE, now, f"{why}; gave up after {MAX_REQUEUES} requeues")
            return Verdict.FAILED
        self._move(t, TaskState.WAITING, now, why)
        self._enqueue(t)
        return Verdict.REQUEUED

    def exhausted(
        self, task_id: int, attempt: int, exceeded: list[str], now: float,
        worker: str | None = None, measured: Resources | None = None,
        wall_time: float = 0.0, cores: float | None = None,
    ) -> Verdict:
        """The attempt was killed for using more of ``exceeded`` than it was allocated.

        A resource the task (or its category's max) gave explicitly is a hard
        limit: the task FAILS. Otherwise it RETRIES at once, ahead of the other
        waiting tasks, with a larger allocation (its category decides how
        much; at most the largest worker's), and FAILS only when it already
        had the largest worker's worth of what it exceeded.
        """
        t = self._current(task_id, attempt, worker)
        if t is None:
            return Verdict.STALE
        had = t.allocation or ZERO
        self._release(t)
        cat = self.category(t.category)
        # An exhausted resource used more than it had, whatever the last reading said.
        fields = (measured or Resources()).as_dict()
        for r in exceeded:
            fields[r] = max(fields[r] or 0, (getattr(had, r) or 0) + 1)
        used = Resources(**fields)
        t.exhaustions += 1
        at_most = all((getattr(had, r) or 0) >= (getattr(self._largest, r) or 0) for r in exceeded)
        over_explicit = [r for r in cat.exceeds_explicit_limit(t.request, used) if r in exceeded]
        give_up = bool(over_explicit or (exceeded and at_most) or t.exhaustions > MAX_EXHAUSTIONS)
        cat.record(used, wall_time, True, cores=cores, task_key=t.id, gave_up=give_up)
        if give_up:
            self._move(t, TaskState.DONE, now, f"exceeded {', '.join(exceeded)}")
            verdict = Verdict.FAILED
        else:
            t.label = Attempt.MAX
            t.exceeded = tuple(exceeded)
            t.measured_before = used if t.measured_before is None else maximum(
                t.measured_before, used)
            self._move(t, TaskState.WAITING, now, f"exceeded {', '.join(exceeded)}; retry bigger")
            self._enqueue(t)
            verdict = Verdict.RETRY
        self._check()
        return verdict

    def cancel(self, task_id: int, now: float) -> Assignment | None:
        """Cancel a task; returns the running attempt to kill, if any."""
        t = self.tasks.get(task_id)
        if t is None or t.state in (TaskState.DONE, TaskState.CANCELLED):
            return None
        running = None
        if t.state is TaskState.RUNNING and t.worker is not None and t.allocation is not None:
            running = Assignment(t.id, t.attempt, t.worker, t.allocation)
        self._release(t)
        self._move(t, TaskState.CANCELLED, now, "cancelled")
        self._check()
        return running

    def forget(self, task_id: int) -> None:
        """Drop a finished task's record."""
        t = self.tasks.get(task_id)
        if t is not None and t.state in (TaskState.DONE, TaskState.CANCELLED):
            del self.tasks[task_id]
            self.category(t.category).forget(task_id)

    # ------------------------------------------------------------ worker events
    def add_worker(self, worker_id: str, total: Resources, now: float) -> None:
        """A worker finished its handshake."""
        if not total.is_complete:
            raise ValueError(f"worker {worker_id} reported an incomplete size {total}")
        self.workers[worker_id] = WorkerRecord(worker_id, total, now)
        self._largest = maximum(self._largest, total)
        for tid in self._parked:
            t = self.tasks.get(tid)
            if t is not None and t.state is TaskState.WAITING:
                self._enqueue(t)
        self._parked.clear()
        self._check()

    def seen(self, worker_id: str, now: float) -> None:
        """Anything arrived from the worker: its lease is renewed."""
        w = self.workers.get(worker_id)
        if w is not None:
            w.last_seen = now

    def remove_worker(self, worker_id: str, now: float, why: str) -> list[tuple[int, Verdict]]:
        """A worker is gone: its tasks go back to the queue (or fail after too many requeues)."""
        w = self.workers.pop(worker_id, None)
        if w is None:
            return []
        self._largest = self.largest_worker()
        out = []
        for tid in [*w.running, *w.queued]:
            t = self.tasks[tid]
            out.append((tid, self._requeue(t, now, f"worker {worker_id} lost: {why}")))
        self._check()
        return out

    def expired(self, now: float, lease: float) -> list[str]:
        """Workers not heard from within ``lease`` seconds."""
        return [w.id for w in self.workers.values() if now - w.last_seen > lease]

    # ------------------------------------------------------------ scheduling
    def largest_worker(self) -> Resources:
        """Element-wise maximum over connected workers."""
        best = ZERO
        for w in self.workers.values():
            best = maximum(best, w.total)
        return best

    def _place(
        self, t: TaskRecord, workers: Iterable[WorkerRecord], prefetch: bool = False
    ) -> tuple[WorkerRecord, Resources] | None:
        """Best fit: the worker left with the fewest free cores (then memory) after
        placing. With ``prefetch``: the busy worker with queue room and the shortest
        queue that could run ``t`` once room frees there."""
        choice: tuple[tuple[int, int], WorkerRecord, Resources] | None = None
        request = self.request_of(t)
        cat = self.category(t.category)
        for w in workers:
            if w.id in t.avoid or (prefetch and not w.queue_room()):
                continue
            b = box(request, w.total)
            if b is not None:
                b = cat.apply_min(b)
            if b is None or not b.fits_in(w.total if prefetch else w.free):
                continue
            if prefetch:
                key = (len(w.queued), -(w.free.cores or 0))
            else:
                left = w.free - b
                key = (left.cores or 0, left.memory or 0)
            if choice is None or key < choice[0]:
                choice = (key, w, b)
        return None if choice is None else (choice[1], choice[2])

    def _prefetchable(self, t: TaskRecord) -> bool:
        """Short tasks (by their category's record) on their first allocation."""
        if not self.prefetch or t.label is not Attempt.FIRST:
            return False
        wall = self.category(t.category).typical_wall_time()
        return wall is not None and wall < PREFETCH_WALL_TIME

    def _fits_some_worker(self, t: TaskRecord) -> bool:
        request = self.request_of(t)
        return any(box(request, w.total) is not None for w in self.workers.values()
                   if w.id not in t.avoid)

    def _reserve(self, t: TaskRecord, reserved: dict[str, float]) -> None:
        """Hold the worker closest to fitting ``t`` against lower-priority tasks."""
        best: tuple[tuple[int, int], WorkerRecord] | None = None
        for w in self.workers.values():
            if w.id in reserved or w.id in t.avoid or box(self.request_of(t), w.total) is None:
                continue
            key = (-(w.free.cores or 0), -(w.free.memory or 0))
            if best is None or key < best[0]:
                best = (key, w)
        if best is not None:
            reserved[best[1].id] = t.priority

    def schedule(self, now: float) -> list[Assignment]:
        """Assign waiting tasks to workers with room, highest priority first.

        Tasks of equal priority backfill: a small task may start while a larger
        one ahead of it waits for room. A task of *higher* priority that does
        not fit yet reserves the worker closest to fitting it: tasks of lower
        priority do not start there until it has started. A short task (see
        :data:`PREFETCH_WALL_TIME`) that fits nowhere now is prefetched to a
        busy worker instead, which starts it when room frees there.
        """
        out: list[Assignment] = []
        if not self.workers:
            return out
        open_workers = [w for w in self.workers.values() if w.has_room() or w.queue_room()]
        deferred: list[tuple[float, int, int]] = []
        reserved: dict[str, float] = {}  # worker id -> priority it is held for
        scanned = 0
        while self._ready and open_workers and scanned < SCHEDULE_DEPTH:
            entry = heapq.heappop(self._ready)
            t = self.tasks.get(entry[2])
            if t is None or t.state is not TaskState.WAITING or t.seq != entry[1]:
                continue  # stale heap entry
            scanned += 1
            allowed = [w for w in open_workers if reserved.get(w.id, t.priority) <= t.priority]
            placed = self._place(t, [w for w in allowed if w.has_room()])
            queued = False
            if placed is None and self._prefetchable(t):
                placed = self._place(t, allowed, prefetch=True)
                queued = placed is not None
            if placed is None:
                if self._fits_some_worker(t):
                    deferred.append(entry)
                    self._reserve(t, reserved)
                else:
                    self._parked.append(t.id)
                    if not t.warned_unplaceable:
                        t.warned_unplaceable = True
                        self.notices.append(Unplaceable(t.id, t.request, self.largest_worker()))
                continue
            w, alloc = placed
            t.attempt += 1
            t.worker = w.id
            t.allocation = alloc
            if queued:
                w.queued[t.id] = alloc
            else:
                w.running[t.id] = alloc
                w.committed = w.committed + alloc
            self._move(t, TaskState.RUNNING, now, f"attempt {t.attempt} on {w.id} with {alloc}"
                       + (" (prefetched)" if queued else ""))
            out.append(Assignment(t.id, t.attempt, w.id, alloc, queued))
            if not (w.has_room() or w.queue_room()):
                open_workers.remove(w)
        for entry in deferred:
            heapq.heappush(self._ready, entry)
        self._check()
        return out

    # ------------------------------------------------------------ views
    def counts(self) -> dict[str, int]:
        """Number of tasks in each state."""
        c = {s.value: 0 for s in TaskState}
        for t in self.tasks.values():
            c[t.state.value] += 1
        return c

    def totals(self) -> tuple[Resources, Resources]:
        """(committed, total) summed over connected workers."""
        committed, total = ZERO, ZERO
        for w in self.workers.values():
            committed = committed + w.committed
            total = total + w.total
        return committed, total

    # ------------------------------------------------------------ invariants
    def _check(self) -> None:
        if self.validate:
            self.check_invariants()

    def check_invariants(self) -> None:
        """Raise AssertionError if the accounting is inconsistent."""
        for w in self.workers.values():
            summed = ZERO
            for tid, alloc in w.running.items():
                t = self.tasks[tid]
                assert t.state is TaskState.RUNNING, f"task {tid} on {w.id} is {t.state}"
                assert t.worker == w.id and t.allocation == alloc, f"task {tid} accounting"
                summed = summed + alloc
            assert summed == w.committed, f"worker {w.id}: committed {w.committed} != {summed}"
            assert w.committed.fits_in(w.total), f"worker {w.id} overcommitted: {w.committed}"
            assert len(w.queued) <= PREFETCH_MAX, f"worker {w.id}: {len(w.queued)} prefetched"
            for tid, alloc in w.queued.items():
                t = self.tasks[tid]
                assert tid not in w.running, f"task {tid} both queued and running on {w.id}"
                assert t.state is TaskState.RUNNING and t.worker == w.id, f"queued task {tid}"
                assert t.allocation == alloc and alloc.fits_in(w.total), f"queued task {tid}"
        for t in self.tasks.values():
            if t.state is TaskState.RUNNING:
                assert t.worker in self.workers, f"task {t.id} runs on unknown worker {t.worker}"
                w = self.workers[t.worker]
                assert t.id in w.running or t.id in w.queued, f"task {t.id} lost on {w.id}"
            else:
                assert t.worker is None, f"task {t.id} in {t.state} holds worker {t.worker}"


def _seed(name: str) -> int:
    """A category's random seed: stable across runs, different per category."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little")
