"""What users submit: shell :class:`Task`, :class:`PythonTask`, and their :class:`File` s."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .resources import Resources
from .serialize import dumps_call

if TYPE_CHECKING:
    from .envpack import Pack


@dataclass(frozen=True)
class File:
    """A file moved between the manager's machine and the task's sandbox.

    ``remote_name`` is its name inside the sandbox (default: the base name).
    An input with ``cache=True`` is kept on each worker after its first use
    and not sent again while the local file's size and modification time
    stay the same. An output with ``optional=True`` may be absent: the task
    does not fail for want of it.
    """

    local_path: str
    remote_name: str | None = None
    cache: bool = False
    optional: bool = False

    @property
    def sandbox_name(self) -> str:
        name = self.remote_name or os.path.basename(self.local_path)
        if not name or os.path.isabs(name) or ".." in name.split("/") or "\0" in name:
            raise ValueError(
                f"bad sandbox name {name!r} for {self.local_path}: use a relative name"
            )
        return name


@dataclass(frozen=True)
class CommandResult:
    """What a shell :class:`Task` produced: its future resolves to this."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def _coerce_files(files: Iterable[File | str]) -> tuple[File, ...]:
    out = tuple(f if isinstance(f, File) else File(os.fspath(f)) for f in files)
    for f in out:
        f.sandbox_name  # noqa: B018 - validates the name early
    return out


#: No environment variables (shared: a task's own ``env`` is a dict only when given).
_NO_ENV: Mapping[str, str] = MappingProxyType({})


class Task:
    """A shell command run in its own sandbox on a worker.

    ``resources`` is a :class:`Resources` or dict (partial requests are
    filled in proportionally; none at all takes a whole worker). Higher
    ``priority`` runs first. ``max_retries`` is how many more times the task
    is tried after it fails by itself (non-zero exit is not a failure for a
    shell task; a timeout or a crash is; None: no limit); worker losses
    never use it up.
    ``timeout`` is a wall-time limit in seconds.

    Set :attr:`label` before submitting to name the task in the manager's
    warnings, its event log and ``packmule status`` (default: the command, or
    a :class:`PythonTask`'s function name).
    """

    kind = "shell"

    # Filled in by the manager. Until then these class-level values stand in: a queued
    # task holds only what it was given (a million of them are queued at times).
    id: int | None = None
    #: The name it goes by in warnings, the event log and ``packmule status``;
    #: None: :meth:`describe` names it by its command or function.
    label: str | None = None
    attempts = 0
    worker: str | None = None
    hostname: str | None = None
    allocation: Resources | None = None
    gpu_ids: Sequence[str] = ()
    exit_code: int | None = None
    stdout = ""
    stderr = ""
    wall_time = 0.0
    #: What the worker measured of the last attempt: memory and disk (MB, peak),
    #: cores (peak) and cores_avg, wall_time and cpu_time (s), bytes_read/written.
    measured: Mapping[str, float] = MappingProxyType({})
    submit_time = 0.0
    start_time = 0.0
    finish_time = 0.0
    #: Run inside an environment pack built from what these functions import
    #: (PythonTask with ``pack=True``), plus ``extra_pkgs``.
    pack_functions: tuple[Callable[..., Any], ...] = ()
    extra_pkgs: tuple[str, ...] = ()
    #: The pack it runs in, once built (set by the manager).
    pack: Pack | None = None
    tag: str | None = None
    _future: Future[Any] | None = None

    @property
    def future(self) -> Future[Any] | None:
        """Its future, once submitted (set by the manager)."""
        return self._future

    @future.setter
    def future(self, fut: Future[Any] | None) -> None:
        # The future carries its task's category, for whoever has only the future
        # (``packmule.progress(futures)``): one shared string, no reference to the task.
        if fut is not None:
            fut.category = self.category  # type: ignore[attr-defined]
        self._future = fut

    def __init__(
        self,
        command: str,
        *,
        resources: Resources | Mapping[str, Any] | None = None,
        category: str | None = None,
        priority: float = 0,
        max_retries: int | None = 0,
        env: Mapping[str, str] | None = None,
        input_files: Iterable[File | str] = (),
        output_files: Iterable[File | str] = (),
        timeout: float | None = None,
        tag: str | None = None,
    ) -> None:
        if not isinstance(command, str) or not command.strip():
            raise ValueError(f"command must be a non-empty string, got {command!r}")
        self.command = command
        self._init_common(
            resources, category, priority, max_retries, env, input_files, output_files, timeout, tag
        )

    def _init_common(
        self,
        resources: Resources | Mapping[str, Any] | None,
        category: str | None,
        priority: float,
        max_retries: int | None,
        env: Mapping[str, str] | None,
        input_files: Iterable[File | str],
        output_files: Iterable[File | str],
        timeout: float | None,
        tag: str | None,
    ) -> None:
        self.resources = Resources.coerce(resources)
        self.category = category or "default"
        if isinstance(priority, bool) or not isinstance(priority, (int, float)):
            raise ValueError(f"priority must be a number, got {priority!r}")
        self.priority = float(priority)
        if max_retries is not None and (
            isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0
        ):
            raise ValueError(
                f"max_retries must be a whole number >= 0 or None (no limit), got {max_retries!r}"
            )
        self.max_retries = max_retries
        self.env: Mapping[str, str] = (
            {str(k): str(v) for k, v in env.items()} if env else _NO_ENV)
        self.input_files = _coerce_files(input_files)
        self.output_files = _coerce_files(output_files)
        if timeout is not None and (not isinstance(timeout, (int, float))
                                    or not 0 < timeout < math.inf):
            raise ValueError(f"timeout must be a positive, finite number of seconds, got "
                             f"{timeout!r}")
        self.timeout = float(timeout) if timeout else 0.0
        if tag is not None:
            self.tag = tag

    def payload(self) -> bytes:
        """The bytes sent to the worker besides the command (none for shell tasks)."""
        return b""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.describe()}>"

    def describe(self) -> str:
        """What the task is called: its :attr:`label`, else the start of its command."""
        if self.label:
            return self.label
        line = " ".join(self.command.split())  # one line, for logs and tables
        return line if len(line) <= 60 else line[:57] + "..."


