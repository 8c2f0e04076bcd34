"""Typed control messages between the manager and its workers, and their codec.

Every message is a frozen dataclass encoded with msgpack as ``[tag, field...]``.
User payloads (pickled functions, arguments and results) travel as opaque
``bytes`` fields: nothing here unpickles anything.

The connection starts with the worker's :class:`Hello`; the manager answers
:class:`Welcome` or :class:`Reject` (wrong protocol version, bad size report).

Decoding checks every field of every message for its type and range: the
checks are compiled from each dataclass's type hints when it is registered
(bounds in ``Annotated`` hints, else the defaults below), so a new message is
covered by its definition alone. A message that fails raises
:class:`ProtocolError` naming the message and the field.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Callable
from struct import Struct
from struct import error as StructError
from typing import Annotated, Any, ClassVar, TypeVar

import msgpack

from ..errors import ProtocolError
from ..resources import FIELDS as RESOURCE_FIELDS

#: Bump when a message changes shape or a message is added; peers of another version
#: are refused.
PROTOCOL_VERSION = 5


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

# ---------------------------------------------------------------- bounds
#: Integers travel as signed 64-bit values at most (msgpack's range is wider).
INT_MAX = 2**63 - 1
#: The largest float any field may hold (seconds, megabytes, cores: far beyond sense).
FLOAT_MAX = 1e18
#: Characters in a string field, unless its hint says otherwise (error messages,
#: commands and environment values are far shorter: the kernel caps one argument
#: or environment string at 128 KiB).
MAX_TEXT = 1 << 20
#: Characters in a name: ids, digests, host names, file names (Linux's PATH_MAX).
MAX_NAME = 4096
#: Items in a list or dict field.
MAX_ITEMS = 1 << 20


@dataclasses.dataclass(frozen=True)
class Range:
    """A number field's least and greatest value (in its ``Annotated`` hint)."""

    low: float
    high: float


@dataclasses.dataclass(frozen=True)
class MaxLen:
    """The most characters (str) or items (list, dict) a field may hold."""

    n: int


@dataclasses.dataclass(frozen=True)
class OneOf:
    """The values a string field may take."""

    values: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Form:
    """The shape of a string naming a file: ``relative`` (a path inside a sandbox:
    not absolute, no ``..``), ``file`` (one file name, no ``/``), ``file-or-empty``."""

    kind: str


def _relative(s: str) -> bool:
    return bool(s) and "\0" not in s and not s.startswith("/") and ".." not in s.split("/")


def _file(s: str) -> bool:
    return bool(s) and "\0" not in s and "/" not in s and s not in (".", "..")


_FORMS: dict[str, tuple[Callable[[str], bool], str]] = {
    "relative": (_relative, "a relative path without '..'"),
    "file": (_file, "a file name (no '/')"),
    "file-or-empty": (lambda s: not s or _file(s), "empty or a file name (no '/')"),
}

#: An integer that may be negative (exit codes).
Signed = Annotated[int, Range(-INT_MAX - 1, INT_MAX)]
#: An identifier, digest, host name or dict key.
Name = Annotated[str, MaxLen(MAX_NAME)]
#: A path inside a task's sandbox.
SandboxPath = Annotated[str, MaxLen(MAX_NAME), Form("relative")]
#: Seconds between two events that must not be zero (heartbeats, leases).
Period = Annotated[float, Range(1e-6, 1e9)]
#: The name of a resource (a field of :class:`~packmule.resources.Resources`).
ResourceName = Annotated[str, OneOf(RESOURCE_FIELDS)]


# ---------------------------------------------------------------- registry
_BY_TAG: dict[int, type[Message]] = {}
#: The messages each side sends: tags 1-9 are a worker's, 10 and up the manager's
#: (and :class:`Piece`, which both send).
FROM_WORKER: list[type[Message]] = []
FROM_MANAGER: list[type[Message]] = []
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
#: Each structure's decoder: checks every field (type and range) and builds it.
_STRUCTS: dict[type, Callable[[Any], Any]] = {}
#: Each structure's field hints, as registered (with their ``Annotated`` bounds).
FIELD_HINTS: dict[type, dict[str, Any]] = {}


