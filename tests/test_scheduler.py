"""The pure core: task state machine, packing, requeues; no sockets, no clock."""

from __future__ import annotations

import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from packmule import Resources
from packmule.core import workers as workers_module
from packmule.core.alloc import WALL_MIN_TASKS, AllocationMode, CategoryConfig
from packmule.core.allocation import box
from packmule.core.scheduler import MAX_REQUEUES, PREFETCH_WALL_TIME, ManagerState
from packmule.core.states import Failure, InvalidTransition, Outcome, Ruling, TaskState, Verdict
from packmule.core.workers import WorkerRecord

from .reference_scheduler import brute_best_fit, brute_closest, brute_prefetch, reference_pass

TWO = Resources(2, 2000, 2000, 0)


def state_with_workers(*sizes: Resources) -> ManagerState:
    s = ManagerState(validate=True)
    for i, size in enumerate(sizes):
        s.add_worker(f"w{i}", size, now=0)
    return s


def test_one_core_tasks_pack_two_per_two_core_worker() -> None:
    s = state_with_workers(TWO, TWO)
    for i in range(6):
        s.submit(i, Resources(cores=1), now=0)
    out = s.schedule(now=1)
    assert len(out) == 4
    assert sorted(a.worker for a in out) == ["w0", "w0", "w1", "w1"]
    assert all(a.allocation == Resources(1, 1000, 1000, 0) for a in out)
    assert s.counts()["waiting"] == 2
    assert s.schedule(now=2) == []  # full


def test_two_core_task_waits_for_a_whole_worker() -> None:
    s = state_with_workers(TWO)
    s.submit(1, Resources(cores=1), now=0)
    (a,) = s.schedule(now=0)
    s.submit(2, Resources(cores=2), now=0)
    assert s.schedule(now=1) == []
    assert s.result(1, a.attempt, Outcome.SUCCEEDED, now=2).verdict is Verdict.DONE
    (b,) = s.schedule(now=3)
    assert b.task_id == 2 and b.allocation == TWO


def test_no_request_takes_the_whole_worker() -> None:
    s = state_with_workers(TWO)
    s.submit(1, Resources(), now=0)
    s.submit(2, Resources(), now=0)
    (a,) = s.schedule(now=0)
    assert a.allocation == TWO


def test_higher_priority_first_then_fifo() -> None:
    s = state_with_workers(Resources(1, 100, 100, 0))
    s.submit(1, Resources(cores=1), now=0, priority=0)
    s.submit(2, Resources(cores=1), now=0, priority=5)
    s.submit(3, Resources(cores=1), now=0, priority=5)
    order = []
    for t in range(3):
        (a,) = s.schedule(now=t)
        order.append(a.task_id)
        s.result(a.task_id, a.attempt, Outcome.SUCCEEDED, now=t)
    assert order == [2, 3, 1]


def test_unplaceable_task_noticed_once_and_does_not_block_others() -> None:
    s = state_with_workers(TWO)
    s.submit(1, Resources(cores=8), now=0)
    s.submit(2, Resources(cores=1), now=0)
    out = s.schedule(now=0)
    assert [a.task_id for a in out] == [2]
    assert [(n.task_id, n.largest) for n in s.notices] == [(1, TWO)]
    s.notices.clear()
    s.schedule(now=1)
    assert s.notices == []
    s.add_worker("big", Resources(8, 8000, 8000, 0), now=2)
    (a,) = s.schedule(now=3)
    assert (a.task_id, a.worker) == (1, "big")


def test_lost_worker_requeues_without_using_retries_and_stale_result_is_discarded() -> None:
    s = state_with_workers(TWO)
    s.submit(1, Resources(cores=1), now=0, max_retries=0)
    (a,) = s.schedule(now=0)
    assert s.remove_worker("w0", now=1, why="killed") == [(1, Verdict.REQUEUED)]
    assert s.tasks[1].state is TaskState.WAITING
    s.add_worker("w1", TWO, now=2)
    (b,) = s.schedule(now=2)
    assert b.attempt == a.attempt + 1
    # A late result from w0:
    assert s.result(1, a.attempt, Outcome.SUCCEEDED, now=3).verdict is Verdict.STALE
    assert s.result(1, b.attempt, Outcome.SUCCEEDED, now=3).verdict is Verdict.DONE


