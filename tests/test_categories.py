"""Categories: Work Queue's allocation modes (notes: workqueue_reference.md 2.3, 2.4, 3, 4.1)
and our ladder mode, as a pure core."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packmule import Resources
from packmule.core.alloc import (
    AllocationMode,
    Attempt,
    Category,
    CategoryConfig,
    Histogram,
    after_exhaustion,
    denoise_cores,
    exhaustive_buckets,
    greedy_buckets,
    max_throughput,
    min_waste,
    optimal_ladder,
)
from packmule.core.alloc.bucketing import _exhaustive_cost
from packmule.core.allocation import box, with_minimum
from packmule.errors import InvalidResources

M = AllocationMode
FIRST, MAX = Attempt.FIRST, Attempt.MAX
#: The worker of cctools' wq_alloc_test.py.
WQ_TEST_WORKER = Resources(4, 2000, 2000, 8)
BIG = Resources(16, 64000, 64000, 0)
NOTHING = Resources()
LEARNING = [m for m in M if m is not M.FIXED]


def steady(cat: Category) -> bool:
    return bool(cat.stats()["steady"])


def first_memory(cat: Category) -> int | None:
    """The memory of the learned first allocation (histogram modes; None until computed)."""
    first = cat.stats()["first_allocation"]
    return None if first is None else first["memory"]  # type: ignore[index]


def fraction(request: Resources, worker: Resources) -> float:
    """The largest fraction of the worker a request asks for (the box rule's p)."""
    return max((v or 0) / (w or 1) for v, w in zip(request.astuple(), worker.astuple(),
                                                   strict=True))


# ------------------------------------------------------------------ modes and config
@pytest.mark.parametrize(("text", "mode"), [
    ("fixed", M.FIXED),
    ("MIN_WASTE", M.MIN_WASTE),
    ("min-waste", M.MIN_WASTE),
    ("WORK_QUEUE_ALLOCATION_MODE_MAX_THROUGHPUT", M.MAX_THROUGHPUT),
    ("VINE_ALLOCATION_MODE_GREEDY_BUCKETING", M.GREEDY_BUCKETING),
    ("max-xput", M.MAX_THROUGHPUT),
    ("Exhaustive_Bucketing", M.EXHAUSTIVE_BUCKETING),
    ("1", M.MAX),
    (" ladder ", M.LADDER),
])
def test_mode_parse(text: str, mode: AllocationMode) -> None:
    assert AllocationMode.parse(text) is mode


def test_unknown_mode_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown allocation mode 'smallest'") as e:
        AllocationMode.parse("smallest")
    for m in M:
        assert m.value in str(e.value)


def test_config_accepts_mode_names_and_dicts() -> None:
    cfg = CategoryConfig(mode="max-xput", max={"memory": 4000})  # type: ignore[arg-type]
    assert cfg.mode is M.MAX_THROUGHPUT
    assert cfg.max == Resources(memory=4000)
    with pytest.raises(ValueError, match="unknown allocation mode"):
        CategoryConfig(mode="bogus")  # type: ignore[arg-type]


def test_config_max_below_min_names_the_resource() -> None:
    with pytest.raises(ValueError, match="memory=1000 is below its min memory=2000"):
        CategoryConfig(max=Resources(memory=1000), min=Resources(cores=1, memory=2000))


def test_config_steady_n_and_negative_values() -> None:
    with pytest.raises(ValueError, match="steady_n"):
        CategoryConfig(steady_n=0)
    with pytest.raises(InvalidResources, match="negative"):
        CategoryConfig(max=Resources(memory=-1))
    assert issubclass(InvalidResources, ValueError)


def test_denoise_cores() -> None:
    assert denoise_cores(1.08) == 1  # Work Queue's example
    assert denoise_cores(1.5) == 2
    assert denoise_cores(2.0) == 2
    assert denoise_cores(0.05) == 0
    assert denoise_cores(0.3) == 1
    cat = Category("c", CategoryConfig(mode=M.MAX))
    cat.record(Resources(1, 100, 100), 1.0, False, cores=3.05)
    assert cat.max_seen.cores == 3


# ------------------------------------------------------------ section 2.3 test vectors
def test_min_waste_with_nothing_known_gets_the_whole_worker() -> None:
    cat = Category("c", CategoryConfig(mode=M.MIN_WASTE))
    req = cat.request_for(NOTHING, FIRST, WQ_TEST_WORKER, 1)
    assert req == NOTHING
    # our box gives the GPUs of a whole worker too (Work Queue's gives 0 GPUs)
    assert box(req, WQ_TEST_WORKER) == WQ_TEST_WORKER


@pytest.mark.parametrize("mode", [M.GREEDY_BUCKETING, M.EXHAUSTIVE_BUCKETING])
def test_bucketing_first_task_gets_half_the_test_worker(mode: AllocationMode) -> None:
    cat = Category("c", CategoryConfig(mode=mode))
    req = cat.request_for(NOTHING, FIRST, WQ_TEST_WORKER, 1)
    assert box(req, WQ_TEST_WORKER) == Resources(2, 1000, 1000, 0)


def test_fixed_category_max_and_min() -> None:
    cat = Category("c", CategoryConfig(max=Resources(1, 2, 3, 4)))
    assert box(cat.request_for(NOTHING, FIRST, WQ_TEST_WORKER, 1), WQ_TEST_WORKER) \
        == Resources(1, 2, 3, 4)
    # proportional: half the memory -> half of each; the category min raises cores and gpus
    cat = Category("c", CategoryConfig(min=Resources(cores=3, gpus=2)))
    req = cat.request_for(Resources(memory=1000), FIRST, WQ_TEST_WORKER, 1)
    assert box(req, WQ_TEST_WORKER) == Resources(2, 1000, 1000, 0)
    assert with_minimum(box(req, WQ_TEST_WORKER), cat.config.min) == Resources(3, 1000, 1000, 2)


@pytest.mark.parametrize(("mode", "share"), [
    (M.MAX, 0.5), (M.MAX_THROUGHPUT, 0.25), (M.MIN_WASTE, 0.25),
])
def test_auto_modes_scenario(mode: AllocationMode, share: float) -> None:
    """cctools' auto_modes.py: worker 4 / 1000 MB / 2000 MB, steady after 1 task; one task
    writes ~800 MB of disk, then 10 tiny tasks. The final allocation is half the worker
    under MAX (disk 800 + 83 -> 1000 MB) and a quarter under MAX_THROUGHPUT and MIN_WASTE
    (every resource in its lowest bucket: 1 core, 250 MB, 250 MB)."""
    worker = Resources(4, 1000, 2000, 0)
    cat = Category("c", CategoryConfig(mode=mode, steady_n=1))
    cat.record(Resources(1, 50, 800), 1.0, False)
    for _ in range(10):
        cat.record(Resources(1, 10, 1), 1.0, False)
    req = cat.request_for(NOTHING, FIRST, worker, 99)
    assert steady(cat)
    assert fraction(req, worker) == share
    if mode is M.MAX:
        assert req == Resources(1, 250, 1000, None)
    else:
        assert req == Resources(1, 250, 250, None)


# ------------------------------------------------------------------ histograms (4.1)
def test_histogram_buckets_are_keyed_by_their_upper_end() -> None:
    h = Histogram(250)
    for v in (0, 1, 250, 251, 1000):
        h.add(v, 2.0)
    assert [(k, c) for k, c, _ in h.buckets()] == [(0, 1), (250, 2), (500, 1), (1000, 1)]
    assert h.round_up(0) == 0 and h.round_up(250) == 250 and h.round_up(250.5) == 500
    assert h.total_time == 10.0 and h.max_value == 1000


def test_tovar_objectives_by_hand() -> None:
    """One task each at 100, 300 and 1000 MB, 1 s each, 50 MB buckets, top 1000:
    waste E(a) = a + 1000 R(a): E(100) = 766.7, E(300) = 633.3, E(1000) = 1000 -> 300;
    throughput ((1000/a) C + N - C) / (1 + R): 12 / 1.667 = 7.2, 7.667 / 1.333 = 5.75,
    3 / 1 = 3 -> 100."""
    h = Histogram(50)
    for v in (100, 300, 1000):
        h.add(v, 1.0)
    assert min_waste(h, 1000) == 300
    assert max_throughput(h, 1000) == 100
    # the same shapes at other widths: answers are rounded up to a bucket
    h = Histogram(250)
    for v in (100, 300, 1000):
        h.add(v, 1.0)
    assert min_waste(h, 1000) == 500  # E(250)=250+667, E(500)=500+333, E(1000)=1000
    # throughput: (4 + 2) / 1.667 = 3.6, (2 * 2 + 1) / 1.333 = 3.75, 3 -> 500
    assert max_throughput(h, 1000) == 500


def test_min_waste_ties_take_the_smallest_and_cap_at_top() -> None:
    # 5 tasks at 500, 5 at 1000: E(500) = 500 + 1000 * 0.5 = E(1000) -> 500
    h = Histogram(50)
    for v in [500] * 5 + [1000] * 5:
        h.add(v, 1.0)
    assert min_waste(h, 1000) == 500
    assert max_throughput(h, 1000) == 500
    # an explicit max below the data caps the answer (then rounds it up to a bucket)
    assert min_waste(h, 420) == 450
    assert min_waste(Histogram(50), 1000) is None


def _tovar_waste(values: list[tuple[int, float]], a: int, top: int) -> float:
    return sum(t * (a - v) if v <= a else t * (a + top - v) for v, t in values)


def _tovar_throughput(values: list[tuple[int, float]], a: int, top: int) -> float:
    tasks = sum(top / a if v <= a else 1.0 for v, _ in values)
    time = sum(t if v <= a else 2 * t for v, t in values)
    return tasks / time


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5000), st.integers(1, 20)), min_size=1, max_size=40),
       st.sampled_from([1, 50, 250]))
