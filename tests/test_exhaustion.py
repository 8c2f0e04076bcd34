"""After an exhaustion: retry bigger, or fail and why (core/alloc/exhaustion.py), as the
scheduler and the simulator use it."""

from __future__ import annotations

import pytest

from packmule import Resources
from packmule.core.alloc import (
    MAX_EXHAUSTIONS,
    STRATEGIES,
    AllocationMode,
    Attempt,
    Category,
    CategoryConfig,
    GiveUp,
    after_exhaustion,
)
from packmule.core.alloc.exhaustion import exceeds_explicit_limit
from packmule.core.scheduler import ManagerState
from packmule.core.states import Failure, Outcome, Verdict
from packmule.sim.alloc import TraceTask, simulate

M = AllocationMode
NOTHING = Resources()
WORKER = Resources(4, 4000, 4000, 0)
HALF = Resources(2, 2000, 2000, 0)
CFG = CategoryConfig(mode=M.MAX)


def test_every_mode_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(M)


def test_a_retry_learns_each_exceeded_resource_as_at_least_its_allocation_plus_one() -> None:
    d = after_exhaustion(CFG, NOTHING, HALF, Resources(1, 1500, 10, 0), ["memory"], WORKER, 1)
    assert d.give_up is None and d.used == Resources(1, 2001, 10, 0)
    # a reading above the limit is kept; no reading at all is the allocation + 1
    d = after_exhaustion(CFG, NOTHING, HALF, Resources(1, 2600, 10, 0), ["memory"], WORKER, 1)
    assert d.used == Resources(1, 2600, 10, 0)
    d = after_exhaustion(CFG, NOTHING, HALF, None, ["memory", "disk"], WORKER, 1)
    assert d.give_up is None and d.used == Resources(None, 2001, 2001, None)


def test_it_fails_when_it_had_the_largest_workers_worth_of_something_it_exceeded() -> None:
    full_memory = Resources(2, 4000, 2000, 0)
    d = after_exhaustion(CFG, NOTHING, full_memory, None, ["memory"], WORKER, 1)
    assert d.give_up is GiveUp.LARGEST and d.used.memory == 4001
    # one exceeded resource at the largest worker is enough: no retry gives it more
    d = after_exhaustion(CFG, NOTHING, full_memory, None, ["cores", "memory"], WORKER, 1)
    assert d.give_up is GiveUp.LARGEST
    assert after_exhaustion(CFG, NOTHING, full_memory, None, ["cores"], WORKER, 1).give_up \
        is None


def test_it_fails_over_an_explicit_limit_of_the_task_or_the_category() -> None:
    cfg = CategoryConfig(mode=M.MAX_THROUGHPUT, max=Resources(disk=500))
    assert exceeds_explicit_limit(Resources(memory=1000), cfg.max, Resources(1, 1500, 10)) \
        == ["memory"]
    assert exceeds_explicit_limit(NOTHING, cfg.max, Resources(1, 1500, 600)) == ["disk"]
    # the task's own value is its limit, even above the category max
    assert exceeds_explicit_limit(Resources(disk=700), cfg.max, Resources(1, 1500, 600)) == []
    alloc = Resources(1, 1000, 500, 0)
    d = after_exhaustion(cfg, NOTHING, alloc, Resources(1, 900, 600, 0), ["disk"], WORKER, 1)
    assert d.give_up is GiveUp.EXPLICIT
    d = after_exhaustion(cfg, Resources(memory=1000), alloc, None, ["memory"], WORKER, 1)
    assert d.give_up is GiveUp.EXPLICIT
    # only what it exceeded counts: a reading above a limit it was not killed for does not
    d = after_exhaustion(cfg, NOTHING, alloc, Resources(1, 900, 600, 0), ["cores"], WORKER, 1)
    assert d.give_up is None
    # the largest worker is checked first (the simulator counts those as unrunnable)
    cfg = CategoryConfig(mode=M.MAX, max=Resources(memory=4000))
    d = after_exhaustion(cfg, NOTHING, Resources(1, 4000, 10, 0), None, ["memory"], WORKER, 1)
    assert d.give_up is GiveUp.LARGEST


