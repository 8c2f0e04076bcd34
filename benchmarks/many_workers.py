"""How the manager copes with many workers: thousands emulated, a hundred real.

Run it with::

    python benchmarks/many_workers.py                       # --emulated 10,1000,5000 --real 8,128
    python benchmarks/many_workers.py --emulated 10,1000    # sizes as a comma list (or repeated)
    python benchmarks/many_workers.py --emulated 5000 --idle 60
    python benchmarks/many_workers.py --real 8,128
    python benchmarks/many_workers.py --quick               # --emulated 10,100, 200 tasks, idle 3 s

It prints one JSON object on stdout (progress goes to stderr). Every size gets
a fresh ``packmule.Manager`` (the real one, its loop in its own process);
nothing is timed before the workers are there.

``--emulated K``
    K emulated workers in a few processes (``--processes``; default one per
    2,000 workers). Each emulated worker is its own ZeroMQ DEALER socket that
    speaks the real protocol with :mod:`packmule.protocol.messages`: the CURVE
    handshake with the keys derived from the manager's password, ``Hello``
    with a size (``--worker-cores`` cores, 1000 MB, 1000 MB disk),
    ``Welcome``, heartbeats at the interval the Welcome gives, a ``Results``
    with a SUCCESS result (the pickled None a runner would send) at once for
    every ``Dispatch``, ``Goodbye`` on ``Exit``; as the real worker, it starts
    a new session after 1 s when the manager drops it (``Reject`` after
    Welcome) or is silent for the lease. One epoll loop per process watches
    every socket's ZMQ_FD, so an idle emulator costs next to nothing.
    Phases, for each K:

    ``connect``: from telling the emulators to connect until every one has its
    Welcome and ``manager.stats().workers == K`` (bounded by
    ``--connect-timeout``, default 120 s); ``welcome_latency_s`` is the spread
    of the workers' own connect-to-Welcome times, ``tcp_listen_queue_full``
    the kernel's (machine-wide) count of connections turned away meanwhile by
    a full listen queue (each one costs its worker a SYN retry: 1, 3, 7 s...).
    ``idle``: ``--idle`` seconds (default 60) with nothing to do: the loop
    process's CPU (``cpu_times`` delta of ``manager.loop_pid`` over the
    window, as a fraction of one core), its RSS at the end, workers lost.
    ``throughput``: a warm-up (``--warmup``), then N (``--tasks``) no-op
    ``PythonTask(noop, resources={"cores": 1})`` submitted at once and all
    waited for (bounded by ``--task-timeout``), ``--repeats`` times (3): the
    median tasks/s, with the CPU the loop, this process and the emulators
    used meanwhile (``cpu_cores``, in cores: one can tell whether the
    emulators were the bottleneck), the whole machine's busy cores and
    ``others``, what processes not ours used (these machines are shared).
    ``shutdown``: how long ``manager.shutdown()`` takes (the loop process is
    killed after ``--shutdown-timeout``), and how many workers got the Exit.

``--real N``
    N real ``packmule worker`` processes of 1 core each (started at once with
    ``packmule.local.start_worker``, each with its warm runner): connect,
    throughput and shutdown as above (no idle phase). Every process started
    is stopped by its pid at the end, also on Ctrl-C or failure.

Each run (``emulated.runs["K"]``, ``real.runs["N"]``) reports ``connect``,
``idle``, ``throughput``, ``shutdown``, ``workers_connected`` and
``workers_lost`` (``manager.stats()`` after the throughput phase),
``loop_rss_mb_max`` (sampled every 0.5 s), ``emulator`` (what the emulated
workers saw: sessions welcomed, rejects, drops, reconnects, exits, tasks
answered), ``manager_log`` (counts of the manager's warnings and why workers
were lost), ``duration_s`` and ``meets_targets``. Each section's
``ratio_vs_smallest`` (also ``throughput.ratio_vs_smallest`` in each run)
compares every size's tasks/s with the smallest size's in the same run. An
emulated worker holds 2 file descriptors in its emulator process, the loop 1
per worker: a size that RLIMIT_NOFILE cannot hold says why under
``skipped``; one that failed says so under ``error``, with what it measured
before. ``--profile-emulators DIR`` writes each emulator's cProfile stats.

Targets, each with a ``meets_targets`` boolean (per run and flattened at the
top level): emulated, every size: all connected within the timeout, none
lost, connect <= 60 s, idle loop CPU < 0.15 core, loop RSS after idle <
300 MB, shutdown < 10 s, and tasks/s >= 0.8 x the smallest size's; real: all
connected, none lost, tasks/s >= 0.6 x the smallest size's. The exit status
is 0 whether or not targets are met; 1 if a size failed or a task failed.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import cProfile
import dataclasses
import heapq
import json
import logging
import math
import os
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import psutil
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_workqueue  # the sibling benchmark: machine info, Work Queue set-up

import packmule
from packmule.local import start_worker, stop_worker
from packmule.protocol import messages as m
from packmule.protocol import pieces
from packmule.protocol.security import derive_keys, read_password_file
from packmule.protocol.sockets import client_socket
from packmule.serialize import dumps_result
from packmule.worker.daemon import RECONNECT_INTERVAL

HERE = Path(__file__).resolve().parent

TARGET_EMULATED_RATIO = 0.8
TARGET_REAL_RATIO = 0.6
TARGET_CONNECT_S = 60.0
TARGET_IDLE_LOOP_CPU = 0.15
TARGET_LOOP_RSS_MB = 300.0
TARGET_SHUTDOWN_S = 10.0

#: Emulated workers per emulator process, by default.
PER_PROCESS = 2000
#: File descriptors an emulated worker holds (its socket's mailbox and its TCP
#: connection), and what a process needs besides; the manager's loop holds one
#: per connected worker.
FDS_PER_EMULATED = 2
FDS_SPARE = 200
#: Emulated worker size besides its cores, as the real workers here.
MEMORY_MB = 1000
DISK_MB = 1000
#: Seconds before an emulated worker dropped by the manager says Hello again
#: (the real worker's first reconnect backoff).
RECONNECT_S = 1.0
#: How long a closing emulated worker may take to deliver its Goodbye (as a worker's).
GOODBYE_LINGER_MS = 1000
#: How long the emulators may take to start, and to answer.
EMULATOR_TIMEOUT = 60.0

EMULATOR_FLAG = "--_emulator-process"
#: As plain ints: the emulators test them once per message.
EVENTS, POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


def noop() -> None:
    """The task: nothing at all, so that only the system's overhead is measured."""


