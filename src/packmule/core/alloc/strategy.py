"""The interface of an allocation mode, and what a category shares with it.

A :class:`Strategy` answers the values a mode learned for a first attempt and
for a retry after an exhaustion, and learns from each recorded attempt. The
:class:`~.category.Category` does the rest (task values win, pinned draws,
counters, caching). A new mode is one module with a class taking a
:class:`Shared`, plus one line in :data:`.category.STRATEGIES`.

Values are lists over (cores, memory, disk, gpus); ``worker`` is the largest
worker and ``measured`` what the task's earlier attempts were measured to use
(unspecified as 0); ``exceeded`` holds the indexes of the resources the last
attempt exhausted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence, Set
from typing import TYPE_CHECKING, Protocol

from .config import CORES, DISK, GPUS, MEMORY, CategoryConfig, Vals

if TYPE_CHECKING:
    from .auto import Pool
    from .bucketing import BucketCache

__all__ = ["Shared", "Strategy"]


class Shared:
    """What a category gives its strategy: the config, the explicit limits, the resources
    learned, the maximum seen (kept up to date by the category) and the shared objects."""

    __slots__ = ("bucket_cache", "config", "labelled", "max", "min", "pool", "seed", "seen")

    def __init__(self, config: CategoryConfig, seed: int, bucket_cache: BucketCache | None,
                 pool: Pool | None) -> None:
        self.config = config
        #: The resources learned (GPUs only with ``autolabel_gpus``).
        self.labelled: tuple[int, ...] = (CORES, MEMORY, DISK) + (
            (GPUS,) if config.autolabel_gpus else ())
        self.max = config.max.astuple()
        self.min = config.min.astuple()
        #: Work Queue's max_resources_seen: the largest of each resource in any attempt.
        self.seen = [0, 0, 0, 0]
        self.seed = seed
        self.bucket_cache = bucket_cache
        #: The peaks every ``auto`` category shares (None: not shared).
        self.pool = pool

    def cap(self, r: int, value: float, worker: Sequence[int]) -> int:
        """A learned value: at least 1 (cores, memory, disk), at most the explicit max and the
        largest worker, at least the explicit min."""
        v = max(math.ceil(value), 1 if r != GPUS else 0)
        cap = self.max[r]
        if cap is not None:
            v = min(v, cap)
        w = worker[r]
        if w > 0:
            v = min(v, w)
        lo = self.min[r]
        if lo is not None:
            v = max(v, lo)
        return v

    def top(self, r: int, worker: Sequence[int]) -> int:
        """The retry of last resort: the explicit max, else the largest worker."""
        cap = self.max[r]
        return cap if cap is not None else worker[r]


class Strategy(Protocol):
    """One allocation mode's learned values; None leaves a resource unspecified (the box
    rule fills it in proportion). Task-specified values are merged over them by the
    category."""

    #: Whether each task's values are drawn on their own (tasks with the same request may
    #: get different allocations): the category pins a draw per attempt, and has no
    #: single current allocation.
    draws_each: bool

    def first(self, worker: Sequence[int]) -> Vals:
        """The values of a task's first attempt."""
        ...

    def retry(self, worker: Sequence[int], measured: Sequence[int], exceeded: Set[int]) -> Vals:
        """The values of a retry after an exhaustion; an exceeded resource gets at least its
        measured value (or the top, without a reading)."""
        ...

    def learn(self, measured: Sequence[int], wall: float, exhausted: bool,
              gave_up: bool) -> bool:
        """Account an attempt (``wall`` >= 0 s; ``gave_up``: the task failed for good).
        True when what :meth:`first` answers may have changed."""
        ...

    def stats(self) -> dict[str, object]:
        """The mode's own JSON-able part of the category's stats."""
        ...
