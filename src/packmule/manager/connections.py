"""The manager's side of the worker connections: the encrypted socket, who is
connected, authentication (ZAP), heartbeats spread over time, and noticing
closed connections.

It moves bytes and says what happened; what a worker's messages mean is
the loop's business (:mod:`packmule.manager.loop`).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import math
import os
import resource
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import zmq
import zmq.utils.z85

from ..errors import ProtocolError
from ..protocol import messages as m
from ..protocol.pieces import PIECE_SIZE, Assembler, Outbox
from ..protocol.security import derive_keys
from ..protocol.sockets import HANDSHAKE_FAILED, drain_events, server_socket
from ..resources import Resources

log = logging.getLogger("packmule.manager")

#: Heartbeats go out in this many slices per interval: each worker still gets one
#: per interval, but thousands of workers never get theirs in one burst.
HEARTBEAT_SLICES = 10
#: Delays after a connection closed at which every worker is probed (a send to a
#: gone worker fails at once, so its tasks are requeued without waiting for the
#: lease). Closes close together share their probes.
PROBE_DELAYS = (0.02, 0.2, 1.0)
#: Probes sent per loop turn at most: a sweep of thousands of workers is spread
#: over turns, so that results and heartbeats are read in between.
PROBE_CHUNK = 2000
#: Messages read from the socket per loop turn at most (then the rest of the turn
#: runs, and the next turn reads on).
RECEIVE_CHUNK = 1000
#: How often (s) the loop counts its open files, to say when it runs out: then no more
#: workers can connect (libzmq's failed accepts are not watched: thousands a second
#: would fill the monitor's pipe and stall its I/O thread).
FD_CHECK_INTERVAL = 5.0
#: Open files within this many of the limit count as out of file descriptors.
FD_MARGIN = 8
#: Connections open without having sent a message (still in the encrypted handshake,
#: or silent after it) at most. Beyond, once every message that arrived has been
#: read, the ones open longest are closed. Before its handshake a connection can make
#: libzmq hold one frame (at most MAX_FRAME) and two 8 KiB buffers; the cap bounds
#: that for all of them together, and is far above what thousands of workers
#: reconnecting at once keep in the handshake (a few hundred: each takes one loop turn).
HANDSHAKE_CAP = 1000
# Flags as plain ints: pyzmq's flag enums cost more than the send itself for small messages.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_SRCFD = int(zmq.SRCFD)


@dataclass
class WorkerConn:
    """A connected worker, as the connection layer knows it."""

    identity: bytes
    hostname: str
    pid: int
    resources: Resources
    #: Messages to it in order behind one that goes in pieces (None: none has yet).
    outbox: Outbox | None = None
    #: When it joined (Unix time).
    joined: float = 0.0


def _socket_at(fd: int) -> socket.socket | None:
    """A socket object on a copy of descriptor ``fd`` (libzmq's: closing the copy leaves
    libzmq's open), or None if ``fd`` is no longer an open socket."""
    try:
        dup = os.dup(fd)
    except OSError:
        return None
    try:
        return socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return None


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's open-files soft limit to its hard limit; (soft, hard) now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class Connections:
    """The ROUTER socket and the workers connected through it."""

    def __init__(self, secret: bytes, host: str, port: int, heartbeat_interval: float) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.fd_limit = raise_open_files_limit()[0]
        self.workers: dict[str, WorkerConn] = {}
        keys = derive_keys(secret)
        self._client_key = zmq.utils.z85.decode(keys.client_public)
        self._handshake_failures = 0
        self._fds_said = False
        self._next_fd_check = 0.0
        self._monitoring = True
        #: Pieces of large messages being joined, per worker (at most MAX_MESSAGE each).
        self.pieces = Assembler()
        #: Connections that have sent nothing yet, oldest first: descriptor -> peer address.
        self._silent: dict[int, object] = {}
        #: Peers that have sent a message: identity -> descriptor, and back.
        self._fd_of: dict[bytes, int] = {}
        self._identity_at: dict[int, bytes] = {}
        self._closed_silent = 0
        self._said_silent = False
        #: Silent connections this side shut down, until libzmq reports them closed.
        self._shut: set[int] = set()
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.zap = self._ctx.socket(zmq.REP)
        self.zap.bind("inproc://zeromq.zap.01")
        self.router = server_socket(self._ctx, keys, b"packmule")
        self.monitor = self.router.get_monitor_socket(
            zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | HANDSHAKE_FAILED)
        try:
            if port:
                self.router.bind(f"tcp://{host}:{port}")
                self.port = port
            else:
                self.port = self.router.bind_to_random_port(f"tcp://{host}")
        except (zmq.ZMQError, zmq.ZMQBindError) as exc:
            self.close()
            why = getattr(exc, "strerror", None) or exc
            raise OSError(
                getattr(exc, "errno", None) or errno.EADDRINUSE,
                f"packmule manager cannot listen on {host}:{port}: {why}. "
                "Choose another port, or port=0 for any free one.",
            ) from None
        # Heartbeats: the workers in turn, a slice per tick.
        self._ring: collections.deque[str] = collections.deque()
        self._beat_credit = 0.0
        self.next_beat = 0.0
        # Probes after closed connections: when the next sweeps start, and who is left
        # to probe in the current one.
        self._probe_times: list[float] = []
        self._probing: collections.deque[str] = collections.deque()

    # ---------------------------------------------------------------- who is connected
    def add(self, wid: str, conn: WorkerConn) -> None:
        self.workers[wid] = conn
        self._ring.append(wid)

    def remove(self, wid: str) -> WorkerConn | None:
        conn = self.workers.pop(wid, None)  # its ring entry is skipped when reached
        if conn is not None:
            self.pieces.forget(conn.identity)
        return conn

    # ---------------------------------------------------------------- sending
    def send(self, wid: str, msg: m.Message, urgent: bool = False, large: bool = False
             ) -> bool:
        """Send to a connected worker, in order; False if it is not connected (any more).

        A message larger than a piece goes in paced pieces, and those sent after it
        wait their turn (see :class:`~packmule.protocol.pieces.Outbox`), except an
        ``urgent`` one (Exit), which goes at once, between two pieces. ``large``: it
        may carry large fields (a task's argument, a file), encoded without a copy."""
        conn = self.workers.get(wid)
        if conn is None:
            return False
        box = conn.outbox
        if large or (box is not None and box.busy and not urgent):
            if box is None:
                box = conn.outbox = Outbox()
            return box.put(msg, self._sender(conn.identity), large)
        data = m.encode(msg)
        if len(data) <= PIECE_SIZE:  # (nearly every message: no more than this)
            return self.send_frames(conn.identity, [data])
        if box is None:
            box = conn.outbox = Outbox()
        return box.put(data, self._sender(conn.identity))

    def progress(self, wid: str, received: int) -> bool:
        """A worker's acknowledgement of the pieces it received: send it more. False: it
        is gone. ProtocolError: it claims more than was sent."""
        conn = self.workers.get(wid)
        if conn is None:
            return True
        box = conn.outbox
        if box is None:
            box = conn.outbox = Outbox()  # (nothing sent: any count but 0 is refused)
        return box.progress(received, self._sender(conn.identity))

    def _sender(self, identity: bytes) -> Callable[[list[bytes | memoryview]], bool]:
        return lambda frames: self.send_frames(identity, frames)

    def send_frames(self, identity: bytes, frames: list[bytes | memoryview],
                    copy: bool = True) -> bool:
        """False when the peer is gone (the caller loses it)."""
        router = self.router
        try:
            router.send(identity, _SNDMORE)
            for frame in frames[:-1]:
                router.send(frame, _SNDMORE, copy=copy)
            router.send(frames[-1], 0, copy=copy)
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                return False
            raise
        return True

    def reject(self, identity: bytes, reason: str) -> None:
        """Tell a peer it is refused (best effort)."""
        with contextlib.suppress(zmq.ZMQError):
            self.router.send_multipart([identity, m.encode(m.Reject(reason))])

    # ---------------------------------------------------------------- receiving
    def receive(self) -> tuple[list[tuple[bytes, list[bytes]]], bool]:
        """Up to :data:`RECEIVE_CHUNK` messages as (identity, frames), and whether the
        socket was drained (nothing more waiting)."""
        out: list[tuple[bytes, list[bytes]]] = []
        router = self.router
        recv = router.recv
        known = self._fd_of
        for _ in range(RECEIVE_CHUNK):
            try:
                identity = recv(_NOBLOCK)
            except zmq.Again:
                if len(self._silent) > HANDSHAKE_CAP:
                    self._close_silent()
                return out, True
            if identity in known:
                frames = [recv()]  # a message's frames arrive together
            else:  # its first message: the connection is out of the handshake
                first = recv(copy=False)
                self._spoke(identity, first.get(_SRCFD))
                frames = [first.bytes]
            while router.getsockopt(_RCVMORE):
                frames.append(recv())
            out.append((identity, frames))
        return out, False

    def assemble(self, identity: bytes, frames: list[bytes]) -> bytes | bytearray | None:
        """The encoded message in a message's frames: the one frame, or a whole message
        once its last :class:`~m.Piece` is in (None before). ProtocolError: frames that
        are no message, or pieces from a peer that is not a connected worker."""
        if len(frames) == 1:
            return frames[0]
        header = m.decode(frames[0]) if len(frames) == 2 else None
        if not isinstance(header, m.Piece):
            raise ProtocolError(f"malformed message: {len(frames)} frames, not one message "
                                "or one piece of one")
        if identity.hex() not in self.workers:
            raise ProtocolError("malformed Piece: pieces come only after the Hello")
        return self.pieces.add(identity, header, frames[1])

    def address_of(self, identity: bytes) -> str:
        """The peer's address (host:port) for log lines, as far as it is known."""
        fd = self._fd_of.get(identity)
        s = None if fd is None else _socket_at(fd)
        if s is None:
            return "address unknown"
        with s:
            try:
                host, port, *_ = s.getpeername()
            except (OSError, ValueError):
                return "address unknown"
        return f"{host}:{port}"

    # ---------------------------------------------------------------- handshakes
    def _accepted(self, fd: int) -> None:
        if fd in self._identity_at:
            return  # its first message was read before this event
        peer = None
        s = _socket_at(fd)
        if s is not None:
            with s, contextlib.suppress(OSError):
                peer = s.getpeername()
        self._silent[fd] = peer

    def _spoke(self, identity: bytes, fd: int) -> None:
        self._silent.pop(fd, None)
        self._fd_of[identity] = fd
        self._identity_at[fd] = identity

    def _closed(self, fd: int) -> bool:
        """A connection closed; True if it was one that had spoken (maybe a worker)."""
        if fd in self._silent or fd in self._shut:
            self._silent.pop(fd, None)
            self._shut.discard(fd)
            return False
        identity = self._identity_at.pop(fd, None)
        if identity is not None:
            self._fd_of.pop(identity, None)
        return True

    def _close_silent(self) -> None:
        """More than HANDSHAKE_CAP connections have said nothing: close those open
        longest (each checked to still be the same peer's before it is shut down)."""
        while len(self._silent) > HANDSHAKE_CAP:
            fd = next(iter(self._silent))
            peer = self._silent.pop(fd)
            self._closed_silent += 1
            s = None if peer is None else _socket_at(fd)
            if s is None:
                continue  # closed since
            with s, contextlib.suppress(OSError):
                if s.getpeername() == peer:
                    s.shutdown(socket.SHUT_RDWR)  # libzmq sees it closed and cleans up
                    self._shut.add(fd)
        if self._closed_silent and not self._said_silent:
            self._said_silent = True
            log.error(
                "more than %d connections to port %d were open without completing the "
                "encrypted handshake; closed the oldest. Something other than workers is "
                "connecting (a scanner, or an attack). (Logged once.)", HANDSHAKE_CAP,
                self.port)

    def answer_zap(self) -> None:
        """ZAP: admit only CURVE clients holding the key derived from the shared secret
        (every request waiting; thousands arrive at once when workers reconnect)."""
        while True:
            try:
                frames = self.zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            version, request_id = frames[0], frames[1]
            mechanism = frames[5] if len(frames) > 5 else b""
            key = frames[6] if len(frames) > 6 else b""
            ok = mechanism == b"CURVE" and key == self._client_key
            status = (b"200", b"OK") if ok else (b"400", b"wrong key: the password differs")
            self.zap.send_multipart([version, request_id, status[0], status[1], b"", b""])
            if not ok:
                self._handshake_failures += 1
                if self._handshake_failures == 1:
                    log.error("refused a worker whose key does not match this manager's "
                              "password")

    def events(self, now: float) -> None:
        """Act on the monitor's events: closed connections start probe sweeps; failed
        handshakes are said once."""
        closed = False
        for event, value in drain_events(self.monitor):
            if event == zmq.EVENT_ACCEPTED:
                self._accepted(value)
            elif event == zmq.EVENT_DISCONNECTED:
                closed |= self._closed(value)  # one that never spoke was no worker
            elif event & HANDSHAKE_FAILED:
                self._handshake_failures += 1
                if self._handshake_failures == 1:
                    log.error(
                        "a peer failed the encrypted handshake on port %d: most likely a "
                        "worker with the wrong password (or one that timed out while the "
                        "manager was busy). Give workers this manager's password file "
                        "(--password-file) or $PACKMULE_PASSWORD. (Logged once.)", self.port)
        if closed:
            self._plan_probes(now)

    # ---------------------------------------------------------------- descriptors
    def _check_descriptors(self, now: float) -> None:
        """Say once when the process is out of file descriptors: libzmq then fails every
        accept (silently: its events for that would flood the monitor), so no worker
        beyond those connected can join until some leave."""
        self._next_fd_check = now + FD_CHECK_INTERVAL
        if self._fds_said:
            return
        try:
            open_fds = len(os.listdir("/proc/self/fd"))
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                return  # not Linux
            open_fds = self.fd_limit  # not even one to spare to look
        if open_fds >= self.fd_limit - FD_MARGIN:
            self._fds_said = True
            log.error(
                "out of file descriptors: %d open of the limit of %d, with %d workers "
                "connected. No more workers can connect until some leave; those connected "
                "are served as before. Raise the limit (ulimit -n, or the hard limit in "
                "/etc/security/limits.conf) for a larger cluster. (Logged once.)",
                open_fds, self.fd_limit, len(self.workers))

    # ---------------------------------------------------------------- liveness
    def _plan_probes(self, now: float) -> None:
        for delay in PROBE_DELAYS:
            at = now + delay
            if not any(abs(t - at) < delay / 2 for t in self._probe_times):
                self._probe_times.append(at)
        self._probe_times.sort()

    def wake_at(self) -> float:
        """When :meth:`tick` has work next."""
        soon = [self.next_beat, self._next_fd_check]
        if self._probing:
            soon.append(0.0)
        elif self._probe_times:
            soon.append(self._probe_times[0])
        return min(soon)

    def tick(self, now: float) -> Iterator[str]:
        """Send the heartbeats and probes that are due; yields the workers found gone."""
        if now >= self._next_fd_check:
            self._check_descriptors(now)
        if now >= self.next_beat:
            interval = self.heartbeat_interval
            self.next_beat = now + interval / HEARTBEAT_SLICES
            self._beat_credit += len(self.workers) / HEARTBEAT_SLICES
            beat = m.encode(m.ManagerHeartbeat())
            for _ in range(min(math.floor(self._beat_credit), len(self._ring))):
                wid = self._ring.popleft()
                conn = self.workers.get(wid)
                if conn is None:
                    continue  # gone since: dropped from the ring
                self._ring.append(wid)
                self._beat_credit -= 1
                if not self.send_frames(conn.identity, [beat]):
                    yield wid
            self._beat_credit = min(self._beat_credit, float(len(self.workers)))
        if not self._probing and self._probe_times and now >= self._probe_times[0]:
            self._probe_times.pop(0)
            self._probing.extend(self.workers)
        if self._probing:
            beat = m.encode(m.ManagerHeartbeat())
            for _ in range(min(PROBE_CHUNK, len(self._probing))):
                wid = self._probing.popleft()
                conn = self.workers.get(wid)
                if conn is not None and not self.send_frames(conn.identity, [beat]):
                    yield wid

    # ---------------------------------------------------------------- closing
    def stop_monitoring(self) -> None:
        """No more monitor events: drained, then switched off (before telling thousands
        of workers to exit, whose closing connections would fill the monitor's pipe)."""
        if self._monitoring:
            self._monitoring = False
            with contextlib.suppress(zmq.ZMQError):
                for _ in drain_events(self.monitor):
                    pass
                self.router.disable_monitor()

    def close(self, linger: float = 0.0) -> None:
        """Close in an order that cannot hang: the monitor first, then the socket, giving
        messages already sent ``linger`` seconds to leave."""
        self.stop_monitoring()
        self.monitor.close(linger=0)
        self.zap.close(linger=0)
        self.router.close(linger=int(linger * 1000))
        self._ctx.term()