def test_objectives_match_tovar_reference_definitions(
        data: list[tuple[int, int]], width: int) -> None:
    """Tovar's FirstAllocation.py defines waste(a) = sum t (a - v) for v <= a and
    t (a + max - v) above, and throughput = tasks / time (fits: max/a tasks in t; the
    rest: 1 task in 2t). Over bucket keys, our choice is optimal for both."""
    h = Histogram(width)
    for v, t in data:
        h.add(v, float(t))
    top = max(v for v, _ in data)
    rounded = [(h.round_up(v), float(t)) for v, t in data]
    keys = [k for k in h.keys if k >= 1]
    best_w = min(_tovar_waste(rounded, k, top) for k in keys)
    got = min_waste(h, top)
    assert got is not None
    assert _tovar_waste(rounded, got, top) <= best_w * (1 + 1e-9) + 1e-9
    best_t = max(_tovar_throughput(rounded, k, top) for k in keys)
    got = max_throughput(h, top)
    assert got is not None
    assert _tovar_throughput(rounded, got, top) >= best_t * (1 - 1e-9)


# -------------------------------------------------------------- steady state and reset
def _feed(cat: Category, values: list[int], exhausted: bool = False) -> None:
    for v in values:
        cat.record(Resources(1, v, 10), 10.0, exhausted)


