"""Allocation: learning each task category's allocation from measurements (pure).

Everything the Work Queue reference (``notes/workqueue_reference.md`` sections
2.3, 2.4, 3 and 4) says about categories is restated here in our own code,
with the deviations listed in ``docs/allocation.md``.

* :mod:`.config`: the modes, the attempt labels, :class:`CategoryConfig`;
* :mod:`.category`: :class:`Category`, what every mode shares, and the registry
  of each mode's strategy (the interface is :mod:`.strategy`'s);
* :mod:`.fixed`, :mod:`.histogram`, :mod:`.bucketing`, :mod:`.ladder`, :mod:`.auto`: the modes;
* :mod:`.exhaustion`: after an exhaustion, retry bigger or fail (and why).
"""

from .auto import Pool
from .bucketing import (
    MAX_BUCKETS,
    SAMPLING_DEFAULT,
    SAMPLING_POINTS,
    BucketCache,
    Buckets,
    exhaustive_buckets,
    greedy_buckets,
)
from .category import STRATEGIES, WALL_EMA_WEIGHT, WALL_MIN_TASKS, Category
from .config import (
    DEFAULT_WIDTHS,
    LADDER_LEVELS,
    LADDER_RETRY_COST,
    STEADY_N,
    AllocationMode,
    Attempt,
    CategoryConfig,
    denoise_cores,
)
from .exhaustion import MAX_EXHAUSTIONS, Decision, GiveUp, after_exhaustion
from .histogram import Histogram, max_throughput, min_waste
from .ladder import LADDER_RESOLUTION, optimal_ladder
from .strategy import Shared, Strategy

__all__ = [
    "DEFAULT_WIDTHS",
    "LADDER_LEVELS",
    "LADDER_RESOLUTION",
    "LADDER_RETRY_COST",
    "MAX_BUCKETS",
    "MAX_EXHAUSTIONS",
    "SAMPLING_DEFAULT",
    "SAMPLING_POINTS",
    "STEADY_N",
    "STRATEGIES",
    "WALL_EMA_WEIGHT",
    "WALL_MIN_TASKS",
    "AllocationMode",
    "Attempt",
    "BucketCache",
    "Buckets",
    "Category",
    "CategoryConfig",
    "Decision",
    "GiveUp",
    "Histogram",
    "Pool",
    "Shared",
    "Strategy",
    "after_exhaustion",
    "denoise_cores",
    "exhaustive_buckets",
    "greedy_buckets",
    "max_throughput",
    "min_waste",
    "optimal_ladder",
]
