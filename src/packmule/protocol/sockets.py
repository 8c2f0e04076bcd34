"""The encrypted sockets of both ends, and their monitor events.

The manager listens on a ROUTER socket as the CurveZMQ server; each worker
connects a DEALER as a client. Both key pairs come from the shared secret
(:mod:`.security`). Each socket has a monitor: the manager learns from it
that connections closed or failed their handshake, the worker that its
password was refused.
"""

from __future__ import annotations

from collections.abc import Iterator

import zmq

from .pieces import MAX_FRAME
from .security import CurveKeys

#: A handshake failed: most likely a wrong password on the other side.
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
#: The manager's listening socket: how many connections the kernel queues while
#: the manager accepts them (Linux caps it at net.core.somaxconn). Thousands of
#: workers connect at once after a restart; with libzmq's default of 100 the rest
#: are refused and retry seconds later.
LISTEN_BACKLOG = 4096
#: Messages libzmq queues per worker connection for the manager to read, at most.
#: When a worker's queue is full libzmq stops reading its connection (TCP holds the
#: rest back; nothing is dropped), so what it holds for one worker is bounded by
#: RECEIVE_HWM x MAX_FRAME (4.3 MiB).
RECEIVE_HWM = 64


def server_socket(ctx: zmq.Context[zmq.Socket[bytes]], keys: CurveKeys,
                  zap_domain: bytes) -> zmq.Socket[bytes]:
    """The manager's ROUTER: CURVE server, sends to a gone peer fail (EHOSTUNREACH)
    instead of vanishing, no limit on queued sends (flow is paced above), no linger.
    Frames over :data:`~.pieces.MAX_FRAME` close the connection (before the handshake
    too), and at most :data:`RECEIVE_HWM` messages wait per connection."""
    sock = ctx.socket(zmq.ROUTER)
    sock.curve_server = True
    sock.curve_secretkey = keys.server_secret
    sock.curve_publickey = keys.server_public
    sock.zap_domain = zap_domain
    sock.router_mandatory = True
    sock.sndhwm = 0
    sock.rcvhwm = RECEIVE_HWM
    sock.maxmsgsize = MAX_FRAME
    sock.linger = 0
    sock.backlog = LISTEN_BACKLOG
    return sock


def client_socket(ctx: zmq.Context[zmq.Socket[bytes]], keys: CurveKeys, identity: bytes,
                  reconnect_interval: float) -> zmq.Socket[bytes]:
    """A worker's DEALER: CURVE client of the manager's derived key."""
    sock = ctx.socket(zmq.DEALER)
    sock.curve_serverkey = keys.server_public
    sock.curve_publickey = keys.client_public
    sock.curve_secretkey = keys.client_secret
    sock.linger = 1000
    sock.sndhwm = 0
    sock.rcvhwm = 0
    sock.reconnect_ivl = int(reconnect_interval * 1000)
    sock.routing_id = identity
    return sock


def drain_events(monitor: zmq.Socket[bytes]) -> Iterator[tuple[int, int]]:
    """The monitor's pending events as (event, value), without waiting."""
    while True:
        try:
            frames = monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        head = frames[0]
        yield int.from_bytes(head[:2], "little"), int.from_bytes(head[2:6], "little")
