"""Pickling of Python calls, results and exceptions (cloudpickle).

Only bytes that arrived over an authenticated connection are ever passed to
:func:`loads`: calls on the worker (from the manager), results and exceptions
on the manager (from its workers).

Runners import this module, and cloudpickle only when they need it (a call
pickled by value imports it as it is unpickled; a result or an exception that
plain ``pickle`` refuses, in :func:`_dumps`): a warm runner that has run only
importable functions never loads it (2.6 MB and 15 ms less).
"""

from __future__ import annotations

import pickle
import traceback

from .errors import RemoteException, RemoteTraceback, SerializationError

TYPE_CHECKING = False  # not typing's: runners need not import it
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def _cloudpickle() -> Any:
    import cloudpickle

    return cloudpickle


def _dumps(obj: object) -> bytes:
    """Pickle what a task produced, where it ran: plain ``pickle`` first, cloudpickle
    for what that refuses (lambdas, and classes and functions that came by value).

    Only for the task's side: there ``__main__`` is the runner, so an object of the
    user's ``__main__`` (which came by value) cannot be found by reference and plain
    ``pickle`` refuses it. On the user's side :func:`dumps_call` must use cloudpickle,
    which sends ``__main__``'s functions by value.
    """
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        data: bytes = _cloudpickle().dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        return data


def dumps_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Pickle a call; raises SerializationError naming what could not be pickled."""
    cloudpickle = _cloudpickle()
    try:
        return cloudpickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return]
    except Exception as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        culprit = _find_unpicklable(fn, args, kwargs)
        raise SerializationError(
            f"cannot send {name}() to a worker: {culprit} cannot be pickled "
            f"({type(exc).__name__}: {exc}). Pass picklable values (no open files, locks, "
            "sockets or generators), or create the object inside the function."
        ) from exc


def _find_unpicklable(fn: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    candidates: list[tuple[str, object]] = [("the function", fn)]
    candidates += [(f"argument {i}", a) for i, a in enumerate(args)]
    candidates += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    cloudpickle = _cloudpickle()
    for label, obj in candidates:
        try:
            cloudpickle.dumps(obj)
        except Exception:
            return f"{label} ({type(obj).__name__})"
    return "the call"


def loads(data: bytes) -> Any:
    """Unpickle bytes from an authenticated peer."""
    return pickle.loads(data)


def dumps_result(value: Any) -> bytes:
    """Pickle a task's return value (raises SerializationError with the reason)."""
    try:
        return _dumps(value)
    except Exception as exc:
        raise SerializationError(
            f"the task's return value ({type(value).__name__}) cannot be pickled: {exc}. "
            "Return plain data, or write the object to an output file."
        ) from exc


def dumps_exception(exc: BaseException) -> bytes:
    """Pickle an exception with its formatted traceback; falls back to a stand-in."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if not isinstance(exc, Exception):
        # SystemExit or KeyboardInterrupt must not end the *manager's* program.
        exc = RemoteException(type(exc).__qualname__, str(exc))
    try:
        data = _dumps((exc, tb))
        pickle.loads(data)  # an exception that pickles but cannot be rebuilt is no use
        return data
    except Exception:
        stand_in = RemoteException(type(exc).__qualname__, str(exc))
        return pickle.dumps((stand_in, tb), protocol=pickle.HIGHEST_PROTOCOL)


def loads_exception(data: bytes) -> BaseException:
    """Rebuild a remote exception with its traceback attached as ``__cause__``."""
    try:
        exc, tb = pickle.loads(data)
    except Exception as err:
        return SerializationError(
            f"the task raised an exception that cannot be unpickled here: {err}. "
            "Is the module defining it importable in the manager's environment?"
        )
    exc.__cause__ = RemoteTraceback(tb)
    return exc  # type: ignore[no-any-return]
