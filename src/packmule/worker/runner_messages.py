"""Typed messages between the worker daemon and its runners, and their codec.

A runner receives one :class:`Run` per task over its :class:`~.runner.Channel`
and answers one :class:`Done`. Each is a named tuple with a type for every
field; on the wire it is ``[class name, field...]`` in msgpack, and
:func:`decode` checks the name, the number of fields, each field's type and
the message's own ranges (:meth:`Done.problem`), as the wire protocol's
decoder checks a manager's or a worker's messages. Anything malformed raises
:class:`~packmule.errors.ProtocolError`: the daemon makes that the task's
failure (the task may have written into its runner's channel, or the runner
is another packmule version's), never its own.

Why not the wire protocol's dataclasses (``protocol/messages.py``): a runner
is started for every warm slot and after every killed task, and must not
import ``typing`` or ``dataclasses`` (``tests/test_footprint.py``; see
``runner.py``). So the classes here are ``typing.NamedTuple`` for the type
checker and, at run time, tuples made by :class:`Record` from the same class
bodies, with the field types read from their annotations.
"""

from __future__ import annotations

import collections
import math

import msgpack

from ..errors import ProtocolError

#: ``typing`` would cost each runner 1.7 MB and 15 ms; only type checkers need it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar
    from typing import NamedTuple as Record

    R = TypeVar("R", "Run", "Done")


#: Captured stdout/stderr beyond this many bytes is cut (the end is kept).
OUTPUT_LIMIT = 1 << 20
#: The marker put before the end of a cut output (``OUTPUT_LIMIT`` formatted in).
CUT_MARKER = b"[... output cut, last %d bytes follow ...]\n"
#: The longest stdout or stderr a runner may send.
MAX_OUTPUT = OUTPUT_LIMIT + len(CUT_MARKER) + 16


def _is_str(v: Any) -> bool:
    return type(v) is str


def _is_bytes(v: Any) -> bool:
    return type(v) is bytes


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_float(v: Any) -> bool:
    return type(v) in (float, int) and math.isfinite(v)


def _is_str_dict(v: Any) -> bool:
    return type(v) is dict and all(type(k) is str and type(x) is str for k, x in v.items())


#: The field types a record may use, as written in its annotations, and their checks.
_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": _is_str, "bytes": _is_bytes, "int": _is_int, "float": _is_float,
    "dict[str, str]": _is_str_dict,
}
#: Each record class: its fields and their (annotation, check).
_FIELDS: dict[type, tuple[tuple[str, str, Callable[[Any], bool]], ...]] = {}

if not TYPE_CHECKING:

    class _RecordMeta(type):
        """Turns a class body of annotated fields into a named tuple (as
        ``typing.NamedTuple`` does, without importing ``typing``)."""

        def __new__(mcs, name, bases, ns):
            if not bases:
                return super().__new__(mcs, name, bases, ns)
            hints = ns.get("__annotations__", {})
            try:
                fields = tuple((f, h, _CHECKS[h]) for f, h in hints.items())
            except KeyError as exc:
                raise TypeError(f"{name}: a record field cannot be {exc.args[0]!r}; "
                                f"use one of {', '.join(_CHECKS)}") from None
            base = collections.namedtuple(name, [f for f, _, _ in fields])
            body = {k: v for k, v in ns.items()
                    if k not in ("__annotations__", "__dict__", "__weakref__")}
            cls = type.__new__(type, name, (base,), {**body, "__slots__": ()})
            _FIELDS[cls] = fields
            return cls

    class Record(metaclass=_RecordMeta):
        """Base of the messages below (``typing.NamedTuple`` for type checkers)."""


class Run(Record):
    """Worker -> runner: run one task."""

    kind: str  # "python" or "shell"
    payload: bytes  # python: the pickled (fn, args, kwargs)
    command: str  # shell: the command line for /bin/sh -c
    sandbox: str  # the directory the task runs in
    env: dict[str, str]  # set for the task, then put back
    seq: int  # this task's number on the runner's board (see runner.Board)
    limit_file: str  # the runner cgroup's memory limit file ("": none)
    memory_limit: int  # bytes the task may add to the runner (0: no limit)

    def problem(self) -> str:
        if self.kind not in ("python", "shell"):
            return f"kind must be 'python' or 'shell', got {self.kind!r:.40}"
        if self.seq <= 0 or self.memory_limit < 0:
            return f"seq {self.seq} and memory_limit {self.memory_limit} must be positive"
        return ""


