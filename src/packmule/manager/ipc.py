"""The channel between the :class:`~packmule.manager.Manager` (in the user's
process) and its loop process: one typed message per job, command and outcome.

Both processes are the same program, started by the Manager, so messages
are pickled; each crosses as a plain tuple ``(tag, field, ...)``, which
pickles about twice as fast as the named tuple itself. A message of an
unknown tag or the wrong shape is a :class:`~packmule.errors.ProtocolError`.

A task's call of :data:`SHARED_PAYLOAD` bytes or more does not cross the
socket: the Manager writes it into an anonymous shared-memory file (a memfd)
and passes the descriptor after its :class:`Submit` (``shared``); the loop
maps it, and sends the worker the mapped pages. Reading 300 MB from the socket
and unpickling them held the loop for seconds, long enough for every worker's
lease to run out.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import mmap
import os
import pickle
import socket
import struct
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..core.alloc import CategoryConfig
from ..errors import ProtocolError
from ..resources import Resources
from ..task import File

#: The loop's log file, in the run directory: what it logs at INFO and above, and the
#: traceback of an internal error.
LOOP_LOG = "manager.log"
#: The loop's fatal-signal file, in the run directory: where ``faulthandler`` writes the
#: Python traceback of a fatal signal (a segfault, say); empty unless the loop died so.
LOOP_CRASH = "manager.crash"
#: The loop process's exit code after an internal error (``EX_SOFTWARE``).
EXIT_CRASHED = 70

if TYPE_CHECKING:
    from ..envpack.build import Pack


@dataclass(frozen=True)
class Config:
    """The loop's settings, sent by the Manager as the first message."""

    host: str
    port: int
    secret: bytes
    run_dir: Path
    heartbeat_interval: float
    lease: float
    shutdown_workers: bool
    validate: bool
    default_category: CategoryConfig | None
    prefetch: bool
    log_level: int
    forward_messages: bool
    #: Write the event log and the status file (``Manager(observe=...)``).
    observe: bool = True
    #: The host name workers are told to use (see ``Manager.address``); with the port
    #: it is the manager's address in the event log, the status file and the advice.
    public_host: str = "127.0.0.1"
    #: The password file workers need (None: the secret came from the environment).
    password_file: str | None = None
    #: Send the Manager a :class:`WorkerJoined` for each worker that joins.
    report_joins: bool = False


@dataclass(frozen=True)
class ManagerStats:
    """A snapshot of the manager.

    ``tasks`` counts unfinished tasks by state (waiting, running); finished ones
    are counted in ``tasks_succeeded``, ``tasks_failed`` and ``tasks_cancelled``.
    """

    workers: int
    tasks: dict[str, int]
    committed: Resources
    total: Resources
    workers_joined: int
    workers_lost: int
    tasks_submitted: int
    tasks_succeeded: int
    tasks_failed: int
    tasks_cancelled: int
    files_sent: int
    #: Attempts sent to a busy worker ahead of time (see ``prefetch``).
    tasks_prefetched: int
    #: Environment packs sent to workers (a worker that has one cached is not sent it).
    packs_sent: int


# ---------------------------------------------------------------- Manager -> loop
class Submit(NamedTuple):
    """A task joins the queue: what the loop needs to dispatch it and report how it ended."""

    id: int
    kind: str  # "python" or "shell"
    payload: bytes | memoryview  # (a memoryview only in the loop: see ``shared``)
    command: str
    resources: Resources
    category: str
    priority: float
    max_retries: int | None
    env: dict[str, str] | None  # None: none
    input_files: tuple[File, ...]
    output_files: tuple[File, ...]
    timeout: float
    pack: Pack | None
    label: str  # for log messages: the function's name, or the command
    #: The payload is not here (b""): its descriptor follows (:func:`send_shared`). In
    #: the loop, ``payload`` is then the mapped pages (a memoryview).
    shared: bool = False


class Cancel(NamedTuple):
    task_id: int


class Call(NamedTuple):
    """A question whose answer comes back as a :class:`Reply` with the same ``call_id``."""

    call_id: int
    name: str  # one of CALLS
    args: tuple[Any, ...]


class Stop(NamedTuple):
    """Shut down: workers are told to exit (if so configured), unfinished tasks fail."""


