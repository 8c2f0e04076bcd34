"""The future a submitted task returns: a :class:`concurrent.futures.Future`
that holds little while it waits.

A plain Future builds a ``threading.Condition`` (a lock, a deque and seven
bound methods: about 1.6 KB) and two lists when it is created. With a
million tasks queued, that is most of what the manager holds per task. This
future builds them the first time anything uses them (a waiter, a callback,
its result), under one lock so that every thread sees the same condition;
until then it holds three fields. It also tells its manager when it is
cancelled, so that no callback is needed per task for that.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any, Protocol

#: Guards the first use of any future's condition and lists.
_FIRST_USE = threading.Lock()
_LAZY = {
    "_condition": threading.Condition,
    "_waiters": list,
    "_done_callbacks": list,
}


class Owner(Protocol):
    def _future_cancelled(self, task_id: int) -> None: ...


class TaskFuture(Future[Any]):
    """A task's future (``Manager.submit`` returns it; it is also ``task.future``)."""

    def __init__(self, owner: Owner | None = None, task_id: int = 0) -> None:
        # Future.__init__ is not called: what it builds is built on first use.
        self._state = "PENDING"
        self._result = None
        self._exception = None
        self._owner = owner
        self._task_id = task_id

    def __getattr__(self, name: str) -> Any:
        make = _LAZY.get(name)
        if make is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        with _FIRST_USE:
            got = self.__dict__.get(name)
            if got is None:
                got = self.__dict__[name] = make()
        return got

    def cancel(self) -> bool:
        """Cancel the task (unless it has finished): its manager drops it, or kills its
        running attempt, and ``concurrent.futures.wait``/``as_completed`` see it done."""
        if not super().cancel():
            return False
        with self._condition:  # (re-entrant) only the first cancel gets past this
            first = self._state == "CANCELLED"
            if first:
                self.set_running_or_notify_cancel()  # wakes wait() and as_completed()
            owner, self._owner = self._owner, None
        if first and owner is not None:
            owner._future_cancelled(self._task_id)
        return True
