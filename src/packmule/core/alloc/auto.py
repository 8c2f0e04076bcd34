"""The ``auto`` mode (the default of autolabel): optimal ladders that follow the workload.

Per learned resource, a category keeps the peaks of its completed tasks on a
geometric grid (:data:`RESOLUTION`), weighted by wall time, in several copies
that forget at different rates (:data:`HALF_LIVES`: never, and after about
400, 100 and 30 completions). From each copy it computes the optimal ladder
of allocation levels (:func:`ladder_levels`, exact, any number of levels): a
task runs at the first level, and after an exhaustion at the first level
above what it was seen to use. Since a completed task's true peak is known,
what each copy's ladder *would* have charged for it is known exactly; new
tasks use the copy with the lowest recent cost (:data:`SELECTION_HALF_LIFE`),
so a stationary workload keeps its whole history and a shifting one is
followed within tens of tasks.

Cold start never takes the whole worker. A category with no completions starts
from its ``first_guess`` if it has one (doubling what is exceeded), else uses
the ladder of every ``auto`` category's peaks pooled (:class:`Pool`; one per
manager or simulation), and mixes that pool into its own distribution while
it has few tasks (weight :data:`PRIOR_WEIGHT` / (n + :data:`PRIOR_WEIGHT`)).
The very first category probes: :data:`PROBE` (1 core, 1,000 MB, 1,000 MB),
doubling on each exhaustion, up to the worker. Above a ladder's top a retry
climbs :data:`BEYOND` (1.25x, 2.5x, 10x the top), then the worker.

Memory is the resource laddered finely; cores and disk carry a high price per
retry (:data:`RETRY_COST`), since exhausting either wastes a whole attempt of
every resource: their ladders are in effect "the largest peak seen". GPUs are
not learned (workers do not measure them): the task's or the category's value,
else the box rule's share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence, Set

from ...resources import FIELDS
from .config import GPUS, Vals
from .strategy import Shared

__all__ = [
    "BEYOND",
    "BEYOND_BASE",
    "HALF_LIVES",
    "PROBE",
    "RETRY_COST",
    "AutoStrategy",
    "Pool",
    "ladder_levels",
]

#: Relative width of the grid cells peaks are grouped in (2 %); a candidate level is
#: the largest peak of its cell. (Finer grids fit the past closer and the future no
#: better: 0.5 % cost 2.8x the time per completion for 0.0003 less efficiency.)
RESOLUTION = 0.02
#: The copies' half-lives in completions (None: never forgets).
HALF_LIVES: tuple[int | None, ...] = (None, 400, 100, 30)
#: Half-life (completions) of the cost each copy's ladder would have charged.
SELECTION_HALF_LIFE = 30
#: A copy that forgets faster must be this much cheaper (per step of the list) to be used:
#: on a stationary workload the one that keeps everything is the least noisy.
SELECTION_MARGIN = 0.02
#: Price of one retry in the ladder's objective, per resource (cores, memory, disk, gpus),
#: as a fraction of the mean peak x the task's time, on top of the failed attempt's charge.
RETRY_COST = (2.0, 0.3, 2.0, 2.0)
#: Levels above the ladder's top, as factors of the top (then the worker).
BEYOND = (1.25, 2.5, 10.0)
#: The cold-start probe per resource (cores, memory MB, disk MB, gpus), doubled on each
#: exhaustion up to the worker. (GPUs are not learned: workers do not measure them.)
PROBE = (1, 1000, 1000, 0)
#: The least base of the levels above a ladder's top (cores, MB, MB, gpus): tasks that
#: used nothing measurable (a top of 0 or 1 MB) must not make every level above it 1 MB,
#: which would send the next retry to the whole worker.
BEYOND_BASE = (1, 100, 100, 0)
#: A category's own distribution is mixed with the pool's with weight n / (n + this).
PRIOR_WEIGHT = 3.0
#: The pool is summarised in at most this many points (quantiles of its mass) ...
POOL_POINTS = 64
#: ... renewed when its peaks have grown by this fraction.
POOL_REFRESH = 0.05
#: Past this many completions of its own, a category no longer looks at the pool.
PRIOR_UNTIL = 60
#: A copy's ladder is recomputed after this fraction of min(n, half-life) new completions.
REFRESH = 0.1
#: ... but, past the first tasks, after at least this many (a refit costs O(grid cells)).
REFIT_MIN = 4
#: A cell whose decayed weight is below this fraction of the total is dropped.
NEGLIGIBLE = 1e-4

_LOG_STEP = math.log1p(RESOLUTION)
_Dist = tuple[list[float], list[float], float]
"""A distribution: values ascending, their weights, the weight beyond every value."""


def _cell(value: float) -> int:
    return 0 if value <= 1 else math.ceil(math.log(value) / _LOG_STEP - 1e-9)


def ladder_levels(values: Sequence[float], weights: Sequence[float],
                  retry_cost: float = 0.0, beyond: float = 0.0) -> list[float]:
    """The ladder of least expected charge over a distribution, with as many levels as pay.

    ``values`` (ascending) are the candidate levels and ``weights`` the mass of
    the peaks at each. A task of peak v tries a_1, a_2, ... until a_j >= v,
    each attempt charged its level (a failed attempt wholly) plus ``retry_cost``
    per retry; ``beyond`` is the mass of tasks that fit no level (they climb them
    all). With S_j the mass above candidate j and T the total, the cost of a
    ladder ending at candidate i is f(i) = min(v_i T, min_{j<i} f(j) + (v_i +
    retry_cost) S_j): for fixed j a line in v_i with slope S_j, slopes falling and
    queries rising, so a monotone convex hull of lines solves it in O(n). The
    ladder ends at the largest value.
    """
    n = len(values)
    if n == 0:
        return []
    above = [0.0] * n
    acc = beyond
    for i in range(n - 1, -1, -1):
        above[i] = acc
        acc += weights[i]
    # the hull of lines slope x + icept, by candidate (-1: no level yet, every task tries
    # the next); slopes fall, so a line's turn as the lowest ends for good
    slopes = [acc]
    icepts = [0.0]
    ids = [-1]
    head = 0
    parent = [0] * n
    for i, x in enumerate(values):
        last = len(slopes) - 1
        best = slopes[head] * x + icepts[head]
        while head < last:
            nxt = slopes[head + 1] * x + icepts[head + 1]
            if nxt > best:
                break
            head += 1
            best = nxt
        parent[i] = ids[head]
        s3 = above[i]
        b3 = best + retry_cost * s3
        # drop the last line while the new one overtakes the one before it no later
        while len(slopes) - head >= 2:
            s1, b1, s2, b2 = slopes[-2], icepts[-2], slopes[-1], icepts[-1]
            if (b3 - b1) * (s1 - s2) <= (b2 - b1) * (s1 - s3):
                slopes.pop()
                icepts.pop()
                ids.pop()
            else:
                break
        slopes.append(s3)
        icepts.append(b3)
        ids.append(i)
    out = []
    i = n - 1
    while i >= 0:
        out.append(values[i])
        i = parent[i]
    out.reverse()
    return out


def _charge(ladder: Sequence[int], peak: int) -> tuple[float, int]:
    """What ``ladder`` (then :data:`BEYOND`) charges a task of ``peak``: (levels, retries)."""
    total = 0.0
    retries = 0
    for a in ladder:
        total += a
        if a >= peak:
            return total, retries
        retries += 1
    top = ladder[-1] if ladder else 0
    for f in BEYOND:
        a = math.ceil(top * f)
        total += a
        if a >= peak:
            break
        retries += 1
    return total, retries


class _Peaks:
    """Peaks on the grid with weights decaying by 2^(-1/half_life) per addition."""

    __slots__ = ("_growth", "_scale", "beyond", "cells", "half_life", "n")

    def __init__(self, half_life: int | None) -> None:
        self.half_life = half_life
        self._growth = 1.0 if half_life is None else 2.0 ** (1.0 / half_life)
        self._scale = 1.0  # instead of decaying every cell, newer peaks weigh more
        self.cells: dict[int, list[float]] = {}  # cell -> [largest peak, weight]
        #: Weight of the tasks that failed for good above every level.
        self.beyond = 0.0
        self.n = 0

    def add_beyond(self, weight: float) -> None:
        self.beyond += weight * self._scale

    def add(self, value: int, weight: float) -> None:
        if self.half_life is not None:
            self._scale *= self._growth
            if self._scale > 1e6:
                self._rescale()
        slot = self.cells.get(_cell(value))
        w = weight * self._scale
        if slot is None:
            self.cells[_cell(value)] = [float(value), w]
        else:
            slot[0] = max(slot[0], value)
            slot[1] += w
        self.n += 1

    def _rescale(self) -> None:
        total = sum(c[1] for c in self.cells.values())
        self.cells = {k: [c[0], c[1] / self._scale] for k, c in self.cells.items()
                      if c[1] > total * NEGLIGIBLE}
        self.beyond /= self._scale
        self._scale = 1.0

    @property
    def effective(self) -> float:
        """How many completions it effectively remembers."""
        return self.n if self.half_life is None else min(self.n, self.half_life * 1.44)

    def distribution(self) -> _Dist:
        """(values ascending, their weights, the weight beyond), summing to 1; negligible
        cells left out."""
        total = sum(c[1] for c in self.cells.values())
        if total <= 0:
            return [], [], 0.0
        floor = total * NEGLIGIBLE if self.half_life is not None else 0.0
        keys = sorted(k for k, c in self.cells.items() if c[1] > floor)
        kept = sum(self.cells[k][1] for k in keys) + self.beyond
        return ([self.cells[k][0] for k in keys], [self.cells[k][1] / kept for k in keys],
                self.beyond / kept)


def _fit(dist: _Dist, tail_mass: float, retry_cost: float) -> list[int]:
    """The ladder of a distribution, ``tail_mass`` of it above every value seen (a new
    largest peak comes with probability about 1 / (n + 1): it climbs every level)."""
    values, weights, beyond = dist
    if not values:
        return []
    if tail_mass > 0:
        weights = [w * (1.0 - tail_mass) for w in weights]
        beyond = beyond * (1.0 - tail_mass) + tail_mass
    mean = sum(v * w for v, w in zip(values, weights, strict=True))
    return [math.ceil(v) for v in ladder_levels(values, weights, retry_cost * mean, beyond)]


def _mix(own: _Dist, pool: _Dist, share: float) -> _Dist:
    """``share`` of ``own`` and the rest of ``pool``, merged on the grid."""
    cells: dict[int, list[float]] = {}
    for (values, weights, _), part in ((own, share), (pool, 1.0 - share)):
        for v, w in zip(values, weights, strict=True):
            slot = cells.setdefault(_cell(v), [0.0, 0.0])
            slot[0] = max(slot[0], v)
            slot[1] += w * part
    keys = sorted(cells)
    return ([cells[k][0] for k in keys], [cells[k][1] for k in keys],
            own[2] * share + pool[2] * (1.0 - share))


class Pool:
    """Every ``auto`` category's completed peaks, per resource (the cold start's prior).

    What categories read is a summary (:meth:`distribution`): at most
    :data:`POOL_POINTS` points, renewed when the pooled peaks have grown by
    :data:`POOL_REFRESH`, so a new category's first tasks cost little however many
    peaks the pool holds."""

    __slots__ = ("_summaries", "peaks")

    def __init__(self) -> None:
        self.peaks = [_Peaks(None) for _ in FIELDS]
        #: per resource: (peaks counted, the summary, its ladder)
        self._summaries: dict[int, tuple[int, _Dist, list[int]]] = {}

    def add(self, r: int, value: int, weight: float) -> None:
        self.peaks[r].add(value, weight)

    def _summary(self, r: int) -> tuple[_Dist, list[int]]:
        n = self.peaks[r].n
        got = self._summaries.get(r)
        if got is None or n >= got[0] * (1.0 + POOL_REFRESH) + 1:
            dist = _quantiles(self.peaks[r].distribution(), POOL_POINTS)
            got = self._summaries[r] = (n, dist, _fit(dist, 0.0, RETRY_COST[r]))
        return got[1], got[2]

    def distribution(self, r: int) -> _Dist:
        """The pooled peaks of resource ``r``, summarised."""
        return self._summary(r)[0]

    def ladder(self, r: int) -> list[int]:
        """The ladder of the pooled peaks of resource ``r`` ([] before any)."""
        return self._summary(r)[1]


def _quantiles(dist: _Dist, points: int) -> _Dist:
    """At most ``points`` values of ``dist``: each the largest of a slice of 1/points of
    its mass, weighing that slice (the largest value is kept exactly)."""
    values, weights, beyond = dist
    if len(values) <= points:
        return dist
    out_v: list[float] = []
    out_w: list[float] = []
    total = sum(weights)
    step = total / points
    acc = 0.0
    mark = step
    held = 0.0
    for v, w in zip(values, weights, strict=True):
        acc += w
        held += w
        if acc >= mark - 1e-12 * total:
            out_v.append(v)
            out_w.append(held)
            held = 0.0
            while mark <= acc + 1e-12 * total:
                mark += step
    if held > 0:
        out_v.append(values[-1])
        out_w.append(held)
    return out_v, out_w, beyond


class _Copy:
    """One forgetting rate: its peaks, its ladder, and what that ladder would have cost."""

    __slots__ = ("cost", "due", "ladder", "peaks")

    def __init__(self, half_life: int | None) -> None:
        self.peaks = _Peaks(half_life)
        self.ladder: list[int] = []
        self.cost = 0.0
        self.due = 0


class _Learner:
    """One resource of one category: the copies, and which one is used."""

    __slots__ = ("_decay", "copies", "n", "pool", "r", "retry_cost", "used")

    def __init__(self, r: int, pool: Pool | None) -> None:
        self.r = r
        self.pool = pool
        self.retry_cost = RETRY_COST[r]
        self.copies = [_Copy(h) for h in HALF_LIVES]
        self.used = self.copies[0]
        self.n = 0
        self._decay = 2.0 ** (-1.0 / SELECTION_HALF_LIFE)

    def ladder(self) -> list[int]:
        """The ladder in use ([] with nothing learned and nothing pooled)."""
        if self.n == 0:
            return self.pool.ladder(self.r) if self.pool is not None else []
        return self.used.ladder

    def add(self, value: int, weight: float) -> bool:
        """Learn a completion's peak; True when the ladder in use changed."""
        before = self.ladder()
        if self.n:
            for c in self.copies:
                charged, retries = _charge(c.ladder, value)
                price = charged + self.retry_cost * retries * value
                c.cost = c.cost * self._decay + weight * price
        for c in self.copies:
            c.peaks.add(value, weight)
        self.n += 1
        if self.pool is not None:
            self.pool.add(self.r, value, weight)
        self._refit_due()
        return self.used.ladder != before

    def _rank(self, c: _Copy) -> float:
        return c.cost * (1.0 + SELECTION_MARGIN) ** self.copies.index(c)

    def add_beyond(self, weight: float) -> bool:
        """A task failed for good above every level; True when the ladder in use changed."""
        before = self.ladder()
        for c in self.copies:
            c.peaks.add_beyond(weight)
            c.due = self.n  # refit now
        if self.n:
            self._refit_due()
        return self.ladder() != before

    def _refit_due(self) -> None:
        prior = self._prior()
        for c in self.copies:
            if c.due <= self.n:
                self._refit(c, prior)
        self.used = min(self.copies, key=self._rank)

    def _prior(self) -> _Dist | None:
        pool = self.pool
        if pool is None or self.n >= PRIOR_UNTIL or pool.peaks[self.r].n <= self.n:
            return None
        return pool.distribution(self.r)

    def _refit(self, c: _Copy, prior: _Dist | None) -> None:
        own = c.peaks.distribution()
        n = c.peaks.effective
        if prior is not None:
            own = _mix(own, prior, n / (n + PRIOR_WEIGHT))
        c.ladder = _fit(own, 1.0 / (n + 1.0), self.retry_cost)
        h = c.peaks.half_life
        c.due = self.n + max(REFIT_MIN if self.n >= PRIOR_UNTIL else 1,
                             int(min(self.n, h if h is not None else self.n) * REFRESH))

    def half_life(self) -> int | None:
        return self.used.peaks.half_life


