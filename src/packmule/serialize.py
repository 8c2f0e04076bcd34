"""Pickling of Python calls, results and exceptions (cloudpickle).

Only bytes that arrived over an authenticated connection are ever passed to
:func:`loads`: calls on the worker (from the manager), results and exceptions
on the manager (from its workers).
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Callable
from typing import Any

import cloudpickle

from .errors import RemoteException, RemoteTraceback, SerializationError


def dumps_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Pickle a call; raises SerializationError naming what could not be pickled."""
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
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return]
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
        data: bytes = cloudpickle.dumps((exc, tb), protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(data)  # an exception that pickles but cannot be rebuilt is no use
        return data
    except Exception:
        stand_in = RemoteException(type(exc).__qualname__, str(exc))
        return cloudpickle.dumps((stand_in, tb), protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return]


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