def test_first_allocation_is_used_after_steady_n_plus_one_results() -> None:
    """With N = 3 the first allocation is computed at the 3rd normal completion and first
    used once the 4th result has been accounted (the 25th / 26th with Work Queue's N)."""
    cat = Category("c", CategoryConfig(mode=M.MIN_WASTE, steady_n=3))
    _feed(cat, [1000, 1000, 1000])
    assert first_memory(cat) == 1000
    assert not steady(cat)
    assert cat.request_for(NOTHING, FIRST, BIG, 1) == NOTHING  # still the whole worker
    _feed(cat, [900])
    assert steady(cat)
    assert cat.request_for(NOTHING, FIRST, BIG, 1).memory == 1000


def test_new_maximum_resets_only_while_not_steady() -> None:
    cat = Category("c", CategoryConfig(mode=M.MIN_WASTE, steady_n=3))
    _feed(cat, [1000, 1000, 1000])
    _feed(cat, [1300])  # a new bucket maximum before steady: start counting again
    assert first_memory(cat) is None
    assert cat.stats()["completions_since_reset"] == 1
    _feed(cat, [1000, 1000])
    assert first_memory(cat) is not None
    _feed(cat, [1000])
    assert steady(cat)
    _feed(cat, [5000])  # steady: new maxima no longer reset anything
    assert steady(cat) and first_memory(cat) is not None
    # a value in the same 250 MB bucket as the maximum is not a new maximum
    cat = Category("c", CategoryConfig(mode=M.MIN_WASTE, steady_n=2))
    _feed(cat, [1010, 1200])
    assert cat.stats()["completions_since_reset"] == 2


