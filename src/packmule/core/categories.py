"""Categories: learning each task category's allocation from measurements (pure).

A :class:`Category` takes finished attempts (:meth:`Category.record`) and
answers, for a new attempt, which *request* to hand to the box rule
(:func:`packmule.core.allocation.box`): :meth:`Category.request_for`. It does
no I/O and reads no clock. Everything the Work Queue reference
(``notes/workqueue_reference.md`` sections 2.3, 2.4, 3 and 4) says about
categories is restated here in our own code, with the deviations listed in
``docs/allocation.md``.

Modes (:class:`AllocationMode`):

* ``fixed``: no learning; the task's request (filled by the category max).
* ``max``, ``min_waste``, ``max_throughput``: Work Queue's histogram modes.
  Whole worker until the category is *steady* (``steady_n`` completions
  without a new maximum), then a first allocation computed from
  time-weighted histograms (section 3.3); an exhausted attempt is retried
  at the max (section 2.4).
* ``greedy_bucketing``, ``exhaustive_bucketing``: Phung's probabilistic
  bucketing (section 3.5), with the draw pinned per attempt.
* ``ladder`` (ours): an optimal ladder of allocation levels computed by
  dynamic programming from the time-weighted distribution of measured peaks;
  an exhausted attempt climbs to the next level above what it was seen to
  use, not straight to the max. See :func:`optimal_ladder`.

Units: cores, memory in MB, disk in MB, gpus; all whole numbers. Measured
cores may be fractional; :func:`denoise_cores` turns them into whole cores.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import math
import random
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import mul, sub

from ..resources import FIELDS, Resources

__all__ = [
    "DEFAULT_WIDTHS",
    "LADDER_LEVELS",
    "LADDER_RESOLUTION",
    "MAX_BUCKETS",
    "SAMPLING_DEFAULT",
    "SAMPLING_POINTS",
    "STEADY_N",
    "AllocationMode",
    "Attempt",
    "Category",
    "CategoryConfig",
    "Histogram",
    "denoise_cores",
    "exhaustive_buckets",
    "greedy_buckets",
    "max_throughput",
    "min_waste",
    "optimal_ladder",
]

CORES, MEMORY, DISK, GPUS = range(4)

#: Nothing specified (the default explicit max and min of a category).
UNSET = Resources()

#: Work Queue's histogram bucket widths: cores 1, memory 250 MB, disk 250 MB, gpus 1.
DEFAULT_WIDTHS = Resources._raw(1, 250, 250, 1)
#: Work Queue's ``category-steady-n-tasks``: completions without a new maximum
#: before the learned first allocation is used (Parsl's ``autolabel_window``).
STEADY_N = 25
#: Bucketing's sampling-phase value per resource (cores, memory MB, disk MB, gpus).
#: The 1 core is the box rule's own minimum, so it is passed on as "unspecified":
#: the box then gives max(1, the proportional share), which is exactly what Work
#: Queue's rounded box gives for 1 core.
SAMPLING_DEFAULT = (1, 1000, 1000, 0)
#: Bucketing keeps sampling (default values, x2 on each exhaustion) below this many points.
SAMPLING_POINTS = 10
#: Bucketing's escalation factor outside the buckets.
INCREASE_RATE = 2
#: At most this many buckets (greedy) or bucket counts tried (exhaustive).
MAX_BUCKETS = 10
#: Ladder mode: at most this many learned levels (the machine is the last resort above them).
LADDER_LEVELS = 4
#: Ladder mode: relative resolution of the candidate levels (1 %): peaks are grouped on a
#: geometric grid of this ratio, and a level is the largest peak seen in its group.
LADDER_RESOLUTION = 0.01
#: Ladder mode: the price of one retry in the ladder's objective, as a fraction of the
#: mean peak (x the task's time), on top of the failed attempt's own charge. It stands
#: for what the charging model leaves out (dispatch latency, staging, the other
#: resources the failed attempt held) and keeps the ladder from adding a level that
#: saves almost nothing. 0 minimises waste alone (more levels, many more retries).
LADDER_RETRY_COST = 0.4
#: Ladder mode: above the largest peak seen, a retry asks this factor x the reading
#: (doubling: the classic online strategy for an unknown bound, never more than 4x the
#: optimum in the worst case), capped at the category max or the largest worker.
LADDER_GROWTH = 2.0
#: Ladder mode: the ladder is recomputed when the number of recorded peaks has grown by
#: this factor since the last computation (at least one new peak): about 150
#: computations for 2,000 tasks, O(log n) of them over a category's life.
LADDER_UPDATE_GROWTH = 1.05
#: Attempts recorded before the ladder is trusted; until then new tasks get the whole worker.
LADDER_COLD_START = 1
#: Weight of the newest completion in a category's smoothed wall time: about
#: the last ten tasks count, so a category whose tasks get longer is noticed soon.
WALL_EMA_WEIGHT = 0.1
#: Completions before a category's wall time is trusted (for prefetching).
WALL_MIN_TASKS = 5


def _ints(res: Resources) -> list[int]:
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

_HISTOGRAM_MODES = frozenset(
    {AllocationMode.MAX, AllocationMode.MIN_WASTE, AllocationMode.MAX_THROUGHPUT}
)
_BUCKETING_MODES = frozenset(
    {AllocationMode.GREEDY_BUCKETING, AllocationMode.EXHAUSTIVE_BUCKETING}
)


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


# --------------------------------------------------------------------- histograms
class Histogram:
    """Counts and accumulated wall time per bucket of fixed width.

    A bucket is the interval ((k-1)w, kw], keyed by its upper end kw; the
    value 0 has the key 0. Adding is O(log buckets).
    """

    __slots__ = ("_count", "_time", "keys", "max_value", "n", "total_time", "width")

    def __init__(self, width: int) -> None:
        if width < 1:
            raise ValueError(f"histogram width must be >= 1, got {width}")
        self.width = width
        self._count: dict[int, int] = {}
        self._time: dict[int, float] = {}
        self.keys: list[int] = []
        self.max_value = 0.0
        self.n = 0
        self.total_time = 0.0

    def round_up(self, value: float) -> int:
        """The key of the bucket holding ``value`` (its upper end)."""
        if value <= 0:
            return 0
        return math.ceil(value / self.width - 1e-9) * self.width

    def add(self, value: float, time: float = 1.0) -> None:
        key = self.round_up(value)
        if key in self._count:
            self._count[key] += 1
            self._time[key] += time
        else:
            bisect.insort(self.keys, key)
            self._count[key] = 1
            self._time[key] = time
        self.n += 1
        self.total_time += time
        if value > self.max_value:
            self.max_value = float(value)

    def buckets(self) -> list[tuple[int, int, float]]:
        """(key, count, wall time) per non-empty bucket, ascending."""
        return [(k, self._count[k], self._time[k]) for k in self.keys]


def min_waste(hist: Histogram, top: float) -> int | None:
    """Work Queue's MIN_WASTE first allocation (TPDS 2018, Eq. 1), or None if nothing is known.

    With bucket keys a_i, mean time t = sum(T)/N and R_i = sum_{j>i} T_j / N,
    choose the key a_i >= 1 minimising a_i * t + top * R_i (the smallest wins
    ties), cap it at ``top`` and round it up to the bucket width.
    """
    items = hist.buckets()
    if not items:
        return None
    n = hist.n
    tau = hist.total_time / n
    rest = hist.total_time
    best: int | None = None
    best_cost = math.inf
    for key, _count, t in items:
        rest -= t
        if key < 1:
            continue
        cost = key * tau + top * max(rest, 0.0) / n
        if cost < best_cost:
            best, best_cost = key, cost
    choice = top if best is None else min(best, top)
    return hist.round_up(choice)


def max_throughput(hist: Histogram, top: float) -> int | None:
    """Work Queue's MAX_THROUGHPUT first allocation (TPDS 2018, Eq. 3), or None.

    Choose the key a_i >= 1 maximising ((top / a_i) C_i + N - C_i) / (t + R_i),
    with C_i the tasks at or below a_i (tasks that fit run top/a_i at a time;
    the others once more at ``top`` after their failed attempt). Starts from
    throughput 0 at ``top``; a strictly larger value wins. Capped at ``top``,
    rounded up.
    """
    items = hist.buckets()
    if not items:
        return None
    n = hist.n
    tau = hist.total_time / n
    rest = hist.total_time
    fit = 0
    best: float = top
    best_theta = 0.0
    for key, count, t in items:
        fit += count
        rest -= t
        if key < 1:
            continue
        denom = tau + max(rest, 0.0) / n
        if denom <= 0:
            continue
        theta = ((top / key) * fit + (n - fit)) / denom
        if theta > best_theta:
            best, best_theta = key, theta
    return hist.round_up(min(best, top))


# ---------------------------------------------------------------------- bucketing
Buckets = list[tuple[int, float]]
"""Bucket tops (ascending) and their probabilities."""


class _Points:
    """Measured peaks, sorted, each with its significance (insertion sequence number)."""

    __slots__ = ("_prefix", "fingerprint", "sigs", "svs", "values")

    def __init__(self) -> None:
        self.values: list[int] = []
        self.sigs: list[int] = []
        self.svs: list[int] = []
        self.fingerprint = 0
        self._prefix: tuple[list[int], list[int]] | None = None

    def __len__(self) -> int:
        return len(self.values)

    def add(self, value: int) -> None:
        seq = len(self.values) + 1
        i = bisect.bisect_right(self.values, value)
        self.values.insert(i, value)
        self.sigs.insert(i, seq)
        self.svs.insert(i, seq * value)
        self.fingerprint = hash((self.fingerprint, value))
        self._prefix = None

    def prefix(self) -> tuple[list[int], list[int]]:
        """Prefix sums (leading 0) of significance and significance x value, in value order."""
        if self._prefix is None:
            self._prefix = (list(itertools.accumulate(self.sigs, initial=0)),
                            list(itertools.accumulate(self.svs, initial=0)))
        return self._prefix


def _bucket_probs(values: Sequence[int], sig_prefix: Sequence[int], tops: Iterable[int]) -> Buckets:
    total = sig_prefix[-1]
    out: Buckets = []
    prev = 0
    for top in sorted(set(tops)):
        j = bisect.bisect_right(values, top)
        if j > prev:
            out.append((top, (sig_prefix[j] - sig_prefix[prev]) / total))
            prev = j
    return out


def greedy_buckets(values: Sequence[int], sig_prefix: Sequence[int],
                   max_buckets: int = MAX_BUCKETS) -> Buckets:
    """Phung's greedy bucketing: recursive binary splits of the sorted points, breadth first.

    For a range lo..hi and a break after point i, with p1 the range's
    significance share up to i, the cost of the split is
    p1^2 (b - e_lo) + p1 p2 (m - e_lo) + p2 p1 (b + m - e_hi) + p2^2 (m - e_hi)
    (b = v_i, m = v_hi, e = significance-weighted means). Expanded, this is
    p1 b + m (1 - p1^2) - (the range's weighted mean), so the last index with
    the smallest ``p1 b + m (1 - p1^2)`` is the break; a break at hi stops.
    At most ``max_buckets`` buckets (Work Queue's ``max_num_buckets``).
    """
    n = len(values)
    if n == 0:
        return []
    breaks: list[int] = []
    queue = deque([(0, n - 1)])
    while queue and len(breaks) + 1 < max_buckets:
        lo, hi = queue.popleft()
        m = values[hi]
        if hi <= lo or values[lo] == m:
            continue  # one point, or all equal: one bucket is optimal (cost 0)
        base = sig_prefix[lo]
        size = hi - lo + 1
        inv = 1.0 / (sig_prefix[hi + 1] - base)
        shares = sig_prefix[lo + 1:hi + 2]
        if base:
            shares = list(map(sub, shares, repeat(base, size)))
        q = list(map(mul, shares, repeat(inv, size)))
        # cost - m = q (v - m q); C-level maps: this loop is the simulator's hot spot
        costs = list(map(mul, q, map(sub, values[lo:hi + 1], map(mul, q, repeat(m, size)))))
        best = min(costs)
        i = lo + size - 1 - costs[::-1].index(best)
        if i >= hi:
            continue
        breaks.append(i)
        queue.append((lo, i))
        queue.append((i + 1, hi))
    tops = [values[i] for i in breaks]
    tops.append(values[-1])
    return _bucket_probs(values, sig_prefix, tops)


def _exhaustive_cost(tops: Sequence[float], probs: Sequence[float],
                     means: Sequence[float]) -> float:
    """Expected cost of random bucket picks: sum_i sum_j p_i p_j cost[i][j].

    cost[i][j] = v_j - e_i when bucket j holds the task's bucket i; otherwise
    v_j is wasted and a new pick is drawn among the buckets above j. Computed
    in O(B): for a task in bucket i, X(j) = sum_{k>j} p_k cost[i][k] obeys
    X(j) = X(j+1) (1 + p_{j+1} / P_{j+1}) + p_{j+1} v_{j+1} below i, an affine
    map that does not depend on i, so the row totals compose incrementally.
    """
    b = len(tops)
    # suffix sums: SP[j] = sum_{k>=j} p_k, SV[j] = sum_{k>=j} p_k v_k
    sp = [0.0] * (b + 1)
    sv = [0.0] * (b + 1)
    for j in range(b - 1, -1, -1):
        sp[j] = sp[j + 1] + probs[j]
        sv[j] = sv[j + 1] + probs[j] * tops[j]
    total = 0.0
    mult, add = 1.0, 0.0  # F_i(x) = mult * x + add maps X_i(i-1) to the row total X_i(-1)
    for i in range(b):
        if i > 0:
            # fold in the map for j = i-2 (it uses bucket i-1 and P(i-1) = sum_{k>i-1} p_k)
            p_next = probs[i - 1]
            alpha = 1.0 + p_next / sp[i]
            beta = p_next * tops[i - 1]
            add = mult * beta + add
            mult = mult * alpha
        a_i = sv[i] - means[i] * sp[i]
        total += probs[i] * (mult * a_i + add)
    return total


def exhaustive_buckets(values: Sequence[int], sig_prefix: Sequence[int],
                       sv_prefix: Sequence[int], max_buckets: int = MAX_BUCKETS) -> Buckets:
    """Phung's exhaustive bucketing: the cheapest of up to ``max_buckets`` candidate sets.

    For n = 1..max_buckets the candidate tops are the powers of two
    1, 2, ..., 2^(s-1) with s = max(0, floor(log2(max / n))), then max k / n
    for k = 1..n. Each non-empty candidate is a bucket whose top is its
    largest point. The set with the lowest expected cost of random picks
    (:func:`_exhaustive_cost`) wins; the smallest n wins ties.
    """
    n_pts = len(values)
    if n_pts == 0:
        return []
    vmax = values[-1]
    total_sig = sig_prefix[-1]
    if vmax <= 0 or values[0] == vmax:
        return [(vmax, 1.0)]
    best: Buckets = []
    best_cost = math.inf
    for n in range(1, max_buckets + 1):
        s = max(0, math.floor(math.log2(vmax / n))) if vmax >= n else 0
        cands = [2.0 ** k for k in range(s)] + [vmax * k / n for k in range(1, n + 1)]
        tops: list[int] = []
        probs: list[float] = []
        means: list[float] = []
        prev = 0
        for c in cands:
            j = bisect.bisect_right(values, c)
            if j > prev:
                sig = sig_prefix[j] - sig_prefix[prev]
                tops.append(values[j - 1])
                probs.append(sig / total_sig)
                means.append((sv_prefix[j] - sv_prefix[prev]) / sig)
                prev = j
        cost = _exhaustive_cost(tops, probs, means)
        if cost < best_cost:
            best_cost = cost
            best = list(zip(tops, probs, strict=True))
    return best


def _escalate(value: float, default: int) -> int:
    """The smallest default x 2^k (k >= 0) at least ``value`` (bucketing's exponential rule).

    Work Queue takes the next default x 2^k strictly above the float reading of
    the exhausted attempt; a reading above a limit L is at least L + 1 in whole
    units, so "at least the reading" is the same step (1000 -> 2000 MB,
    1 -> 2 cores).
    """
    out = max(default, 1)
    while out < value:
        out *= INCREASE_RATE
    return out


def _draw(buckets: Buckets, rng: random.Random) -> int:
    total = sum(p for _, p in buckets)
    u = rng.random() * total
    acc = 0.0
    for top, p in buckets:
        acc += p
        if u < acc:
            return top
    return buckets[-1][0]


class _Bucketing:
    """One resource's bucketing state: the points and (cached) buckets."""

    __slots__ = ("_buckets", "_cache", "_greedy", "default", "points")

    def __init__(self, greedy: bool, default: int,
                 cache: dict[tuple[object, ...], Buckets] | None) -> None:
        self._greedy = greedy
        self.default = default
        self.points = _Points()
        self._buckets: Buckets | None = None
        self._cache = cache

    @property
    def sampling(self) -> bool:
        return len(self.points) < SAMPLING_POINTS

    def add(self, value: int) -> None:
        self.points.add(value)
        self._buckets = None

    def buckets(self) -> Buckets:
        if self._buckets is None:
            pts = self.points
            key = (self._greedy, len(pts), pts.fingerprint)
            cached = self._cache.get(key) if self._cache is not None else None
            if cached is None and pts.values[0] == pts.values[-1]:
                cached = [(pts.values[0], 1.0)]  # one value: one bucket, whatever the mode
            if cached is None:
                sig, sv = pts.prefix()
                cached = (greedy_buckets(pts.values, sig) if self._greedy
                          else exhaustive_buckets(pts.values, sig, sv))
                if self._cache is not None:
                    self._cache[key] = cached
            self._buckets = cached
        return self._buckets

    def first(self, rng: random.Random) -> int:
        if self.sampling:
            return self.default
        return _draw(self.buckets(), rng)

    def retry(self, measured: float, exceeded: bool, rng: random.Random) -> int:
        if self.sampling:
            if exceeded:
                return _escalate(measured, self.default)
            return max(math.ceil(measured), self.default)
        higher = [(t, p) for t, p in self.buckets() if t >= measured]
        if not higher:
            return _escalate(measured, self.default)
        return _draw(higher, rng)


# ------------------------------------------------------------------------ ladder
def optimal_ladder(values: Sequence[float], weights: Sequence[float], levels: int,
                   retry_cost: float = 0.0, beyond: float = 0.0) -> list[float]:
    """The ladder a_1 < ... < a_k (k <= ``levels``) of least expected cost; a_k = max(values).

    ``values`` are candidate levels in ascending order (each the largest peak
    of its group) and ``weights`` the time-weighted mass of the tasks whose
    peak falls in that group. A task whose peak is v runs at a_1, and after
    each exhaustion at the next level, until a_j >= v; every attempt is
    charged its level x the task's time (a failed attempt wholly). The
    expected charge is sum_j a_j S(a_{j-1}) (S = the mass above; S(a_0) = all),
    plus ``retry_cost`` per retried mass. ``beyond`` is the mass of tasks
    above every candidate (they never fit and climb the whole ladder).
    Minimised exactly by dynamic programming over the candidates; the cost is
    a Monge array, so each layer is solved by divide and conquer in
    O(n log n).
    """
    n = len(values)
    if n == 0:
        return []
    if n == 1 or levels <= 1:
        return [values[-1]]
    total = float(sum(weights)) + beyond
    above = [0.0] * n  # above[i] = mass strictly above candidate i
    acc = beyond
    for i in range(n - 1, -1, -1):
        above[i] = acc
        acc += weights[i]
    # layer 1: the first level is candidate i, tried by everything
    cost = [v * total for v in values]
    choices: list[list[int]] = []
    best_end = cost[-1]
    best_layers = 1
    inf = math.inf
    for _layer in range(2, levels + 1):
        new = [inf] * n
        arg = [-1] * n
        prev = cost

        def solve(lo: int, hi: int, opt_lo: int, opt_hi: int,
                  prev: list[float] = prev, new: list[float] = new,
                  arg: list[int] = arg) -> None:
            # iterative divide and conquer over i in [lo, hi], optimum i' in [opt_lo, opt_hi]
            stack = [(lo, hi, opt_lo, opt_hi)]
            while stack:
                lo, hi, olo, ohi = stack.pop()
                if lo > hi:
                    continue
                mid = (lo + hi) // 2
                v = values[mid]
                best_c = inf
                best_j = olo
                for j in range(olo, min(ohi, mid - 1) + 1):
                    c = prev[j] + (v + retry_cost) * above[j]
                    if c < best_c:
                        best_c, best_j = c, j
                new[mid] = best_c
                arg[mid] = best_j
                stack.append((lo, mid - 1, olo, best_j))
                stack.append((mid + 1, hi, best_j, ohi))

        solve(1, n - 1, 0, n - 2)
        choices.append(arg)
        cost = new
        if cost[-1] < best_end - 1e-12 * abs(best_end):
            best_end = cost[-1]
            best_layers = _layer
    # walk back from the last candidate through the best number of layers
    ladder = [values[-1]]
    i = n - 1
    for layer in range(best_layers, 1, -1):
        i = choices[layer - 2][i]
        ladder.append(values[i])
    ladder.reverse()
    return ladder


class _Ladder:
    """One resource's ladder state: peaks on a geometric grid, and the current ladder."""

    __slots__ = ("_dirty", "_next_update", "beyond", "cells", "ladder", "levels",
                 "resolution", "retry_cost", "total")

    def __init__(self, levels: int, resolution: float, retry_cost: float) -> None:
        self.levels = levels
        self.resolution = resolution
        self.retry_cost = retry_cost
        self.cells: dict[int, list[float]] = {}  # cell -> [largest peak, weight]
        self.ladder: list[int] = []
        self.total = 0
        self.beyond = 0.0
        self._dirty = False
        self._next_update = 1

    def _cell(self, value: float) -> int:
        if value <= 1:
            return 0
        return math.ceil(math.log(value) / math.log1p(self.resolution) - 1e-9)

    def add(self, value: int, weight: float) -> None:
        cell = self._cell(value)
        slot = self.cells.get(cell)
        if slot is None:
            self.cells[cell] = [float(value), weight]
        else:
            slot[0] = max(slot[0], value)
            slot[1] += weight
        self.total += 1
        self._dirty = True

    def max_value(self) -> float:
        return max((c[0] for c in self.cells.values()), default=0.0)

    def add_beyond(self, weight: float) -> None:
        self.beyond += weight
        self._dirty = True

    def due(self) -> bool:
        """Whether :meth:`current` would compute the ladder anew."""
        return self._dirty and self.total >= self._next_update

    def current(self) -> list[int]:
        """The ladder, recomputed when enough new peaks arrived (every 5 % more, at least 1)."""
        if self._dirty and self.total >= self._next_update:
            keys = sorted(self.cells)
            vals = [self.cells[k][0] for k in keys]
            wts = [self.cells[k][1] for k in keys]
            mean = sum(v * w for v, w in zip(vals, wts, strict=True)) / max(sum(wts), 1e-300)
            self.ladder = [math.ceil(v) for v in
                           optimal_ladder(vals, wts, self.levels, self.retry_cost * mean,
                                          self.beyond)]
            self._dirty = False
            self._next_update = max(self.total + 1, math.ceil(self.total * LADDER_UPDATE_GROWTH))
        return self.ladder


# ---------------------------------------------------------------------- category
_Vals = list[int | None]


class Category:
    """One category's learning state and allocation policy (pure, not thread-safe)."""

    def __init__(self, name: str, config: CategoryConfig | None = None, seed: int = 0, *,
                 bucket_cache: dict[tuple[object, ...], Buckets] | None = None) -> None:
        """``bucket_cache`` may be shared between categories that see the same peaks in
        the same order (simulations over seeds): it only memoises the bucketing."""
        self.name = name
        self.config = config if config is not None else CategoryConfig()
        cfg = self.config
        self.mode = cfg.mode
        self._labelled: tuple[int, ...] = (CORES, MEMORY, DISK) + (
            (GPUS,) if cfg.autolabel_gpus else ())
        self._max = cfg.max.astuple()
        self._min = cfg.min.astuple()
        widths = cfg.widths.astuple()
        self._hist = [Histogram(w or 1) for w in widths]
        self._seen = [0, 0, 0, 0]       # max_resources_seen (every recorded attempt)
        self._peak = [0, 0, 0, 0]       # the largest readings (nothing made up for exhaustion)
        self._done_max = [0, 0, 0, 0]   # largest peak of a normal completion
        self._first: _Vals | None = None
        self._since_reset = 0
        self._steady = False
        if cfg.first_guess is not None:
            self._first = list(cfg.first_guess.astuple())
            self._since_reset = cfg.steady_n
            self._steady = True
        self._tasks = 0
        self._attempts = 0
        self._exhausted = 0
        #: Changes whenever what :meth:`current_allocation` answers may have changed (for a
        #: given largest worker); its last answer is kept with what it depended on.
        self._allocation_epoch = 0
        self._allocation: tuple[int, Resources, Resources | None] | None = None
        self._wall_ema: float | None = None  # normal completions' wall time, smoothed
        self._rng = random.Random(seed)
        self._pins: dict[int, tuple[tuple[object, ...], Resources]] = {}
        self._bucketing: dict[int, _Bucketing] = {}
        if self.mode in _BUCKETING_MODES:
            greedy = self.mode is AllocationMode.GREEDY_BUCKETING
            for r in self._labelled:
                self._bucketing[r] = _Bucketing(greedy, SAMPLING_DEFAULT[r], bucket_cache)
        self._ladders: dict[int, _Ladder] = {}
        if self.mode is AllocationMode.LADDER:
            for r in self._labelled:
                self._ladders[r] = _Ladder(cfg.ladder_levels, LADDER_RESOLUTION,
                                           float(cfg.ladder_retry_cost))

    # ------------------------------------------------------------ queries
    @property
    def steady(self) -> bool:
        return self._steady

    @property
    def draws_each(self) -> bool:
        """Whether each task's first allocation is drawn on its own (bucketing modes): tasks
        with the same request may then get different allocations."""
        return self.mode in _BUCKETING_MODES

    @property
    def first_allocation(self) -> Resources | None:
        """The learned first allocation of the histogram modes (None until computed)."""
        if self._first is None:
            return None
        return Resources(*self._first)

    @property
    def max_seen(self) -> Resources:
        return Resources(*self._seen)

    @property
    def measured_peak(self) -> Resources | None:
        """The largest of each resource read by the worker in any recorded attempt (None
        before the first). Unlike :attr:`max_seen`, an exhausted attempt counts with its
        reading only, not with the "allocation + 1" it is learned from."""
        return Resources(*self._peak) if self._attempts else None

    @property
    def attempts_recorded(self) -> int:
        return self._attempts

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
        bucketing modes, whose draws differ task by task.

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
        if self.mode is AllocationMode.FIXED:
            learned: _Vals = list(self._max)
        elif self.mode in _HISTOGRAM_MODES:
            learned = self._histogram_request(Attempt.FIRST, _ints(largest_worker),
                                              [0, 0, 0, 0], set())
        elif self.mode is AllocationMode.LADDER:
            learned = self._ladder_request(Attempt.FIRST, _ints(largest_worker),
                                           [0, 0, 0, 0], set())
        else:
            return None
        if all(v is None for v in learned):
            return None
        return Resources(*learned)

    def next_label(self, task_request: Resources, measured: Resources) -> Attempt | None:
        """After an exhausted attempt: MAX (retry) or None (Work Queue's ERROR: fail the task)."""
        if self.mode is AllocationMode.FIXED:
            return None
        if self.exceeds_explicit_limit(task_request, measured):
            return None
        return Attempt.MAX

    def exceeds_explicit_limit(self, task_request: Resources, measured: Resources) -> list[str]:
        """Resources whose measured value is above the task's explicit value or, where the
        task gave none, the category's explicit max. The task then fails (no retry)."""
        out = []
        for name, m, want, cap in zip(FIELDS, measured.astuple(), task_request.astuple(),
                                      self._max, strict=True):
            limit = want if want is not None else cap
            if limit is not None and m is not None and m > limit:
                out.append(name)
        return out

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
        Draws of the probabilistic modes are pinned per (task_key, label,
        attempt, measured_before): asking again gives the same answer.
        """
        task = task_request.astuple()
        if self.mode is AllocationMode.FIXED:
            return Resources(*(t if t is not None else c
                               for t, c in zip(task, self._max, strict=True)))
        worker = _ints(largest_worker)
        measured = _ints(measured_before) if measured_before is not None else [0, 0, 0, 0]
        if exceeded is None:
            exc = {r for r in range(4) if (measured[r] or 0) > 0}
        else:
            exc = {FIELDS.index(name) for name in exceeded}
        probabilistic = self.mode in _BUCKETING_MODES
        if probabilistic:
            key: tuple[object, ...] = (label, attempt, tuple(measured), tuple(sorted(exc)))
            pin = self._pins.get(task_key)
            if pin is not None and pin[0] == key:
                return self._merge(task, pin[1].astuple())
        if self.mode in _HISTOGRAM_MODES:
            learned = self._histogram_request(label, worker, measured, exc)
        elif probabilistic:
            learned = self._bucketing_request(label, worker, measured, exc)
        else:
            learned = self._ladder_request(label, worker, measured, exc)
        result = Resources(*learned)
        if probabilistic:
            self._pins[task_key] = (key, result)
        return self._merge(task, learned)

    @staticmethod
    def _merge(task: Sequence[int | None], learned: Sequence[int | None]) -> Resources:
        return Resources(*(t if t is not None else v for t, v in zip(task, learned, strict=True)))

    def _cap(self, r: int, value: float, worker: Sequence[int | None]) -> int:
        """A learned value: at least 1 (cores, memory, disk), at most the explicit max and the
        largest worker, at least the explicit min."""
        v = max(math.ceil(value), 1 if r != GPUS else 0)
        cap = self._max[r]
        if cap is not None:
            v = min(v, cap)
        w = worker[r]
        if w is not None and w > 0:
            v = min(v, w)
        lo = self._min[r]
        if lo is not None:
            v = max(v, lo)
        return v

    def _top(self, r: int, worker: Sequence[int | None]) -> int:
        """The retry of last resort: the explicit max, else the largest worker."""
        cap = self._max[r]
        return cap if cap is not None else (worker[r] or 0)

    def _histogram_request(self, label: Attempt, worker: Sequence[int | None],
                           measured: Sequence[int | None], exc: set[int]) -> _Vals:
        out: _Vals = list(self._max)
        if label is Attempt.FIRST:
            if not self._steady:
                return out  # the whole worker (or the category max)
            for r in self._labelled:
                v = self._first[r] if self._first is not None else None
                if v is None and self.mode is not AllocationMode.MAX and self._seen[r] > 0:
                    v = self._seen[r]
                if v is not None:
                    out[r] = self._cap(r, v, worker)
            return out
        for r in self._labelled:
            top = self._top(r, worker)
            m = measured[r] or 0
            cand: int = top
            if r in exc and m <= 0:
                pass  # exhausted, but no reading: the max is all we know
            elif self._steady and self.mode is not AllocationMode.MAX and self._max[r] is None:
                first = (self._first[r] if self._first is not None else None) or 0
                c = self._cap(r, max(self._done_max[r], first), worker)
                if c >= m:
                    cand = c
            out[r] = max(cand, m)
        return out

    def _bucketing_request(self, label: Attempt, worker: Sequence[int | None],
                           measured: Sequence[int | None], exc: set[int]) -> _Vals:
        out: _Vals = list(self._max)
        for r, state in self._bucketing.items():
            if label is Attempt.FIRST:
                v = state.first(self._rng)
                if r == CORES and state.sampling:
                    continue  # 1 core: left to the box's proportional fill (see SAMPLING_DEFAULT)
            else:
                m = measured[r] or 0
                if r in exc and m <= 0:  # exhausted, but no reading: the max is all we know
                    out[r] = self._top(r, worker)
                    continue
                v = state.retry(m, r in exc, self._rng)
                if r == CORES and state.sampling and v <= SAMPLING_DEFAULT[CORES]:
                    continue
            out[r] = self._cap(r, v, worker)
        return out

    def _ladder_request(self, label: Attempt, worker: Sequence[int | None],
                        measured: Sequence[int | None], exc: set[int]) -> _Vals:
        out: _Vals = list(self._max)
        for r, state in self._ladders.items():
            ladder = state.current() if state.total >= LADDER_COLD_START else []
            top = self._top(r, worker)
            if label is Attempt.FIRST:
                guess = self._first[r] if self._first is not None else None
                if ladder:
                    out[r] = self._snap(self._cap(r, ladder[0], worker), top)
                elif guess is not None:  # cold start with a first guess: use it
                    out[r] = self._cap(r, guess, worker)
                continue
            m = measured[r] or 0
            higher = [a for a in ladder if a >= m]
            if r in exc and m <= 0:  # exhausted, but no reading: the max is all we know
                v = top
            elif higher:
                v = self._cap(r, higher[0], worker)
            elif ladder and m > 0:
                # above everything seen: grow geometrically, capped at the max/worker
                v = min(top, math.ceil(m * LADDER_GROWTH))
            else:
                v = top
            out[r] = max(self._snap(v, top), m)
        return out

    @staticmethod
    def _snap(value: int, top: int) -> int:
        """A level within the grid resolution below the top is the top: trying both is waste."""
        return top if top > 0 and value < top and value * (1 + LADDER_RESOLUTION) >= top \
            else value

    # ------------------------------------------------------------ learning
    def record(self, measured: Resources, wall_time: float, exhausted: bool, *,
               cores: float | None = None, task_key: int | None = None,
               gave_up: bool = False, reading: Resources | None = None) -> None:
        """Account a finished attempt: its measured peaks, wall time (s), and whether it
        exhausted its allocation.

        ``cores`` may give the measured (fractional) cores; it replaces
        ``measured.cores`` after :func:`denoise_cores`. Exhausted attempts only
        raise the maximum seen; only normal completions enter the histograms,
        points and ladders. With ``task_key``, a normal completion also drops
        the task's pinned draw. ``reading`` is what the worker read, when ``measured``
        holds more (an exhausted attempt is learned from as having used at least its
        allocation + 1): only readings enter :attr:`measured_peak`.
        """
        m = _ints(measured)
        if cores is not None:
            m[CORES] = denoise_cores(cores)
        peak = self._peak
        got = m if reading is None else _ints(reading)
        if reading is not None and cores is not None:
            got[CORES] = m[CORES]
        for r in range(4):
            if got[r] > peak[r]:
                peak[r] = got[r]
        self._attempts += 1
        if exhausted:
            self._exhausted += 1
        if self.mode is AllocationMode.FIXED:
            self._record_fixed(m, wall_time, exhausted)
            return
        n = self.config.steady_n
        # 1. a new maximum (while not steady) makes the first allocation obsolete
        if not self._steady:
            for r in self._labelled:
                if self._max[r] is None:
                    h = self._hist[r]
                    if m[r] > h.round_up(h.max_value):
                        self._first = None
                        self._since_reset = 0
                        self._allocation_epoch += 1
                        break
        # 2. steady is judged before this completion is counted
        steady = self._since_reset >= n
        if steady != self._steady:
            self._steady = steady
            self._allocation_epoch += 1
        # 3. every attempt raises the maximum seen
        seen = self._seen
        for r in range(4):
            if m[r] > seen[r]:
                seen[r] = m[r]
                self._allocation_epoch += 1
        if exhausted:
            if gave_up:
                # the task failed for good: it climbed every level (ladder mode learns that)
                w = max(float(wall_time), 0.0) or 1.0
                for r, lad in self._ladders.items():
                    if m[r] > lad.max_value():
                        lad.add_beyond(w)
                        if lad.due():
                            self._allocation_epoch += 1
                if task_key is not None:
                    self.forget(task_key)
            return
        # 4. normal completions are learned from
        wall = self._smooth_wall(wall_time)
        for r in range(4):
            self._hist[r].add(m[r], wall)
            if m[r] > self._done_max[r]:
                self._done_max[r] = m[r]
        self._since_reset += 1
        self._tasks += 1
        if self.mode in _HISTOGRAM_MODES and self._since_reset % n == 0:
            self._update_first()
            self._allocation_epoch += 1
        for r, state in self._bucketing.items():
            state.add(m[r])
        for r, lad in self._ladders.items():
            lad.add(m[r], wall if wall > 0 else 1.0)
            if lad.due():
                self._allocation_epoch += 1
        if task_key is not None:
            self.forget(task_key)

    def _record_fixed(self, m: list[int], wall_time: float, exhausted: bool) -> None:
        """FIXED mode learns nothing: keep the maxima seen and the smoothed wall time only
        (the scheduler's prefetching reads it)."""
        seen, done = self._seen, self._done_max
        for r in range(4):
            if m[r] > seen[r]:
                seen[r] = m[r]
            if not exhausted and m[r] > done[r]:
                done[r] = m[r]
        if not exhausted:
            self._smooth_wall(wall_time)
            self._tasks += 1

    def _smooth_wall(self, wall_time: float) -> float:
        """Fold a normal completion's wall time (floored at 0) into the smoothed one; returns it."""
        wall = max(float(wall_time), 0.0)
        self._wall_ema = wall if self._wall_ema is None else (
            self._wall_ema + WALL_EMA_WEIGHT * (wall - self._wall_ema))
        return wall

    def _update_first(self) -> None:
        first: _Vals = [None, None, None, None]
        for r in self._labelled:
            h = self._hist[r]
            cap = self._max[r]
            top = cap if cap is not None else self._seen[r]
            v: int | None
            if self.mode is AllocationMode.MAX:
                v = h.round_up(self._seen[r] + h.width // 3)
                if cap is not None:
                    v = min(v, cap)
            elif self.mode is AllocationMode.MIN_WASTE:
                v = min_waste(h, top)
            else:
                v = max_throughput(h, top)
            lo = self._min[r]
            if v is not None and lo is not None:
                v = max(v, lo)
            first[r] = v
        self._first = first

    def typical_wall_time(self) -> float | None:
        """Smoothed wall time (s) of normal completions; None before ``WALL_MIN_TASKS`` of them."""
        return self._wall_ema if self._tasks >= WALL_MIN_TASKS else None

    def stats(self) -> dict[str, object]:
        """A JSON-able summary of the category."""
        out: dict[str, object] = {
            "name": self.name,
            "mode": self.mode.value,
            "tasks_recorded": self._tasks,
            "attempts_recorded": self._attempts,
            "exhausted": self._exhausted,
            "steady": self._steady,
            "typical_wall_time_s": self.typical_wall_time(),
            "completions_since_reset": self._since_reset,
            "max_seen": dict(zip(FIELDS, self._seen, strict=True)),
            "first_allocation": (None if self._first is None
                                 else dict(zip(FIELDS, self._first, strict=True))),
            "explicit_max": self.config.max.as_dict(),
            "explicit_min": self.config.min.as_dict(),
        }
        if self._bucketing:
            out["buckets"] = {
                FIELDS[r]: (None if s.sampling else [[t, round(p, 6)] for t, p in s.buckets()])
                for r, s in self._bucketing.items()
            }
        if self._ladders:
            out["ladder"] = {FIELDS[r]: list(s.current()) for r, s in self._ladders.items()}
        return out
