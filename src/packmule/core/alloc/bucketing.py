"""Phung's probabilistic bucketing (``greedy_bucketing``, ``exhaustive_bucketing``).

Measured peaks, each weighted by its significance (insertion order), are
split into buckets; a task draws a bucket at random, with the draw pinned per
attempt (``notes/workqueue_reference.md`` section 3.5). Below
:data:`SAMPLING_POINTS` points a task gets fixed defaults, doubled on each
exhaustion.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections import deque
from collections.abc import Iterable, Sequence, Set
from itertools import repeat
from operator import mul, sub

from ...resources import FIELDS
from .config import CORES, AllocationMode, Vals
from .strategy import Shared

__all__ = [
    "MAX_BUCKETS",
    "SAMPLING_DEFAULT",
    "SAMPLING_POINTS",
    "BucketCache",
    "BucketingStrategy",
    "Buckets",
    "exhaustive_buckets",
    "greedy_buckets",
]

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


Buckets = list[tuple[int, float]]
"""Bucket tops (ascending) and their probabilities."""
BucketCache = dict[tuple[object, ...], Buckets]
"""Memoised buckets, shared by categories that see the same peaks in the same order."""


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
                 cache: BucketCache | None) -> None:
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



class BucketingStrategy:
    """Greedy or exhaustive bucketing (the config's mode says which), per labelled resource."""

    draws_each = True

    def __init__(self, shared: Shared) -> None:
        self._shared = shared
        self._rng = random.Random(shared.seed)
        greedy = shared.config.mode is AllocationMode.GREEDY_BUCKETING
        self._states = {r: _Bucketing(greedy, SAMPLING_DEFAULT[r], shared.bucket_cache)
                        for r in shared.labelled}

    def first(self, worker: Sequence[int]) -> Vals:
        sh = self._shared
        out: Vals = list(sh.max)
        for r, state in self._states.items():
            v = state.first(self._rng)
            if r == CORES and state.sampling:
                continue  # 1 core: left to the box's proportional fill (see SAMPLING_DEFAULT)
            out[r] = sh.cap(r, v, worker)
        return out

    def retry(self, worker: Sequence[int], measured: Sequence[int], exceeded: Set[int]) -> Vals:
        sh = self._shared
        out: Vals = list(sh.max)
        for r, state in self._states.items():
            m = measured[r]
            if r in exceeded and m <= 0:  # exhausted, but no reading: the max is all we know
                out[r] = sh.top(r, worker)
                continue
            v = state.retry(m, r in exceeded, self._rng)
            if r == CORES and state.sampling and v <= SAMPLING_DEFAULT[CORES]:
                continue
            out[r] = sh.cap(r, v, worker)
        return out

    def learn(self, measured: Sequence[int], wall: float, exhausted: bool,
              gave_up: bool) -> bool:
        if not exhausted:
            for r, state in self._states.items():
                state.add(measured[r])
        return False  # each task draws anew: there is no current allocation to change

    def stats(self) -> dict[str, object]:
        return {"buckets": {
            FIELDS[r]: (None if s.sampling else [[t, round(p, 6)] for t, p in s.buckets()])
            for r, s in self._states.items()
        }}