def test_explicit_max_disables_the_new_maximum_check_for_its_resource() -> None:
    cat = Category("c", CategoryConfig(mode=M.MAX, steady_n=2, max=Resources(memory=8000)))
    _feed(cat, [1000, 1000, 3000, 7000])
    assert steady(cat)


def test_exhausted_attempts_raise_max_seen_but_not_the_histograms() -> None:
    cat = Category("c", CategoryConfig(mode=M.MAX, steady_n=2))
    _feed(cat, [1000, 1000, 1000])
    _feed(cat, [9000], exhausted=True)
    st_ = cat.stats()
    assert st_["max_seen"] == {"cores": 1, "memory": 9000, "disk": 10, "gpus": 0}
    assert st_["tasks_recorded"] == 3 and st_["exhausted"] == 1
    # MAX mode: round_up(max seen + 250 // 3), recomputed every N completions
    _feed(cat, [1000])
    assert cat.request_for(NOTHING, FIRST, BIG, 1).memory == 9250


def test_first_guess_makes_the_category_steady_at_once() -> None:
    cat = Category("c", CategoryConfig(mode=M.MIN_WASTE, first_guess=Resources(2, 3000, 500)))
    assert steady(cat)
    assert cat.request_for(NOTHING, FIRST, BIG, 1) == Resources(2, 3000, 500, None)
    _feed(cat, [100])
    assert steady(cat)  # a guess stays in force (Work Queue would drop back to unsteady)


# ------------------------------------------------------------------- explicit limits
def test_task_values_always_win_and_are_never_learned() -> None:
    for mode in M:
        cat = Category("c", CategoryConfig(mode=mode, steady_n=1))
        _feed(cat, [1000, 1000, 1000] * 4)
        req = cat.request_for(Resources(memory=123, gpus=1), FIRST, BIG, 1)
        assert req.memory == 123 and req.gpus == 1
        req = cat.request_for(Resources(memory=123), MAX, BIG, 1, Resources(memory=124))
        assert req.memory == 123


def test_learned_values_respect_category_max_min_and_the_worker() -> None:
    cfg = CategoryConfig(mode=M.MIN_WASTE, steady_n=1, max=Resources(disk=50),
                         min=Resources(memory=700))
    cat = Category("c", cfg)
    _feed(cat, [100, 100, 100])
    req = cat.request_for(NOTHING, FIRST, BIG, 1)
    assert req.memory == 700 and req.disk == 50 and req.cores == 1
    small = Resources(1, 400, 400, 0)
    cat = Category("c", CategoryConfig(mode=M.MIN_WASTE, steady_n=1))
    _feed(cat, [900, 900, 900])
    assert cat.request_for(NOTHING, FIRST, small, 1).memory == 400


# ----------------------------------------------------------------- retries at the max
def test_max_label_before_steady_is_the_whole_worker_or_the_category_max() -> None:
    cat = Category("c", CategoryConfig(mode=M.MIN_WASTE, max=Resources(memory=5000)))
    req = cat.request_for(NOTHING, MAX, BIG, 1, Resources(1, 1001, 10))
    assert req == Resources(16, 5000, 64000, None)


def test_steady_min_waste_retries_at_the_largest_peak_then_the_worker() -> None:
    cat = Category("c", CategoryConfig(mode=M.MIN_WASTE, steady_n=2))
    _feed(cat, [1000] * 9 + [6000])
    _feed(cat, [1000] * 2)
    first = cat.request_for(NOTHING, FIRST, BIG, 1).memory
    assert first == 1000
    # exceeded the first allocation: retry at the largest peak completed so far
    assert cat.request_for(NOTHING, MAX, BIG, 1, Resources(1, 1001, 10)).memory == 6000
    # exceeded that too (a new maximum): the whole worker, never creeping up by the reading
    assert cat.request_for(NOTHING, MAX, BIG, 1, Resources(1, 6001, 10)).memory == 64000