class PackBuilt(NamedTuple):
    """The Manager's pack builder found or built an environment pack (for the event log:
    the loop is its one writer)."""

    digest: str
    path: str
    size: int
    seconds: float


#: The questions a :class:`Call` may ask.
CALLS = frozenset({"stats", "category_stats", "configure_category", "status"})


# ---------------------------------------------------------------- loop -> Manager
class Ready(NamedTuple):
    port: int


class StartFailed(NamedTuple):
    errno: int
    message: str


class Log(NamedTuple):
    """A log record of the loop's, to be logged in the user's process."""

    level: int
    logger: str
    message: str


class Done(NamedTuple):
    """A task finished. ``kind``: "python" or "shell" (``data`` the result), "exception"
    (``data`` the pickled exception the user's code raised), or "error" (``data`` the
    packmule error). ``attrs`` are set on the Task (worker, measured, ...)."""

    task_id: int
    ok: bool
    kind: str
    data: Any
    attrs: dict[str, Any]


class Messages(NamedTuple):
    """Monitoring messages that tasks left for the Manager's message sink."""

    messages: list[bytes]


class Reply(NamedTuple):
    call_id: int
    ok: bool
    value: Any


class Largest(NamedTuple):
    """The largest connected worker changed (element-wise)."""

    resources: Resources


class Stopped(NamedTuple):
    """The loop has shut down; nothing follows. ``error``: the internal error it stopped
    on ("" when it was told to stop)."""

    error: str


class Buffers(NamedTuple):
    """The next ``n`` frames are raw buffers, the out-of-band data of the message after
    them (a large result, written to the Manager without a copy in the loop)."""

    n: int


class WorkerJoined(NamedTuple):
    """A worker joined (sent only when :attr:`Config.report_joins`): ``event`` is its
    ``worker_joined`` event as the event log has it."""

    event: dict[str, Any]


Message = (Submit | Cancel | Call | Stop | PackBuilt | Ready | StartFailed | Log | Done
           | Messages | Reply | Largest | Stopped | WorkerJoined | Buffers)

_TYPES: tuple[type[Any], ...] = (Submit, Cancel, Call, Stop, Ready, StartFailed, Log, Done,
                                 Messages, Reply, Largest, Stopped, PackBuilt, WorkerJoined,
                                 Buffers)
_TAGS: dict[type[Any], int] = {cls: i for i, cls in enumerate(_TYPES)}


def encode(msg: Message) -> tuple[Any, ...]:
    """The message as it crosses: ``(tag, field, ...)``."""
    return (_TAGS[type(msg)], *msg)


def decode(raw: object) -> Message:
    """A message from its crossing form; anything else raises :class:`ProtocolError`."""
    if not isinstance(raw, tuple) or not raw or not isinstance(raw[0], int):
        raise ProtocolError(f"malformed message between the Manager and its loop: {raw!r:.200}")
    tag = raw[0]
    if not 0 <= tag < len(_TYPES):
        raise ProtocolError(f"unknown message tag {tag} between the Manager and its loop")
    cls = _TYPES[tag]
    if len(raw) - 1 != len(cls._fields):
        raise ProtocolError(f"malformed {cls.__name__} message: {len(raw) - 1} fields, "
                            f"{len(cls._fields)} expected")
    msg: Message = cls(*raw[1:])
    return msg


#: A task's call (pickled function and arguments) at least this large goes to the loop
#: in shared memory (:func:`share`), not through the socket.
SHARED_PAYLOAD = 1 << 20
#: At most this many unfinished tasks have their call in shared memory (the loop holds a
#: file descriptor for each mapping); beyond, large calls cross the socket.
MAX_SHARED = 256


def receive(conn: Connection) -> Message:
    """The next message from the loop, with its out-of-band buffers (see :class:`Buffers`)."""
    msg = decode(conn.recv())
    if not isinstance(msg, Buffers):
        return msg
    buffers = [conn.recv_bytes() for _ in range(msg.n)]
    return decode(pickle.loads(conn.recv_bytes(), buffers=buffers))


def out_of_band(data: Any) -> Any:
    """``data``, marked to travel to the Manager out of band (not copied into the pickle)
    when it is bytes of at least ``_NOT_COPIED`` or a view of bytes (a large result as
    the loop decoded it); the Manager reads it back as bytes."""
    if (type(data) is bytes and len(data) >= _NOT_COPIED) or type(data) is memoryview:
        return pickle.PickleBuffer(data)
    return data