def test_it_fails_after_too_many_exhaustions() -> None:
    args = (CFG, NOTHING, HALF, None, ["memory"], WORKER)
    assert after_exhaustion(*args, MAX_EXHAUSTIONS).give_up is None
    assert after_exhaustion(*args, MAX_EXHAUSTIONS + 1).give_up is GiveUp.TOO_MANY


def test_fixed_retries_what_it_exceeded_at_the_largest_worker() -> None:
    """Nothing is learned in FIXED mode: an exceeded resource the task did not specify is
    retried with the largest worker's worth; the rest is left to the box rule."""
    cat = Category("f", CategoryConfig(max=Resources(disk=100)))
    req = cat.request_for(Resources(cores=1), Attempt.MAX, WORKER, 1, Resources(1, 2001, 50),
                          attempt=1, exceeded=["memory"])
    assert req == Resources(1, 4000, None, None)
    assert cat.request_for(Resources(cores=1), Attempt.FIRST, WORKER, 1) \
        == Resources(1, None, 100, None)


@pytest.mark.parametrize("mode", [M.FIXED, M.MAX, M.LADDER])
def test_the_scheduler_retries_bigger_then_fails_at_the_largest_worker(
        mode: AllocationMode) -> None:
    s = ManagerState(validate=True, default_category=CategoryConfig(mode=mode))
    s.add_worker("w", WORKER, 0.0)
    s.submit(1, Resources(cores=1, memory=1000), 0.0)
    (a,) = s.schedule(0.0)
    assert a.allocation.disk == 1000  # the box rule's share
    ruling = s.result(1, a.attempt, Outcome.EXHAUSTED, 1.0, "w", exceeded=["disk"],
                      measured=Resources(1, 500, 1200, 0))
    assert ruling.verdict is Verdict.RETRY
    (b,) = s.schedule(1.0)
    assert b.allocation.disk == 4000 and b.allocation.memory == 1000
    ruling = s.result(1, b.attempt, Outcome.EXHAUSTED, 2.0, "w", exceeded=["disk"])
    assert (ruling.verdict, ruling.failure) == (Verdict.FAILED, Failure.EXHAUSTED)


def test_the_scheduler_fails_a_task_over_its_own_value() -> None:
    s = ManagerState(validate=True, default_category=CategoryConfig(mode=M.MAX))
    s.add_worker("w", WORKER, 0.0)
    s.submit(1, Resources(cores=1, memory=1000), 0.0)
    (a,) = s.schedule(0.0)
    ruling = s.result(1, a.attempt, Outcome.EXHAUSTED, 1.0, "w", exceeded=["memory"])
    assert (ruling.verdict, ruling.failure) == (Verdict.FAILED, Failure.EXHAUSTED)


def test_the_simulator_counts_only_tasks_past_the_machine_as_unrunnable() -> None:
    """Machine 2 cores / 1000 MB; MAX mode retries at the whole machine. A task of 1500 MB
    fails there (unrunnable); one of 900 MB under a category max of 800 MB fails over the
    explicit limit (not unrunnable)."""
    machine = Resources(2, 1000, 1000, 0)
    tasks = [TraceTask("big", (1, 1500, 10, 0), 1.0)]
    r = simulate(tasks, CategoryConfig(mode=M.MAX), machine)
    assert (r["failed"], r["unrunnable"], r["attempts"]) == (1, 1, 1)
    tasks = [TraceTask("capped", (1, 900, 10, 0), 1.0)]
    r = simulate(tasks, CategoryConfig(mode=M.MAX, max=Resources(memory=800)), machine)
    assert (r["failed"], r["unrunnable"], r["attempts"]) == (1, 0, 1)
