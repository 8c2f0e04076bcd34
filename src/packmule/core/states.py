"""Task and worker states, and the table of allowed task transitions.

::

    WAITING --dispatch--> RUNNING --success--> DONE
       ^                     |
       +--requeue / retry----+--final failure--> FAILED
                                      WAITING|RUNNING --cancel--> CANCELLED
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class TaskState(enum.Enum):
    """Where a task is in its life, as the manager sees it."""

    # Members are singletons: hash them by identity (Enum's own hash runs Python code,
    # and the core looks states up on every decision).
    __hash__ = object.__hash__

    WAITING = "waiting"
    """In the queue: waiting for a worker with room for its allocation."""
    RUNNING = "running"
    """Dispatched to a worker; its result is not back yet."""
    DONE = "done"
    """Succeeded: its result is delivered."""
    FAILED = "failed"
    """Failed for good (see :class:`Failure` for why): its error is delivered."""
    CANCELLED = "cancelled"
    """Cancelled by the user, or by the manager's shutdown; no result will be delivered."""


FINAL_STATES = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED})

ALLOWED_TRANSITIONS: frozenset[tuple[TaskState, TaskState]] = frozenset(
    {
        (TaskState.WAITING, TaskState.RUNNING),
        (TaskState.RUNNING, TaskState.WAITING),
        (TaskState.RUNNING, TaskState.DONE),
        (TaskState.RUNNING, TaskState.FAILED),
        (TaskState.WAITING, TaskState.CANCELLED),
        (TaskState.RUNNING, TaskState.CANCELLED),
    }
)


class WorkerState(enum.Enum):
    """A worker connection's state, as the manager sees it."""

    __hash__ = object.__hash__

    ACTIVE = "active"
    """Handshake done, heartbeats arriving: receives tasks."""
    LOST = "lost"
    """Disconnected or silent past its lease; its tasks went back to the queue."""


class Verdict(enum.Enum):
    """What the core decided about a task after an attempt ended."""

    __hash__ = object.__hash__

    DONE = "done"
    """Succeeded: deliver the result."""
    FAILED = "failed"
    """Failed for good: deliver the error (the :class:`Ruling` says why)."""
    RETRY = "retry"
    """Failed, and a retry was used up: back in the queue."""
    REQUEUED = "requeued"
    """Not the task's fault (worker lost, forsaken, or it cannot run on that worker and will
    not be placed there again): back in the queue, retries untouched."""
    STALE = "stale"
    """A result from an attempt that is no longer current: discard it."""


class Outcome(enum.Enum):
    """How an attempt ended, as the shell reports it to the core (from the worker's status)."""

    __hash__ = object.__hash__

    SUCCEEDED = "succeeded"
    """The function returned, or the command ran (any exit code)."""
    RAISED = "raised"
    """The user's code raised: the task's own failure (uses a retry); it ran, so what it
    used is learned."""
    BROKE = "broke"
    """The task failed otherwise (timeout, its process died, its sandbox could not be
    prepared): the task's own failure (uses a retry); nothing learned."""
    EXHAUSTED = "exhausted"
    """Killed for using more of a resource than its allocation (``exceeded`` says which)."""
    FATAL = "fatal"
    """A failure another attempt would repeat (a declared output missing, an input
    unreadable, its pack cannot be sent): fails at once, retries or not."""
    FORSAKEN = "forsaken"
    """The worker handed it back (say, it did not fit there now): not the task's fault."""
    UNUSABLE = "unusable"
    """The worker can never run it (its environment pack is unusable there): placed
    elsewhere, never on that worker again; fails when no other connected worker is left."""


class Failure(enum.Enum):
    """Why the core failed a task for good: the shell names the user's error after it."""

    __hash__ = object.__hash__

    TASK = "task"
    """The task's own failure with no retry left: the last attempt's error."""
    EXHAUSTED = "exhausted"
    """Over an explicit limit, or over the largest worker's on a retry bigger."""
    FATAL = "fatal"
    """A failure a retry would repeat (see :attr:`Outcome.FATAL`)."""
    REQUEUES = "requeues"
    """Requeued ``MAX_REQUEUES`` times through no fault of its own (workers lost, hand-backs),
    and once more."""
    UNUSABLE = "unusable"
    """No connected worker that it has not found unusable is left to run it."""


class Ruling(NamedTuple):
    """The core's decision after an attempt ended: what to do, and (when it failed) why."""

    verdict: Verdict
    failure: Failure | None = None


class InvalidTransition(RuntimeError):
    """A task was asked to make a move the table does not allow (a bug in packmule)."""

    def __init__(self, task_id: int, start: TaskState, finish: TaskState, story: list[str]) -> None:
        super().__init__(
            f"task {task_id}: invalid transition {start.value} -> {finish.value}; "
            f"history: {'; '.join(story) or '(none)'}"
        )
        self.task_id = task_id
        self.start = start
        self.finish = finish
