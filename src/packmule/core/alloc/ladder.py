"""The ``ladder`` mode (ours): an optimal ladder of allocation levels.

The levels are computed by dynamic programming from the time-weighted
distribution of measured peaks (:func:`optimal_ladder`); a task starts at the
lowest level, and an exhausted attempt climbs to the next level above what it
was seen to use, not straight to the max.
"""

from __future__ import annotations

import math
from collections.abc import Sequence, Set

from ...resources import FIELDS
from .config import Vals
from .strategy import Shared

__all__ = [
    "LADDER_GROWTH",
    "LADDER_RESOLUTION",
    "LadderStrategy",
    "optimal_ladder",
]

#: Ladder mode: relative resolution of the candidate levels (1 %): peaks are grouped on a
#: geometric grid of this ratio, and a level is the largest peak seen in its group.
LADDER_RESOLUTION = 0.01
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



class LadderStrategy:
    """A ladder per labelled resource."""

    draws_each = False

    def __init__(self, shared: Shared) -> None:
        self._shared = shared
        cfg = shared.config
        self._guess = None if cfg.first_guess is None else cfg.first_guess.astuple()
        self._ladders = {r: _Ladder(cfg.ladder_levels, LADDER_RESOLUTION,
                                    float(cfg.ladder_retry_cost)) for r in shared.labelled}

    def _current(self, state: _Ladder) -> list[int]:
        return state.current() if state.total >= LADDER_COLD_START else []

    def first(self, worker: Sequence[int]) -> Vals:
        sh = self._shared
        out: Vals = list(sh.max)
        for r, state in self._ladders.items():
            ladder = self._current(state)
            guess = self._guess[r] if self._guess is not None else None
            if ladder:
                out[r] = _snap(sh.cap(r, ladder[0], worker), sh.top(r, worker))
            elif guess is not None:  # cold start with a first guess: use it
                out[r] = sh.cap(r, guess, worker)
        return out

    def retry(self, worker: Sequence[int], measured: Sequence[int], exceeded: Set[int]) -> Vals:
        sh = self._shared
        out: Vals = list(sh.max)
        for r, state in self._ladders.items():
            ladder = self._current(state)
            top = sh.top(r, worker)
            m = measured[r]
            higher = [a for a in ladder if a >= m]
            if r in exceeded and m <= 0:  # exhausted, but no reading: the max is all we know
                v = top
            elif higher:
                v = sh.cap(r, higher[0], worker)
            elif ladder and m > 0:
                # above everything seen: grow geometrically, capped at the max/worker
                v = min(top, math.ceil(m * LADDER_GROWTH))
            else:
                v = top
            out[r] = max(_snap(v, top), m)
        return out

    def learn(self, measured: Sequence[int], wall: float, exhausted: bool,
              gave_up: bool) -> bool:
        w = wall if wall > 0 else 1.0
        changed = False
        for r, lad in self._ladders.items():
            if not exhausted:
                lad.add(measured[r], w)
            elif gave_up and measured[r] > lad.max_value():
                # the task failed for good: it climbed every level
                lad.add_beyond(w)
            else:
                continue
            changed = changed or lad.due()
        return changed

    def stats(self) -> dict[str, object]:
        return {"ladder": {FIELDS[r]: list(s.current()) for r, s in self._ladders.items()}}


def _snap(value: int, top: int) -> int:
    """A level within the grid resolution below the top is the top: trying both is waste."""
    return top if top > 0 and value < top and value * (1 + LADDER_RESOLUTION) >= top \
        else value
