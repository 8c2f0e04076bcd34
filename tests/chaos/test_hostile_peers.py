"""Peers without the password: noise, other ZeroMQ security mechanisms, wrong keys,
huge declared frames, hundreds of idle connections. The manager refuses them all,
its loop's memory stays bounded, and a real worker is served throughout.

Memory is the loop process's resident set (``Manager.loop_pid``), read with psutil.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import time
from typing import Any

import psutil
import pytest
import zmq

from packmule import Manager, PythonTask
from packmule.manager import connections
from packmule.manager.connections import Connections
from packmule.protocol import messages as m
from packmule.protocol.pieces import MAX_FRAME
from packmule.protocol.security import derive_keys
from packmule.resources import Resources

from .conftest import ClusterFactory, connected, wait_until, zmq_context

MB = 1 << 20
#: How much the loop's resident set may grow while hostile peers are connected.
GROWTH_LIMIT = 50 * MB


def greeting(mechanism: bytes, as_server: bool = False) -> bytes:
    """A ZMTP 3.0 greeting (64 bytes) announcing ``mechanism``."""
    return (b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, 0]) + mechanism.ljust(20, b"\0")
            + bytes([as_server]) + b"\0" * 31)


def long_frame_header(size: int, command: bool = True) -> bytes:
    """A ZMTP frame header declaring ``size`` bytes (flags: long, and command or more)."""
    return bytes([0x06 if command else 0x03]) + struct.pack(">Q", size)


def rss(mgr: Manager) -> int:
    return int(psutil.Process(mgr.loop_pid).memory_info().rss)


def loop_connections(mgr: Manager) -> int:
    """TCP connections the loop process has open on its port."""
    port = int(mgr.address.rsplit(":", 1)[1])
    return sum(1 for c in psutil.Process(mgr.loop_pid).net_connections(kind="tcp")
               if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)


def serves(mgr: Manager, n: int = 10) -> None:
    """The manager still runs tasks on its real worker."""
    futs = [mgr.submit(PythonTask(pow, 2, i, resources={"cores": 1})) for i in range(n)]
    assert [f.result(timeout=30) for f in futs] == [2**i for i in range(n)]


def closed_by_peer(s: socket.socket, timeout: float = 10.0) -> bool:
    """Whether the other side closes ``s`` within ``timeout`` (what it says is read away)."""
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def curve_dealer(ctx: zmq.Context[Any], address: str, server_key: bytes, public: bytes,
                 secret: bytes) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.DEALER)
    sock.curve_serverkey = server_key
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.linger = 0
    sock.connect(f"tcp://{address}")
    return sock


def hello() -> bytes:
    return m.encode(m.Hello(m.PROTOCOL_VERSION, "0", "intruder", "nowhere", 1,
                            {"cores": 1, "memory": 1, "disk": 1, "gpus": 0}, []))


def test_noise_other_mechanisms_and_wrong_keys_get_nothing_through(
    cluster: ClusterFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="packmule")
    with cluster(1) as mgr, zmq_context() as ctx:
        wait_until(connected(mgr, 1))
        host, port = mgr.address.rsplit(":", 1)
        before = rss(mgr)
        noise = [b"", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(10), os.urandom(64),
                 os.urandom(100_000), b"\xff" * 64, greeting(b"NULL") + os.urandom(300),
                 greeting(b"PLAIN") + os.urandom(300), greeting(b"CURVE") + os.urandom(300),
                 greeting(b"CURVE", as_server=True) + os.urandom(300),
                 greeting(b"GSSAPI"), greeting(b"\x00\x01\x02")]
        raw = []
        for payload in noise:
            s = socket.create_connection((host, int(port)), timeout=5)
            with contextlib.suppress(OSError):
                s.sendall(payload)
            raw.append(s)
        # Real ZeroMQ clients: no security, PLAIN, CURVE with a made-up server key, and
        # CURVE with the right server key (knowing it is knowing the password) but a
        # client key the authenticator refuses.
        null = ctx.socket(zmq.DEALER)
        plain = ctx.socket(zmq.DEALER)
        plain.plain_username, plain.plain_password = b"worker", b"guess"
        fake_pub, fake_sec = zmq.curve_keypair()
        keys = derive_keys(mgr._secret)
        clients = [null, plain,
                   curve_dealer(ctx, mgr.address, fake_pub, fake_pub, fake_sec),
                   curve_dealer(ctx, mgr.address, keys.server_public, fake_pub, fake_sec)]
        for sock in (null, plain):
            sock.linger = 0
            sock.connect(f"tcp://{mgr.address}")
        for sock in clients:
            sock.send(hello(), zmq.NOBLOCK)
        serves(mgr)
        for sock in clients:
            assert not sock.poll(200), "a peer without the password got an answer"
        # The ones that spoke ZMTP badly were dropped at once.
        for s, payload in zip(raw, noise, strict=True):
            if payload.startswith(b"\xff") and payload[10:11] == b"\x03":
                assert closed_by_peer(s), payload[:32]
            s.close()
        for sock in clients:
            sock.close(0)
        assert mgr.stats().workers == 1 and mgr.stats().workers_joined == 1
        serves(mgr)
        assert rss(mgr) - before < GROWTH_LIMIT
        said = [r.getMessage() for r in caplog.records if "handshake" in r.getMessage()]
        assert len(said) <= 1, said  # said once, not once per peer


def test_huge_declared_frames_are_refused_before_they_are_buffered(
    cluster: ClusterFactory,
) -> None:
    with cluster(1) as mgr, zmq_context() as ctx:
        wait_until(connected(mgr, 1))
        host, port = mgr.address.rsplit(":", 1)
        before = rss(mgr)
        chunk = os.urandom(1 * MB)
        sent = []
        for size in (1 << 30, 1 << 40, 4 * MAX_FRAME, MAX_FRAME + 1):
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(greeting(b"CURVE"))
            total = 0
            try:
                s.recv(64)  # the manager's greeting
                s.sendall(long_frame_header(size))
                while total < 64 * MB:
                    s.sendall(chunk)
                    total += len(chunk)
            except OSError:
                pass  # closed by the manager: what should happen
            sent.append(total)
            assert closed_by_peer(s)
            s.close()
        # Each was cut off within the socket buffers, long before 64 MB.
        assert max(sent) < 16 * MB, sent
        # A peer with the password sending one frame over the limit is cut off too.
        keys = derive_keys(mgr._secret)
        big = curve_dealer(ctx, mgr.address, keys.server_public, keys.client_public,
                           keys.client_secret)
        big.send(hello())
        assert big.poll(10_000)
        assert isinstance(m.decode(big.recv()), m.Welcome)
        big.send(os.urandom(8 * MB))
        wait_until(lambda: mgr.stats().workers == 1)  # dropped: its connection closed
        big.close(0)
        serves(mgr)
        grown = rss(mgr) - before
        print(f"huge declared frames: the loop grew by {grown / MB:.1f} MB")
        assert grown < GROWTH_LIMIT, f"the loop grew by {grown / MB:.0f} MB"


def test_500_idle_connections_cost_little_and_the_worker_is_served(
    cluster: ClusterFactory,
) -> None:
    with cluster(1) as mgr:
        wait_until(connected(mgr, 1))
        serves(mgr, 2)
        host, port = mgr.address.rsplit(":", 1)
        before = rss(mgr)
        idle = []
        try:
            for i in range(500):
                s = socket.create_connection((host, int(port)), timeout=10)
                if i % 2:  # half say which mechanism they want, then nothing more
                    s.sendall(greeting(b"CURVE"))
                idle.append(s)
            wait_until(lambda: loop_connections(mgr) >= 501, timeout=30)
            serves(mgr, 20)
            grown = rss(mgr) - before
            print(f"500 idle connections: the loop grew by {grown / MB:.1f} MB")
            assert grown < GROWTH_LIMIT, f"500 idle connections cost {grown / MB:.0f} MB"
            assert mgr.stats().workers == 1
        finally:
            for s in idle:
                s.close()
        serves(mgr, 5)


def test_connections_that_never_finish_the_handshake_are_capped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Beyond HANDSHAKE_CAP silent connections, the oldest are closed; a worker with
    the password still gets through."""
    cap = 20
    monkeypatch.setattr(connections, "HANDSHAKE_CAP", cap)
    net = Connections(b"secret", "127.0.0.1", 0, 1.0)
    keys = derive_keys(b"secret")
    silent: list[socket.socket] = []
    try:
        for _ in range(3 * cap):
            silent.append(socket.create_connection(("127.0.0.1", net.port), timeout=5))

        def turn() -> list[tuple[bytes, list[bytes]]]:
            net.events(time.monotonic())
            net.answer_zap()
            return net.receive()[0]

        def cut_off() -> int:
            turn()
            n = 0
            for s in silent:
                s.setblocking(False)
                try:
                    n += s.recv(1) == b""
                except BlockingIOError:
                    pass
                except ConnectionResetError:
                    n += 1
            return n

        wait_until(lambda: cut_off() >= 2 * cap, timeout=20)
        assert cut_off() == 2 * cap  # exactly the surplus, oldest first
        assert any("handshake" in r.getMessage() for r in caplog.records)
        with zmq_context() as ctx:
            sock = curve_dealer(ctx, f"127.0.0.1:{net.port}", keys.server_public,
                                keys.client_public, keys.client_secret)
            sock.send(hello())
            got = wait_until(lambda: turn() or None, timeout=20)
            ((_, frames),) = got
            assert isinstance(m.decode(frames[0]), m.Hello)
            sock.close(0)
    finally:
        for s in silent:
            s.close()
        net.close()


