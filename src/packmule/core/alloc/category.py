"""A category: what every allocation mode shares, around the mode's :class:`Strategy`.

A :class:`Category` takes finished attempts (:meth:`Category.record`) and
answers, for a new attempt, which *request* to hand to the box rule
(:func:`packmule.core.allocation.box`): :meth:`Category.request_for`. It does
no I/O and reads no clock. Task-specified values always win and are never
learned; the mode's strategy (:data:`STRATEGIES`) learns the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from ...resources import FIELDS, Resources
from .auto import AutoStrategy, Pool
from .bucketing import BucketCache, BucketingStrategy
from .config import CORES, AllocationMode, Attempt, CategoryConfig, denoise_cores, ints
from .fixed import FixedStrategy
from .histogram import HistogramStrategy
from .ladder import LadderStrategy
from .strategy import Shared, Strategy

__all__ = ["STRATEGIES", "WALL_EMA_WEIGHT", "WALL_MIN_TASKS", "Category"]

#: Each mode's strategy, made from what the category shares with it.
STRATEGIES: dict[AllocationMode, Callable[[Shared], Strategy]] = {
    AllocationMode.FIXED: FixedStrategy,
    AllocationMode.MAX: HistogramStrategy,
    AllocationMode.MIN_WASTE: HistogramStrategy,
    AllocationMode.MAX_THROUGHPUT: HistogramStrategy,
    AllocationMode.GREEDY_BUCKETING: BucketingStrategy,
    AllocationMode.EXHAUSTIVE_BUCKETING: BucketingStrategy,
    AllocationMode.LADDER: LadderStrategy,
    AllocationMode.AUTO: AutoStrategy,
}
#: Weight of the newest completion in a category's smoothed wall time: about
#: the last ten tasks count, so a category whose tasks get longer is noticed soon.
WALL_EMA_WEIGHT = 0.1
#: Completions before a category's wall time is trusted (for prefetching).
WALL_MIN_TASKS = 5

_NOTHING = [0, 0, 0, 0]


class Category:
    """One category's learning state and allocation policy (pure, not thread-safe)."""

    def __init__(self, name: str, config: CategoryConfig | None = None, seed: int = 0, *,
                 bucket_cache: BucketCache | None = None, pool: Pool | None = None) -> None:
        """``bucket_cache`` may be shared between categories that see the same peaks in
        the same order (simulations over seeds): it only memoises the bucketing. ``pool``
        holds the peaks the ``auto`` categories share (the cold start's prior)."""
        self.name = name
        self.config = config if config is not None else CategoryConfig()
        self.mode = self.config.mode
        self._shared = Shared(self.config, seed, bucket_cache, pool)
        self.strategy: Strategy = STRATEGIES[self.mode](self._shared)
        self._peak = [0, 0, 0, 0]  # the largest readings (nothing made up for exhaustion)
        self._tasks = 0
        self._attempts = 0
        self._exhausted = 0
        #: Changes whenever what :meth:`current_allocation` answers may have changed (for a
        #: given largest worker); its last answer is kept with what it depended on.
        self._allocation_epoch = 0
        self._allocation: tuple[int, Resources, Resources | None] | None = None
        self._wall_ema: float | None = None  # normal completions' wall time, smoothed
        #: Per task, its last draw (draws_each modes): (what it was drawn for, the values).
        self._pins: dict[int, tuple[tuple[object, ...], Sequence[int | None]]] = {}

    # ------------------------------------------------------------ queries
    @property
    def draws_each(self) -> bool:
        """Whether each task's first allocation is drawn on its own (bucketing modes): tasks
        with the same request may then get different allocations."""
        return self.strategy.draws_each

    @property
    def max_seen(self) -> Resources:
        return Resources(*self._shared.seen)

    @property
    def measured_peak(self) -> Resources | None:
        """The largest of each resource read by the worker in any recorded attempt (None
        before the first). Unlike :attr:`max_seen`, an exhausted attempt counts with its
        reading only, not with the "allocation + 1" it is learned from."""
        return Resources(*self._peak) if self._attempts else None

    @property
    def attempts_recorded(self) -> int:
        return self._attempts

    def borrowed_changed(self) -> None:
        """What the category borrows from others (the pool of peaks, while it has none
        of its own) changed: its allocation may have too."""
        self._allocation_epoch += 1

    @property
    def allocation_epoch(self) -> int:
        """A number that changes whenever :meth:`current_allocation` may answer otherwise
        for the same largest worker: compare it to skip asking."""
        return self._allocation_epoch

    @property
    def tasks_recorded(self) -> int:
        """Normal completions learned from."""
        return self._tasks

    def current_allocation(self, largest_worker: Resources) -> Resources | None:
        """What a task of this category that asks for nothing is given on its first
        attempt now, before the box rule fills the rest. None when that is nothing (a
        whole worker: FIXED mode without a max, or nothing learned yet), and in the
        modes that draw per task.

        Nothing is drawn and no decision changes. The answer is kept until
        :attr:`allocation_epoch` or ``largest_worker`` changes, so asking after every
        result costs a comparison; computing it anew in LADDER mode may bring the ladder
        up to date (the computation the next task's request would do anyway).
        """
        kept = self._allocation
        if kept is not None and kept[0] == self._allocation_epoch and \
                kept[1] == largest_worker:
            return kept[2]
        answer = self._first_allocation(largest_worker)
        self._allocation = (self._allocation_epoch, largest_worker, answer)
        return answer

    def _first_allocation(self, largest_worker: Resources) -> Resources | None:
        """:meth:`current_allocation`, computed."""
        if self.strategy.draws_each:
            return None
        learned = self.strategy.first(ints(largest_worker))
        if all(v is None for v in learned):
            return None
        return Resources(*learned)

    def forget(self, task_key: int) -> None:
        """Drop the pinned draw of a task that finished or was cancelled."""
        self._pins.pop(task_key, None)

    # ------------------------------------------------------------ requests
    def request_for(self, task_request: Resources, label: Attempt, largest_worker: Resources,
                    task_key: int, measured_before: Resources | None = None, *,
                    attempt: int = 0, exceeded: Collection[str] | None = None) -> Resources:
        """The request to hand to the box rule for this attempt.

        Task-specified values always win and are never learned. Unset fields
        of the result are left to the box rule's proportional fill.
        ``measured_before`` is the element-wise max of what the task's earlier
        attempts were measured to use (for an exhausted resource, the
        monitor's reading above the limit); ``exceeded`` names the resources
        the last attempt exhausted (default: every resource measured > 0).
        Draws of the modes that draw per task are pinned per (task_key, label,
        attempt, measured_before): asking again gives the same answer.
        """
        task = task_request.astuple()
        strategy = self.strategy
        worker = ints(largest_worker)
        measured = _NOTHING if measured_before is None else ints(measured_before)
        if exceeded is None:
            exc = {r for r in range(4) if measured[r] > 0}
        else:
            exc = {FIELDS.index(name) for name in exceeded}
        if strategy.draws_each:
            key: tuple[object, ...] = (label, attempt, tuple(measured), tuple(sorted(exc)))
            pin = self._pins.get(task_key)
            if pin is not None and pin[0] == key:
                return _merge(task, pin[1])
        if label is Attempt.FIRST:
            learned = strategy.first(worker)
        else:
            learned = strategy.retry(worker, measured, exc)
        if strategy.draws_each:
            self._pins[task_key] = (key, learned)
        return _merge(task, learned)

    # ------------------------------------------------------------ learning
    def record(self, measured: Resources, wall_time: float, exhausted: bool, *,
               cores: float | None = None, task_key: int | None = None,
               gave_up: bool = False, reading: Resources | None = None) -> None:
        """Account a finished attempt: its measured peaks, wall time (s), and whether it
        exhausted its allocation.

        ``cores`` may give the measured (fractional) cores; it replaces
        ``measured.cores`` after :func:`denoise_cores`. Every attempt raises the
        maximum seen; what the mode learns is its strategy's. ``gave_up``: the
        exhausted task failed for good. With ``task_key``, a normal completion (or a
        task that gave up) also drops the task's pinned draw. ``reading`` is what the
        worker read, when ``measured`` holds more (an exhausted attempt is learned from
        as having used at least its allocation + 1): only readings enter
        :attr:`measured_peak`.
        """
        m = ints(measured)
        if cores is not None:
            m[CORES] = denoise_cores(cores)
        peak = self._peak
        got = m if reading is None else ints(reading)
        if reading is not None and cores is not None:
            got[CORES] = m[CORES]
        seen = self._shared.seen
        grew = False
        for r in range(4):
            if got[r] > peak[r]:
                peak[r] = got[r]
            if m[r] > seen[r]:
                seen[r] = m[r]
                grew = True
        self._attempts += 1
        wall = max(float(wall_time), 0.0)
        if exhausted:
            self._exhausted += 1
        else:
            self._wall_ema = wall if self._wall_ema is None else (
                self._wall_ema + WALL_EMA_WEIGHT * (wall - self._wall_ema))
            self._tasks += 1
        if self.strategy.learn(m, wall, exhausted, gave_up) or grew:
            self._allocation_epoch += 1
        if task_key is not None and (gave_up or not exhausted):
            self.forget(task_key)

    def typical_wall_time(self) -> float | None:
        """Smoothed wall time (s) of normal completions; None before ``WALL_MIN_TASKS`` of them."""
        return self._wall_ema if self._tasks >= WALL_MIN_TASKS else None

    def stats(self) -> dict[str, object]:
        """A JSON-able summary of the category (with the mode's own part)."""
        return {
            "name": self.name,
            "mode": self.mode.value,
            "tasks_recorded": self._tasks,
            "attempts_recorded": self._attempts,
            "exhausted": self._exhausted,
            "typical_wall_time_s": self.typical_wall_time(),
            "max_seen": dict(zip(FIELDS, self._shared.seen, strict=True)),
            "explicit_max": self.config.max.as_dict(),
            "explicit_min": self.config.min.as_dict(),
            **self.strategy.stats(),
        }


def _merge(task: Sequence[int | None], learned: Sequence[int | None]) -> Resources:
    return Resources(*(t if t is not None else v for t, v in zip(task, learned, strict=True)))
