"""Large user payloads under the manager's frame limit, with a lease shorter than
their transfer: arguments of hundreds of MB go to the worker in paced pieces,
results of hundreds of MB come back in pieces, and neither holds up the
heartbeats or other workers' tasks."""

from __future__ import annotations

import concurrent.futures
import contextlib
import mmap
import os
import select
import signal
import socket
import time
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from packmule import FileTransferError, PythonTask
from packmule.errors import ProtocolError
from packmule.manager import ipc, transfers
from packmule.protocol import messages as m
from packmule.protocol import pieces
from packmule.protocol.pieces import MAX_FRAME, PIECE_ACK, PIECE_SIZE, PIECE_WINDOW
from packmule.resources import Resources
from packmule.task import File

from .conftest import ClusterFactory, connected, wait_until

MB = 1_000_000
#: Shorter than moving 300 MB here (3-15 s), with room for the pauses that are not
#: the wire's: the loop reading the job from the user's process, and the worker
#: decoding it (up to about 2.5 s when this machine is slow to give a process fresh
#: memory; the worker heartbeats while its runner takes the task).
LEASE = {"heartbeat_interval": 0.4, "lease": 4.0}


def checksum(data: bytes) -> tuple[int, int, int]:
    """What a task reports about a large argument: its length and two samples."""
    return len(data), data[0], data[-1]


def make_bytes(n: int) -> bytes:
    """A large result: ``n`` bytes, first and last marked."""
    body = bytearray(n)
    body[0], body[-1] = 7, 9
    return bytes(body)


def nap(i: int) -> int:
    """A small task too long to be prefetched to a busy worker (0.1 s)."""
    time.sleep(0.15)
    return i


@pytest.mark.slow
def test_a_300_mb_argument_and_a_200_mb_result_travel(cluster: ClusterFactory) -> None:
    big = make_bytes(300 * MB)
    with cluster(1, memory=12000, **LEASE) as mgr:
        assert mgr.lease == LEASE["lease"]
        started = time.monotonic()
        fut = mgr.submit(PythonTask(checksum, big))
        assert fut.result(timeout=120) == (300 * MB, 7, 9)
        sent = time.monotonic() - started
        del big
        started = time.monotonic()
        result = mgr.submit(PythonTask(make_bytes, 200 * MB)).result(timeout=120)
        received = time.monotonic() - started
        assert len(result) == 200 * MB and result[0] == 7 and result[-1] == 9
        assert len(result) > 1000 * MAX_FRAME  # it did come in pieces
        del result
        # ... and the connection is fine afterwards
        assert mgr.submit(PythonTask(len, "abc")).result(timeout=30) == 3
        stats = mgr.stats()
        assert stats.workers_lost == 0 and stats.workers == 1  # its lease held throughout
    print(f"300 MB argument: {sent:.1f} s; 200 MB result: {received:.1f} s")


@pytest.mark.slow
def test_other_workers_tasks_and_heartbeats_flow_during_a_large_transfer(
    cluster: ClusterFactory,
) -> None:
    big = make_bytes(300 * MB)
    with cluster(2, memory=12000, **LEASE) as mgr:
        wait_until(connected(mgr, 2))
        # The whole of one worker: the small tasks run on the other.
        task = PythonTask(checksum, big, resources={"cores": 2})
        fut = mgr.submit(task)
        del big
        latencies: list[float] = []
        while not fut.done():
            started = time.monotonic()
            small = mgr.submit(PythonTask(nap, len(latencies), resources={"cores": 1}))
            assert small.result(timeout=30) == len(latencies)
            latencies.append(time.monotonic() - started)
        assert fut.result() == (300 * MB, 7, 9)
        assert task.attempts == 1
        stats = mgr.stats()
        assert stats.workers_lost == 0 and stats.workers == 2
    # Each small task took its 0.15 s and at most about a second more, never a lease.
    print(f"{len(latencies)} small tasks during the large one; slowest "
          f"{max(latencies):.2f} s")
    assert len(latencies) >= 3 and max(latencies) < LEASE["lease"]