def test_requeues_are_capped() -> None:
    s = ManagerState(validate=True)
    s.submit(1, Resources(cores=1), now=0)
    verdicts = []
    for i in range(MAX_REQUEUES + 1):
        s.add_worker(f"w{i}", TWO, now=i)
        s.schedule(now=i)
        verdicts += [v for _, v in s.remove_worker(f"w{i}", now=i, why="crash")]
    assert verdicts[-1] is Verdict.FAILED
    assert verdicts[:-1] == [Verdict.REQUEUED] * MAX_REQUEUES


@pytest.mark.parametrize(("outcome", "retries", "rulings"), [
    (Outcome.SUCCEEDED, 0, [(Verdict.DONE, None)]),
    (Outcome.RAISED, 1, [(Verdict.RETRY, None), (Verdict.FAILED, Failure.TASK)]),
    (Outcome.BROKE, 2, [(Verdict.RETRY, None)] * 2 + [(Verdict.FAILED, Failure.TASK)]),
    (Outcome.FATAL, 3, [(Verdict.FAILED, Failure.FATAL)]),
    (Outcome.FORSAKEN, 0,
     [(Verdict.REQUEUED, None)] * MAX_REQUEUES + [(Verdict.FAILED, Failure.REQUEUES)]),
    (Outcome.EXHAUSTED, 0, [(Verdict.RETRY, None), (Verdict.FAILED, Failure.EXHAUSTED)]),
])
def test_each_outcome_gets_its_ruling_and_a_failure_is_recorded_as_failed(
        outcome: Outcome, retries: int, rulings: list[tuple[Verdict, Failure | None]]) -> None:
    s = state_with_workers(Resources(4, 4000, 4000, 0))
    s.submit(1, Resources(cores=1), now=0, max_retries=retries)
    got = []
    while s.tasks[1].state is TaskState.WAITING:
        (a,) = s.schedule(now=len(got))
        got.append(tuple(s.result(1, a.attempt, outcome, len(got), a.worker, why="test",
                                  exceeded=["memory"], measured=Resources(1, 900, 1, 0))))
        assert s.workers[a.worker].committed == Resources(0, 0, 0, 0)
    assert got == rulings
    assert s.tasks[1].state is (TaskState.DONE if outcome is Outcome.SUCCEEDED
                                else TaskState.FAILED)
    assert s.counts()[s.tasks[1].state.value] == 1 and s.counts()["cancelled"] == 0
    s.forget(1)
    assert not s.tasks and sum(s.counts().values()) == 0


def test_unusable_places_elsewhere_until_the_requeue_cap() -> None:
    s = state_with_workers(*[TWO] * (MAX_REQUEUES + 3))
    s.submit(1, Resources(cores=1), now=0)
    got = []
    while s.tasks[1].state is TaskState.WAITING:
        (a,) = s.schedule(now=len(got))
        assert a.worker not in s.tasks[1].avoid
        got.append(s.result(1, a.attempt, Outcome.UNUSABLE, len(got), a.worker, why="x"))
    assert got == [Ruling(Verdict.REQUEUED)] * MAX_REQUEUES + [
        Ruling(Verdict.FAILED, Failure.UNUSABLE)]
    assert len(s.tasks[1].avoid) == MAX_REQUEUES + 1


def test_user_failure_uses_retries_then_fails() -> None:
    s = state_with_workers(TWO)
    s.submit(1, Resources(cores=1), now=0, max_retries=1)
    (a,) = s.schedule(now=0)
    assert s.result(1, a.attempt, Outcome.RAISED, now=1).verdict is Verdict.RETRY
    (b,) = s.schedule(now=1)
    assert s.result(1, b.attempt, Outcome.RAISED, now=2).verdict is Verdict.FAILED


