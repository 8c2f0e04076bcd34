"""A category's settings: the allocation modes, the attempt labels, :class:`CategoryConfig`.

Units: cores, memory in MB, disk in MB, gpus; all whole numbers. Measured
cores may be fractional; :func:`denoise_cores` turns them into whole cores.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from ...resources import FIELDS, Resources

__all__ = [
    "DEFAULT_WIDTHS",
    "LADDER_LEVELS",
    "LADDER_RETRY_COST",
    "STEADY_N",
    "AllocationMode",
    "Attempt",
    "CategoryConfig",
    "denoise_cores",
]

CORES, MEMORY, DISK, GPUS = range(4)

Vals = list[int | None]
"""Per resource (cores, memory, disk, gpus): a value, or None for unspecified."""

#: Nothing specified (the default explicit max and min of a category).
UNSET = Resources()

#: Work Queue's histogram bucket widths: cores 1, memory 250 MB, disk 250 MB, gpus 1.
DEFAULT_WIDTHS = Resources._raw(1, 250, 250, 1)
#: Work Queue's ``category-steady-n-tasks``: completions without a new maximum
#: before the learned first allocation is used (Parsl's ``autolabel_window``).
STEADY_N = 25
#: Ladder mode: at most this many learned levels (the machine is the last resort above them).
LADDER_LEVELS = 4
#: Ladder mode: the price of one retry in the ladder's objective, as a fraction of the
#: mean peak (x the task's time), on top of the failed attempt's own charge. It stands
#: for what the charging model leaves out (dispatch latency, staging, the other
#: resources the failed attempt held) and keeps the ladder from adding a level that
#: saves almost nothing. 0 minimises waste alone (more levels, many more retries).
LADDER_RETRY_COST = 0.4


def ints(res: Resources) -> list[int]:
    """The four fields as whole numbers, unspecified as 0."""
    return [v or 0 for v in res.astuple()]


def denoise_cores(cores: float) -> int:
    """Whole cores from a measured (fractional) peak: Work Queue's de-noise rule, rounded up.

    ``min(c, ceil(c - 0.1))`` forgives 0.1 core of noise (1.08 -> 1), then the
    value is rounded up to a whole core (1.5 -> 2), as the histogram would.
    """
    if cores <= 0:
        return 0
    return math.ceil(min(cores, math.ceil(cores - 0.1)) - 1e-9)


class AllocationMode(enum.Enum):
    """How a category chooses allocations; the value is the name used in configs and the CLI."""

    FIXED = "fixed"
    MAX = "max"
    MIN_WASTE = "min_waste"
    MAX_THROUGHPUT = "max_throughput"
    GREEDY_BUCKETING = "greedy_bucketing"
    EXHAUSTIVE_BUCKETING = "exhaustive_bucketing"
    LADDER = "ladder"
    AUTO = "auto"

    @classmethod
    def parse(cls, text: str | AllocationMode) -> AllocationMode:
        """A mode from its name, case-insensitive.

        Accepts our names (``min_waste``, ``min-waste``), Work Queue's C and
        Python names (``WORK_QUEUE_ALLOCATION_MODE_MAX_THROUGHPUT``,
        ``VINE_ALLOCATION_MODE_...``), their numeric values 0-5, and
        ``max-xput``.
        """
        if isinstance(text, AllocationMode):
            return text
        if not isinstance(text, str):
            raise ValueError(f"allocation mode must be a string, got {type(text).__name__}")
        key = text.strip().lower().replace("-", "_").replace(" ", "_")
        for prefix in ("work_queue_allocation_mode_", "wq_allocation_mode_",
                       "vine_allocation_mode_", "category_allocation_mode_", "allocation_mode_"):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        key = _MODE_ALIASES.get(key, key)
        for mode in cls:
            if mode.value == key:
                return mode
        valid = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown allocation mode {text!r}; valid modes: {valid}")


_MODE_ALIASES = {
    "0": "fixed", "1": "max", "2": "min_waste", "3": "max_throughput",
    "4": "greedy_bucketing", "5": "exhaustive_bucketing",
    "max_xput": "max_throughput", "xput": "max_throughput", "throughput": "max_throughput",
    "waste": "min_waste", "greedy": "greedy_bucketing", "exhaustive": "exhaustive_bucketing",
}


class Attempt(enum.Enum):
    """Which label an attempt runs with."""

    __hash__ = object.__hash__  # singletons: by identity (faster than Enum's hash)

    FIRST = "first"
    """A task's first attempt (or a re-run after a lost worker): the learned first allocation."""
    MAX = "max"
    """A retry after the task exhausted its allocation."""


@dataclass(frozen=True)
class CategoryConfig:
    """A category's allocation settings.

    ``max`` and ``min`` are explicit per-category limits (unset fields are
    ``None``). A task that exceeds an explicit limit fails instead of being
    retried. ``first_guess`` makes the category steady at once (Work Queue's
    ``specify_category_first_allocation_guess``). ``steady_n`` is Work Queue's
    ``category-steady-n-tasks``. ``widths`` are the histogram bucket widths
    (cores, MB, MB, gpus). GPUs are learned only with ``autolabel_gpus``.
    ``ladder_levels`` and ``ladder_retry_cost`` tune the ``ladder`` mode
    (:data:`LADDER_LEVELS`, :data:`LADDER_RETRY_COST`).
    """

    mode: AllocationMode = AllocationMode.FIXED
    max: Resources = UNSET
    min: Resources = UNSET
    first_guess: Resources | None = None
    steady_n: int = STEADY_N
    widths: Resources = DEFAULT_WIDTHS
    autolabel_gpus: bool = False
    ladder_levels: int = LADDER_LEVELS
    ladder_retry_cost: float = LADDER_RETRY_COST

    def __post_init__(self) -> None:
        _set = object.__setattr__
        _set(self, "mode", AllocationMode.parse(self.mode))
        _set(self, "max", Resources.coerce(self.max))
        _set(self, "min", Resources.coerce(self.min))
        if self.first_guess is not None:
            _set(self, "first_guess", Resources.coerce(self.first_guess))
        widths = Resources.coerce(self.widths)
        _set(self, "widths", widths)
        for name, lo, hi in zip(FIELDS, self.min.astuple(), self.max.astuple(), strict=True):
            if lo is not None and hi is not None and hi < lo:
                raise ValueError(
                    f"category max {name}={hi} is below its min {name}={lo}; "
                    f"raise the max or lower the min"
                )
        if isinstance(self.steady_n, bool) or not isinstance(self.steady_n, int) \
                or self.steady_n < 1:
            raise ValueError(f"steady_n must be a whole number >= 1, got {self.steady_n!r}")
        for name, w in zip(FIELDS, widths.astuple(), strict=True):
            if w is None or w < 1:
                raise ValueError(f"histogram width for {name} must be >= 1, got {w!r}")
        if isinstance(self.ladder_levels, bool) or not isinstance(self.ladder_levels, int) \
                or self.ladder_levels < 1:
            raise ValueError(f"ladder_levels must be a whole number >= 1, "
                             f"got {self.ladder_levels!r}")
        if not isinstance(self.ladder_retry_cost, (int, float)) \
                or not math.isfinite(self.ladder_retry_cost) or self.ladder_retry_cost < 0:
            raise ValueError(f"ladder_retry_cost must be a number >= 0, "
                             f"got {self.ladder_retry_cost!r}")