class _Invalid(Exception):
    """A field failed its check (turned into a :class:`ProtocolError` by :func:`decode`)."""

    def __init__(self, path: str, expected: str, value: Any) -> None:
        super().__init__(path)
        self.path, self.expected, self.value = path, expected, value

    def within(self, outer: str) -> _Invalid:
        self.path = f"{outer}.{self.path}" if self.path else outer
        return self

    def __str__(self) -> str:
        v = self.value
        if isinstance(v, (str, bytes, list, dict)) and len(v) > 40:
            got = f"{type(v).__name__} of length {len(v)}"
        else:
            got = f"{type(v).__name__} {v!r:.80}"
        where = f"field '{self.path}'" if self.path else "the message"
        return f"{where} must be {self.expected}, got {got}"


def _unwrap(hint: Any) -> tuple[Any, list[Any]]:
    """(the bare type, the bounds of its ``Annotated`` wrapper)."""
    if typing.get_origin(hint) is Annotated:
        base, *marks = typing.get_args(hint)
        inner, more = _unwrap(base)
        return inner, [*more, *marks]
    return hint, []


def _num(v: int) -> str:
    return {INT_MAX: "2**63-1", -INT_MAX - 1: "-2**63"}.get(v, str(v))


def _describe(hint: Any) -> str:
    base, _ = _unwrap(hint)
    origin = typing.get_origin(base)
    if origin is list:
        return f"list[{_describe(typing.get_args(base)[0])}]"
    if origin is dict:
        k, v = typing.get_args(base)
        return f"dict[{_describe(k)}, {_describe(v)}]"
    return getattr(base, "__name__", str(base))