def test_forsaken_task_goes_back_without_using_retries() -> None:
    s = state_with_workers(TWO)
    s.submit(1, Resources(cores=1), now=0)
    (a,) = s.schedule(now=0)
    assert s.result(1, a.attempt, Outcome.FORSAKEN, now=1,
                    why="did not fit").verdict is Verdict.REQUEUED
    assert s.tasks[1].retries_left == 0 and s.tasks[1].state is TaskState.WAITING


def test_cancel_running_returns_attempt_to_kill_and_frees_worker() -> None:
    s = state_with_workers(TWO)
    s.submit(1, Resources(cores=2), now=0)
    (a,) = s.schedule(now=0)
    assert s.cancel(1, now=1) == a
    assert s.workers["w0"].committed == Resources(0, 0, 0, 0)
    assert s.cancel(1, now=2) is None


def test_invalid_transition_carries_history() -> None:
    s = state_with_workers(TWO)
    s.submit(1, Resources(cores=1), now=0)
    t = s.tasks[1]
    with pytest.raises(InvalidTransition, match=r"waiting -> waiting.*submitted"):
        s._move(t, TaskState.WAITING, now=1, why="bogus")


def test_duplicate_submit_rejected() -> None:
    s = ManagerState()
    s.submit(1, Resources(), now=0)
    with pytest.raises(ValueError, match="already submitted"):
        s.submit(1, Resources(), now=0)


# ------------------------------------------------------------------ property tests
requests = st.builds(
    Resources,
    cores=st.none() | st.integers(0, 5),
    memory=st.none() | st.integers(0, 5000),
    disk=st.none() | st.integers(0, 5000),
    gpus=st.none() | st.integers(0, 2),
)
minimums = st.sampled_from([Resources(), Resources(cores=2), Resources(memory=1500),
                            Resources(disk=100, gpus=1)])
# Few distinct sizes, as on a cluster, and disks that differ (free space).
sizes = st.builds(
    Resources,
    cores=st.sampled_from([1, 2, 4]),
    memory=st.sampled_from([0, 1000, 4000]),
    disk=st.integers(0, 4000),
    gpus=st.sampled_from([0, 0, 1, 2]),
)
categories = st.sampled_from(["default", "default", "drawn"])