def held_a_while(data: bytes, seconds: float) -> tuple[int, int, int]:
    """A task that holds its large argument long enough for its worker to be killed."""
    time.sleep(seconds)
    return checksum(data)


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="no memfd on this system")
def test_a_large_call_reaches_the_loop_in_shared_memory() -> None:
    """A call of SHARED_PAYLOAD bytes or more crosses as a descriptor after its Submit:
    the loop maps the Manager's pages (read-only) instead of reading them from the socket,
    and no descriptor is left open on either side."""
    a, b = socket.socketpair()
    ours, theirs = Connection(a.detach()), Connection(b.detach())
    payload = make_bytes(ipc.SHARED_PAYLOAD + 17)
    fds_before = len(os.listdir("/proc/self/fd"))
    fd = ipc.share(payload)
    assert fd is not None
    job = ipc.Submit(7, "python", b"", "", Resources(), "c", 0.0, None, None, (), (), 0.0,
                     None, "f", shared=True)
    ours.send(ipc.encode(job))
    ipc.send_shared(ours, fd)
    os.close(fd)
    got = ipc.decode(theirs.recv())
    assert isinstance(got, ipc.Submit) and got.shared and got.payload == b""
    mapped = ipc.receive_shared(theirs)
    # (no temporaries of pytest's assertions may keep the mapping alive)
    whole = mapped.readonly and len(mapped) == len(payload) and mapped == payload
    is_mapped = isinstance(mapped.obj, mmap.mmap)  # the pages, not a copy
    assert whole and is_mapped
    # ... which the worker is sent as they are: the encoding is that of the bytes
    spec = m.TaskSpec(7, 1, "python", mapped, "", {"cores": 1, "memory": 0, "disk": 0,  # type: ignore[arg-type]
                      "gpus": 0}, {}, [], [], 0.0, "")
    same = m.TaskSpec(7, 1, "python", payload, "", {"cores": 1, "memory": 0, "disk": 0,
                      "gpus": 0}, {}, [], [], 0.0, "")
    parts = m.encode_parts(m.Dispatch([spec]), PIECE_SIZE)
    joined = b"".join(bytes(p) for p in parts) == m.encode(m.Dispatch([same]))
    uncopied = sum(p is mapped for p in parts)
    assert joined and uncopied == 1
    assert shared_in(os.getpid()) == 1  # (the mapping's own descriptor)
    del mapped, parts, spec
    ours.close()
    theirs.close()
    assert shared_in(os.getpid()) == 0
    assert len(os.listdir("/proc/self/fd")) == fds_before - 2  # (the pair's own two)


def test_a_large_result_goes_to_the_manager_out_of_band_without_a_copy() -> None:
    """The loop writes a result of 1 MiB or more to the Manager from its own bytes (a
    Buffers message, the raw frame, then the Done pickled without it); the Manager
    reads the same message back. Smaller results and other messages go in band."""
    a, b = socket.socketpair()
    theirs = Connection(b.detach())
    outbox = ipc.Outbox(a.fileno())
    big = make_bytes(3 << 20)
    outbox.put(ipc.Done(1, True, "python", ipc.out_of_band(big), {"worker": "w"}))
    held = [part for part in outbox._out if isinstance(part, memoryview)]
    uncopied = len(held) == 1 and held[0].obj is big
    assert uncopied
    outbox.put(ipc.Done(2, True, "python", ipc.out_of_band(b"small"), {}))
    # a result as the loop decodes one joined from pieces: a view, which cannot be pickled
    view = memoryview(bytearray(big)).toreadonly()
    outbox.put(ipc.Done(3, True, "python", ipc.out_of_band(view), {}))
    got: list[ipc.Message] = []
    reader = concurrent.futures.ThreadPoolExecutor(1).submit(
        lambda: [got.append(ipc.receive(theirs)) for _ in range(3)])
    deadline = time.monotonic() + 30
    while outbox.pending and time.monotonic() < deadline:
        select.select([], [a], [], 1.0)  # writable again: the reader took some
        outbox.flush()
    reader.result(timeout=30)
    assert got == [ipc.Done(1, True, "python", big, {"worker": "w"}),
                   ipc.Done(2, True, "python", b"small", {}),
                   ipc.Done(3, True, "python", big, {})]
    assert all(type(d.data) is bytes for d in got if isinstance(d, ipc.Done))
    outbox.close(1.0)
    a.close()
    theirs.close()