class PythonTask(Task):
    """A Python call ``fn(*args, **kwargs)`` run in a warm interpreter on a worker.

    Its future resolves to the return value, or raises the function's own
    exception with the remote traceback as ``__cause__``. The call is pickled
    (cloudpickle: closures and lambdas work) when the task is submitted.

    ``pack=True`` runs it inside an environment pack: the interpreter and
    every package ``fn`` imports (with the user's own modules), plus the
    distributions named in ``extra_pkgs``, built in the background and sent
    once to each worker (see docs/packs.md).
    """

    kind = "python"

    def __init__(
        self,
        fn: Callable[..., Any],
        *args: Any,
        resources: Resources | Mapping[str, Any] | None = None,
        category: str | None = None,
        priority: float = 0,
        max_retries: int | None = 0,
        env: Mapping[str, str] | None = None,
        input_files: Iterable[File | str] = (),
        output_files: Iterable[File | str] = (),
        timeout: float | None = None,
        tag: str | None = None,
        pack: bool = False,
        extra_pkgs: Iterable[str] = (),
        **kwargs: Any,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"PythonTask needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.command = ""
        self._init_common(
            resources, category, priority, max_retries, env, input_files, output_files, timeout, tag
        )
        if isinstance(extra_pkgs, str):
            raise TypeError(f"extra_pkgs takes a list of distribution names, got {extra_pkgs!r}")
        self.extra_pkgs = tuple(extra_pkgs)
        if pack:
            self.pack_functions = (fn,)
        elif self.extra_pkgs:
            raise ValueError("extra_pkgs only applies with pack=True")

    def payload(self) -> bytes:
        return dumps_call(self.fn, self.args, self.kwargs)

    def describe(self) -> str:
        """Its :attr:`label`, else the function's qualified name."""
        if self.label:
            return self.label
        name = getattr(self.fn, "__qualname__", None)
        return name if isinstance(name, str) else repr(self.fn)