class EventStream(RuleBasedStateMachine):
    """What both machines below do to a core: workers leave, attempts exhaust their
    allocation, are handed back (sometimes for good on that worker), or are cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.s = ManagerState(validate=True)
        self.now = 0.0
        self.next_task = 0
        self.next_worker = 0

    def tick(self) -> float:
        self.now += 1
        return self.now

    def running(self) -> list[int]:
        return sorted(t.id for t in self.s.tasks.values() if t.state is TaskState.RUNNING)

    @precondition(lambda self: self.s.workers)
    @rule(data=st.data())
    def remove_worker(self, data: st.DataObject) -> None:
        wid = data.draw(st.sampled_from(sorted(self.s.workers)))
        self.s.remove_worker(wid, self.tick(), "test")

    @precondition(lambda self: self.running())
    @rule(data=st.data(), outcome=st.sampled_from(Outcome),
          resource=st.sampled_from(["memory", "disk", "cores"]),
          stale=st.sampled_from([None, None, None, "attempt", "worker"]))
    def result(self, data: st.DataObject, outcome: Outcome, resource: str,
               stale: str | None) -> None:
        """Any kind of result, current or stale: the ruling is the outcome policy's."""
        tid = data.draw(st.sampled_from(self.running()))
        t = self.s.tasks[tid]
        worker, attempt = t.worker, t.attempt
        assert worker is not None
        retries, requeues, avoid = t.retries_left, t.requeues, t.avoid
        others = [w for w in self.s.workers if w != worker and w not in avoid]
        ruling = self.s.result(
            tid, attempt - (stale == "attempt"), outcome, self.tick(),
            "elsewhere" if stale == "worker" else worker, measured=Resources(1, 100, 100, 0),
            wall_time=0.01, exceeded=[resource], why="test")
        verdict, failure = ruling
        if stale:
            assert ruling == (Verdict.STALE, None)
            assert t.state is TaskState.RUNNING and (t.worker, t.attempt) == (worker, attempt)
            return
        assert t.worker is None and tid not in self.s.workers[worker].running
        assert t.state is {Verdict.DONE: TaskState.DONE, Verdict.FAILED: TaskState.FAILED,
                           Verdict.RETRY: TaskState.WAITING,
                           Verdict.REQUEUED: TaskState.WAITING}[verdict]
        assert (failure is None) == (verdict is not Verdict.FAILED)
        if outcome is Outcome.SUCCEEDED:
            assert verdict is Verdict.DONE
        elif outcome in (Outcome.RAISED, Outcome.BROKE):
            left = retries is None or retries > 0
            assert ruling == ((Verdict.RETRY, None) if left else (Verdict.FAILED, Failure.TASK))
            assert t.retries_left == (retries if retries is None or not left else retries - 1)
        elif outcome is Outcome.FATAL:
            assert ruling == (Verdict.FAILED, Failure.FATAL)
        elif outcome is Outcome.EXHAUSTED:
            assert verdict is Verdict.RETRY or failure is Failure.EXHAUSTED
            assert t.retries_left == retries
        elif outcome is Outcome.FORSAKEN:
            capped = requeues >= MAX_REQUEUES
            assert ruling == ((Verdict.FAILED, Failure.REQUEUES) if capped
                              else (Verdict.REQUEUED, None))
            assert t.retries_left == retries and t.requeues == requeues + 1
        else:
            assert t.avoid == avoid | {worker}
            if not others or requeues >= MAX_REQUEUES:
                assert ruling == (Verdict.FAILED, Failure.UNUSABLE)
            else:
                assert ruling == (Verdict.REQUEUED, None) and t.requeues == requeues + 1

    @precondition(lambda self: self.s.tasks)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.s.cancel(data.draw(st.sampled_from(sorted(self.s.tasks))), self.tick())