class _Compiler:
    """Writes the source of a structure's decoder: one ``if`` per check, no calls for
    plain fields, so that checking costs little on the hot path (results, heartbeats).
    New fields and messages are covered by their type hints alone."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.env: dict[str, Any] = {"_Invalid": _Invalid}
        self._n = 0

    def const(self, value: Any) -> str:
        self._n += 1
        name = f"_c{self._n}"
        self.env[name] = value
        return name

    def local(self) -> str:
        self._n += 1
        return f"_v{self._n}"

    def emit(self, ind: int, line: str) -> None:
        self.lines.append("    " * ind + line)

    def check(self, hint: Any, var: str, path: str, ind: int) -> bool:
        """Lines that check ``var`` against ``hint``, converting it in place for enums
        and structures (then True); ``path``: an expression naming the field."""
        base, marks = _unwrap(hint)
        rng = next((b for b in marks if isinstance(b, Range)), None)
        size = next((b.n for b in marks if isinstance(b, MaxLen)), None)
        origin = typing.get_origin(base)

        def fail(expected: str) -> str:
            return f"raise _Invalid({path}, {self.const(expected)}, {var})"

        if base is bool:
            self.emit(ind, f"if type({var}) is not bool: {fail('a bool')}")
        elif base is int:
            lo, hi = (int(rng.low), int(rng.high)) if rng else (0, INT_MAX)
            self.emit(ind, f"if type({var}) is not int or not {lo} <= {var} <= {hi}: "
                           f"{fail(f'an int in [{_num(lo)}, {_num(hi)}]')}")
        elif base is float:
            flo, fhi = (rng.low, rng.high) if rng else (0.0, FLOAT_MAX)
            # (NaN and the infinities fail the comparison.)
            self.emit(ind, f"if (type({var}) is not float and type({var}) is not int) "
                           f"or not {flo!r} <= {var} <= {fhi!r}: "
                           f"{fail(f'a finite number in [{flo:g}, {fhi:g}]')}")
        elif base is str:
            n = size if size is not None else MAX_TEXT
            self.emit(ind, f"if type({var}) is not str or len({var}) > {n}: "
                           f"{fail(f'a str of at most {n} characters')}")
            for mark in marks:
                if isinstance(mark, OneOf):
                    allowed = ", ".join(map(repr, mark.values))
                    self.emit(ind, f"if {var} not in {self.const(frozenset(mark.values))}: "
                                   f"{fail('one of ' + allowed)}")
                elif isinstance(mark, Form):
                    test, what = _FORMS[mark.kind]
                    self.emit(ind, f"if not {self.const(test)}({var}): {fail(what)}")
        elif base is bytes:
            # (a memoryview only from decode_joined: a large field not copied)
            self.emit(ind, f"if type({var}) is not bytes and type({var}) is not memoryview: "
                           f"{fail('bytes')}")
        elif isinstance(base, type) and issubclass(base, enum.Enum):
            values = {e.value: e for e in base}
            (kind,) = {type(v) for v in values}
            allowed = ", ".join(repr(v) for v in values)
            t = self.local()
            self.emit(ind, f"{t} = {self.const(values)}.get({var}) "
                           f"if type({var}) is {self.const(kind)} else None")
            self.emit(ind, f"if {t} is None: {fail('one of ' + allowed)}")
            self.emit(ind, f"{var} = {t}")
            return True
        elif base in _STRUCTS:
            self.emit(ind, "try:")
            self.emit(ind + 1, f"{var} = {self.const(_STRUCTS[base])}({var})")
            self.emit(ind, "except _Invalid as _e:")
            self.emit(ind + 1, f"raise _e.within({path}) from None")
            return True
        elif origin is list:
            (item,) = typing.get_args(base)
            n = size if size is not None else MAX_ITEMS
            self.emit(ind, f"if type({var}) is not list or len({var}) > {n}: "
                           f"{fail(f'a {_describe(base)} of at most {n} items')}")
            i, e = self.local(), self.local()
            self.emit(ind, f"for {i}, {e} in enumerate({var}):")
            if self.check(item, e, f"'%s[%d]' % ({path}, {i})", ind + 1):
                self.emit(ind + 1, f"{var}[{i}] = {e}")
        elif origin is dict:
            key, value = typing.get_args(base)
            n = size if size is not None else MAX_ITEMS
            self.emit(ind, f"if type({var}) is not dict or len({var}) > {n}: "
                           f"{fail(f'a {_describe(base)} of at most {n} items')}")
            k, e = self.local(), self.local()
            self.emit(ind, f"for {k}, {e} in {var}.items():")
            converts = self.check(key, k, f"'%s (key %r)' % ({path}, {k})", ind + 1)
            converts |= self.check(value, e, f"'%s[%r]' % ({path}, {k})", ind + 1)
            if converts:
                raise TypeError(f"dict keys or values that convert have no wire check: {base}")
        else:
            raise TypeError(f"no wire check for the type {base!r}: add one in messages.py")
        return False


def struct(cls: M) -> M:
    """Register a dataclass as a wire structure (encoded as the list of its fields),
    and compile its decoder from the field hints."""
    hints = typing.get_type_hints(cls, include_extras=True)
    names = tuple(f.name for f in dataclasses.fields(cls))
    c = _Compiler()
    args = ", ".join(f"f_{n}" for n in names)
    c.emit(0, "def decode(v):")
    c.emit(1, f"if type(v) is not list or len(v) != {len(names)}:")
    shape = c.const(f"a list of {len(names)} field{'' if len(names) == 1 else 's'} "
                    f"({cls.__name__})")
    c.emit(2, f"raise _Invalid('', {shape}, v)")
    if names:
        c.emit(1, f"{args}{',' if len(names) == 1 else ''} = v")
    for n in names:
        c.check(hints[n], f"f_{n}", repr(n), 1)
    c.emit(1, f"return {c.const(cls)}({args})")
    exec("\n".join(c.lines), c.env)  # the source built above from the type hints
    _STRUCTS[cls] = c.env["decode"]
    _FIELD_NAMES[cls] = names
    FIELD_HINTS[cls] = {n: hints[n] for n in names}
    return cls


def message(tag: int) -> Callable[[M], M]:
    """Register a message dataclass under a wire tag."""

    def wrap(cls: M) -> M:
        if tag in _BY_TAG or tag < 1:
            raise RuntimeError(f"duplicate or bad message tag {tag}")
        struct(cls)
        cls.TAG = tag  # type: ignore[attr-defined]
        _BY_TAG[tag] = cls
        (FROM_WORKER if tag < 10 else FROM_MANAGER).append(cls)
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


def encode_parts(msg: Message, large: int) -> list[bytes | memoryview]:
    """The encoding of ``msg`` in consecutive parts (joined, they are :func:`encode`'s
    bytes) in which each ``bytes`` field in a list of at least ``large`` bytes is a part
    of its own, not copied: a task's 300 MB argument is sent without a 300 MB copy. (A
    ``memoryview`` of bytes, such as a shared payload's pages, counts as bytes.)"""
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    parts: list[bytes | memoryview] = []
    _walk([msg.TAG, *_to_wire(msg)], large, packer, parts)
    parts.append(packer.bytes())
    return parts


