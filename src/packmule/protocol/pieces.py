"""Messages too large for one frame travel in pieces, both ways; each side holds a
bounded amount.

The manager's socket refuses any frame larger than :data:`MAX_FRAME` (libzmq's
``ZMQ_MAXMSGSIZE``): a peer, with the password or without it, can no longer make
it buffer a huge frame. Any message whose encoding is larger than
:data:`PIECE_SIZE` therefore travels as a run of :class:`~.messages.Piece`
messages, each with a raw second frame of at most ``PIECE_SIZE`` bytes, in order;
the receiving side's :class:`Assembler` joins them (at most :data:`MAX_MESSAGE`
bytes per connection, one message at a time) and decodes the whole once it is
complete. Other messages may arrive between two pieces.

Worker to manager, :func:`outgoing` cuts a message into pieces, all sent at once
(the manager reads at most ``RECEIVE_HWM`` messages per connection ahead: TCP holds
back the rest). Results larger than ``MAX_MESSAGE`` cannot be sent: ``outgoing``
replaces such a result by a failure that says so (the task fails; the worker goes on).

Manager to worker (task arguments and input files of hundreds of megabytes), an
:class:`Outbox` per worker paces the pieces: at most :data:`PIECE_WINDOW` bytes
unacknowledged, the worker's :class:`Incoming` acknowledges every :data:`PIECE_ACK`
bytes and at the end of each message (:class:`~.messages.PieceProgress`), and
messages sent after a large one wait their turn behind it (heartbeats do not: they
are sent at once). A large message is cut from its encoding's parts
(:func:`~.messages.encode_parts`), so the manager never copies a large argument.
Each piece counts as hearing from the manager, so a transfer longer than the lease
keeps the session.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterator

from ..errors import ProtocolError
from . import messages as m

#: The largest piece of a message (bytes). Small, because it bounds what a peer can
#: make the manager hold before the handshake (see MAX_FRAME); large enough that a
#: piece's overhead (a header, a loop turn) is a few percent of carrying it.
PIECE_SIZE = 64 << 10
#: The manager refuses frames larger than this (``ZMQ_MAXMSGSIZE``, counted on the
#: encrypted frame): a piece, or any other message a worker sends, plus room for
#: CurveZMQ's overhead (about 40 bytes a frame).
MAX_FRAME = PIECE_SIZE + (4 << 10)
#: The largest message sent in pieces (bytes), either way: one message being joined
#: per connection at a time, so this bounds what the manager holds for each worker
#: and a worker for its manager.
MAX_MESSAGE = 2 << 30
#: The most bytes of a task's call and input files the manager sends a worker (in one
#: message; the rest of MAX_MESSAGE is room for the message's other fields).
MAX_TASK_DATA = MAX_MESSAGE - (16 << 20)
#: Manager to worker: bytes of pieces sent and not yet acknowledged, per worker, at
#: most. Bounds what libzmq holds for one worker's transfer (pieces are copied into
#: it), and keeps its heartbeats and other messages at most this far behind; 8 MiB
#: keeps a 1 Gbit/s link with 60 ms round trips busy.
PIECE_WINDOW = 8 << 20
#: A worker acknowledges the pieces it received every PIECE_ACK bytes (an eighth of
#: the window: the manager never waits for an acknowledgement while the link is busy).
PIECE_ACK = 1 << 20

_MB = 1 << 20


class Cutter:
    """An encoded message, given in consecutive parts (see
    :func:`~.messages.encode_parts`), cut into pieces: each a
    :class:`~.messages.Piece` header and up to PIECE_SIZE bytes (a view of one part,
    or a join of the ends of several)."""

    def __init__(self, parts: list[bytes | memoryview]) -> None:
        self._parts = [memoryview(p) for p in parts if p]
        self.total = sum(len(p) for p in self._parts)
        #: Bytes cut so far.
        self.offset = 0
        self._index = 0  # in the part at _index, at _at
        self._at = 0

    def __next__(self) -> list[bytes | memoryview]:
        """The next piece (when :attr:`offset` is below :attr:`total`)."""
        chunks = []
        need = PIECE_SIZE
        while need and self._index < len(self._parts):
            part = self._parts[self._index]
            chunk = part[self._at:self._at + need]
            chunks.append(chunk)
            need -= len(chunk)
            self._at += len(chunk)
            if self._at == len(part):
                self._parts[self._index] = memoryview(b"")  # (sent: not held for it)
                self._index, self._at = self._index + 1, 0
        data: bytes | memoryview = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        header = m.encode(m.Piece(self.offset, self.total))
        self.offset += len(data)
        return [header, data]


def frames(data: bytes) -> Iterator[list[bytes | memoryview]]:
    """The multipart messages that carry an encoded message: itself when it fits in
    one piece, else its pieces."""
    if len(data) <= PIECE_SIZE:
        yield [data]
        return
    cut = Cutter([data])
    while cut.offset < cut.total:
        yield next(cut)


def too_large_to_send(what: str, size: int) -> str:
    """Why the manager does not send ``what`` (``size`` bytes) to a worker."""
    return (f"{what} {size / _MB:.0f} MB, more than the {MAX_TASK_DATA / _MB:.0f} MB the "
            "manager sends a worker for one task; pass large data through a file system "
            "the workers can read")


def too_large(r: m.TaskResult, size: int) -> m.TaskResult:
    """A result that cannot be sent, replaced by its failure (a ``FileTransferError``
    for the user), with its measurements kept."""
    what = (f"the task's result (return value, output, output files and messages) is "
            f"{size / _MB:.0f} MB" if size else "the task's result is too large to encode")
    return dataclasses.replace(
        r, status=m.TaskStatus.SETUP_ERROR, value=b"", stdout=r.stdout[-4096:],
        stderr=r.stderr[-4096:], outputs={}, messages=[],
        message=(f"{what}, more than the {MAX_MESSAGE / _MB:.0f} MB a worker may send for "
                 "one task; return less, or write large data to a file system the "
                 "manager's machine can read"))


def _encode_results(results: list[m.TaskResult]) -> Iterator[bytes]:
    """Encoded ``Results`` messages of at most MAX_MESSAGE bytes carrying these results."""
    try:
        data = m.encode(m.Results(results))
    except (ValueError, OverflowError):  # a bytes field over msgpack's 4 GiB
        data = b""
    if data and len(data) <= MAX_MESSAGE:
        yield data
    elif len(results) > 1:
        half = len(results) // 2
        yield from _encode_results(results[:half])
        yield from _encode_results(results[half:])
    else:
        yield m.encode(m.Results([too_large(results[0], len(data))]))


def _fit_hello(msg: m.Hello) -> bytes:
    """A Hello in one frame: the cached packs it names are a hint (a pack it leaves
    out is sent again when a task needs it), so as many as fit."""
    packs = msg.packs
    while True:
        data = m.encode(dataclasses.replace(msg, packs=packs))
        if len(data) <= PIECE_SIZE or not packs:
            return data
        packs = packs[:len(packs) // 2]


def outgoing(msg: m.Message) -> Iterator[list[bytes | memoryview]]:
    """The multipart messages a worker sends for ``msg`` (see the module's docstring)."""
    if isinstance(msg, m.Results):
        for data in _encode_results(msg.results):
            yield from frames(data)
    elif isinstance(msg, m.Hello):
        yield [_fit_hello(msg)]  # the manager takes pieces from connected workers only
    else:
        yield from frames(m.encode(msg))


class Assembler:
    """Joins the pieces each peer sends, one message per peer at a time, in order.

    Holds at most ``limit`` bytes per peer; :meth:`forget` a peer when it goes.
    """

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self.limit = limit
        self._parts: dict[bytes, bytearray] = {}
        self._totals: dict[bytes, int] = {}

    def add(self, peer: bytes, header: m.Piece, data: bytes | memoryview) -> bytearray | None:
        """Take a piece; the whole encoded message once its last piece is in, else None.
        A piece out of order, of the wrong size, or of a message over the limit raises
        :class:`ProtocolError` (and what the peer had sent is dropped)."""
        total = header.total
        buf = self._parts.get(peer)
        held = 0 if buf is None else len(buf)
        problem = None
        if total > self.limit:
            problem = (f"declares a message of {total} bytes, more than the "
                       f"{self.limit} bytes a message may have")
        elif total <= PIECE_SIZE:
            problem = f"declares a message of {total} bytes, which needs no pieces"
        elif buf is not None and self._totals[peer] != total:
            problem = f"declares {total} bytes in all, its earlier pieces {self._totals[peer]}"
        elif header.offset != held:
            problem = f"is at offset {header.offset}, {held} bytes were received"
        elif not 0 < len(data) <= PIECE_SIZE or held + len(data) > total:
            problem = f"carries {len(data)} bytes at offset {held} of {total}"
        if problem is not None:
            self.forget(peer)
            raise ProtocolError(f"malformed Piece: the piece {problem}")
        if buf is None:
            buf = self._parts[peer] = bytearray()
            self._totals[peer] = total
        buf += data
        if len(buf) < total:
            return None
        self.forget(peer)
        return buf

    def forget(self, peer: bytes) -> None:
        """Drop what a peer sent of an unfinished message."""
        self._parts.pop(peer, None)
        self._totals.pop(peer, None)

    @property
    def held(self) -> int:
        """Bytes held for unfinished messages, all peers together."""
        return sum(len(b) for b in self._parts.values())


class Incoming:
    """A worker's side of the pieces its manager sends: joined (one message at a time,
    at most ``limit`` bytes), and acknowledged every :data:`PIECE_ACK` bytes and at the
    end of each message."""

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self._joined = Assembler(limit)
        #: Bytes of pieces received on this connection, and as last acknowledged.
        self.received = 0
        self._acked = 0
        self._ended = False  # a message is complete: acknowledged at once

    def add(self, header: m.Piece, data: bytes | memoryview) -> bytearray | None:
        """Take a piece; the whole encoded message once its last piece is in, else None.
        ProtocolError: see :meth:`Assembler.add`."""
        whole = self._joined.add(b"", header, data)
        self.received += len(data)
        self._ended = whole is not None
        return whole

    def ack(self) -> m.PieceProgress | None:
        """The acknowledgement to send now, if one is due (before the message just
        completed is handled: that may take a while, and tells the manager it lives)."""
        if self.received - self._acked < PIECE_ACK and not self._ended:
            return None
        self._acked, self._ended = self.received, False
        return m.PieceProgress(self.received)

    @property
    def held(self) -> int:
        return self._joined.held


#: Sends a multipart message to the outbox's worker; False when it is gone.
Send = Callable[[list[bytes | memoryview]], bool]


class Outbox:
    """The manager's messages to one worker while one of them goes in pieces.

    Messages are sent in order: those put while a large one is under way wait behind
    it, not yet encoded. A large message is encoded without copying its large fields
    (the task's argument and input files, which the manager holds anyway), and its
    pieces go out while fewer than :data:`PIECE_WINDOW` bytes of them are
    unacknowledged; :meth:`progress` (the worker's acknowledgement) sends more. Kept
    for the connection's life (it counts the bytes of pieces sent on it).
    """

    def __init__(self) -> None:
        #: Messages waiting (or encodings), each with whether it may be large.
        self.waiting: collections.deque[tuple[m.Message | bytes, bool]] = collections.deque()
        self._cut: Cutter | None = None  # the message being sent in pieces
        #: Bytes of pieces sent on this connection, and acknowledged by the worker.
        self.sent = 0
        self.acked = 0

    @property
    def busy(self) -> bool:
        """Whether a message is being sent in pieces or waits: a new one must queue."""
        return self._cut is not None or bool(self.waiting)

    @property
    def left(self) -> int:
        """Bytes of the message being sent in pieces not sent yet."""
        return 0 if self._cut is None else self._cut.total - self._cut.offset

    def put(self, msg: m.Message | bytes, send: Send, large: bool = False) -> bool:
        """Send a message (or an encoding) after those before it; ``large``: it may
        carry large fields (encoded without copying them). False: the worker is gone."""
        self.waiting.append((msg, large))
        return self.pump(send)

    def progress(self, received: int, send: Send) -> bool:
        """The worker has received ``received`` bytes of pieces: send more. False: the
        worker is gone. ProtocolError: it claims more than was sent."""
        if received > self.sent:
            raise ProtocolError(f"malformed PieceProgress: {received} bytes of pieces "
                                f"received, {self.sent} were sent")
        self.acked = max(self.acked, received)
        return self.pump(send)

    def pump(self, send: Send) -> bool:
        """Send what the window allows: small messages at once, pieces while fewer than
        PIECE_WINDOW bytes are unacknowledged. False: the worker is gone."""
        while True:
            cut = self._cut
            if cut is None:
                if not self.waiting:
                    return True
                item, large = self.waiting.popleft()
                parts: list[bytes | memoryview] = (
                    [item] if isinstance(item, bytes) else
                    m.encode_parts(item, PIECE_SIZE) if large else [m.encode(item)])
                if len(parts) == 1 and len(parts[0]) <= PIECE_SIZE:
                    if not send([parts[0]]):
                        return False
                    continue
                cut = self._cut = Cutter(parts)
            if self.sent - self.acked >= PIECE_WINDOW:
                return True
            frames = next(cut)
            if not send(frames):
                return False
            self.sent += len(frames[1])
            if cut.offset == cut.total:
                self._cut = None