def test_pieces_from_a_worker_are_joined_within_the_bound() -> None:
    """Pieces are taken from connected workers only, in order, up to MAX_MESSAGE."""
    from packmule.errors import ProtocolError
    from packmule.manager.connections import WorkerConn
    from packmule.protocol.pieces import PIECE_SIZE, frames

    net = Connections(b"secret", "127.0.0.1", 0, 1.0)
    try:
        ident = b"w" * 16
        data = m.encode(m.Results([m.TaskResult(
            1, 1, m.TaskStatus.SUCCESS, os.urandom(3 * PIECE_SIZE), 0, b"", b"", {}, "", 0.0,
            [], [], {}, [])]))
        parts = [[bytes(f) for f in fs] for fs in frames(data)]
        assert len(parts) == 4
        with pytest.raises(ProtocolError, match="only after the Hello"):
            net.assemble(ident, parts[0])
        net.add(ident.hex(), WorkerConn(ident, "h", 1, Resources(1, 1, 1, 0)))
        got = [net.assemble(ident, p) for p in parts]
        assert got[:3] == [None, None, None] and got[3] == data
        assert net.pieces.held == 0
        net.assemble(ident, parts[0])
        with pytest.raises(ProtocolError, match="offset"):
            net.assemble(ident, parts[2])  # one missing
        assert net.pieces.held == 0  # what it had sent is dropped
        net.assemble(ident, parts[0])
        net.remove(ident.hex())  # a worker that goes takes its pieces along
        assert net.pieces.held == 0
    finally:
        net.close()
