"""Task and worker states, and the table of allowed task transitions.

::

    WAITING --dispatch--> RUNNING --success/final failure--> DONE
       ^                     |
       +--requeue / retry----+        WAITING|RUNNING --cancel--> CANCELLED
"""

from __future__ import annotations

import enum


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
    """Finished for good: its result or error has been delivered."""
    CANCELLED = "cancelled"
    """Cancelled by the user; no result will be delivered."""


FINAL_STATES = frozenset({TaskState.DONE, TaskState.CANCELLED})

ALLOWED_TRANSITIONS: frozenset[tuple[TaskState, TaskState]] = frozenset(
    {
        (TaskState.WAITING, TaskState.RUNNING),
        (TaskState.RUNNING, TaskState.WAITING),
        (TaskState.RUNNING, TaskState.DONE),
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
    """Failed for good: deliver the error."""
    RETRY = "retry"
    """Failed, and a retry was used up: back in the queue."""
    REQUEUED = "requeued"
    """Not the task's fault (worker lost, forsaken): back in the queue, retries untouched."""
    STALE = "stale"
    """A result from an attempt that is no longer current: discard it."""


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
