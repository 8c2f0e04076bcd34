"""packmule: run heterogeneous Python and shell tasks across clusters.

A :class:`Manager` inside your program queues :class:`Task` and
:class:`PythonTask` objects and packs them onto ``packmule worker`` daemons
by their :class:`Resources`.
"""

# The names below the errors are loaded when first used (module __getattr__):
# every worker and every runner imports this package, and must not pay for the
# manager (zmq, its loop, the scheduler, the pack builder), Parsl, or even
# ``typing`` (type checkers take any ``TYPE_CHECKING`` as true).
from ._version import __version__
from .errors import (
    AuthenticationError,
    FileTransferError,
    InvalidResources,
    ManagerClosed,
    ManagerCrashed,
    ManagerError,
    ManagerStartError,
    ManagerTimeout,
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

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .manager import Manager, ManagerStats
    from .observe.progress import progress
    from .parsl import WorkQueueExecutor
    from .resources import Resources
    from .task import CommandResult, File, PythonTask, Task

#: Each lazily loaded name, and the submodule that defines it.
_LAZY = {
    "Manager": "manager",
    "ManagerStats": "manager",
    "Resources": "resources",
    "CommandResult": "task",
    "File": "task",
    "PythonTask": "task",
    "Task": "task",
    "WorkQueueExecutor": "parsl",  # imports Parsl
    "progress": "observe.progress",
}


if not TYPE_CHECKING:  # type checkers see the imports above, and flag any other name

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'packmule' has no attribute {name!r}")
        from importlib import import_module

        value = getattr(import_module(f".{module}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AuthenticationError",
    "CommandResult",
    "File",
    "FileTransferError",
    "InvalidResources",
    "Manager",
    "ManagerClosed",
    "ManagerCrashed",
    "ManagerError",
    "ManagerStartError",
    "ManagerStats",
    "ManagerTimeout",
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
    "progress",
]
