"""Messages too large for one frame travel in pieces; the manager holds a bounded amount.

The manager's socket refuses any frame larger than :data:`MAX_FRAME` (libzmq's
``ZMQ_MAXMSGSIZE``): a peer, with the password or without it, can no longer make
it buffer a huge frame. A worker therefore sends any message whose encoding is
larger than :data:`PIECE_SIZE` as a run of :class:`~.messages.Piece` messages,
each with a raw second frame of at most ``PIECE_SIZE`` bytes, in order; the
manager's :class:`Assembler` joins them (at most :data:`MAX_MESSAGE` bytes per
connection, one message at a time) and decodes the whole once it is complete.

Results larger than ``MAX_MESSAGE`` cannot be sent: :func:`outgoing` replaces
such a result by a failure that says so (the task fails; the worker goes on).

Manager to worker, nothing is limited: the worker trusts the manager, and task
arguments of hundreds of megabytes travel in one frame.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

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
#: The largest message a worker may send in pieces (bytes): one message being joined
#: per connection at a time, so this bounds what the manager holds for each worker.
MAX_MESSAGE = 2 << 30

_MB = 1 << 20


def frames(data: bytes) -> Iterator[list[bytes | memoryview]]:
    """The multipart messages that carry an encoded message: itself when it fits in
    one piece, else its pieces (each a :class:`~.messages.Piece` header and a slice)."""
    if len(data) <= PIECE_SIZE:
        yield [data]
        return
    view = memoryview(data)
    total = len(data)
    for offset in range(0, total, PIECE_SIZE):
        yield [m.encode(m.Piece(offset, total)), view[offset:offset + PIECE_SIZE]]


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

    def add(self, peer: bytes, header: m.Piece, data: bytes) -> bytearray | None:
        """Take a piece; the whole encoded message once its last piece is in, else None.
        A piece out of order, of the wrong size, or of a message over the limit raises
        :class:`ProtocolError` (and what the peer had sent is dropped)."""
        total = header.total
        buf = self._parts.get(peer)
        held = 0 if buf is None else len(buf)
        problem = None
        if total > self.limit:
            problem = (f"declares a message of {total} bytes, more than the "
                       f"{self.limit} bytes a worker may send")
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
