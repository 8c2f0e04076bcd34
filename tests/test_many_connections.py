"""The manager with many connections: emulated workers that speak the real protocol
(CURVE handshake, Hello, heartbeats, results) against the real Manager and its loop.

benchmarks/many_workers.py measures the same at thousands of workers; these tests
check the behaviour at a size a test can afford."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import zmq

import packmule
from packmule.protocol import messages as m
from packmule.protocol.security import derive_keys, read_password_file
from packmule.protocol.sockets import client_socket
from packmule.serialize import dumps_result

from .conftest import wait_until


def noop() -> None:
    """The task."""


class Fleet:
    """``n`` emulated workers of 1 core in this process, served by :meth:`pump`."""

    def __init__(self, address: str, password_file: Path, n: int) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.ctx.set(zmq.MAX_SOCKETS, 4 * n + 64)
        keys = derive_keys(read_password_file(password_file))
        self.socks = []
        self.welcomed: set[int] = set()
        self.exited: set[int] = set()
        self.beats: list[float] = []  # when manager heartbeats arrived
        self.interval = 1.0
        self._last_beat: dict[int, float] = {}
        for i in range(n):
            s = client_socket(self.ctx, keys, os.urandom(16), 1.0)
            s.connect(f"tcp://{address}")
            s.send(m.encode(m.Hello(m.PROTOCOL_VERSION, packmule.__version__, f"e{i}",
                                    "emulated", os.getpid(),
                                    {"cores": 1, "memory": 1000, "disk": 1000, "gpus": 0},
                                    [])))
            self.socks.append(s)
        self.poller = zmq.Poller()
        for s in self.socks:
            self.poller.register(s, zmq.POLLIN)

    def pump(self, seconds: float) -> None:
        """Answer the manager for a while: heartbeats back, a result for every task."""
        end = time.monotonic() + seconds
        index = {s: i for i, s in enumerate(self.socks)}
        while (now := time.monotonic()) < end:
            for s, _ in self.poller.poll(50):
                i = index[s]
                while True:
                    try:
                        msg = m.decode(s.recv(zmq.NOBLOCK))
                    except zmq.Again:
                        break
                    if isinstance(msg, m.Welcome):
                        self.welcomed.add(i)
                        self.interval = msg.heartbeat_interval
                    elif isinstance(msg, m.ManagerHeartbeat):
                        self.beats.append(time.monotonic())
                    elif isinstance(msg, m.Exit):
                        self.exited.add(i)
                    elif isinstance(msg, m.Dispatch):
                        s.send(m.encode(m.Results([
                            m.TaskResult(t.task_id, t.attempt, m.TaskStatus.SUCCESS,
                                         dumps_result(None), 0, b"", b"", {}, "", 0.001, [],
                                         [], {}, []) for t in msg.tasks])))
            for i in self.welcomed - self.exited:
                if now - self._last_beat.get(i, 0.0) >= self.interval:
                    self._last_beat[i] = now
                    self.socks[i].send(m.encode(m.WorkerHeartbeat(0)))

    def close(self) -> None:
        for s in self.socks:
            s.close(linger=0)
        self.ctx.term()


@contextmanager
def fleet(address: str, password_file: Path, n: int) -> Iterator[Fleet]:
    f = Fleet(address, password_file, n)
    try:
        yield f
    finally:
        f.close()


def test_heartbeats_go_out_spread_over_the_interval(tmp_path: Path) -> None:
    with packmule.Manager(run_dir=tmp_path, heartbeat_interval=0.5, lease=5.0) as manager, \
            fleet(manager.address, manager.password_file, 100) as f:  # type: ignore[arg-type]
        f.pump(0.5)
        wait_until(lambda: (f.pump(0.1), manager.stats().workers == 100)[1])
        f.beats.clear()
        f.pump(2.0)
        # Each worker gets about one heartbeat per 0.5 s, in slices of 0.05 s, not in one burst.
        assert 300 <= len(f.beats) <= 500, len(f.beats)
        slices = {int((t - f.beats[0]) / 0.05) for t in f.beats}
        assert len(slices) >= 20, sorted(slices)
        assert manager.stats().workers_lost == 0


def test_shutdown_with_many_workers_tells_each_to_exit_within_seconds(tmp_path: Path) -> None:
    manager = packmule.Manager(run_dir=tmp_path, heartbeat_interval=0.2, lease=2.0)
    assert manager.password_file is not None
    with fleet(manager.address, manager.password_file, 300) as f:
        wait_until(lambda: (f.pump(0.1), manager.stats().workers == 300)[1])
        futures = [manager.submit(packmule.PythonTask(noop, resources={"cores": 1}))
                   for _ in range(600)]
        wait_until(lambda: (f.pump(0.05), all(x.done() for x in futures))[1])
        assert manager.stats().workers_lost == 0
        start = time.monotonic()
        manager.shutdown()
        assert time.monotonic() - start < 5
        wait_until(lambda: (f.pump(0.05), len(f.exited) == 300)[1], timeout=10)


SERVE = textwrap.dedent("""
    import json, logging, sys
    import packmule
    records = []
    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())
    logging.getLogger("packmule").addHandler(Keep())
    logging.getLogger("packmule").setLevel(logging.INFO)
    with packmule.Manager(run_dir=sys.argv[1], heartbeat_interval=0.2, lease=2.0) as m:
        print(json.dumps({"address": m.address, "password_file": str(m.password_file)}),
              flush=True)
        for line in sys.stdin:
            if line.startswith("run"):
                futures = [m.submit(packmule.PythonTask(print, resources={"cores": 1}))
                           for _ in range(int(line.split()[1]))]
                print(json.dumps({"submitted": len(futures)}), flush=True)
                continue
            s = m.stats()
            print(json.dumps({"workers": s.workers, "lost": s.workers_lost,
                              "succeeded": s.tasks_succeeded, "log": records}), flush=True)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="file-descriptor limits")
def test_out_of_file_descriptors_refuses_new_workers_and_serves_the_others(
        tmp_path: Path) -> None:
    """The manager's process may hold 64 files: it says so once, and the workers it has
    stay connected (none lost over several leases), and run tasks."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, preexec_fn=limit)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        info = json.loads(proc.stdout.readline())

        def ask(line: str) -> dict[str, object]:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            got: dict[str, object] = json.loads(proc.stdout.readline())
            return got

        def stats() -> dict[str, object]:
            return ask("stats")

        with fleet(info["address"], Path(info["password_file"]), 80) as f:
            refused = "out of file descriptors"
            wait_until(lambda: (f.pump(0.2), any(refused in r for r in stats()["log"]))[1],
                       timeout=30)
            f.pump(1.0)
            connected = stats()["workers"]
            assert 10 <= connected < 80  # type: ignore[operator]
            f.pump(5.0)  # more than two leases: the connected ones keep their heartbeats
            after = stats()
            assert after["workers"] == connected and after["lost"] == 0
            assert sum(refused in r for r in after["log"]) == 1  # type: ignore[union-attr]
            ask("run 100")
            wait_until(lambda: (f.pump(0.1), stats()["succeeded"] == 100)[1], timeout=30)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