class SchedulerMachine(EventStream):
    """Any stream of submissions, workers joining and leaving, completions,
    exhaustions and hand-backs: the accounting stays consistent, and the worker
    index answers as a scan over every worker does."""

    def __init__(self) -> None:
        super().__init__()
        self.s.configure_category("drawn", CategoryConfig(mode=AllocationMode.GREEDY_BUCKETING))

    @rule(req=requests, priority=st.integers(-2, 2), retries=st.integers(0, 2),
          category=categories)
    def submit(self, req: Resources, priority: int, retries: int, category: str) -> None:
        self.next_task += 1
        self.s.submit(self.next_task, req, self.tick(), priority, retries, category)

    @rule(size=sizes)
    def add_worker(self, size: Resources) -> None:
        self.next_worker += 1
        self.s.add_worker(f"w{self.next_worker}", size, self.tick())

    @rule(limit=st.none() | st.integers(1, 3))
    def schedule(self, limit: int | None) -> None:
        out = self.s.schedule(self.tick(), limit)
        assert limit is None or len(out) <= limit
        for a in out:
            t = self.s.tasks[a.task_id]
            assert t.state is TaskState.RUNNING and t.worker == a.worker

    @precondition(lambda self: self.running())
    @rule(data=st.data(), ok=st.booleans(), stale=st.booleans(),
          wall=st.sampled_from([0.001, 0.01, 5.0]))
    def complete(self, data: st.DataObject, ok: bool, stale: bool, wall: float) -> None:
        # Mostly short tasks, so that prefetching happens too.
        tid = data.draw(st.sampled_from(self.running()))
        attempt = self.s.tasks[tid].attempt - (1 if stale else 0)
        outcome = Outcome.SUCCEEDED if ok else Outcome.RAISED
        ruling = self.s.result(tid, attempt, outcome, self.tick(),
                               measured=Resources(1, 10, 10, 0), wall_time=wall)
        if stale:
            assert ruling.verdict is Verdict.STALE

    @rule(req=requests, minimum=minimums, avoid_first=st.booleans())
    def index_agrees_with_a_scan(self, req: Resources, minimum: Resources,
                                 avoid_first: bool) -> None:
        pool = self.s.pool
        workers = list(pool.workers.values())
        avoid = frozenset(workers[:1]) if avoid_first else frozenset()
        allowed = (lambda w: w.id not in avoid) if avoid else None

        def fit_key(p: tuple[WorkerRecord, Resources] | None) -> tuple[int, int, int] | None:
            if p is None:
                return None
            w, a = p
            assert a.fits_in(w.free)
            return ((w.free.cores or 0) - (a.cores or 0), (w.free.memory or 0) - (a.memory or 0),
                    w.seq)

        shape = pool.shape(req, minimum)
        expected = brute_best_fit(workers, req, minimum, allowed)
        assert fit_key(pool.best_fit(shape, allowed)) == expected
        assert fit_key(pool.best_fit_among([w.seq for w in workers], shape, allowed)) == expected
        pool.index_queues()
        got = pool.prefetch_target(shape, allowed)
        key = None if got is None else (len(got[0].queued), -(got[0].free.cores or 0), got[0].seq)
        assert key == brute_prefetch(workers, req, minimum, allowed)
        closest = [(-(w.free.cores or 0), -(w.free.memory or 0), w.seq)
                   for w in pool.closest(req)]
        assert closest == brute_closest(workers, req)
        assert pool.fits_somewhere(req) == any(box(req, w.total) is not None for w in workers)
        # What the shape needs at least is no more than it gets on any worker.
        for w in workers:
            b = shape.on(w.total)
            if b is not None:
                assert all(n <= v for n, v in zip(shape.need, (b.gpus, b.cores, b.memory,
                                                               b.disk), strict=True))

    @invariant()
    def never_overcommitted(self) -> None:
        for w in self.s.workers.values():
            assert w.committed.fits_in(w.total)
        self.s.check_invariants()


SchedulerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                              deadline=None)
test_scheduler_never_overcommits = SchedulerMachine.TestCase


class SameDecisionsMachine(EventStream):
    """With one priority, the indexed pass assigns exactly what the old pass that
    scanned every worker for every task does (``reference_pass``), after any
    stream of events."""

    def __init__(self) -> None:
        super().__init__()
        self.parked: set[int] = set()

    @rule(req=requests, n=st.integers(1, 3))
    def submit(self, req: Resources, n: int) -> None:
        for _ in range(n):
            self.next_task += 1
            self.s.submit(self.next_task, req, self.tick(), 0, 1)

    @rule(size=sizes)
    def add_worker(self, size: Resources) -> None:
        self.next_worker += 1
        self.s.add_worker(f"w{self.next_worker}", size, self.tick())
        self.parked.clear()

    @rule()
    def schedule(self) -> None:
        expected = reference_pass(self.s, self.parked)
        got = self.s.schedule(self.tick())
        assert [(a.task_id, a.worker, a.allocation, a.prefetched) for a in got] == expected

    @precondition(lambda self: self.running())
    @rule(data=st.data(), ok=st.booleans(), wall=st.sampled_from([0.001, 5.0]))
    def complete(self, data: st.DataObject, ok: bool, wall: float) -> None:
        tid = data.draw(st.sampled_from(self.running()))
        outcome = Outcome.SUCCEEDED if ok else Outcome.RAISED
        self.s.result(tid, self.s.tasks[tid].attempt, outcome, self.tick(),
                      measured=Resources(1, 10, 10, 0), wall_time=wall)


SameDecisionsMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=50,
                                                  deadline=None)