@pytest.mark.parametrize("mode", LEARNING)
@pytest.mark.parametrize("peak", [500, 7000, 30000, 63999])
def test_repeated_exhaustion_escalates_until_the_task_fits(mode: AllocationMode,
                                                            peak: int) -> None:
    cat = Category("c", CategoryConfig(mode=mode, steady_n=2), seed=3)
    rng = random.Random(1)
    for _ in range(30):
        cat.record(Resources(4, rng.randint(1000, 3000), 4000), 500.0, False)
    before: list[int] | None = None
    label, allocs = FIRST, []
    for attempt in range(40):
        mb = None if before is None else Resources(*before)
        alloc = box(cat.request_for(NOTHING, label, BIG, 7, mb, attempt=attempt,
                                    exceeded=["memory"]), BIG)
        assert alloc is not None
        allocs.append(alloc.memory or 0)
        if peak <= (alloc.memory or 0):
            break
        decision = after_exhaustion(cat.config, NOTHING, alloc, Resources(4, None, 4000, 0),
                                    ["memory"], BIG, attempt + 1)
        assert decision.give_up is None
        reading = list(decision.used.astuple())
        assert reading == [4, (alloc.memory or 0) + 1, 4000, 0]
        cat.record(decision.used, 500.0, True)
        before = reading if before is None else [max(a, b) for a, b in zip(before, reading,
                                                                            strict=True)]
        label = MAX
    assert peak <= allocs[-1], allocs
    assert allocs[1:] == sorted(set(allocs[1:])), allocs  # strictly increasing retries


@pytest.mark.parametrize("mode", [M.LADDER, M.GREEDY_BUCKETING, M.MIN_WASTE])
def test_an_exhaustion_without_a_reading_goes_to_the_max(mode: AllocationMode) -> None:
    cat = Category("c", CategoryConfig(mode=mode, steady_n=1))
    for v in [1000, 2000, 3000] * 10:
        cat.record(Resources(1, v, 10), 1.0, False)
    req = cat.request_for(NOTHING, MAX, BIG, 1, None, attempt=1, exceeded=["memory"])
    assert req.memory == 64000


# ------------------------------------------------------------------------ bucketing
def _bucket_category(mode: AllocationMode, seed: int = 0) -> Category:
    cat = Category("c", CategoryConfig(mode=mode), seed=seed)
    for v in [1000, 1100, 1200, 8000, 8100, 8200, 8300, 20000, 20500, 21000, 1050, 8150]:
        cat.record(Resources(2, v, 100), 10.0, False)
    return cat


@pytest.mark.parametrize("mode", [M.GREEDY_BUCKETING, M.EXHAUSTIVE_BUCKETING])
def test_bucketing_picks_are_pinned_per_attempt(mode: AllocationMode) -> None:
    cat = _bucket_category(mode)
    tops = {t for t, _ in cat.stats()["buckets"]["memory"]}  # type: ignore[index]
    assert len(tops) >= 2
    seen = set()
    for key in range(60):
        a = cat.request_for(NOTHING, FIRST, BIG, key)
        for _ in range(3):
            assert cat.request_for(NOTHING, FIRST, BIG, key) == a
        assert a.memory in tops
        seen.add(a.memory)
    assert len(seen) >= 2  # the draws really are random
    # a retry is a new attempt with its own pin, above the reading
    r1 = cat.request_for(NOTHING, MAX, BIG, 5, Resources(2, 1201, 100), attempt=1,
                         exceeded=["memory"])
    assert (r1.memory or 0) >= 1201
    assert cat.request_for(NOTHING, MAX, BIG, 5, Resources(2, 1201, 100), attempt=1,
                           exceeded=["memory"]) == r1
    # a normal completion with its task key drops the pin
    cat.record(Resources(2, 900, 100), 10.0, False, task_key=5)
    assert 5 not in cat._pins