#: How a task may end, as a runner reports it.
DONE_STATUSES = ("success", "exception", "exhausted")


class Done(Record):
    """Runner -> worker: how the task ended, and what the runner measured."""

    status: str  # one of DONE_STATUSES ("exhausted": over its limit before it started)
    value: bytes  # pickled return value or exception (python tasks)
    exit_code: int  # shell tasks: the command's; -9: killed (e.g. by the cgroup)
    stdout: bytes  # the end of what it wrote, at most MAX_OUTPUT bytes
    stderr: bytes
    wall_time: float  # seconds
    peak_rss: int  # bytes the task added to the runner (python) or its child's peak (shell)
    baseline: int  # the runner's resident set when the task began (bytes)
    rss_after: int  # the runner's resident set after the task (bytes)
    cpu_time: float  # seconds, the task's own and its waited-for children's
    bytes_read: int
    bytes_written: int
    killed: int  # processes the task left running, killed by the runner at its end
    unkillable: int  # of those, how many had not died after KILL_WAIT seconds

    def problem(self) -> str:
        if self.status not in DONE_STATUSES:
            return f"status must be one of {', '.join(DONE_STATUSES)}, got {self.status!r:.40}"
        if len(self.stdout) > MAX_OUTPUT or len(self.stderr) > MAX_OUTPUT:
            return f"stdout or stderr longer than {MAX_OUTPUT} bytes"
        counts = (self.wall_time, self.peak_rss, self.baseline, self.rss_after, self.cpu_time,
                  self.bytes_read, self.bytes_written, self.killed, self.unkillable)
        if min(counts) < 0:
            return f"a measurement is negative: {counts}"
        return ""


def encode(msg: Run | Done) -> bytes:
    """A message as the bytes of one channel frame."""
    return msgpack.packb([type(msg).__name__, *msg], use_bin_type=True)  # type: ignore[no-any-return]


def encode_run(msg: Run, large: int = 1 << 16) -> list[bytes]:
    """:func:`encode`'s bytes for a Run in consecutive parts, a payload of at least
    ``large`` bytes a part of its own, not copied (a task's 300 MB argument goes to its
    runner without a copy that holds up the worker)."""
    if len(msg.payload) < large:
        return [encode(msg)]  # (most tasks: as fast as encode)
    kind, payload, *rest = msg
    n = len(payload)  # msgpack's bin header: the shortest that holds n
    head = b"\xc5" + n.to_bytes(2, "big") if n < 1 << 16 else b"\xc6" + n.to_bytes(4, "big")
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    packer.pack_array_header(len(msg) + 1)
    packer.pack(type(msg).__name__)
    packer.pack(kind)
    start = packer.bytes() + head
    packer.reset()
    for value in rest:
        packer.pack(value)
    return [start, payload, packer.bytes()]


def decode(cls: type[R], data: bytes | bytearray) -> R:
    """The ``cls`` message in ``data``; ProtocolError saying what is wrong if it is not one."""
    name = cls.__name__
    try:
        raw = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise ProtocolError(f"an undecodable {name} ({len(data)} bytes): {exc}") from None
    fields = _FIELDS[cls]
    if type(raw) is not list or not raw or raw[0] != name:
        raise ProtocolError(f"expected a {name}, got {raw!r:.80}")
    if len(raw) != len(fields) + 1:
        raise ProtocolError(f"a {name} has {len(fields)} fields, this one {len(raw) - 1}")
    for (field, hint, check), value in zip(fields, raw[1:], strict=True):
        if not check(value):
            raise ProtocolError(f"malformed {name}: {field} must be {hint}, got "
                                f"{type(value).__name__} {value!r:.60}")
    msg = cls(*raw[1:])
    problem = msg.problem()
    if problem:
        raise ProtocolError(f"malformed {name}: {problem}")
    return msg