test_indexed_pass_decides_as_the_scan_did = SameDecisionsMachine.TestCase


def learned_short(s: ManagerState, wall: float = 0.001) -> None:
    """Run WALL_MIN_TASKS one-core tasks of ``wall`` seconds through the default category."""
    for i in range(1000, 1000 + WALL_MIN_TASKS):
        s.submit(i, Resources(cores=1), now=0)
        (a,) = s.schedule(now=0)
        s.result(i, a.attempt, Outcome.SUCCEEDED, now=0, measured=Resources(1, 10, 10, 0),
                 wall_time=wall)


def test_short_tasks_are_prefetched_one_per_running_task() -> None:
    s = state_with_workers(TWO)
    learned_short(s)
    for i in range(1, 7):
        s.submit(i, Resources(cores=1), now=1)
    out = s.schedule(now=1)
    assert [a.task_id for a in out] == [1, 2, 3, 4]
    w = s.workers["w0"]
    assert sorted(w.running) == [1, 2] and list(w.queued) == [3, 4]
    assert w.committed == TWO  # prefetched tasks hold nothing until they start
    s.result(1, 1, Outcome.SUCCEEDED, now=2)
    assert sorted(w.running) == [2, 3] and list(w.queued) == [4]  # the worker starts 3 at once
    (a,) = s.schedule(now=3)
    assert a.task_id == 5 and list(w.queued) == [4, 5]


def test_prefetched_task_lost_with_its_worker_or_cancelled() -> None:
    s = state_with_workers(TWO)
    learned_short(s)
    for i in range(1, 5):
        s.submit(i, Resources(cores=1), now=1)
    s.schedule(now=1)
    assert s.cancel(3, now=2) is not None  # the worker is told to drop it
    assert list(s.workers["w0"].queued) == [4]
    lost = dict(s.remove_worker("w0", now=3, why="test"))
    assert lost == {1: Verdict.REQUEUED, 2: Verdict.REQUEUED, 4: Verdict.REQUEUED}


def test_long_tasks_and_retries_bigger_are_not_prefetched() -> None:
    s = state_with_workers(TWO)
    learned_short(s, wall=PREFETCH_WALL_TIME * 2)
    for i in range(1, 5):
        s.submit(i, Resources(cores=1), now=1)
    assert [a.task_id for a in s.schedule(now=1)] == [1, 2]
    off = ManagerState(validate=True, prefetch=False)
    off.add_worker("w0", TWO, now=0)
    learned_short(off)
    for i in range(1, 5):
        off.submit(i, Resources(cores=1), now=1)
    assert len(off.schedule(now=1)) == 2


def test_higher_priority_wide_task_is_not_starved_by_lower_priority_narrow_ones() -> None:
    s = state_with_workers(TWO)
    s.submit(1, Resources(cores=1), now=0)
    (first,) = s.schedule(now=0)
    s.submit(2, Resources(cores=2), now=0, priority=10)
    for i in range(3, 8):
        s.submit(i, Resources(cores=1), now=0, priority=0)
    assert s.schedule(now=1) == []  # the free core is held for task 2
    s.result(1, first.attempt, Outcome.SUCCEEDED, now=2)
    (a,) = s.schedule(now=3)
    assert a.task_id == 2


def test_equal_priority_small_tasks_backfill() -> None:
    s = state_with_workers(TWO)
    s.submit(1, Resources(cores=1), now=0)
    s.schedule(now=0)
    s.submit(2, Resources(cores=2), now=0)
    s.submit(3, Resources(cores=1), now=0)
    assert [a.task_id for a in s.schedule(now=1)] == [3]