def shared_in(pid: int) -> int:
    """How many shared task calls process ``pid`` holds (open memfds of ipc.share)."""
    fds = Path(f"/proc/{pid}/fd")
    held = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            held += os.readlink(fd).startswith("/memfd:packmule-task")
    return held


def sleepy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="no memfd on this system")
def test_shared_calls_are_capped_and_released(
    cluster: ClusterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most MAX_SHARED unfinished tasks hold their call in shared memory (a descriptor
    each in the loop); the others cross the socket; all are released as tasks end."""
    monkeypatch.setattr(ipc, "MAX_SHARED", 2)
    with cluster(1, cores=1) as mgr:
        wait_until(connected(mgr, 1))
        blocker = mgr.submit(PythonTask(sleepy, 1.0))
        bigs = [make_bytes(ipc.SHARED_PAYLOAD + k) for k in range(4)]
        futs = [mgr.submit(PythonTask(checksum, b)) for b in bigs]
        assert not blocker.done()  # the four wait behind it, in the loop
        assert shared_in(mgr.loop_pid) == 2
        assert [f.result(timeout=60) for f in futs] == [(len(b), 7, 9) for b in bigs]
        wait_until(lambda: shared_in(mgr.loop_pid) == 0)


def test_a_large_call_is_sent_again_from_shared_memory_after_a_lost_worker(
    cluster: ClusterFactory,
) -> None:
    """The loop keeps a shared call mapped until its task ends: when the worker running it
    dies, the next attempt elsewhere gets the whole call again."""
    big = make_bytes(3 * ipc.SHARED_PAYLOAD)
    with cluster(2, cores=1) as mgr:
        wait_until(connected(mgr, 2))
        task = PythonTask(held_a_while, big, 3.0)
        fut = mgr.submit(task)
        wait_until(lambda: mgr.stats().tasks["running"] == 1)
        status = mgr.status()
        running = [w for w in status["workers"] if w["tasks"]]
        assert len(running) == 1
        victim = next(p for p in mgr.worker_processes  # type: ignore[attr-defined]
                      if p.pid == running[0]["pid"])
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        assert fut.result(timeout=60) == (len(big), 7, 9)
        assert task.attempts == 2 and mgr.stats().workers_lost == 1


def test_without_memfd_a_large_call_goes_through_the_socket(
    cluster: ClusterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where there is no memfd (not Linux) a large call crosses the socket as before."""
    with cluster(1) as mgr:
        monkeypatch.delattr(os, "memfd_create", raising=False)
        assert ipc.share(b"x") is None
        big = make_bytes(2 * ipc.SHARED_PAYLOAD)
        assert mgr.submit(PythonTask(checksum, big)).result(timeout=60) == (len(big), 7, 9)


def test_a_result_just_over_one_piece_arrives_whole(cluster: ClusterFactory) -> None:
    with cluster(1) as mgr:
        sizes = [MAX_FRAME - 100, MAX_FRAME, 3 * MAX_FRAME + 17]
        futs = [mgr.submit(PythonTask(make_bytes, n)) for n in sizes]
        for n, fut in zip(sizes, futs, strict=True):
            value = fut.result(timeout=60)
            assert len(value) == n and value[0] == 7 and value[-1] == 9


def test_arguments_just_over_one_piece_arrive_whole_in_order(cluster: ClusterFactory) -> None:
    """Small and large tasks to one worker, mixed: the large go in pieces, the others
    wait their turn or go between, and every one arrives whole."""
    with cluster(1) as mgr:
        sizes = [10, PIECE_SIZE - 200, PIECE_SIZE, 3 * PIECE_SIZE + 17, 20, 5 * MB, 30]
        futs = [mgr.submit(PythonTask(checksum, make_bytes(n))) for n in sizes]
        assert [f.result(timeout=60) for f in futs] == [(n, 7, 9) for n in sizes]


# ------------------------------------------------------------------ without sockets
class Link:
    """What an Outbox sent, as the worker would join it."""

    def __init__(self) -> None:
        self.frames: list[list[bytes]] = []
        self.incoming = pieces.Incoming()
        self.got: list[m.Message] = []
        self.acks: list[int] = []
        self.up = True

    def send(self, frames: list[bytes | memoryview]) -> bool:
        self.frames.append([bytes(f) for f in frames])
        return self.up

    def deliver(self) -> None:
        """The worker reads everything sent so far."""
        for frames in self.frames:
            msg = m.decode(frames[0])
            if isinstance(msg, m.Piece):
                whole = self.incoming.add(msg, frames[1])
                ack = self.incoming.ack()
                if ack is not None:
                    self.acks.append(ack.received)
                if whole is None:
                    continue
                msg = m.decode(whole)
            self.got.append(msg)
        self.frames.clear()


def big_file(n: int) -> m.PutFile:
    return m.PutFile("f", make_bytes(n))


def test_an_outbox_keeps_order_and_its_window() -> None:
    link, box = Link(), pieces.Outbox()
    first, second = big_file(20 * MB), big_file(3 * PIECE_SIZE)
    assert box.put(first, link.send, large=True)  # (encoded without copying its data)
    assert box.left == len(m.encode(first)) - PIECE_WINDOW
    for msg in (m.Kill(1, 1), m.encode(second), m.Kill(2, 1)):
        assert box.put(msg, link.send)  # wait behind the first
    assert len(link.frames) == PIECE_WINDOW // PIECE_SIZE  # one window, no more
    assert box.sent == PIECE_WINDOW
    while box.busy:
        link.deliver()
        assert box.sent - box.acked <= PIECE_WINDOW
        assert box.progress(link.acks[-1], link.send)
    link.deliver()
    assert box.progress(link.acks[-1], link.send)
    assert link.got == [first, m.Kill(1, 1), second, m.Kill(2, 1)]
    assert box.left == 0 and link.incoming.held == 0  # nothing kept once sent
    # Acknowledged every PIECE_ACK bytes and at the end of each message: all of it.
    assert link.acks[-1] == box.sent == box.acked
    assert all(0 < b - a <= PIECE_ACK for a, b in zip(link.acks, link.acks[1:], strict=False))
    # Small messages go at once when nothing waits.
    assert box.put(m.Kill(3, 1), link.send) and link.frames == [[m.encode(m.Kill(3, 1))]]


def test_pieces_are_cut_across_the_parts_of_an_encoding() -> None:
    spec = m.TaskSpec(1, 1, "python", make_bytes(3 * PIECE_SIZE + 5), "", {}, {},
                      [m.InputFile("a", "", make_bytes(PIECE_SIZE - 3)),
                       m.InputFile("b", "", make_bytes(PIECE_SIZE))], [], 0.0, "")
    msg = m.Dispatch([spec, spec])
    parts = m.encode_parts(msg, PIECE_SIZE)
    assert len(parts) == 9 and b"".join(parts) == m.encode(msg)
    assert any(p is spec.payload for p in parts)  # not copied
    cut = pieces.Cutter(parts)
    got = pieces.Incoming()
    whole = None
    while cut.offset < cut.total:
        header, data = next(cut)
        whole = got.add(m.decode(header), data)  # type: ignore[arg-type]
    assert whole is not None and m.decode(whole) == msg


def test_an_outbox_refuses_acknowledgements_of_more_than_was_sent() -> None:
    link, box = Link(), pieces.Outbox()
    assert box.progress(0, link.send)
    with pytest.raises(ProtocolError, match="PieceProgress"):
        box.progress(1, link.send)
    box.put(m.encode(big_file(2 * PIECE_SIZE)), link.send)
    with pytest.raises(ProtocolError, match="PieceProgress"):
        box.progress(box.sent + 1, link.send)


def test_an_outbox_says_when_the_worker_is_gone() -> None:
    link, box = Link(), pieces.Outbox()
    link.up = False
    assert not box.put(m.encode(big_file(2 * PIECE_SIZE)), link.send)


def test_a_cached_input_file_too_large_to_send_fails(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.setattr(transfers, "MAX_TASK_DATA", 1000)
    path = tmp_path / "big.dat"
    path.write_bytes(b"x" * 2000)
    t = transfers.Transfers()
    t.joined("w", [])
    with pytest.raises(FileTransferError, match=r"big\.dat is 0 MB, more than the"):
        t.inputs("w", (File(str(path), "big.dat", cache=True),), lambda msg: True)


def test_the_loops_messages_to_the_manager_keep_order_with_large_ones() -> None:
    """A large message to the Manager is written from where it is (not copied into the
    buffer), between small ones, in order, however much the socket takes at a time."""
    here, there = socket.socketpair()
    with here, there:
        box = ipc.Outbox(here.fileno())
        reader = Connection(there.detach())
        sent = [ipc.Largest(Resources(cores=i)) for i in range(3)]
        big = ipc.Done(1, True, "python", make_bytes(3 << 20), {})
        for msg in (sent[0], big, sent[1], big, sent[2]):
            box.put(msg)  # (the socket takes part of it: the rest waits)
        waiting = box.pending
        got: list[ipc.Message] = []
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            reading = pool.submit(lambda: [ipc.decode(reader.recv()) for _ in range(5)])
            while box.pending:
                box.flush()
                time.sleep(0.001)
            got = reading.result(timeout=30)
        assert waiting and got == [sent[0], big, sent[1], big, sent[2]]
        box.close(timeout=1)
        reader.close()


def doubled_file_and_loud(name: str) -> int:
    """Reads a large input file, writes it twice into a large output, prints 2 MB."""
    data = Path(name).read_bytes()
    Path("out.bin").write_bytes(data + data)
    print("x" * (2 << 20))
    return len(data)


def test_large_files_and_output_travel_whole_in_joined_messages(
    cluster: ClusterFactory, tmp_path: Path
) -> None:
    """Every large bytes field of a message joined from pieces (an inline input file to the
    worker; an output file, captured stdout and the value back) arrives whole, although
    each is decoded as a view: files are written from it, stdout is copied for the
    Manager, and a large value goes out of band."""
    src = tmp_path / "in.bin"
    body = make_bytes(3 * m.VIEW_BYTES)
    src.write_bytes(body)
    with cluster(1) as mgr:
        task = PythonTask(doubled_file_and_loud, "in.bin", input_files=[File(str(src))],
                          output_files=[File(str(tmp_path / "out.bin"), "out.bin")])
        assert mgr.submit(task).result(timeout=60) == len(body)
        assert (tmp_path / "out.bin").read_bytes() == body + body
        assert isinstance(task.stdout, str) and len(task.stdout) > m.VIEW_BYTES  # (its cut)
        assert task.stdout.endswith("x" * 1000 + "\n")
        value = mgr.submit(PythonTask(make_bytes, 2 * m.VIEW_BYTES)).result(timeout=60)
        assert type(value) is bytes and len(value) == 2 * m.VIEW_BYTES
