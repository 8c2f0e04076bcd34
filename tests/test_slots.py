"""A worker's tasks as state (core/slots.py): queued, waiting for a pack, running, and
the one promotion rule the worker and the manager's mirror of it share. No sockets."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from packmule import Resources
from packmule.core.slots import MOVES, InvalidSlotMove, Slot, Slots, promote
from packmule.core.workers import WorkerPool

SIZE = Resources(4, 4000, 4000, 1)


def r(cores: int, memory: int = 0, disk: int = 0, gpus: int = 0) -> Resources:
    return Resources(cores, memory, disk, gpus)


def worker() -> Slots[int, str, str]:
    """Slots as the worker keeps them; here a task is its pack's digest ("": none)."""
    return Slots(SIZE)


def started(s: Slots[int, str, str]) -> list[int]:
    """Start every READY task (as the worker daemon does at the end of a loop turn)."""
    out = []
    for key, _ in s.take_ready():
        s.start(key, f"run{key}")
        out.append(key)
    return out


# ------------------------------------------------------------------ the promotion rule
def test_queued_tasks_that_fit_start_in_the_order_sent() -> None:
    queued = {1: r(3), 2: r(2), 3: r(1), 4: r(1)}
    assert promote(queued, r(3)) == [(1, r(3))]  # 1 first: nothing is left for the others
    assert queued == {2: r(2), 3: r(1), 4: r(1)}


def test_a_task_that_does_not_fit_keeps_its_place_and_does_not_block_those_behind() -> None:
    queued = {1: r(3), 2: r(1, 500), 3: r(1, 3000), 4: r(1, 500)}
    assert promote(queued, r(2, 1000)) == [(2, r(1, 500)), (4, r(1, 500))]
    assert list(queued) == [1, 3]
    assert promote(queued, r(0)) == [] and list(queued) == [1, 3]
    assert promote({}, SIZE) == []


def test_promotion_counts_every_resource() -> None:
    queued = {1: r(1, 0, 0, 1), 2: r(1, 0, 0, 1), 3: r(1, 0, 2000), 4: r(1, 0, 2000)}
    assert [k for k, _ in promote(queued, r(4, 0, 3000, 1))] == [1, 3]


# ------------------------------------------------------------------ slots
def test_a_task_holds_its_allocation_when_it_fits_and_queues_when_it_fits_only_the_worker(
) -> None:
    s = worker()
    assert s.add(1, "", r(3, 1000)) is Slot.READY
    assert s.add(2, "", r(2)) is Slot.QUEUED
    assert s.add(3, "", r(5)) is None and 3 not in s  # never fits: nothing kept
    assert s.free == Resources(1, 3000, 4000, 1) and list(s.queued) == [2]
    assert started(s) == [1] and s.running == {1: "run1"} and len(s) == 2
    s.check()
    with pytest.raises(InvalidSlotMove, match="task 1: invalid move running -> ready"):
        s.add(1, "", r(1))


def test_release_frees_what_a_task_held_and_promotes_in_order() -> None:
    s = worker()
    for key, cores in [(1, 2), (2, 2), (3, 3), (4, 1), (5, 2)]:
        s.add(key, "", r(cores))
    assert started(s) == [1, 2] and list(s.queued) == [3, 4, 5]
    s.release(1)  # two cores free: 3 does not fit, 4 does, then 5 does not
    assert [k for k, _ in s.take_ready()] == [4] and list(s.queued) == [3, 5]
    assert started(s) == [4]
    s.release(2)
    s.release(4)  # 3 first, then 5 has no room left
    assert started(s) == [3] and list(s.queued) == [5] and s.free == r(1, 4000, 4000, 1)
    s.check()


def test_tasks_wait_for_their_pack_holding_their_allocation() -> None:
    s = worker()
    s.add(1, "p", r(2))
    s.add(2, "p", r(1))
    s.add(3, "", r(2))  # queued: the waiting tasks hold their room, as the manager counts
    for key, entry in s.take_ready():
        s.wait(key, entry.task)
    assert s.waiting == {"p": {1: None, 2: None}} and s.slot(1) is Slot.WAITING
    assert s.free == r(1, 4000, 4000, 1) and list(s.queued) == [3]
    s.check()
    assert s.unwait("p") == [1, 2] and s.unwait("p") == []
    assert started(s) == [1, 2] and s.waiting == {}
    s.check()


def test_a_failed_pack_releases_its_tasks_and_queued_ones_get_the_room() -> None:
    s = worker()
    s.add(1, "p", r(4))
    s.add(2, "", r(4))
    (key, entry), = s.take_ready()
    s.wait(key, entry.task)
    for key in s.unwait("p"):  # the pack failed: the worker answers each task
        assert s.release(key) is not None
    assert started(s) == [2] and s.free == r(0, 4000, 4000, 1)
    s.check()


@pytest.mark.parametrize("where", ["queued", "ready", "waiting", "running"])
def test_a_killed_task_leaves_whichever_slot_it_was_in(where: str) -> None:
    s = worker()
    s.add(1, "", r(3))
    s.add(2, "p", r(1))
    s.add(3, "", r(2))
    s.add(4, "", r(1))
    for key, entry in s.take_ready():
        if key == 2:
            s.wait(key, entry.task)
        elif where != "ready" or key != 1:
            s.start(key, f"run{key}")
    assert [s.slot(k) for k in (1, 2, 3, 4)] == [
        Slot.READY if where == "ready" else Slot.RUNNING, Slot.WAITING, Slot.QUEUED, Slot.QUEUED]
    victim = {"queued": 4, "ready": 1, "waiting": 2, "running": 1}[where]
    free = s.free
    gone = s.release(victim)
    assert gone is not None and victim not in s and s.release(victim) is None
    if where == "queued":  # it held nothing: nothing else changes
        assert s.free == free and list(s.queued) == [3]
    elif where == "waiting":  # one core back: 3 needs two, 4 (behind it) fits
        assert list(s.queued) == [3] and [k for k, _ in s.take_ready()] == [4]
    else:  # three cores back: both queued tasks start, in order
        assert [k for k, _ in s.take_ready()] == [3, 4] and not s.queued
    assert s.waiting == ({} if where == "waiting" else {"p": {2: None}})
    s.check()


