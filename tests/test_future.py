"""The task future: a real concurrent.futures.Future that builds its condition lazily."""

from __future__ import annotations

import concurrent.futures
import sys
import threading

from packmule.manager.future import TaskFuture

from .conftest import wait_until


class Owner:
    def __init__(self) -> None:
        self.cancelled: list[int] = []

    def _future_cancelled(self, task_id: int) -> None:
        self.cancelled.append(task_id)


def test_a_waiting_future_holds_no_condition_until_used() -> None:
    f = TaskFuture(Owner(), 7)
    assert "_condition" not in f.__dict__ and not f.done()
    assert sys.getsizeof(f.__dict__) < 400
    f.set_result(3)
    assert f.result(timeout=1) == 3


def test_threads_waiting_on_a_fresh_future_all_wake() -> None:
    for _ in range(20):
        f = TaskFuture()
        got: list[object] = []

        def wait(f: TaskFuture = f, got: list[object] = got) -> None:
            got.append(f.result(timeout=10))

        threads = [threading.Thread(target=wait) for _ in range(8)]
        for t in threads:
            t.start()
        f.set_result("x")
        for t in threads:
            t.join(timeout=10)
        assert got == ["x"] * 8


def test_callbacks_wait_and_as_completed_work() -> None:
    futures = [TaskFuture() for _ in range(5)]
    seen: list[int] = []
    futures[0].add_done_callback(lambda f: seen.append(f.result()))
    for i, f in enumerate(futures):
        f.set_result(i)
    assert seen == [0]
    done, pending = concurrent.futures.wait(futures, timeout=5)
    assert len(done) == 5 and not pending
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures)) == [0, 1, 2, 3, 4]
    failing = TaskFuture()
    failing.set_exception(ValueError("no"))
    assert isinstance(failing.exception(), ValueError)


def test_cancel_tells_the_owner_once() -> None:
    owner = Owner()
    f = TaskFuture(owner, 42)
    waiter = threading.Thread(target=lambda: concurrent.futures.wait([f], timeout=10))
    waiter.start()
    assert f.cancel() and f.cancel()
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    assert owner.cancelled == [42] and f.cancelled()
    done = TaskFuture(owner, 43)
    done.set_result(None)
    assert not done.cancel()
    wait_until(lambda: owner.cancelled == [42], timeout=1)