def log(msg: str) -> None:
    print(f"[many_workers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20



# ==================================================================== emulated workers
# This part runs in the emulator processes (``many_workers.py --_emulator-process``).
# They take one JSON line of settings on stdin, then commands (connect, stats,
# stop), one a line, answering each with one JSON line on stdout.
class _Emulated:
    """One emulated worker: one DEALER socket at a time (one per session)."""

    __slots__ = ("fd", "heartbeat", "index", "last_heard", "lease", "session", "sock",
                 "started", "welcomed", "welcomed_once")

    def __init__(self, index: int) -> None:
        self.index = index
        self.sock: zmq.Socket[bytes] | None = None
        self.fd = -1
        self.session = 0
        self.welcomed = False
        self.welcomed_once = False
        self.heartbeat = 1.0
        self.lease = 30.0
        self.last_heard = 0.0
        self.started = 0.0


class Emulator:
    """Many emulated workers in one process, driven by one epoll loop."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.count: int = cfg["count"]
        self.address: str = cfg["address"]
        self.size: dict[str, int] = cfg["size"]
        self.name = f"emu-{socket.gethostname()}-{os.getpid()}"
        self.keys = derive_keys(read_password_file(cfg["password_file"]))
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
        # The default is 1023; twice the workers, as a closed socket counts until the
        # context's reaper has finished it while its worker's next session starts.
        self.ctx.set(zmq.MAX_SOCKETS, 2 * self.count + 64)
        self.ep = select.epoll()
        self.stdin = sys.stdin.fileno()
        os.set_blocking(self.stdin, False)
        self.ep.register(self.stdin, select.EPOLLIN)
        self.inbuf = b""
        self.by_fd: dict[int, _Emulated] = {}
        self.workers = [_Emulated(i) for i in range(self.count)]
        #: (due, sequence, kind, worker index, session): heartbeats and reconnects.
        self.timers: list[tuple[float, int, int, int, int]] = []
        self.seq = 0
        self.running = True
        self.connect_at = 0.0
        self.latencies: list[float] = []
        self.last_welcome = 0.0
        self.welcome_params: tuple[float, float] | None = None
        self.counts = collections.Counter[str]()
        self.reject_reasons = collections.Counter[str]()
        # Built once: a no-op task's pickled result, as a runner makes it.
        self.value = dumps_result(None)
        self.beat = m.encode(m.WorkerHeartbeat(0))
        self.measured = {"memory": 0.0, "disk": 0.0, "cores": 0.0, "cores_avg": 0.0,
                         "wall_time": 1e-5, "cpu_time": 0.0, "bytes_read": 0.0,
                         "bytes_written": 0.0}

    # ------------------------------------------------------------ sessions
    def _open(self, w: _Emulated, now: float) -> None:
        # The real worker's socket (its reconnect interval included), without linger.
        sock = client_socket(self.ctx, self.keys, uuid.uuid4().bytes, RECONNECT_INTERVAL)
        sock.linger = 0
        sock.connect(f"tcp://{self.address}")
        w.sock, w.fd = sock, int(sock.getsockopt(zmq.FD))
        w.session += 1
        w.welcomed = False
        w.started = w.last_heard = now
        self.by_fd[w.fd] = w
        self.ep.register(w.fd, select.EPOLLIN)
        hello = m.Hello(m.PROTOCOL_VERSION, packmule.__version__,
                        f"{self.name}-{w.index}-{w.session}", socket.gethostname(), os.getpid(),
                        self.size, [])
        self._send(w, m.encode(hello))
        self.counts["sessions"] += 1

    def _close(self, w: _Emulated, reconnect: bool, now: float, linger: int = 0) -> None:
        """End a session (``linger`` ms to deliver what is queued, as a Goodbye)."""
        if w.sock is None:
            return
        with contextlib.suppress(OSError, KeyError):
            self.ep.unregister(w.fd)
        self.by_fd.pop(w.fd, None)
        w.sock.close(linger=linger)
        w.sock, w.fd, w.welcomed = None, -1, False
        if reconnect:
            self.counts["reconnects"] += 1
            self._timer(now + RECONNECT_S, 1, w)

    def _timer(self, due: float, kind: int, w: _Emulated) -> None:
        self.seq += 1
        heapq.heappush(self.timers, (due, self.seq, kind, w.index, w.session))

    def _send(self, w: _Emulated, data: bytes) -> None:
        """Send as a worker does: a message larger than a piece goes in pieces."""
        assert w.sock is not None
        for frames in pieces.frames(data):
            w.sock.send_multipart(frames)

    # ------------------------------------------------------------ messages
    def _drain(self, w: _Emulated, now: float) -> None:
        """Read everything waiting on a worker's socket. ZMQ_FD is only a hint:
        ZMQ_EVENTS tells what is there, and every message must be read before
        the descriptor signals again."""
        sock = w.sock
        while sock is not None and w.sock is sock:
            try:
                if not int(sock.getsockopt(EVENTS)) & POLLIN:
                    return
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(w, frames, now)

    def _handle(self, w: _Emulated, frames: list[bytes], now: float) -> None:
        self.counts["received"] += 1
        w.last_heard = now
        try:
            msg = m.decode(frames[0])
        except packmule.ProtocolError as exc:
            self.counts["protocol_errors"] += 1
            print(f"emulator {os.getpid()}: unreadable message: {exc}", file=sys.stderr)
            self._close(w, False, now)  # the real worker exits (REJECTED)
            return
        if isinstance(msg, m.Dispatch):
            results = []
            for spec in msg.tasks:
                python = spec.kind == "python"
                results.append(m.TaskResult(
                    spec.task_id, spec.attempt, m.TaskStatus.SUCCESS,
                    self.value if python else b"", 0, b"", b"", {}, "", 1e-5, [], [],
                    self.measured, []))
            self._send(w, m.encode(m.Results(results)))
            self.counts["tasks"] += len(results)
            self.counts["results_messages"] += 1
        elif isinstance(msg, m.ManagerHeartbeat):
            self.counts["manager_heartbeats"] += 1
        elif isinstance(msg, m.Welcome):
            w.welcomed = True
            w.heartbeat, w.lease = msg.heartbeat_interval, msg.lease
            self.welcome_params = (msg.heartbeat_interval, msg.lease)
            self.counts["welcomes"] += 1
            if not w.welcomed_once:
                w.welcomed_once = True
                self.latencies.append(now - w.started)
                self.last_welcome = now
            self._timer(now + w.heartbeat, 0, w)
        elif isinstance(msg, m.Exit):
            self.counts["exits"] += 1
            self._send(w, m.encode(m.Goodbye(f"manager said exit: {msg.reason}")))
            self.counts["goodbyes"] += 1
            self._close(w, False, now, linger=GOODBYE_LINGER_MS)
        elif isinstance(msg, m.Reject):
            self.reject_reasons[msg.reason[:120]] += 1
            if w.welcomed:  # declared lost while silent: start afresh, as a worker does
                self.counts["dropped"] += 1
                self._close(w, True, now)
            else:
                self.counts["rejected"] += 1
                self._close(w, False, now)
        elif isinstance(msg, m.PutPack):
            self._send(w, m.encode(m.PackState(msg.digest, False, "an emulated worker has no "
                                               "packs", False, msg.transfer)))
        # PutFile and Kill need nothing: no task is ever left running.

    # ------------------------------------------------------------ the loop
    def _timers_due(self, now: float) -> None:
        timers = self.timers
        while timers and timers[0][0] <= now + 0.005:
            _, _, kind, index, session = heapq.heappop(timers)
            w = self.workers[index]
            if w.session != session:
                continue  # a timer of an earlier session
            if kind == 0 and w.welcomed and w.sock is not None:
                self._send(w, self.beat)
                self.counts["heartbeats"] += 1
                self._timer(now + w.heartbeat, 0, w)
                self._drain(w, now)  # a send may have consumed the socket's signal
            elif kind == 1 and w.sock is None and self.running:
                self._open(w, now)
                self._drain(w, now)

    def _check_leases(self, now: float) -> None:
        for w in self.workers:
            if w.welcomed and now - w.last_heard > w.lease:
                self.counts["manager_silent"] += 1
                self._close(w, True, now)

    def _commands(self) -> None:
        try:
            data = os.read(self.stdin, 65536)
        except BlockingIOError:
            return
        if not data:  # the benchmark is gone
            self.running = False
            return
        self.inbuf += data
        while b"\n" in self.inbuf:
            line, self.inbuf = self.inbuf.split(b"\n", 1)
            cmd = line.decode().strip()
            if cmd == "connect":
                now = time.monotonic()
                self.connect_at = now
                for w in self.workers:
                    self._open(w, now)
                for w in self.workers:
                    self._drain(w, now)
                _reply({"connecting": len(self.workers), "at": now})
            elif cmd == "stats":
                _reply(self.stats())
            elif cmd == "stop":
                self.running = False

    def stats(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "workers": self.count,
            "open": len(self.by_fd),
            "welcomed": sum(1 for w in self.workers if w.welcomed),
            "welcomed_once": len(self.latencies),
            "connect_at": self.connect_at,
            "last_welcome_at": self.last_welcome,
            "latencies": [round(x, 4) for x in self.latencies],
            "welcome": self.welcome_params,
            "counts": dict(self.counts),
            "reject_reasons": dict(self.reject_reasons.most_common(5)),
        }

    def run(self) -> None:
        next_check = time.monotonic() + 1.0
        while self.running:
            now = time.monotonic()
            timeout = min(1.0, next_check - now)
            if self.timers:
                timeout = min(timeout, self.timers[0][0] - now)
            events = self.ep.poll(max(0.0, timeout))
            now = time.monotonic()
            for fd, _ in events:
                if fd == self.stdin:
                    self._commands()
                else:
                    w = self.by_fd.get(fd)
                    if w is not None:
                        self._drain(w, now)
            self._timers_due(now)
            if now >= next_check:
                next_check = now + 1.0
                self._check_leases(now)
        now = time.monotonic()
        for w in self.workers:  # still connected at the end: say goodbye, as a worker does
            linger = 0
            if w.welcomed and w.sock is not None:
                with contextlib.suppress(zmq.ZMQError):
                    self._send(w, m.encode(m.Goodbye("emulator stopping")))
                self.counts["goodbyes"] += 1
                linger = GOODBYE_LINGER_MS
            self._close(w, False, now, linger)
        _reply(self.stats())
        self.ctx.term()


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def emulator_process() -> int:
    """Entry point of an emulator process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the benchmark's to handle
    raise_fd_limit()
    cfg = json.loads(sys.stdin.buffer.readline())
    emulator = Emulator(cfg)
    _reply({"ready": os.getpid()})
    profile = cfg.get("profile")
    if profile:
        prof = cProfile.Profile()
        prof.runcall(emulator.run)
        prof.dump_stats(os.path.join(profile, f"emulator-{os.getpid()}.prof"))
    else:
        emulator.run()
    return 0


# ==================================================================== the benchmark side
class EmulatorPool:
    """The emulator processes of one run, driven over their stdin and stdout."""

    def __init__(self, manager: packmule.Manager, count: int, processes: int, cores: int,
                 profile: str | None) -> None:
        assert manager.password_file is not None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.buffers: dict[int, bytes] = {}
        path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        env = {**os.environ, "PYTHONPATH": path}
        size = {"cores": cores, "memory": MEMORY_MB, "disk": DISK_MB, "gpus": 0}
        shares = [count // processes + (1 if i < count % processes else 0)
                  for i in range(processes)]
        for share in shares:
            proc = subprocess.Popen([sys.executable, __file__, EMULATOR_FLAG],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
            self.procs.append(proc)
            self.buffers[proc.pid] = b""
            cfg = {"count": share, "address": manager.address, "size": size,
                   "password_file": str(manager.password_file), "profile": profile}
            self._write(proc, json.dumps(cfg))
        for proc in self.procs:
            self._read(proc, EMULATOR_TIMEOUT)  # {"ready": pid}

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _write(self, proc: subprocess.Popen[bytes], line: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(line.encode() + b"\n")
        proc.stdin.flush()

    def _read(self, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffers[proc.pid]:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"emulator process {proc.pid} did not answer in {timeout} s")
            data = os.read(fd, 1 << 20)
            if not data:
                raise RuntimeError(f"emulator process {proc.pid} exited "
                                   f"(code {proc.wait()}); its error is above")
            self.buffers[proc.pid] += data
        line, self.buffers[proc.pid] = self.buffers[proc.pid].split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply

    def connect(self) -> None:
        for proc in self.procs:
            self._write(proc, "connect")
        for proc in self.procs:
            self._read(proc, EMULATOR_TIMEOUT)

    def stats(self) -> list[dict[str, Any]]:
        for proc in self.procs:
            self._write(proc, "stats")
        return [self._read(proc, EMULATOR_TIMEOUT) for proc in self.procs]

    def stop(self) -> list[dict[str, Any]]:
        """Stop every emulator process (by pid): asked first, killed if need be."""
        final = []
        for proc in self.procs:
            with contextlib.suppress(OSError, ValueError):
                self._write(proc, "stop")
        for proc in self.procs:
            with contextlib.suppress(Exception):
                final.append(self._read(proc, 20))
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()
        self.procs = []
        return final


def merge_emulator_stats(stats: list[dict[str, Any]]) -> dict[str, Any]:
    counts = collections.Counter[str]()
    reasons = collections.Counter[str]()
    for s in stats:
        counts.update(s["counts"])
        reasons.update(s["reject_reasons"])
    latencies = sorted(x for s in stats for x in s["latencies"])
    welcome = next((s["welcome"] for s in stats if s["welcome"]), None)
    return {
        "processes": len(stats),
        "welcomed_now": sum(s["welcomed"] for s in stats),
        "welcomed_once": sum(s["welcomed_once"] for s in stats),
        "sockets_open": sum(s["open"] for s in stats),
        "sessions": counts["sessions"],
        "rejected": counts["rejected"],
        "dropped_after_welcome": counts["dropped"],
        "manager_silent_for_lease": counts["manager_silent"],
        "reconnects": counts["reconnects"],
        "exits_received": counts["exits"],
        "goodbyes_sent": counts["goodbyes"],
        "tasks_answered": counts["tasks"],
        "results_messages": counts["results_messages"],
        "heartbeats_sent": counts["heartbeats"],
        "manager_heartbeats": counts["manager_heartbeats"],
        "messages_received": counts["received"],
        "protocol_errors": counts["protocol_errors"],
        "reject_reasons": dict(reasons.most_common(5)),
        "heartbeat_interval": welcome[0] if welcome else None,
        "lease": welcome[1] if welcome else None,
        "_latencies": latencies,
        "_connect_at": min((s["connect_at"] for s in stats if s["connect_at"]), default=0.0),
        "_last_welcome_at": max((s["last_welcome_at"] for s in stats), default=0.0),
    }


def spread(samples: list[float]) -> dict[str, float] | None:
    """Median, p90, p99 and max of some durations (seconds)."""
    if not samples:
        return None
    xs = sorted(samples)

    def pick(q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    return {"median": round(statistics.median(xs), 4), "p90": round(pick(0.9), 4),
            "p99": round(pick(0.99), 4), "max": round(xs[-1], 4)}


class LogCapture(logging.Handler):
    """The manager's log records (the loop forwards them): counted, the first few kept
    and echoed to stderr, and the reasons workers were lost tallied."""

    ECHO = 15

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.by_level = collections.Counter[str]()
        self.lost = collections.Counter[str]()
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        self.by_level[record.levelname.lower()] += 1
        if " gone: " in text:
            why = text.split(" gone: ", 1)[1].rsplit(";", 1)[0]
            self.lost[why[:100]] += 1
        if record.levelno >= logging.WARNING:
            if len(self.first) < self.ECHO:
                self.first.append(f"{record.levelname}: {text[:300]}")
                log(f"manager {record.levelname.lower()}: {text[:300]}")
            elif len(self.first) == self.ECHO:
                self.first.append("(more not echoed)")
                log("manager: more warnings, not echoed (counted in manager_log)")

    def summary(self) -> dict[str, Any]:
        return {"records": dict(self.by_level), "workers_lost_because": dict(self.lost),
                "first_warnings": self.first}


@dataclasses.dataclass(frozen=True)
class Snapshot:
    at: float
    groups: dict[str, list[float]]
    machine_busy: float


class ProcessWatch:
    """CPU used by groups of processes between snapshots, and the loop's RSS
    sampled in the background."""

    def __init__(self, loop_pid: int) -> None:
        self.loop = psutil.Process(loop_pid)
        self.groups: dict[str, list[psutil.Process]] = {"loop": [self.loop],
                                                        "benchmark": [psutil.Process()]}
        self.rss_max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="rss-sampler")
        self._thread.start()

    def watch(self, group: str, procs: list[psutil.Process]) -> None:
        self.groups[group] = procs

    def cpu(self) -> Snapshot:
        """CPU seconds so far: per process of each group, and the whole machine's busy time."""
        groups: dict[str, list[float]] = {}
        for group, procs in self.groups.items():
            groups[group] = []
            for p in procs:
                try:
                    t = p.cpu_times()
                    groups[group].append(t.user + t.system)
                except psutil.Error:
                    groups[group].append(float("nan"))
        machine = psutil.cpu_times()
        # (guest time is already counted in user time on Linux)
        busy = sum(machine) - machine.idle - sum(
            getattr(machine, f, 0.0) for f in ("iowait", "guest", "guest_nice"))
        return Snapshot(time.monotonic(), groups, busy)

    @staticmethod
    def cores(before: Snapshot, after: Snapshot) -> dict[str, Any]:
        """CPU used between two snapshots, in cores (1.0: one core busy throughout).
        ``others``: what the rest of the machine used meanwhile (a noisy neighbour)."""
        wall = max(after.at - before.at, 1e-9)
        out: dict[str, Any] = {}
        ours = 0.0
        for group, xs in after.groups.items():
            deltas = [(b - a) / wall for a, b in zip(before.groups.get(group, []), xs,
                                                     strict=False)
                      if not (math.isnan(a) or math.isnan(b))]
            ours += sum(deltas)
            if group in ("loop", "benchmark"):
                out[group] = round(sum(deltas), 4)
            else:
                out[group] = {"total": round(sum(deltas), 4),
                              "max_process": round(max(deltas, default=0.0), 4),
                              "processes": len(xs)}
        machine = (after.machine_busy - before.machine_busy) / wall
        out["machine_busy"] = round(machine, 3)
        out["others"] = round(max(0.0, machine - ours), 3)
        return out

    def rss_mb(self) -> float | None:
        try:
            rss: int = self.loop.memory_info().rss
            return round(rss / 2**20, 1)
        except psutil.Error:
            return None

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(psutil.Error):
                self.rss_max = max(self.rss_max, self.loop.memory_info().rss)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(self.rss_max / 2**20, 1)


def processes_of(pids: list[int], descendants: bool = False) -> list[psutil.Process]:
    """These processes (those still there), then, if asked, all their descendants."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    if descendants:
        kids: dict[int, list[int]] = collections.defaultdict(list)
        for p in psutil.process_iter(["ppid"]):  # one pass over /proc, not one per process
            kids[p.info["ppid"]].append(p.pid)
        todo = [p.pid for p in procs]
        while todo:
            for child in kids.get(todo.pop(), []):
                with contextlib.suppress(psutil.Error):
                    procs.append(psutil.Process(child))
                todo.append(child)
    return procs


def stats_or_none(manager: packmule.Manager) -> packmule.ManagerStats | None:
    """``manager.stats()``, or None if the loop cannot answer (busy past its timeout, gone)."""
    try:
        return manager.stats()
    except (RuntimeError, TimeoutError, OSError, concurrent.futures.TimeoutError) as exc:
        log(f"manager.stats() failed: {type(exc).__name__}: {exc}")
        return None


LISTEN_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPReqQFullDoCookies", "TCPReqQFullDrop")


def listen_counters() -> dict[str, int]:
    """The kernel's machine-wide counts of connections a full listen queue turned away
    (``/proc/net/netstat``; empty where unreadable)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return {k: int(table[k]) for k in LISTEN_COUNTERS if k in table}
    return {}


def wait_connected(manager: packmule.Manager, want: int, timeout: float,
                   pool: EmulatorPool | None, started: float) -> dict[str, Any]:
    """Wait until ``want`` workers are connected (bounded); how long it took.

    With emulators, their own Welcome counts are watched (which costs the loop
    nothing) and ``stats()`` confirms; for real workers ``stats()`` is polled.
    """
    deadline = started + timeout
    connected, welcomed, last_report = 0, None, started
    while True:
        now = time.monotonic()
        if pool is not None:
            welcomed = sum(s["welcomed"] for s in pool.stats())
            ready = welcomed >= want
        else:
            ready = True
        if ready:
            stats = stats_or_none(manager)
            connected = stats.workers if stats is not None else connected
            if connected >= want:
                break
        if now > deadline:
            break
        if now - last_report >= 5:
            last_report = now
            extra = f", {welcomed} welcomed" if welcomed is not None else ""
            if pool is not None:
                stats = stats_or_none(manager)
                connected = stats.workers if stats is not None else connected
            log(f"  connecting: {connected} of {want} after {now - started:.0f} s{extra}")
        time.sleep(0.1 if pool is not None else 0.25)
    seconds = time.monotonic() - started
    ok = connected >= want
    out: dict[str, Any] = {"seconds": round(seconds, 3) if ok else None, "connected": connected,
                           "timed_out": not ok, "timeout_s": timeout}
    if welcomed is not None:
        out["welcomed"] = welcomed
    log(f"  connected: {connected} of {want} in {seconds:.1f} s" + ("" if ok else " (TIMED OUT)"))
    return out


def listen_delta(before: dict[str, int]) -> dict[str, int]:
    after = listen_counters()
    return {k: after[k] - before[k] for k in after if k in before}


def wait_futures(futures: list[Future[Any]], timeout: float) -> tuple[int, int, bool]:
    """(completed, failed, timed out) after waiting at most ``timeout`` s for all."""
    done, not_done = concurrent.futures.wait(futures, timeout=timeout)
    failed = sum(1 for f in done if f.cancelled() or f.exception() is not None)
    if failed:
        first = next(f for f in done if f.cancelled() or f.exception() is not None)
        why = "cancelled" if first.cancelled() else repr(first.exception())[:300]
        log(f"  {failed} task(s) failed, e.g. {why}")
    return len(done), failed, bool(not_done)


def measure_throughput(manager: packmule.Manager, n: int, warmup: int, repeats: int,
                       timeout: float, watch: ProcessWatch) -> dict[str, Any]:
    """Warm up, then ``repeats`` times: ``n`` no-op 1-core tasks at once, all waited
    for (each bounded by ``timeout``). ``tasks_per_s`` is the median over the repeats."""
    def submit() -> Future[Any]:
        return manager.submit(packmule.PythonTask(noop, resources={"cores": 1}))

    out: dict[str, Any] = {"tasks": n, "warmup": warmup, "repeats": repeats,
                           "timeout_s": timeout}
    if warmup:
        log(f"  warm-up: {warmup} tasks")
        start = time.monotonic()
        done, failed, timed_out = wait_futures([submit() for _ in range(warmup)], timeout)
        out["warmup_s"] = round(time.monotonic() - start, 3)
        if timed_out:
            out.update(completed=0, failed=failed, timed_out=True, tasks_per_s=None,
                       warmup_timed_out=True)
            log(f"  warm-up TIMED OUT: {done} of {warmup} done in {timeout:.0f} s")
            return out
    runs: list[dict[str, Any]] = []
    out["runs"] = runs
    cpu_before = watch.cpu()
    completed = failed = 0
    timed_out = False
    for i in range(repeats):
        log(f"  {n} no-op tasks, cores=1 ({i + 1} of {repeats})")
        start = time.perf_counter()
        futures = [submit() for _ in range(n)]
        submit_s = time.perf_counter() - start
        done, bad, timed_out = wait_futures(futures, timeout)
        seconds = time.perf_counter() - start
        completed, failed = completed + done, failed + bad
        runs.append({"seconds": round(seconds, 3), "submit_s": round(submit_s, 3),
                     "completed": done, "tasks_per_s": round(done / seconds, 1)})
        if timed_out:
            log(f"  TIMED OUT: {done} of {n} done in {seconds:.1f} s ({done / seconds:.0f}/s)")
            break
        log(f"  {n / seconds:.0f} tasks/s ({seconds:.2f} s, submitting {submit_s:.2f} s)")
    out["cpu_cores"] = watch.cores(cpu_before, watch.cpu())
    rates = [r["tasks_per_s"] for r in runs]
    out.update(completed=completed, failed=failed, timed_out=timed_out,
               tasks_per_s=rates[-1] if timed_out else round(statistics.median(rates), 1),
               tasks_per_s_min=min(rates), tasks_per_s_max=max(rates))
    log(f"  throughput {out['tasks_per_s']} tasks/s; CPU cores: {out['cpu_cores']}")
    return out


def measure_idle(manager: packmule.Manager, seconds: float, watch: ProcessWatch,
                 pool: EmulatorPool) -> dict[str, Any]:
    """Nothing to do for ``seconds``: the loop's CPU and RSS, workers lost."""
    log(f"  idle for {seconds:g} s")
    before = stats_or_none(manager)
    cpu_before = watch.cpu()
    deadline = time.monotonic() + seconds
    welcomed_min = None
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(5.0, left))
        welcomed = sum(s["welcomed"] for s in pool.stats())  # costs the loop nothing
        welcomed_min = welcomed if welcomed_min is None else min(welcomed_min, welcomed)
    cpu = watch.cores(cpu_before, watch.cpu())
    rss = watch.rss_mb()
    after = stats_or_none(manager)
    out = {
        "seconds": seconds,
        "loop_cpu_cores": cpu["loop"],
        "loop_rss_mb": rss,
        "cpu_cores": cpu,
        "workers_at_end": after.workers if after else None,
        "workers_lost": (after.workers_lost - before.workers_lost) if after and before else None,
        "emulated_welcomed_min": welcomed_min,
    }
    log(f"  idle: loop CPU {cpu['loop']:.3f} cores, RSS {rss} MB, "
        f"lost {out['workers_lost']}, emulators {cpu.get('emulators')}")
    return out


def timed_shutdown(manager: packmule.Manager, timeout: float) -> dict[str, Any]:
    """``manager.shutdown()``, timed; its loop process is killed (by pid) past ``timeout``."""
    errors: list[BaseException] = []

    def stop() -> None:
        try:
            manager.shutdown()
        except BaseException as exc:  # reported, not raised in a thread
            errors.append(exc)

    start = time.perf_counter()
    t = threading.Thread(target=stop, daemon=True, name="shutdown")
    t.start()
    t.join(timeout)
    seconds = time.perf_counter() - start
    out: dict[str, Any] = {"seconds": round(seconds, 3), "timed_out": t.is_alive()}
    if t.is_alive():
        log(f"  manager.shutdown() still running after {timeout:.0f} s: killing its loop")
        kill_pid(manager.loop_pid)
        t.join(30)
    if errors:
        out["error"] = repr(errors[0])
    log(f"  shutdown: {seconds:.2f} s")
    return out


def kill_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def ensure_stopped(manager: packmule.Manager, timeout: float) -> None:
    """After a failure: shut the manager down (bounded), and its loop process with it."""
    timed_shutdown(manager, timeout)
    with contextlib.suppress(psutil.Error):
        psutil.Process(manager.loop_pid).wait(10)
    kill_pid(manager.loop_pid)


def fd_needs(kind: str, count: int, processes: int) -> tuple[int, int]:
    """File descriptors (per emulator process, for the loop) a size needs."""
    per_process = math.ceil(count / processes) * FDS_PER_EMULATED + FDS_SPARE
    return (per_process if kind == "emulated" else 0), count + FDS_SPARE


def run_emulated(k: int, args: argparse.Namespace, tmp: Path, out: dict[str, Any]) -> None:
    """Every phase with ``k`` emulated workers; results go into ``out`` as they come."""
    processes = args.processes or max(1, math.ceil(k / PER_PROCESS))
    processes = min(processes, k)
    out.update(workers=k, processes=processes)
    limit = raise_fd_limit()
    per_process, loop_fds = fd_needs("emulated", k, processes)
    if max(per_process, loop_fds) > limit:
        out["skipped"] = (f"needs {max(per_process, loop_fds)} file descriptors in one process "
                          f"(the loop: one per worker; an emulator: {FDS_PER_EMULATED} per "
                          f"worker); RLIMIT_NOFILE allows {limit}. Raise the hard limit, or "
                          "use more --processes")
        log(f"emulated {k}: skipped: {out['skipped']}")
        return
    log(f"emulated {k}: {processes} emulator process(es)")
    manager = packmule.Manager(run_dir=tmp / f"emulated-{k}")
    watch = ProcessWatch(manager.loop_pid)
    pool: EmulatorPool | None = None
    shut = False
    try:
        pool = EmulatorPool(manager, k, processes, args.worker_cores, args.profile_emulators)
        watch.watch("emulators", processes_of(pool.pids))
        cpu_before, overflows = watch.cpu(), listen_counters()
        started = time.monotonic()
        pool.connect()
        out["connect"] = wait_connected(manager, k, args.connect_timeout, pool, started)
        out["connect"]["cpu_cores"] = watch.cores(cpu_before, watch.cpu())
        out["connect"]["tcp_listen_queue_full"] = listen_delta(overflows)
        emu = merge_emulator_stats(pool.stats())
        if emu["_latencies"]:
            out["connect"]["welcome_latency_s"] = spread(emu["_latencies"])
            out["connect"]["last_welcome_s"] = round(emu["_last_welcome_at"] - started, 3)
        if args.idle > 0:
            out["idle"] = measure_idle(manager, args.idle, watch, pool)
        if args.tasks > 0:
            out["throughput"] = measure_throughput(manager, args.tasks, args.warmup,
                                                   args.repeats, args.task_timeout, watch)
        final_stats(manager, out)
        shut = True
        out["shutdown"] = timed_shutdown(manager, args.shutdown_timeout)
        # Workers hear the Exit as the loop closes: give the emulators a moment.
        deadline = time.monotonic() + 5
        while True:
            emu = merge_emulator_stats(pool.stats())
            if emu["sockets_open"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        out["shutdown"]["exits_received"] = emu["exits_received"]
    finally:
        if not shut:
            ensure_stopped(manager, args.shutdown_timeout)
        if pool is not None:
            final = pool.stop()
            if final:
                emu = merge_emulator_stats(final)
                out["emulator"] = {k2: v for k2, v in emu.items() if not k2.startswith("_")}
        out["loop_rss_mb_max"] = watch.stop()


def final_stats(manager: packmule.Manager, out: dict[str, Any]) -> None:
    stats = stats_or_none(manager)
    if stats is not None:
        out.update(workers_connected=stats.workers, workers_lost=stats.workers_lost,
                   workers_joined=stats.workers_joined, tasks_failed=stats.tasks_failed)
        log(f"  workers: {stats.workers} connected, {stats.workers_joined} joined, "
            f"{stats.workers_lost} lost")


def run_real(n: int, args: argparse.Namespace, tmp: Path, out: dict[str, Any]) -> None:
    """Connect, throughput and shutdown with ``n`` real 1-core ``packmule worker`` processes."""
    out.update(workers=n)
    limit = raise_fd_limit()
    _, loop_fds = fd_needs("real", n, 1)
    if loop_fds + 4 * n > limit:  # this process: each worker's log and pipes
        out["skipped"] = f"needs about {loop_fds + 4 * n} file descriptors; the limit is {limit}"
        return
    log(f"real {n}: starting {n} packmule worker processes")
    manager = packmule.Manager(run_dir=tmp / f"real-{n}")
    watch = ProcessWatch(manager.loop_pid)
    procs: list[subprocess.Popen[bytes]] = []
    children: list[psutil.Process] = []
    workdir = tmp / f"real-{n}-work"
    workdir.mkdir()
    worker_log = tmp / f"real-{n}-workers.log"
    shut = False
    try:
        overflows = listen_counters()
        started = time.monotonic()
        with open(worker_log, "ab") as logf:
            for _ in range(n):
                procs.append(start_worker(
                    manager, cores=1, memory=MEMORY_MB, disk=DISK_MB,
                    extra_args=["--workdir", str(workdir), "--pack-cache", str(tmp / "packs")],
                    stdin=subprocess.DEVNULL, stdout=logf, stderr=logf))
        out["start_s"] = round(time.monotonic() - started, 3)
        out["connect"] = wait_connected(manager, n, args.connect_timeout, None, started)
        out["connect"]["tcp_listen_queue_full"] = listen_delta(overflows)
        # The workers and their runners, to measure them and to stop them all by pid.
        workers = processes_of([p.pid for p in procs], descendants=True)
        ours = {p.pid for p in procs}
        children = [p for p in workers if p.pid not in ours]
        watch.watch("workers", workers)
        if args.tasks > 0:
            out["throughput"] = measure_throughput(manager, args.tasks, args.warmup,
                                                   args.repeats, args.task_timeout, watch)
        final_stats(manager, out)
        shut = True
        out["shutdown"] = timed_shutdown(manager, args.shutdown_timeout)
        deadline = time.monotonic() + 15
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        out["shutdown"]["workers_exited"] = sum(p.poll() is not None for p in procs)
    finally:
        if not shut:
            ensure_stopped(manager, args.shutdown_timeout)
        stop_processes(procs, children)
        out["loop_rss_mb_max"] = watch.stop()
        errors = [line for line in worker_log.read_text(errors="replace").splitlines()
                  if "ERROR" in line or "Traceback" in line]
        if errors:
            out["worker_log_errors"] = {"count": len(errors), "first": errors[:5]}


def stop_processes(procs: list[subprocess.Popen[bytes]], children: list[psutil.Process]) -> None:
    """Stop workers by pid: SIGTERM to all, then SIGKILL to any left; then their runners
    (``children``, as seen while they ran, and any found now)."""
    ours = {p.pid for p in procs}
    children = [*children, *(c for c in processes_of(list(ours), descendants=True)
                             if c.pid not in ours)]
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
    deadline = time.monotonic() + 10
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        stop_worker(p, timeout=1)  # SIGKILL if it still runs
    for c in children:
        with contextlib.suppress(psutil.Error):
            if c.is_running():
                c.kill()


# ==================================================================== report
def judge(kind: str, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ratios against the smallest size, and each run's ``meets_targets``."""
    ok_sizes = [r for r in runs.values()
                if (r.get("throughput") or {}).get("tasks_per_s") and not r.get("skipped")]
    base = min(ok_sizes, key=lambda r: r["workers"]) if ok_sizes else None
    target_ratio = TARGET_EMULATED_RATIO if kind == "emulated" else TARGET_REAL_RATIO
    ratios: dict[str, float] = {}
    for key, r in runs.items():
        if r.get("skipped"):
            continue
        t: dict[str, bool] = {}
        conn = r.get("connect") or {}
        t["all_connected"] = (not conn.get("timed_out", True)
                              and r.get("workers_connected") == r["workers"])
        t["none_lost"] = r.get("workers_lost") == 0
        tp = r.get("throughput")
        if tp is not None and base is not None and r is not base:
            ratio = round((tp.get("tasks_per_s") or 0.0) / base["throughput"]["tasks_per_s"], 3)
            if tp.get("timed_out"):
                ratio = 0.0  # did not finish: no ratio to be proud of
            ratios[key] = ratio
            tp["ratio_vs_smallest"] = ratio
            t["throughput_ratio"] = ratio >= target_ratio
        if kind == "emulated":
            t["connect_s"] = conn.get("seconds") is not None and conn["seconds"] <= TARGET_CONNECT_S
            idle = r.get("idle")
            if idle is not None:
                t["idle_loop_cpu"] = idle["loop_cpu_cores"] < TARGET_IDLE_LOOP_CPU
                t["loop_rss_mb"] = (idle["loop_rss_mb"] is not None
                                    and idle["loop_rss_mb"] < TARGET_LOOP_RSS_MB)
            shutdown = r.get("shutdown")
            t["shutdown_s"] = (shutdown is not None and not shutdown["timed_out"]
                               and shutdown["seconds"] < TARGET_SHUTDOWN_S)
        if r.get("error"):
            t["no_error"] = False
        r["meets_targets"] = t
    return {"ratio_vs_smallest": ratios,
            "smallest_with_throughput": base["workers"] if base else None}


def report(args: argparse.Namespace, tmp: Path, out: dict[str, Any]) -> int:
    """Run every size, filling ``out`` as results come (so a partial run still reports)."""
    vw = vs_workqueue
    status = 0
    out.update({
        "benchmark": "packmule many workers",
        "packmule_version": packmule.__version__,
        "machine": {**vw.machine_info(), "rlimit_nofile": raise_fd_limit()},
        "load_average_before": vw.load_average(),
        "quick": args.quick,
        "settings": {"tasks": args.tasks, "warmup": args.warmup, "repeats": args.repeats,
                     "idle_s": args.idle,
                     "connect_timeout_s": args.connect_timeout,
                     "task_timeout_s": args.task_timeout,
                     "shutdown_timeout_s": args.shutdown_timeout,
                     "emulated_worker": {"cores": args.worker_cores, "memory": MEMORY_MB,
                                         "disk": DISK_MB, "gpus": 0},
                     "real_worker": {"cores": 1, "memory": MEMORY_MB, "disk": DISK_MB},
                     "processes": args.processes or f"one per {PER_PROCESS} workers"},
        "targets": {
            "emulated": {"all_connected": True, "none_lost": True,
                         "connect_s_max": TARGET_CONNECT_S,
                         "idle_loop_cpu_cores_below": TARGET_IDLE_LOOP_CPU,
                         "loop_rss_mb_below": TARGET_LOOP_RSS_MB,
                         "shutdown_s_below": TARGET_SHUTDOWN_S,
                         "throughput_ratio_vs_smallest_min": TARGET_EMULATED_RATIO},
            "real": {"all_connected": True, "none_lost": True,
                     "throughput_ratio_vs_smallest_min": TARGET_REAL_RATIO},
        },
    })
    for kind, sizes, run in (("emulated", args.emulated, run_emulated),
                             ("real", args.real, run_real)):
        if not sizes:
            continue
        section: dict[str, Any] = {"sizes": sizes, "runs": {}}
        out[kind] = section
        for size in sizes:
            r: dict[str, Any] = {"workers": size}
            section["runs"][str(size)] = r
            capture = LogCapture()
            logging.getLogger("packmule").addHandler(capture)
            start = time.monotonic()
            try:
                run(size, args, tmp, r)
            except Exception as exc:
                log(f"{kind} {size}: FAILED: {type(exc).__name__}: {exc}")
                r["error"] = f"{type(exc).__name__}: {exc}"
                status = 1
            finally:
                logging.getLogger("packmule").removeHandler(capture)
                r["manager_log"] = capture.summary()
                r["duration_s"] = round(time.monotonic() - start, 1)
            if (r.get("throughput") or {}).get("failed") or r.get("tasks_failed"):
                status = 1
        section.update(judge(kind, section["runs"]))
    out["load_average_after"] = vw.load_average()
    flat: dict[str, bool] = {}
    for kind in ("emulated", "real"):
        for size, r in (out.get(kind) or {}).get("runs", {}).items():
            for metric, ok in (r.get("meets_targets") or {}).items():
                flat[f"{kind}_{size}_{metric}"] = ok
    out["meets_targets"] = flat
    return status


def sizes(values: list[str] | None, flag: str, p: argparse.ArgumentParser) -> list[int]:
    out = set()
    for v in values or []:
        for part in v.split(","):
            if part.strip():
                try:
                    n = int(part)
                except ValueError:
                    p.error(f"{flag}: {part!r} is not a number of workers")
                if n < 1:
                    p.error(f"{flag}: sizes must be at least 1")
                out.add(n)
    return sorted(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--emulated", action="append", metavar="K[,K...]",
                   help="numbers of emulated workers, one run each (default 10,1000,5000; "
                        "10,100 with --quick)")
    p.add_argument("--real", action="append", metavar="N[,N...]",
                   help="numbers of real 1-core packmule worker processes, one run each "
                        "(default 8,128; none with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="small CI smoke run: --emulated 10,100 --tasks 200 --idle 3")
    p.add_argument("--tasks", type=int, metavar="N",
                   help="no-op tasks timed per run (default 5000; 200 with --quick; 0: none)")
    p.add_argument("--warmup", type=int, metavar="N",
                   help="no-op tasks run before timing (default min(500, tasks); 50 with --quick)")
    p.add_argument("--repeats", type=int, metavar="R",
                   help="timed throughput measurements per run, the median reported "
                        "(default 3; 1 with --quick)")
    p.add_argument("--idle", type=float, metavar="SECONDS",
                   help="idle window of each emulated run (default 60; 3 with --quick; 0: none)")
    p.add_argument("--processes", type=int, metavar="P",
                   help=f"emulator processes per run (default: one per {PER_PROCESS} workers)")
    p.add_argument("--worker-cores", type=int, default=1, metavar="C",
                   help="cores each emulated worker reports in its Hello (default 1)")
    p.add_argument("--connect-timeout", type=float, default=120.0, metavar="S",
                   help="give up waiting for the workers to connect after S s (default 120)")
    p.add_argument("--task-timeout", type=float, default=300.0, metavar="S",
                   help="give up waiting for the tasks of one measurement after S s "
                        "(default 300)")
    p.add_argument("--shutdown-timeout", type=float, default=120.0, metavar="S",
                   help="kill the manager's loop if shutdown() takes longer (default 120)")
    p.add_argument("--profile-emulators", metavar="DIR",
                   help="write each emulator process's cProfile stats into DIR")
    args = p.parse_args(argv)
    args.emulated = sizes(args.emulated, "--emulated", p)
    args.real = sizes(args.real, "--real", p)
    if not args.emulated and not args.real:
        args.emulated = [10, 100] if args.quick else [10, 1000, 5000]
        args.real = [] if args.quick else [8, 128]
    if args.tasks is None:
        args.tasks = 200 if args.quick else 5000
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.warmup is None:
        args.warmup = 50 if args.quick else 500
    args.warmup = min(args.warmup, args.tasks)
    if args.idle is None:
        args.idle = 3.0 if args.quick else 60.0
    for name in ("tasks", "warmup", "idle"):
        if getattr(args, name) < 0:
            p.error(f"--{name} must not be negative")
    if args.processes is not None and args.processes < 1:
        p.error("--processes must be at least 1")
    if args.worker_cores < 1:
        p.error("--worker-cores must be at least 1")
    if args.profile_emulators:
        args.profile_emulators = os.path.abspath(args.profile_emulators)
        os.makedirs(args.profile_emulators, exist_ok=True)
    return args


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so that every process started is stopped."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    previous: Callable[..., Any] | int | None = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()  # before any Manager: its loop process inherits the limit
    logging.getLogger("packmule").setLevel(logging.WARNING)
    out: dict[str, Any] = {}
    start = time.monotonic()
    status = 1
    try:
        with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="many-workers-") as tmp:
            status = report(args, Path(tmp), out)
    except KeyboardInterrupt:
        log("interrupted: every process started was stopped; partial results follow")
        out["interrupted"] = True
        status = 130
    finally:
        out["duration_s"] = round(time.monotonic() - start, 1)
        print(json.dumps(out, indent=2), flush=True)
    return status


if __name__ == "__main__":
    if sys.argv[1:2] == [EMULATOR_FLAG]:
        sys.exit(emulator_process())
    sys.exit(main())