def test_moves_outside_the_table_are_bugs() -> None:
    s = worker()
    s.add(1, "", r(4))
    s.add(2, "", r(1))
    with pytest.raises(InvalidSlotMove, match="task 2: invalid move queued -> running"):
        s.start(2, "run2")
    s.start(1, "run1")
    with pytest.raises(InvalidSlotMove, match="running -> waiting"):
        s.wait(1, "p")
    with pytest.raises(InvalidSlotMove, match="absent -> running"):
        s.start(9, "run9")
    assert (Slot.QUEUED, Slot.RUNNING) not in MOVES and (Slot.READY, Slot.RUNNING) in MOVES


def test_the_check_sees_accounting_that_drifted() -> None:
    s = worker()
    s.add(1, "", r(1))
    s.check()
    s.free = SIZE  # what a slip in the shell would do
    with pytest.raises(AssertionError, match="held"):
        s.check()


# ------------------------------------------------------------------ the two sides agree
allocs = st.builds(Resources, cores=st.integers(0, 3), memory=st.sampled_from([0, 1000, 2500]),
                   disk=st.sampled_from([0, 500, 3000]), gpus=st.sampled_from([0, 0, 1]))
PACKS = ["", "", "p", "q"]


class SameRunningSet(RuleBasedStateMachine):
    """The same events, in the same order, to a worker's :class:`Slots` and to the
    manager's mirror of that worker in a :class:`WorkerPool`: tasks sent (started at once
    when they fit, else prefetched), ended, killed, started and failed at once, waiting
    for packs that arrive or fail. Both must agree on what holds its allocation (the
    core counts a task waiting for its pack as running), on the queue and its order, and
    on what is free; and free is always the total less what is held."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = WorkerPool()
        self.pool.index_queues()
        self.w = self.pool.add("w", SIZE, 0.0)
        self.slots: Slots[int, str, str] = Slots(SIZE)
        self.next = 0
        #: Pack states on the worker: arriving, ready, failed (absent: ready).
        self.packs = {"p": "arriving", "q": "arriving"}

    def _result(self, key: int) -> None:
        """The worker answered a task it held or queued: the manager releases it."""
        self.pool.release(self.w, key)

    def _settle(self, data: st.DataObject) -> None:
        """The worker daemon's end of a loop turn: each READY task waits for its pack,
        is answered (its pack failed, or it could not start), or starts; an answer
        releases it, which may make queued tasks READY in turn."""
        while ready := self.slots.take_ready():
            for key, entry in ready:
                state = self.packs.get(entry.task, "ready")
                if state == "arriving":
                    self.slots.wait(key, entry.task)
                elif state == "failed" or data.draw(st.sampled_from([False, False, True]),
                                                    label=f"start of {key} fails"):
                    self.slots.release(key)
                    self._result(key)
                else:
                    self.slots.start(key, f"run{key}")

    @rule(data=st.data(), alloc=allocs, pack=st.sampled_from(PACKS))
    def send(self, data: st.DataObject, alloc: Resources, pack: str) -> None:
        alloc = alloc.filled()
        if not alloc.fits_in(SIZE):
            return  # the manager sends no task bigger than its worker
        self.next += 1
        key = self.next
        if alloc.fits_in(self.w.free):
            self.pool.commit(self.w, key, alloc)
        else:
            self.pool.enqueue(self.w, key, alloc)
        if self.packs.get(pack) == "failed":  # the worker answers it at once
            self._result(key)
        else:
            got = self.slots.add(key, pack, alloc)
            assert got is (Slot.QUEUED if key in self.w.queued else Slot.READY)
        self._settle(data)

    @precondition(lambda self: self.slots.running)
    @rule(data=st.data())
    def end(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.slots.running)))
        self.slots.release(key)
        self._result(key)
        self._settle(data)

    @precondition(lambda self: bool(self.slots))
    @rule(data=st.data())
    def kill(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.slots.entries)))
        self.pool.release(self.w, key)  # the manager cancels, then the worker hears
        self.slots.release(key)
        self._settle(data)

    @rule(data=st.data(), pack=st.sampled_from(["p", "q"]), ok=st.booleans())
    def pack_done(self, data: st.DataObject, pack: str, ok: bool) -> None:
        if self.packs[pack] != "arriving":
            self.packs[pack] = "arriving"  # sent again
            return
        self.packs[pack] = "ready" if ok else "failed"
        for key in self.slots.unwait(pack):
            if not ok:
                self.slots.release(key)
                self._result(key)
        self._settle(data)

    @invariant()
    def both_sides_agree(self) -> None:
        s, w = self.slots, self.w
        s.check()
        self.pool.check()
        assert not s.ready, "READY tasks left after the worker's turn"
        held = {k for k, e in s.entries.items() if e.slot is not Slot.QUEUED}
        assert set(w.running) == held
        assert list(w.queued) == list(s.queued)
        assert w.free == s.free
        total = s.free + s.held()
        assert total == SIZE.filled() and all((v or 0) >= 0 for v in s.free.astuple())


TestSameRunningSet = SameRunningSet.TestCase
TestSameRunningSet.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
