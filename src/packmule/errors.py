"""The one exception hierarchy of packmule.

User-code failures are re-raised with the user's own exception type, the
remote traceback attached as ``__cause__`` (a :class:`RemoteTraceback`).
Everything else derives from :class:`PackmuleError` and is named for its
cause; each message says what happened and what to do next.
"""

from __future__ import annotations


class PackmuleError(Exception):
    """Root of every error packmule raises itself."""


class InvalidResources(PackmuleError, ValueError):
    """A resource request or worker size is malformed (negative, non-numeric, unknown field)."""


class SerializationError(PackmuleError, TypeError):
    """A function, argument or result could not be pickled or unpickled."""


class TaskError(PackmuleError):
    """A task failed for a reason other than an exception raised by the user's code."""

    def __init__(self, message: str, task_id: int | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.task_id))


class WorkerLost(TaskError):
    """The worker running the task disconnected or stopped answering too often."""


class TaskTimeout(TaskError):
    """The task ran past its wall-time limit and was killed."""


class TaskCrashed(TaskError):
    """The process running the task died (a signal, or the interpreter exited)."""


class ResourceExhausted(TaskError):
    """The task used more of a resource than its explicit limit allowed."""

    def __init__(
        self, message: str, task_id: int | None = None, resource: str = "",
        measured: float = 0.0, limit: float = 0.0,
    ) -> None:
        super().__init__(message, task_id)
        self.resource = resource
        self.measured = measured
        self.limit = limit

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.task_id, self.resource, self.measured, self.limit))


class FileTransferError(TaskError):
    """An input file could not be read or an output file was not produced."""


class TaskCancelled(TaskError):
    """The task was cancelled before it finished."""


class ManagerError(PackmuleError):
    """The manager itself cannot start or go on: not one task's failure."""


class ManagerStartError(ManagerError, OSError):
    """The manager could not start: its port is taken or cannot be bound, its run directory
    or password file cannot be written, or its loop process did not start. Also an
    ``OSError``, with ``errno`` set when the system gave one."""

    def __str__(self) -> str:
        return self.strerror if self.strerror is not None else super().__str__()


class ManagerTimeout(ManagerError, TimeoutError):
    """The manager's loop process did not start, or answer a call, within ``LOOP_TIMEOUT``."""


class ManagerClosed(ManagerError, RuntimeError):
    """The manager was shut down: it takes no more tasks or calls. Also a ``RuntimeError``."""


class ManagerCrashed(ManagerClosed, TaskError):
    """The manager's loop process died (a signal, an exit code, an internal error), not a
    shutdown: unfinished tasks fail with it, and the manager takes no more tasks.

    ``returncode`` is the loop process's (negative: the signal that ended it; None if
    unknown), ``log`` the path of its log file. Also a :class:`TaskError` (``task_id``
    set on a future's error, None when raised by ``submit()`` or a call).
    """

    def __init__(self, message: str, task_id: int | None = None,
                 returncode: int | None = None, log: str | None = None) -> None:
        super().__init__(message, task_id)
        self.returncode = returncode
        self.log = log

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.task_id, self.returncode, self.log))


class LinkError(PackmuleError):
    """Base for failures of the manager-worker connection itself."""


class AuthenticationError(LinkError):
    """The peer does not hold the same secret (password) as this side."""


class ProtocolError(LinkError):
    """The peer sent a message this side cannot understand."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised on a worker, attached as ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return "\n\n" + self.tb.rstrip("\n")


class RemoteException(PackmuleError):
    """Stands in for a user exception that could not be pickled on the worker."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message))


class PackError(PackmuleError):
    """An environment pack cannot be analysed, built, transferred or unpacked."""


class PackCorrupted(PackError):
    """A pack's bytes do not match its checksum: the transfer damaged it; send it again."""
