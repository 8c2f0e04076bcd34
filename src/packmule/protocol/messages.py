"""Typed control messages between the manager and its workers, and their codec.

Every message is a frozen dataclass encoded with msgpack as ``[tag, field...]``.
User payloads (pickled functions, arguments and results) travel as opaque
``bytes`` fields: nothing here unpickles anything.

The connection starts with the worker's :class:`Hello`; the manager answers
:class:`Welcome` or :class:`Reject` (wrong protocol version, bad size report).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, Union

import msgpack

from ..errors import ProtocolError

#: Bump when a message changes shape; peers of another version are refused.
PROTOCOL_VERSION = 2


class TaskStatus(str, enum.Enum):
    """How one attempt of a task ended on the worker."""

    SUCCESS = "success"  #: the function returned / the command ran (any exit code)
    EXCEPTION = "exception"  #: the user's function raised; ``value`` holds the pickled exception
    TIMEOUT = "timeout"  #: killed after its wall-time limit
    CRASHED = "crashed"  #: the process running the task died
    EXHAUSTED = "exhausted"  #: killed for using more memory or disk than allocated
    FORSAKEN = "forsaken"  #: the worker could not run it (did not fit); not the task's fault
    SETUP_ERROR = "setup_error"  #: the sandbox or an input file could not be prepared
    PACK_ERROR = "pack_error"  #: the task's environment pack cannot be used on this worker


class Message:
    """Base of all wire messages; subclasses are registered with :func:`message`."""

    TAG: ClassVar[int]


M = TypeVar("M", bound=type)

_BY_TAG: dict[int, type[Message]] = {}
_DECODERS: dict[type, list[Callable[[Any], Any]]] = {}
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_STRUCTS: dict[type, Callable[[Any], Any]] = {}


def _converter(hint: Any) -> Callable[[Any], Any]:
    """Build a function turning a decoded msgpack value into the hinted type."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _struct_decoder(hint)  # type: ignore[arg-type]
    if origin is list:
        (item,) = typing.get_args(hint)
        conv = _converter(item)
        return lambda v: [conv(x) for x in v]
    if origin in (Union, types.UnionType):
        return _as_is
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint
    return _as_is


def _as_is(v: Any) -> Any:
    return v


def _struct_decoder(cls: type) -> Callable[[Any], Any]:
    """The decoder of a registered structure (made once per structure)."""
    got = _STRUCTS.get(cls)
    if got is not None:
        return got
    convs = _DECODERS[cls]
    n = len(convs)
    # Only the fields that need converting are touched (most are taken as they are).
    todo = [(i, c) for i, c in enumerate(convs) if c is not _as_is]

    def decode(v: Any) -> Any:
        if not isinstance(v, list) or len(v) != n:
            raise ProtocolError(f"malformed {cls.__name__}: {v!r:.200}")
        for i, c in todo:
            v[i] = c(v[i])
        return cls(*v)

    _STRUCTS[cls] = decode
    return decode


def struct(cls: M) -> M:
    """Register a dataclass as a wire structure (encoded as the list of its fields)."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    _DECODERS[cls] = [_converter(hints[f.name]) for f in fields]
    _FIELD_NAMES[cls] = tuple(f.name for f in fields)
    return cls


def message(tag: int) -> Callable[[M], M]:
    """Register a message dataclass under a wire tag."""

    def wrap(cls: M) -> M:
        if tag in _BY_TAG:
            raise RuntimeError(f"duplicate message tag {tag}")
        struct(cls)
        cls.TAG = tag  # type: ignore[attr-defined]
        _BY_TAG[tag] = cls
        return cls

    return wrap


def _to_wire(value: Any) -> Any:
    names = _FIELD_NAMES.get(type(value))
    if names is not None:
        return [_to_wire(getattr(value, n)) for n in names]
    if type(value) is list:
        return [_to_wire(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def encode(msg: Message) -> bytes:
    """Serialise a message to bytes."""
    return msgpack.packb([msg.TAG, *_to_wire(msg)], use_bin_type=True)  # type: ignore[no-any-return]


def decode(data: bytes) -> Message:
    """Parse bytes into a message; anything malformed raises :class:`ProtocolError`."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError(f"undecodable message ({len(data)} bytes): {exc}") from None
    if not isinstance(raw, list) or not raw or not isinstance(raw[0], int):
        raise ProtocolError(f"malformed message: {raw!r:.200}")
    cls = _BY_TAG.get(raw[0])
    if cls is None:
        raise ProtocolError(f"unknown message tag {raw[0]}")
    try:
        return _struct_decoder(cls)(raw[1:])  # type: ignore[no-any-return]
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"malformed {cls.__name__}: {exc}") from None