def _walk(value: Any, large: int, packer: msgpack.Packer,
          parts: list[bytes | memoryview]) -> None:
    """:func:`encode_parts` of one value. (Not a closure: a recursive closure is a
    reference cycle, which would hold a 300 MB argument until the garbage collector ran.)"""
    if type(value) is list:
        packer.pack_array_header(len(value))
        for item in value:
            _walk(item, large, packer, parts)
    elif (type(value) is bytes or type(value) is memoryview) and len(value) >= large:
        n = len(value)  # msgpack's bin header: the shortest that holds n
        head = (b"\xc4" + n.to_bytes(1, "big") if n < 1 << 8 else
                b"\xc5" + n.to_bytes(2, "big") if n < 1 << 16 else
                b"\xc6" + n.to_bytes(4, "big"))
        parts.extend((packer.bytes() + head, value))
        packer.reset()
    else:
        packer.pack(value)


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Parse bytes into a message, checking every field's type and range; anything
    malformed raises :class:`ProtocolError` naming the message and the field."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError(f"undecodable message ({len(data)} bytes): {exc}") from None
    return _message(raw)


#: In a message joined from pieces (:func:`decode_joined`), a ``bytes`` field at least
#: this large is a view of the joined buffer instead of a copy.
VIEW_BYTES = 1 << 20


def decode_joined(data: bytearray) -> Message:
    """:func:`decode` for a message joined from pieces: ``bytes`` fields of at least
    :data:`VIEW_BYTES` are read-only memoryviews of ``data`` (which they keep alive), not
    copies. Copying a 300 MB argument took seconds on a busy machine, a silence that
    could cost a worker its lease (or the loop all of them)."""
    if len(data) < VIEW_BYTES:
        return decode(data)
    view = memoryview(data).toreadonly()
    try:
        raw, end = _unpack(view, 0)
    except (IndexError, ValueError, TypeError, StructError, RecursionError) as exc:
        raise ProtocolError(f"undecodable message ({len(data)} bytes): {exc}") from None
    if end != len(data):
        raise ProtocolError(f"undecodable message ({len(data)} bytes): "
                            f"{len(data) - end} bytes after its end")
    return _message(raw)


_FIXED = {0xC0: None, 0xC2: False, 0xC3: True}
#: Numbers: format byte -> their layout.
_NUMBERS = {b: Struct(f) for b, f in {0xCA: ">f", 0xCB: ">d", 0xCC: ">B", 0xCD: ">H",
                                      0xCE: ">I", 0xCF: ">Q", 0xD0: ">b", 0xD1: ">h",
                                      0xD2: ">i", 0xD3: ">q"}.items()}
#: Lengths of str (s), bin (b), array (a) and map (m): format byte -> (kind, layout).
_SIZED = {b: (kind, Struct(f)) for b, (kind, f) in {
    0xD9: ("s", ">B"), 0xDA: ("s", ">H"), 0xDB: ("s", ">I"), 0xC4: ("b", ">B"),
    0xC5: ("b", ">H"), 0xC6: ("b", ">I"), 0xDC: ("a", ">H"), 0xDD: ("a", ">I"),
    0xDE: ("m", ">H"), 0xDF: ("m", ">I")}.items()}


def _unpack(v: memoryview, i: int) -> tuple[Any, int]:
    """The msgpack value at ``v[i]`` (as ``msgpack.unpackb(raw=False)`` reads it, large
    bin values as views) and the index after it. Ext types are refused (ValueError)."""
    b = v[i]
    i += 1
    if b <= 0x7F:
        return b, i
    if b >= 0xE0:
        return b - 0x100, i
    if 0xA0 <= b <= 0xBF:
        kind, n = "s", b & 0x1F
    elif 0x90 <= b <= 0x9F:
        kind, n = "a", b & 0x0F
    elif 0x80 <= b <= 0x8F:
        kind, n = "m", b & 0x0F
    elif b in _FIXED:
        return _FIXED[b], i
    elif b in _NUMBERS:
        layout = _NUMBERS[b]
        return layout.unpack_from(v, i)[0], i + layout.size
    elif b in _SIZED:
        kind, layout = _SIZED[b]
        n = layout.unpack_from(v, i)[0]
        i += layout.size
    else:
        raise ValueError(f"unsupported msgpack type 0x{b:02x}")
    if kind == "s" or kind == "b":
        if i + n > len(v):
            raise ValueError("truncated")
        chunk = v[i:i + n]
        if kind == "s":
            return str(chunk, "utf-8"), i + n
        return (chunk if n >= VIEW_BYTES else chunk.tobytes()), i + n
    if (kind == "a" or kind == "m") and n > MAX_ITEMS:  # (refused on decode anyway: not
        raise ValueError(f"{n} items, more than {MAX_ITEMS}")  # parsed item by item first)
    if kind == "a":
        items = []
        for _ in range(n):
            item, i = _unpack(v, i)
            items.append(item)
        return items, i
    out = {}
    for _ in range(n):
        key, i = _unpack(v, i)
        out[key], i = _unpack(v, i)
    return out, i


