"""Work Queue's histogram modes: ``max``, ``min_waste``, ``max_throughput``.

Whole worker until the category is *steady* (``steady_n`` completions without
a new maximum), then a first allocation computed from time-weighted
histograms (Tovar et al., TPDS 2018; ``notes/workqueue_reference.md``
section 3.3); an exhausted attempt is retried at the max (section 2.4).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence, Set

from ...resources import FIELDS
from .config import AllocationMode, Vals
from .strategy import Shared

__all__ = ["Histogram", "HistogramStrategy", "max_throughput", "min_waste"]


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



class HistogramStrategy:
    """One of the three histogram modes (the config's mode says which)."""

    draws_each = False

    def __init__(self, shared: Shared) -> None:
        self._shared = shared
        cfg = shared.config
        self._mode = cfg.mode
        widths = cfg.widths.astuple()
        self._hist = {r: Histogram(widths[r] or 1) for r in shared.labelled}
        self._done = [0, 0, 0, 0]  # largest peak of a normal completion
        self._first: Vals | None = None
        self._since_reset = 0
        self.steady = False
        if cfg.first_guess is not None:
            self._first = list(cfg.first_guess.astuple())
            self._since_reset = cfg.steady_n
            self.steady = True

    def first(self, worker: Sequence[int]) -> Vals:
        sh = self._shared
        out: Vals = list(sh.max)
        if not self.steady:
            return out  # the whole worker (or the category max)
        for r in sh.labelled:
            v = self._first[r] if self._first is not None else None
            if v is None and self._mode is not AllocationMode.MAX and sh.seen[r] > 0:
                v = sh.seen[r]
            if v is not None:
                out[r] = sh.cap(r, v, worker)
        return out

    def retry(self, worker: Sequence[int], measured: Sequence[int], exceeded: Set[int]) -> Vals:
        """The max; once steady (not in MAX mode), the largest peak completed so far if that
        is at least the reading."""
        sh = self._shared
        out: Vals = list(sh.max)
        for r in sh.labelled:
            top = sh.top(r, worker)
            m = measured[r]
            cand: int = top
            if r in exceeded and m <= 0:
                pass  # exhausted, but no reading: the max is all we know
            elif self.steady and self._mode is not AllocationMode.MAX and sh.max[r] is None:
                first = (self._first[r] if self._first is not None else None) or 0
                c = sh.cap(r, max(self._done[r], first), worker)
                if c >= m:
                    cand = c
            out[r] = max(cand, m)
        return out

    def learn(self, measured: Sequence[int], wall: float, exhausted: bool,
              gave_up: bool) -> bool:
        sh = self._shared
        n = sh.config.steady_n
        changed = False
        # a new maximum (while not steady) makes the first allocation obsolete
        if not self.steady:
            for r, h in self._hist.items():
                if sh.max[r] is None and measured[r] > h.round_up(h.max_value):
                    self._first = None
                    self._since_reset = 0
                    changed = True
                    break
        # steady is judged before this completion is counted
        steady = self._since_reset >= n
        if steady != self.steady:
            self.steady = steady
            changed = True
        if exhausted:
            return changed
        done = self._done
        for r, h in self._hist.items():
            h.add(measured[r], wall)
            if measured[r] > done[r]:
                done[r] = measured[r]
        self._since_reset += 1
        if self._since_reset % n == 0:
            self._update_first()
            changed = True
        return changed

    def _update_first(self) -> None:
        sh = self._shared
        first: Vals = [None, None, None, None]
        for r, h in self._hist.items():
            cap = sh.max[r]
            top = cap if cap is not None else sh.seen[r]
            v: int | None
            if self._mode is AllocationMode.MAX:
                v = h.round_up(sh.seen[r] + h.width // 3)
                if cap is not None:
                    v = min(v, cap)
            elif self._mode is AllocationMode.MIN_WASTE:
                v = min_waste(h, top)
            else:
                v = max_throughput(h, top)
            lo = sh.min[r]
            if v is not None and lo is not None:
                v = max(v, lo)
            first[r] = v
        self._first = first

    def stats(self) -> dict[str, object]:
        return {
            "steady": self.steady,
            "completions_since_reset": self._since_reset,
            "first_allocation": (None if self._first is None
                                 else dict(zip(FIELDS, self._first, strict=True))),
        }