def test_bucketing_sampling_phase_doubles_from_the_defaults() -> None:
    cat = Category("c", CategoryConfig(mode=M.GREEDY_BUCKETING))
    first = cat.request_for(NOTHING, FIRST, BIG, 1)
    assert first == Resources(None, 1000, 1000, None)
    assert box(first, BIG) == Resources(1, 1000, 1000, 0)
    retry = cat.request_for(NOTHING, MAX, BIG, 1, Resources(2, 1001, 1000), attempt=1,
                            exceeded=["cores", "memory"])
    assert retry == Resources(2, 2000, 1000, None)
    retry = cat.request_for(NOTHING, MAX, BIG, 1, Resources(3, 4001, 900), attempt=2,
                            exceeded=["cores", "memory"])
    assert retry == Resources(4, 8000, 1000, None)


def _greedy_reference(values: list[int], sigs: list[int], max_buckets: int) -> list[int]:
    """The split rule exactly as described (four-term cost), breadth first."""
    breaks: list[int] = []
    queue = [(0, len(values) - 1)]
    while queue and len(breaks) + 1 < max_buckets:
        lo, hi = queue.pop(0)
        if hi <= lo or values[lo] == values[hi]:
            continue
        tot = sum(sigs[lo:hi + 1])
        m = values[hi]
        best, best_i = math.inf, lo
        for i in range(lo, hi + 1):
            s1 = sum(sigs[lo:i + 1])
            p1 = s1 / tot
            p2 = 1 - p1
            e_lo = sum(s * v for s, v in zip(sigs[lo:i + 1], values[lo:i + 1], strict=True)) / s1
            s2 = tot - s1
            e_hi = (sum(s * v for s, v in zip(sigs[i + 1:hi + 1], values[i + 1:hi + 1],
                                               strict=True)) / s2) if s2 else 0.0
            b = values[i]
            cost = (p1 * p1 * (b - e_lo) + p1 * p2 * (m - e_lo) + p2 * p1 * (b + m - e_hi)
                    + p2 * p2 * (m - e_hi))
            if cost <= best + 1e-9 * abs(best if best != math.inf else 0):
                best, best_i = min(best, cost), i
        if best_i >= hi:
            continue
        breaks.append(best_i)
        queue += [(lo, best_i), (best_i + 1, hi)]
    return sorted({values[i] for i in breaks} | {values[-1]})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 2000), min_size=1, max_size=25), st.integers(2, 10))
def test_greedy_buckets_match_the_described_split_rule(raw: list[int], k: int) -> None:
    order = list(range(1, len(raw) + 1))
    pairs = sorted(zip(raw, order, strict=True), key=lambda p: p[0])
    values = [v for v, _ in pairs]
    sigs = [s for _, s in pairs]
    prefix = list(itertools.accumulate(sigs, initial=0))
    got = greedy_buckets(values, prefix, k)
    assert [t for t, _ in got] == _greedy_reference(values, sigs, k)
    assert math.isclose(sum(p for _, p in got), 1.0)


def _exhaustive_cost_reference(tops: list[int], probs: list[float],
                               means: list[float]) -> float:
    b = len(tops)

    def cost(i: int, j: int) -> float:
        if j >= i:
            return tops[j] - means[i]
        rest = sum(probs[j + 1:])
        return tops[j] + sum(probs[k] / rest * cost(i, k) for k in range(j + 1, b))

    return sum(probs[i] * probs[j] * cost(i, j) for i in range(b) for j in range(b))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 10000), st.floats(0.01, 1.0)), min_size=1,
                max_size=6, unique_by=lambda p: p[0]))
def test_exhaustive_cost_recurrence_matches_the_definition(
        buckets: list[tuple[int, float]]) -> None:
    buckets.sort()
    tops = [t for t, _ in buckets]
    total = sum(p for _, p in buckets)
    probs = [p / total for _, p in buckets]
    means = [t * 0.9 for t in tops]
    assert math.isclose(_exhaustive_cost(tops, probs, means),
                        _exhaustive_cost_reference(tops, probs, means), rel_tol=1e-9,
                        abs_tol=1e-6)


def test_exhaustive_buckets_split_clear_modes() -> None:
    values = sorted([100] * 20 + [10000] * 20)
    sigs = list(range(1, 41))
    prefix = list(itertools.accumulate(sigs, initial=0))
    sv = list(itertools.accumulate((s * v for s, v in zip(sigs, values, strict=True)),
                                   initial=0))
    got = exhaustive_buckets(values, prefix, sv)
    assert [t for t, _ in got] == [100, 10000]
    assert exhaustive_buckets([5, 5, 5], [0, 1, 3, 6], [0, 5, 15, 30]) == [(5, 1.0)]