def test_reservation_holds_one_worker_only() -> None:
    s = state_with_workers(TWO, TWO)
    s.submit(1, Resources(cores=1, memory=1500, disk=100), now=0)
    s.submit(2, Resources(cores=1, memory=1500, disk=100), now=0)
    assert sorted(a.worker for a in s.schedule(now=0)) == ["w0", "w1"]  # one core free on each
    s.submit(3, Resources(cores=2), now=0, priority=5)  # waits, holds one of the two
    s.submit(4, Resources(cores=1, memory=100), now=0)
    s.submit(5, Resources(cores=1, memory=100), now=0)
    out = s.schedule(now=1)
    assert len(out) == 1 and out[0].task_id == 4


def test_result_from_another_worker_is_stale() -> None:
    s = state_with_workers(TWO, TWO)
    s.submit(1, Resources(cores=1), now=0)
    (a,) = s.schedule(now=0)
    other = "w1" if a.worker == "w0" else "w0"
    assert s.result(1, a.attempt, Outcome.SUCCEEDED, now=1, worker=other).verdict is Verdict.STALE
    assert s.result(1, a.attempt, Outcome.FORSAKEN, now=1, why="x",
                    worker=other).verdict is Verdict.STALE
    assert s.result(1, a.attempt, Outcome.SUCCEEDED, now=1, worker=a.worker).verdict is Verdict.DONE


def test_a_task_is_not_placed_again_on_a_worker_that_cannot_run_it() -> None:
    s = state_with_workers(TWO, TWO, TWO)
    s.submit(1, Resources(cores=2), now=0)
    (a,) = s.schedule(now=0)
    assert s.result(1, a.attempt, Outcome.UNUSABLE, now=1, worker=a.worker,
                    why="pack unusable") == Ruling(Verdict.REQUEUED)
    (b,) = s.schedule(now=2)
    assert b.worker != a.worker
    s.remove_worker(next(w for w in s.workers if w not in (a.worker, b.worker)), 3, "gone")
    # The one worker left that it may use leaves too: it waits for another one.
    assert s.remove_worker(b.worker, now=4, why="gone") == [(1, Verdict.REQUEUED)]
    assert s.schedule(now=5) == [] and s.tasks[1].state is TaskState.WAITING
    s.add_worker("w9", TWO, now=6)
    (c,) = s.schedule(now=7)
    assert (c.task_id, c.worker) == (1, "w9")


def test_a_task_no_connected_worker_can_run_fails_as_unusable() -> None:
    s = state_with_workers(TWO, TWO)
    s.submit(1, Resources(cores=2), now=0)
    (a,) = s.schedule(now=0)
    assert s.result(1, a.attempt, Outcome.UNUSABLE, now=1, worker=a.worker,
                    why="pack unusable").verdict is Verdict.REQUEUED
    (b,) = s.schedule(now=2)
    assert s.result(1, b.attempt, Outcome.UNUSABLE, now=3, worker=b.worker,
                    why="pack unusable") == Ruling(Verdict.FAILED, Failure.UNUSABLE)
    assert s.tasks[1].state is TaskState.FAILED
    assert "no other worker" in s.tasks[1].history[-1]
    assert s.workers[b.worker].committed == Resources(0, 0, 0, 0)


# ------------------------------------------------------------------ costs at scale
BIG = Resources(16, 64_000, 64_000, 0)


def full_cluster(workers: int, waiting: int) -> tuple[ManagerState, list[tuple[int, int]]]:
    """``workers`` workers full of 2-core tasks, and ``waiting`` tasks of 3 or more cores
    that found no room; returns the core and one running (task, attempt) per worker."""
    s = ManagerState()
    for i in range(workers):
        s.add_worker(f"w{i}", BIG, now=0)
    for i in range(workers * 8):
        s.submit(i, Resources(cores=2, memory=8000, disk=8000), now=0)
    placed = s.schedule(now=0)
    assert len(placed) == workers * 8
    base = workers * 8
    for i in range(waiting):
        s.submit(base + i, Resources(cores=3 + i % 6, memory=1000 * (1 + i % 7), disk=100),
                 now=1)
    assert s.schedule(now=1) == []
    return s, list({a.worker: (a.task_id, a.attempt) for a in placed}.values())