def _message(raw: Any) -> Message:
    """The message in an unpacked list ``[tag, field, ...]``, checked."""
    if type(raw) is not list or not raw or type(raw[0]) is not int:
        raise ProtocolError(f"malformed message: {raw!r:.200}")
    cls = _BY_TAG.get(raw[0])
    if cls is None:
        raise ProtocolError(f"unknown message tag {raw[0]!r:.30}")
    try:
        return _STRUCTS[cls](raw[1:])  # type: ignore[no-any-return]
    except _Invalid as exc:
        raise ProtocolError(f"malformed {cls.__name__}: {exc}") from None


def hello_versions(data: bytes | bytearray | memoryview) -> tuple[int, str] | None:
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

    remote_name: SandboxPath
    cache_name: Annotated[str, MaxLen(MAX_NAME), Form("file-or-empty")]
    data: bytes


@struct
@dataclasses.dataclass(frozen=True, slots=True)
class TaskSpec:
    """One attempt of a task, as sent to a worker."""

    task_id: int
    attempt: int
    kind: Annotated[str, OneOf(("python", "shell"))]
    payload: bytes  # python: pickled (fn, args, kwargs); shell: b""
    command: str
    allocation: dict[Name, int]  # cores, memory, disk, gpus
    env: dict[Name, str]
    inputs: list[InputFile]
    outputs: list[SandboxPath]
    timeout: float  # wall-time limit in seconds, 0 for none
    pack: Name  # digest of the environment pack to run in (sent with PutPack), "" for none


@struct
@dataclasses.dataclass(frozen=True, slots=True)
class TaskResult:
    """How one attempt ended, as reported by the worker."""

    task_id: int
    attempt: int
    status: TaskStatus
    value: bytes  # pickled return value or exception
    exit_code: Signed
    stdout: bytes
    stderr: bytes
    outputs: dict[SandboxPath, bytes]
    message: str  # what went wrong, for the non-user failures
    wall_time: float
    gpu_ids: list[Name]
    messages: list[bytes]  # monitoring messages the task left in $PACKMULE_RADIO_DIR
    measured: dict[Name, float]  # see worker/monitor.py: memory, disk (MB), cores, wall_time...
    exceeded: list[ResourceName]  # EXHAUSTED: the resources that went over their allocation


# ---------------------------------------------------------------- worker -> manager


@message(1)
@dataclasses.dataclass(frozen=True, slots=True)
class Hello(Message):
    protocol: int
    version: Name
    worker_id: Name
    hostname: Name
    pid: int
    resources: dict[Name, int]
    packs: list[Name]  # digests of the environment packs it has cached
    block: Name = ""  # the batch block it was started in ($PARSL_WORKER_BLOCK_ID), "" if none


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

    digest: Name
    ok: bool
    message: str
    resend: bool
    transfer: int  # the PutPack transfer this answers; 0: none (the worker lacks the pack)


@message(6)
@dataclasses.dataclass(frozen=True, slots=True)
class PackProgress(Message):
    """Bytes of a pack received so far: the manager sends more (flow control)."""

    digest: Name
    transfer: int
    received: int


@message(7)
@dataclasses.dataclass(frozen=True, slots=True)
class Piece(Message):
    """A piece of a message too large for one frame (:mod:`.pieces`): the bytes at
    ``offset`` of its encoding (``total`` bytes in all) follow as a second, raw frame."""

    offset: int
    total: int


@message(8)
@dataclasses.dataclass(frozen=True, slots=True)
class PieceProgress(Message):
    """Bytes of pieces received from the manager so far, on this connection: the
    manager sends more (flow control, see :class:`~.pieces.Outbox`)."""

    received: int


FROM_MANAGER.append(Piece)  # large messages go in pieces both ways

# ---------------------------------------------------------------- manager -> worker


@message(10)
@dataclasses.dataclass(frozen=True, slots=True)
class Welcome(Message):
    protocol: int
    version: Name
    heartbeat_interval: Period
    lease: Period


@message(11)
@dataclasses.dataclass(frozen=True, slots=True)
class Reject(Message):
    reason: str


@message(12)
@dataclasses.dataclass(frozen=True, slots=True)
class PutFile(Message):
    cache_name: Annotated[str, MaxLen(MAX_NAME), Form("file")]
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

    digest: Name
    sha256: Name
    size: int
    offset: int
    transfer: int  # numbers one sending of a pack to a worker (a resend gets a new one)