# --------------------------------------------------------------------------- ladder
def _ladder_cost(ladder: list[float], values: list[float], weights: list[float],
                 retry: float = 0.0) -> float:
    total = 0.0
    for v, w in zip(values, weights, strict=True):
        for j, a in enumerate(ladder):
            total += w * a + (w * retry if j else 0.0)
            if a >= v:
                break
    return total


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 1000), st.integers(1, 9)), min_size=1, max_size=9,
                unique_by=lambda p: p[0]),
       st.integers(1, 4), st.sampled_from([0.0, 50.0]))
def test_optimal_ladder_is_optimal(data: list[tuple[int, int]], levels: int,
                                   retry: float) -> None:
    data.sort()
    values = [float(v) for v, _ in data]
    weights = [float(w) for _, w in data]
    got = optimal_ladder(values, weights, levels, retry)
    assert got[-1] == values[-1] and len(got) <= levels
    assert got == sorted(set(got))
    best = min(
        _ladder_cost([*c, values[-1]], values, weights, retry)
        for k in range(levels)
        for c in itertools.combinations(values[:-1], k)
    )
    assert _ladder_cost(got, values, weights, retry) <= best + 1e-6


def test_ladder_mode_learns_levels_and_climbs_them() -> None:
    cat = Category("c", CategoryConfig(mode=M.LADDER))
    # cold start: the very first task gets the whole worker
    assert cat.request_for(NOTHING, FIRST, BIG, 0) == NOTHING
    rng = random.Random(5)
    for _ in range(400):
        v = rng.choice([rng.randint(7800, 8200), rng.randint(31500, 32500)])
        cat.record(Resources(4, v, 4000), 500.0, False)
    ladder = cat.stats()["ladder"]["memory"]  # type: ignore[index]
    assert len(ladder) >= 2 and 8150 <= ladder[0] <= 8200 and 32400 <= ladder[-1] <= 32500
    first = cat.request_for(NOTHING, FIRST, BIG, 1)
    assert first == Resources(4, ladder[0], 4000, None)
    # exhausted at the first level: the next level up, not the whole machine
    nxt = cat.request_for(NOTHING, MAX, BIG, 1, Resources(4, ladder[0] + 1, 4000))
    assert nxt.memory == ladder[1]
    # above everything seen: double the reading, capped at the worker
    assert cat.request_for(NOTHING, MAX, BIG, 1, Resources(4, 40001, 4000)).memory == 64000
    huge = Resources(16, 128000, 64000, 0)
    assert cat.request_for(NOTHING, MAX, huge, 1,
                           Resources(4, ladder[-1] + 1, 4000)).memory == 2 * ladder[-1] + 2


def test_ladder_config_and_first_guess() -> None:
    with pytest.raises(ValueError, match="ladder_levels"):
        CategoryConfig(mode=M.LADDER, ladder_levels=0)
    with pytest.raises(ValueError, match="ladder_retry_cost"):
        CategoryConfig(mode=M.LADDER, ladder_retry_cost=-1.0)
    cat = Category("c", CategoryConfig(mode=M.LADDER, first_guess=Resources(memory=3000)))
    assert cat.request_for(NOTHING, FIRST, BIG, 0) == Resources(memory=3000)
    # one level only: the ladder is [max seen]
    cat = Category("c", CategoryConfig(mode=M.LADDER, ladder_levels=1))
    for v in [1000] * 50 + [5000] * 50:
        cat.record(Resources(1, v, 10), 1.0, False)
    assert cat.stats()["ladder"]["memory"] == [5000]  # type: ignore[index]
    # no retry price: more levels than with the default price
    rng = random.Random(2)
    peaks = [rng.randint(1000, 30000) for _ in range(500)]
    counts = []
    for price in (0.0, 0.4):
        cat = Category("c", CategoryConfig(mode=M.LADDER, ladder_retry_cost=price))
        for v in peaks:
            cat.record(Resources(1, v, 10), 1.0, False)
        counts.append(len(cat.stats()["ladder"]["memory"]))  # type: ignore[index]
    assert counts[0] > counts[1] >= 1