def hello_versions(data: bytes) -> tuple[int, str] | None:
    """(protocol, packmule version) of a Hello of any protocol version, else None:
    its first fields never change, so a peer of another version is named clearly."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return None
    if (isinstance(raw, list) and len(raw) > 2 and raw[0] == Hello.TAG
            and isinstance(raw[1], int) and isinstance(raw[2], str)):
        return raw[1], raw[2]
    return None


# ---------------------------------------------------------------- structures


@struct
@dataclasses.dataclass(frozen=True, slots=True)
class InputFile:
    """An input placed in the sandbox as ``remote_name``.

    ``cache_name`` non-empty: taken from the worker's cache (sent earlier with
    :class:`PutFile`); otherwise ``data`` holds the content.
    """

    remote_name: str
    cache_name: str
    data: bytes


@struct
@dataclasses.dataclass(frozen=True, slots=True)
class TaskSpec:
    """One attempt of a task, as sent to a worker."""

    task_id: int
    attempt: int
    kind: str  # "python" or "shell"
    payload: bytes  # python: pickled (fn, args, kwargs); shell: b""
    command: str
    allocation: dict[str, int]  # cores, memory, disk, gpus
    env: dict[str, str]
    inputs: list[InputFile]
    outputs: list[str]
    timeout: float  # wall-time limit in seconds, 0 for none
    pack: str  # digest of the environment pack to run in (sent with PutPack), "" for none


@struct
@dataclasses.dataclass(frozen=True, slots=True)
class TaskResult:
    """How one attempt ended, as reported by the worker."""

    task_id: int
    attempt: int
    status: TaskStatus
    value: bytes  # pickled return value or exception
    exit_code: int
    stdout: bytes
    stderr: bytes
    outputs: dict[str, bytes]
    message: str  # what went wrong, for the non-user failures
    wall_time: float
    gpu_ids: list[str]
    messages: list[bytes]  # monitoring messages the task left in $PACKMULE_RADIO_DIR
    measured: dict[str, float]  # see worker/monitor.py: memory, disk (MB), cores, wall_time...
    exceeded: list[str]  # EXHAUSTED: the resources that went over their allocation


# ---------------------------------------------------------------- worker -> manager


@message(1)
@dataclasses.dataclass(frozen=True, slots=True)
class Hello(Message):
    protocol: int
    version: str
    worker_id: str
    hostname: str
    pid: int
    resources: dict[str, int]
    packs: list[str]  # digests of the environment packs it has cached


@message(2)
@dataclasses.dataclass(frozen=True, slots=True)
class Results(Message):
    results: list[TaskResult]


@message(3)
@dataclasses.dataclass(frozen=True, slots=True)
class WorkerHeartbeat(Message):
    running: int


@message(4)
@dataclasses.dataclass(frozen=True, slots=True)
class Goodbye(Message):
    reason: str


@message(5)
@dataclasses.dataclass(frozen=True, slots=True)
class PackState(Message):
    """A pack is ready on the worker (sent after ``Welcome`` for each one it has
    cached, and when one arrives), or ``ok`` false: it cannot be used there
    (``resend``: it arrived damaged; send it again with its next task)."""

    digest: str
    ok: bool
    message: str
    resend: bool
    transfer: int  # the PutPack transfer this answers; 0: none (the worker lacks the pack)


@message(6)
@dataclasses.dataclass(frozen=True, slots=True)
class PackProgress(Message):
    """Bytes of a pack received so far: the manager sends more (flow control)."""

    digest: str
    transfer: int
    received: int


# ---------------------------------------------------------------- manager -> worker


@message(10)
@dataclasses.dataclass(frozen=True, slots=True)
class Welcome(Message):
    protocol: int
    version: str
    heartbeat_interval: float
    lease: float


@message(11)
@dataclasses.dataclass(frozen=True, slots=True)
class Reject(Message):
    reason: str


@message(12)
@dataclasses.dataclass(frozen=True, slots=True)
class PutFile(Message):
    cache_name: str
    data: bytes


@message(13)
@dataclasses.dataclass(frozen=True, slots=True)
class Dispatch(Message):
    tasks: list[TaskSpec]


@message(14)
@dataclasses.dataclass(frozen=True, slots=True)
class Kill(Message):
    task_id: int
    attempt: int


@message(15)
@dataclasses.dataclass(frozen=True, slots=True)
class ManagerHeartbeat(Message):
    pass


@message(16)
@dataclasses.dataclass(frozen=True, slots=True)
class Exit(Message):
    reason: str


@message(17)
@dataclasses.dataclass(frozen=True, slots=True)
class PutPack(Message):
    """A piece of an environment pack: the bytes at ``offset`` of its tar
    (``size`` bytes in all) follow as a second, raw frame."""

    digest: str
    sha256: str
    size: int
    offset: int
    transfer: int  # numbers one sending of a pack to a worker (a resend gets a new one)
