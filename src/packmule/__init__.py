"""packmule: run heterogeneous Python and shell tasks across clusters.

A :class:`Manager` inside your program queues :class:`Task` and
:class:`PythonTask` objects and packs them onto ``packmule worker`` daemons
by their :class:`Resources`.
"""

from ._version import __version__
from .errors import (
    AuthenticationError,
    FileTransferError,
    InvalidResources,
    PackCorrupted,
    PackError,
    PackmuleError,
    ProtocolError,
    RemoteException,
    RemoteTraceback,
    ResourceExhausted,
    SerializationError,
    TaskCancelled,
    TaskCrashed,
    TaskError,
    TaskTimeout,
    WorkerLost,
)
from .manager import Manager, ManagerStats
from .resources import Resources
from .task import CommandResult, File, PythonTask, Task


def __getattr__(name: str) -> object:
    # The Parsl executor imports Parsl: load it only when asked for.
    if name == "WorkQueueExecutor":
        from .parsl import WorkQueueExecutor

        return WorkQueueExecutor
    raise AttributeError(f"module 'packmule' has no attribute {name!r}")


__all__ = [
    "AuthenticationError",
    "CommandResult",
    "File",
    "FileTransferError",
    "InvalidResources",
    "Manager",
    "ManagerStats",
    "PackCorrupted",
    "PackError",
    "PackmuleError",
    "ProtocolError",
    "PythonTask",
    "RemoteException",
    "RemoteTraceback",
    "ResourceExhausted",
    "Resources",
    "SerializationError",
    "Task",
    "TaskCancelled",
    "TaskCrashed",
    "TaskError",
    "TaskTimeout",
    "WorkQueueExecutor",
    "WorkerLost",
    "__version__",
]