def share(payload: bytes) -> int | None:
    """A new memfd holding ``payload`` (the caller closes it), or None where there is no
    memfd (not Linux): then the payload crosses the socket."""
    if not hasattr(os, "memfd_create"):
        return None
    try:
        fd = os.memfd_create("packmule-task", os.MFD_CLOEXEC)
    except OSError:  # out of descriptors or memory: the socket still works
        return None
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        raise
    return fd


def send_shared(conn: Connection, fd: int) -> None:
    """Pass ``fd`` to the other end of ``conn`` (right after the message it belongs to)."""
    reduction.send_handle(conn, fd, 0)


def receive_shared(conn: Connection) -> memoryview:
    """The payload whose descriptor comes next on ``conn``, mapped read-only (the pages
    stay shared with the Manager's memfd: nothing is copied); the descriptor is closed."""
    fd = reduction.recv_handle(conn)
    try:
        size = os.fstat(fd).st_size
        return memoryview(mmap.mmap(fd, size, prot=mmap.PROT_READ)) if size else \
            memoryview(b"")
    finally:
        os.close(fd)


#: A message to the Manager at least this large is written from where it is, not copied.
_NOT_COPIED = 1 << 20


class Outbox:
    """Messages to the Manager, framed as ``Connection.send`` frames them, and
    written without ever blocking the loop: a Manager thread may be sending to
    the loop at that very moment (a future's callback submitting a task), and
    the loop must go on reading, and heartbeating workers, meanwhile."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=os.dup(fd))
        #: What is left to write: small messages joined, a large one as it is (a 200 MB
        #: result is not copied once more, which would hold up the loop).
        self._out: collections.deque[bytearray | memoryview] = collections.deque()
        self.broken = False  # the Manager's process is gone

    def put(self, msg: Message) -> None:
        """Queue ``msg`` and write what the socket takes now. Its fields marked
        :func:`out_of_band` go as frames of their own, after a :class:`Buffers`."""
        buffers: list[pickle.PickleBuffer] = []
        try:
            data = pickle.dumps(encode(msg), protocol=pickle.HIGHEST_PROTOCOL,
                                buffer_callback=buffers.append)
        except Exception as exc:  # say so rather than lose the message silently
            buffers = []
            data = pickle.dumps(encode(Log(logging.ERROR, "packmule.manager",
                                           f"a message to the Manager could not be pickled: "
                                           f"{exc}")))
        if buffers:
            self._frame(pickle.dumps(encode(Buffers(len(buffers)))))
            for b in buffers:
                self._frame(b.raw())
        self._frame(data)
        self.flush()

    def _frame(self, data: bytes | memoryview) -> None:
        """Queue one frame as ``Connection.send_bytes`` writes it (a large one not copied)."""
        out = self._out
        tail = out[-1] if out else None
        if not isinstance(tail, bytearray):
            tail = bytearray()
            out.append(tail)
        tail += struct.pack("!i", len(data))
        if len(data) < _NOT_COPIED:
            tail += data
        else:
            out.append(memoryview(data))

    def flush(self) -> None:
        out = self._out
        while out and not self.broken:
            head = out[0]
            try:
                n = self._sock.send(head, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                self.broken = True
                return
            if n == len(head):
                out.popleft()
            elif isinstance(head, bytearray):
                del head[:n]
            else:
                out[0] = head[n:]

    @property
    def pending(self) -> bool:
        return bool(self._out) and not self.broken

    def close(self, timeout: float) -> None:
        """Deliver what is left (waiting at most ``timeout`` seconds), then close."""
        with contextlib.suppress(OSError):
            self._sock.settimeout(timeout)
            while self._out and not self.broken:
                self._sock.sendall(self._out.popleft())
        self._sock.close()


class ForwardLogs(logging.Handler):
    """Log records go to the Manager's process, to be logged there."""

    def __init__(self, outbox: Outbox) -> None:
        super().__init__()
        self.outbox = outbox

    def emit(self, record: logging.LogRecord) -> None:
        self.outbox.put(Log(record.levelno, record.name, self.format(record)))