def test_ladder_counts_tasks_that_never_fit() -> None:
    cat = Category("c", CategoryConfig(mode=M.LADDER))
    for v in [1000] * 50 + [5000] * 50:
        cat.record(Resources(1, v, 10), 1.0, False)
    assert len(cat.stats()["ladder"]["memory"]) == 2  # type: ignore[index]
    for _ in range(200):  # many tasks larger than any worker: they climb every level
        cat.record(Resources(1, 64001, 10), 1.0, True, gave_up=True)
    for v in [1000] * 10:
        cat.record(Resources(1, v, 10), 1.0, False)
    assert cat.stats()["ladder"]["memory"] == [5000]  # type: ignore[index]


# ---------------------------------------------------------------------------- stats
@pytest.mark.parametrize("mode", list(M))
def test_stats_are_json(mode: AllocationMode) -> None:
    cat = Category("c", CategoryConfig(mode=mode, steady_n=2))
    for v in range(1000, 13000, 1000):
        cat.record(Resources(1, v, 10), 1.0, False)
    cat.record(Resources(1, 99999, 10), 1.0, True)
    s = json.loads(json.dumps(cat.stats()))
    assert s["mode"] == mode.value
    assert s["tasks_recorded"] == 12 and s["exhausted"] == 1
    assert s["max_seen"]["memory"] == 99999
    assert {"explicit_max", "explicit_min", "typical_wall_time_s"} <= set(s)
    own = {"steady", "first_allocation", "buckets", "ladder", "half_life"} & set(s)
    assert own == {M.FIXED: set(), M.GREEDY_BUCKETING: {"buckets"},
                   M.EXHAUSTIVE_BUCKETING: {"buckets"},
                   M.LADDER: {"ladder"}, M.AUTO: {"ladder", "half_life"}}.get(
                       mode, {"steady", "first_allocation"})


# ------------------------------------------------------------- the allocation now
@settings(max_examples=60, deadline=None)
@given(mode=st.sampled_from([M.FIXED, M.MAX, M.MIN_WASTE, M.MAX_THROUGHPUT, M.LADDER]),
       records=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 20_000),
                                  st.booleans(), st.booleans()), max_size=80),
       guess=st.booleans())
def test_current_allocation_changes_only_with_its_epoch(
        mode: AllocationMode, records: list[tuple[int, int, bool, bool]],
        guess: bool) -> None:
    """The answer is kept between changes of ``allocation_epoch`` (and of the largest
    worker): kept, it is always what computing it afresh gives."""
    cfg = CategoryConfig(mode=mode, steady_n=3, max=Resources(disk=500),
                         first_guess=Resources(cores=1, memory=700) if guess else None)
    cat = Category("c", cfg)
    small = Resources(4, 8000, 8000, 0)
    for cores, memory, exhausted, gave_up in records:
        epoch = cat.allocation_epoch
        before = cat.current_allocation(BIG)
        cat.record(Resources(cores, memory, 10), 1.0, exhausted,
                   gave_up=exhausted and gave_up)
        if cat.allocation_epoch == epoch:
            assert cat._first_allocation(BIG) == before
        assert cat.current_allocation(BIG) == cat._first_allocation(BIG)
        assert cat.current_allocation(small) == cat._first_allocation(small)
    if mode is M.FIXED:  # nothing learned: the task's request or the category max
        assert cat.current_allocation(BIG) == Resources(disk=500)


def test_the_measured_peak_leaves_out_what_exhaustion_makes_up() -> None:
    cat = Category("c", CategoryConfig(mode=M.MAX, steady_n=2))
    assert cat.measured_peak is None
    cat.record(Resources(1, 900, 10), 1.0, False)
    # Exhausted at 1000 MB with a reading of 950: learned as 1001, read as 950.
    cat.record(Resources(1, 1001, 10), 1.0, True, reading=Resources(1, 950, 10), cores=0.8)
    assert cat.max_seen.memory == 1001
    assert cat.measured_peak == Resources(1, 950, 10, 0)