def test_a_pass_that_places_nothing_does_not_look_at_every_worker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    s, running = full_cluster(2000, 5000)
    looked: list[Resources] = []
    real_box = workers_module.box
    monkeypatch.setattr(workers_module, "box", lambda req, size: looked.append(size)
                        or real_box(req, size))
    counted = 0

    def fits(a: Resources, free: Resources) -> bool:
        nonlocal counted
        counted += 1
        return real_fits(a, free)

    real_fits = workers_module._fits
    monkeypatch.setattr(workers_module, "_fits", fits)
    assert s.schedule(now=2) == []  # nothing happened: nothing is looked at
    assert counted == 0 and not looked
    for i, (tid, attempt) in enumerate(running[:3]):
        # 2 cores free on one more worker: nothing fits. The first pass works out each
        # of the 42 shapes once; after that, a pass looks at the one worker touched.
        looked.clear()
        counted = 0
        s.result(tid, attempt, Outcome.SUCCEEDED, now=2 + i)
        assert s.schedule(now=2 + i) == []
        assert len(looked) <= 2 * 42 and counted <= 42, (counted, len(looked))
    assert counted == 0 and not looked, (counted, len(looked))


def test_the_index_agrees_with_a_scan_with_many_workers() -> None:
    """Hundreds of workers of one size: index levels split into blocks; after a random
    stream of placements and completions the index still answers as a scan does."""
    rng = random.Random(7)
    s = ManagerState(validate=False)
    sizes = [BIG, Resources(8, 32_000, 30_000, 1)]
    for i in range(600):
        s.add_worker(f"w{i}", sizes[i % 7 == 0], now=0)
    running: list[tuple[int, int]] = []
    tid = 0
    for step in range(3000):
        if running and rng.random() < 0.45:
            t, attempt = running.pop(rng.randrange(len(running)))
            s.result(t, attempt, Outcome.SUCCEEDED, now=step)
        else:
            tid += 1
            s.submit(tid, Resources(cores=rng.randint(1, 8), memory=rng.randint(1, 32) * 500,
                                    disk=rng.randint(0, 32) * 500 or None), now=step)
            running += [(a.task_id, a.attempt) for a in s.schedule(now=step)]
        if step % 300 == 0:
            s.check_invariants()
            workers = list(s.pool.workers.values())
            for _ in range(20):
                req = Resources(cores=rng.randint(0, 9), memory=rng.randint(0, 40) * 500,
                                disk=rng.choice([None, rng.randint(0, 40) * 500]))
                shape = s.pool.shape(req)
                got = s.pool.best_fit(shape)
                key = None if got is None else (
                    (got[0].free.cores or 0) - (got[1].cores or 0),
                    (got[0].free.memory or 0) - (got[1].memory or 0), got[0].seq)
                assert key == brute_best_fit(workers, req, Resources())
    assert max(len(lv.blocks) for by_cores in s.pool._all._levels.values()
               for lv in by_cores.values()) > 1, "no level grew to several blocks"


def test_a_waiting_wide_task_holds_its_worker_once_lower_priority_tasks_arrive() -> None:
    """The wide task found no room while nothing of lower priority waited; when such
    tasks come, it reserves its worker as before, and they do not take the room it needs."""
    s = state_with_workers(Resources(4, 4000, 4000, 0))
    for i in range(3):
        s.submit(i, Resources(cores=1), now=0, priority=5)
    running = s.schedule(now=0)
    assert len(running) == 3  # one core free: not enough for the wide task
    s.submit(10, Resources(cores=4), now=1, priority=10)
    assert s.schedule(now=1) == []
    for i in range(20, 30):
        s.submit(i, Resources(cores=1), now=2, priority=0)
    for a in running:
        s.result(a.task_id, a.attempt, Outcome.SUCCEEDED, now=3)
        out = s.schedule(now=3)
        assert all(b.task_id == 10 for b in out), out
    assert s.tasks[10].state is TaskState.RUNNING