def _probe(start: int, top: int) -> list[int]:
    """The cold-start ladder: ``start``, doubling, then ``top``."""
    out = []
    a = start
    while 0 < a < top:
        out.append(a)
        a *= 2
    return [*out, top]


class AutoStrategy:
    """A learner per labelled resource, sharing the manager's (or simulation's) pool."""

    draws_each = False

    def __init__(self, shared: Shared) -> None:
        self._shared = shared
        pool = shared.pool
        guess = shared.config.first_guess
        self._guess = None if guess is None else guess.astuple()
        # GPUs are not measured: a category's GPUs come from its tasks or its max
        self._learners = {r: _Learner(r, pool) for r in shared.labelled if r != GPUS}

    def _levels(self, r: int, worker: Sequence[int]) -> list[int]:
        """The levels a task climbs, in order, ending at the top."""
        sh = self._shared
        top = sh.top(r, worker)
        learner = self._learners[r]
        guess = self._guess[r] if self._guess is not None else None
        ladder = learner.ladder() if learner.n or guess is None else []
        if not ladder:
            start = guess if guess else PROBE[r]
            return [sh.cap(r, a, worker) for a in _probe(start, top)]
        levels = [sh.cap(r, a, worker) for a in ladder]
        # above the top: by factors of it (of BEYOND_BASE at least)
        base = max(ladder[-1], BEYOND_BASE[r])
        levels += [sh.cap(r, base * f, worker) for f in BEYOND]
        return [*levels, top]

    def first(self, worker: Sequence[int]) -> Vals:
        out: Vals = list(self._shared.max)
        for r in self._learners:
            out[r] = self._levels(r, worker)[0]
        return out

    def retry(self, worker: Sequence[int], measured: Sequence[int], exceeded: Set[int]) -> Vals:
        sh = self._shared
        out: Vals = list(sh.max)
        for r in self._learners:
            m = measured[r]
            if r in exceeded and m <= 0:  # exhausted, but no reading: the top is all we know
                out[r] = sh.top(r, worker)
                continue
            levels = self._levels(r, worker)
            out[r] = max(next((a for a in levels if a >= m), levels[-1]), m)
        return out

    def learn(self, measured: Sequence[int], wall: float, exhausted: bool,
              gave_up: bool) -> bool:
        w = max(wall, 1e-3)  # a task of no measurable time still counts, a little
        changed = False
        for r, learner in self._learners.items():
            if not exhausted:
                changed = learner.add(measured[r], w) or changed
            elif gave_up and measured[r] > max(learner.ladder(), default=0):
                changed = learner.add_beyond(w) or changed
        return changed

    def stats(self) -> dict[str, object]:
        return {
            "ladder": {FIELDS[r]: list(s.ladder()) for r, s in self._learners.items()},
            "half_life": {FIELDS[r]: s.half_life() for r, s in self._learners.items()},
        }
