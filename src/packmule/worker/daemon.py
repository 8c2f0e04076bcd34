"""The worker daemon: connects to a manager and runs as many tasks as fit.

One thread, one poll loop over the manager connection, the runners' sockets
and a signal pipe. The worker double-checks every task against what it has
free (the manager's accounting is authoritative; a task that does not fit is
handed back, *forsaken*), gives it GPU ids, a sandbox and a runner, enforces
its wall-time limit, and reports the result.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import mmap
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import zmq

from .._version import __version__
from ..envpack.unpack import default_cache_root
from ..errors import ProtocolError
from ..protocol import messages as m
from ..protocol.security import derive_keys
from ..protocol.sockets import HANDSHAKE_FAILED, client_socket, drain_events
from ..resources import Resources
from .monitor import DISK_INTERVAL, MB, CgroupRoot, MemoryCgroup, TreeSampler, tree_size
from .packs import PackCache, Unpacked
from .runner import BOARD_SIZE, Channel, read_board

log = logging.getLogger("packmule.worker")

#: Reconnect backoff, with "full jitter": before each reconnection a worker waits a
#: uniform random time between 0 and min(MAX_BACKOFF, MIN_BACKOFF x 2**n) seconds, n
#: being the reconnections it has made since it last reached a manager
#: (:func:`reconnect_delay`); its first connection is immediate. Jitter, because a
#: manager that restarts loses all its workers at one instant, and a fixed schedule
#: would bring them all back at one instant, retry after retry. Full jitter, because
#: spreading the workers uniformly over the whole window gives the flattest arrival
#: rate that window allows (N / ceiling) and, of the schemes compared in "Exponential
#: Backoff And Jitter" (AWS Architecture Blog, 2015), the least total work; and unlike
#: "decorrelated jitter" each wait depends on n alone, not on the previous wait.
MIN_BACKOFF = 1.0
#: The cap of that doubling ceiling (seconds).
MAX_BACKOFF = 60.0
#: Within a session, until the manager answers, libzmq retries the TCP connection
#: every RECONNECT_INTERVAL plus a uniform random part of it (seconds): every 1-2 s
#: rather than libzmq's default 0.1-0.2 s, so that workers waiting for a manager
#: that restarts come back spread over a second and a half, not a fifth of one.
RECONNECT_INTERVAL = 1.0
#: Failed encrypted handshakes in a row after which the password is taken to be wrong
#: (a wrong one fails every time; a manager busy with thousands of connecting workers
#: may drop one now and then). A refusal by the manager's authenticator counts at once.
AUTH_FAILURES = 3
#: Default idle timeout and connect timeout (seconds), as Work Queue's.
IDLE_TIMEOUT = 900.0
CONNECT_TIMEOUT = 900.0
#: How memory limits are enforced: "auto" uses cgroups where writable, else polling.
ENFORCEMENT = ("auto", "cgroup", "poll")
#: Runners kept warm when idle, at most.
MAX_IDLE_RUNNERS = 8
#: A runner whose resident set stays above this after a task is replaced
#: (what a task allocated and kept, e.g. big imports or caches, would
#: otherwise count against the next tasks' memory).
RUNNER_RSS_LIMIT = 512 * MB


def reconnect_delay(retry: int, rng: random.Random) -> float:
    """Seconds to wait before reconnection number ``retry`` (0: the first since the
    last session that reached a manager): full jitter, see ``MIN_BACKOFF``."""
    ceiling = min(MAX_BACKOFF, MIN_BACKOFF * 2.0 ** min(retry, 64))
    return rng.uniform(0.0, ceiling)


def _over(resource: str, used: int, limit: int) -> str:
    return (f"{resource}: used {used / MB:.0f} MB, more than the {limit / MB:.0f} MB "
            "allocated")


class ExitCode(enum.IntEnum):
    """Process exit codes of ``packmule worker``."""

    OK = 0  #: told to exit, idle timeout, signal, or single-shot session over
    UNREACHABLE = 1  #: no manager reachable within the connect timeout
    # 2 is argparse's code for a bad command line
    AUTH_FAILED = 3  #: the password does not match the manager's
    REJECTED = 4  #: the manager refused this worker (version mismatch, bad size, bad message)


class _SessionEnd(Exception):
    def __init__(self, code: ExitCode | None, why: str) -> None:
        super().__init__(why)
        self.code = code  # None: reconnect
        self.why = why


@dataclass
class Runner:
    """A warm interpreter with its own sandbox directory, reused task after task."""

    proc: subprocess.Popen[bytes]
    conn: Channel
    sandbox: Path
    #: Its memory cgroup, where the worker can make one (the limit is set per task).
    cgroup: MemoryCgroup | None = None
    #: (CORES, CUDA_VISIBLE_DEVICES, pack) of the first task it ran. Libraries
    #: read the first two once (CUDA at initialisation, BLAS pools at import), so
    #: a runner only takes tasks with the same settings afterwards.
    settings: tuple[str, str, str] | None = None
    #: Digest of the environment pack whose interpreter it runs ("": the worker's).
    pack: str = ""

    def __post_init__(self) -> None:
        #: The runner posts (task number, baseline) here (see runner.Board).
        self.board: mmap.mmap | None = None
        # Paths as strings, made once: they are used for every task.
        self.sandbox_str = str(self.sandbox)
        #: Where the runner captures a task's stdout and stderr.
        self.io = (self.sandbox_str + ".out", self.sandbox_str + ".err")
        #: Where tasks may leave monitoring messages for the manager ($PACKMULE_RADIO_DIR).
        self.radio = self.sandbox_str + ".radio"

    def take_messages(self) -> list[bytes]:
        """The complete messages the last task left, removed from the radio directory."""
        out = []
        with os.scandir(self.radio) as entries:
            for e in entries:
                if e.name.endswith(".msg"):
                    with open(e.path, "rb") as f:
                        out.append(f.read())
                os.unlink(e.path)
        return out

    def clear_sandbox(self) -> None:
        """Empty the sandbox for the next task (cheaper than a new directory)."""
        with os.scandir(self.sandbox_str) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    os.unlink(e.path)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.conn.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        shutil.rmtree(self.sandbox, ignore_errors=True)
        shutil.rmtree(self.radio, ignore_errors=True)
        if self.board is not None:
            self.board.close()
        for p in (*self.io, self.sandbox_str + ".board"):
            with contextlib.suppress(OSError):
                os.unlink(p)
        if self.cgroup is not None:
            self.cgroup.remove()


@dataclass
class Running:
    """A task on a runner, with what is being measured and enforced."""

    spec: m.TaskSpec
    runner: Runner
    alloc: Resources
    gpu_ids: list[str]
    started: float
    deadline: float | None
    sampler: TreeSampler
    oom_kills: int  # the runner cgroup's OOM-kill count before the task (-1: not read)
    next_disk: float
    seq: int = 0  # this attempt's number on its runner's board
    #: The runner's resident set once the call is unpickled (bytes): the task's
    #: memory is measured from here. None until the runner has posted it.
    _baseline: int | None = None

    @property
    def baseline(self) -> int | None:
        if self._baseline is None and self.runner.board is not None:
            self._baseline = read_board(self.runner.board, self.seq)
        return self._baseline
    peak_disk: int = 0
    fd: int = -1  # the runner connection's descriptor, registered with the poller

    @property
    def sandbox(self) -> Path:
        return self.runner.sandbox

    @property
    def memory_limit(self) -> int:
        """Bytes the task may add to its runner (0: no limit)."""
        return (self.alloc.memory or 0) * MB

    @property
    def disk_limit(self) -> int:
        return (self.alloc.disk or 0) * MB

    def wake_at(self) -> float:
        times = [self.sampler.next_at]
        if self.deadline is not None:
            times.append(self.deadline)
        if self.disk_limit:
            times.append(self.next_disk)
        return min(times)


def _spawn_runner(sandbox: Path, cgroups: CgroupRoot | None, python: str = sys.executable,
                  env: dict[str, str] | None = None, pack: str = "") -> Runner:
    sandbox.mkdir()
    board = str(sandbox) + ".board"
    with open(board, "wb") as f:
        f.write(b"\0" * BOARD_SIZE)
    Path(str(sandbox) + ".radio").mkdir()
    parent, child = socket.socketpair()
    proc = subprocess.Popen(
        [python, "-m", "packmule.worker.runner", str(child.fileno()), board],
        pass_fds=(child.fileno(),),
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    child.close()
    runner = Runner(proc, Channel(parent.detach()), sandbox, pack=pack)
    with open(board, "r+b") as f:
        runner.board = mmap.mmap(f.fileno(), BOARD_SIZE)
    if cgroups is not None:
        runner.cgroup = cgroups.new_group()
        if runner.cgroup is not None:
            runner.cgroup.add(proc.pid)
    return runner


class Worker:
    """A ``packmule worker``: see ``packmule worker --help`` for each setting."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        secret: bytes,
        resources: Resources,
        gpu_ids: list[str],
        workdir: Path,
        idle_timeout: float = IDLE_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        single_shot: bool = False,
        enforce: str = "auto",
        pack_cache: Path | None = None,
    ) -> None:
        if not resources.is_complete:
            raise ValueError(f"worker size must be complete, got {resources}")
        self.host, self.port = host, port
        self.keys = derive_keys(secret)
        self.size = resources
        self.gpu_ids = gpu_ids
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.single_shot = single_shot
        self.hostname = socket.gethostname()
        self.workspace = workdir / f"worker-{os.getpid()}-{os.urandom(4).hex()}"
        self._stop_reason: str | None = None
        self.packs = PackCache(pack_cache or default_cache_root())
        if enforce not in ENFORCEMENT:
            raise ValueError(f"enforce must be one of {', '.join(ENFORCEMENT)}, got {enforce!r}")
        self.cgroups = None if enforce == "poll" else CgroupRoot.create(self.workspace.name)
        if enforce == "cgroup" and self.cgroups is None:
            raise RuntimeError(
                "--enforce cgroup: no writable cgroup v1 memory controller here "
                "(/sys/fs/cgroup/memory); use --enforce poll, or run the worker where it can "
                "create cgroups (e.g. as root)"
            )

    # ------------------------------------------------------------ process level
    def run(self) -> int:
        """Serve managers until told to stop; returns the process exit code."""
        sig_r, sig_w = socket.socketpair()
        sig_r.setblocking(False)
        sig_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(sig_w.fileno())
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self._sig = sig_r
        retry = 0  # reconnections since the last session that reached a manager
        rng = random.Random()  # seeded from os.urandom: each worker draws its own waits
        reachable_since = time.monotonic()
        try:
            while True:
                connected, end = self._session()
                log.info("session ended: %s", end.why)
                if end.code is not None:
                    return int(end.code)
                if self.single_shot and connected:
                    return int(ExitCode.OK)
                if connected:
                    reachable_since, retry = time.monotonic(), 0
                if time.monotonic() - reachable_since > self.connect_timeout:
                    log.error(
                        "no manager reachable at %s:%d for %.0f s (--connect-timeout); exiting",
                        self.host, self.port, self.connect_timeout,
                    )
                    return int(ExitCode.UNREACHABLE)
                if self._sleep(reconnect_delay(retry, rng)):
                    return int(ExitCode.OK)
                retry += 1
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, h in previous.items():
                signal.signal(s, h)
            sig_r.close()
            sig_w.close()
            self.packs.close()
            shutil.rmtree(self.workspace, ignore_errors=True)
            if self.cgroups is not None:
                self.cgroups.remove()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_reason = f"received {signal.Signals(signum).name}"

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless a signal arrives; True if told to stop."""
        deadline = time.monotonic() + seconds
        while self._stop_reason is None and time.monotonic() < deadline:
            zmq.select([self._sig], [], [], max(0.0, deadline - time.monotonic()))
            self._drain_signal_pipe()
        return self._stop_reason is not None

    def _drain_signal_pipe(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._sig.recv(64):
                pass

    # ------------------------------------------------------------ one session
    def _session(self) -> tuple[bool, _SessionEnd]:
        """One connection to the manager. Returns (handshake completed, why it ended)."""
        self.workspace.parent.mkdir(parents=True, exist_ok=True)
        self.workspace.mkdir(mode=0o700, exist_ok=True)  # task data: owner only
        (self.workspace / "cache").mkdir(exist_ok=True)
        ctx = zmq.Context()
        sock = client_socket(ctx, self.keys, os.urandom(16), RECONNECT_INTERVAL)
        monitor = sock.get_monitor_socket(HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED
                                          | zmq.EVENT_DISCONNECTED)
        self._handshake_failures = 0
        sock.connect(f"tcp://{self.host}:{self.port}")
        self.sock, self.monitor = sock, monitor
        self.free = self.size
        self.free_gpus = list(self.gpu_ids)
        self.running: dict[tuple[int, int], Running] = {}
        #: Prefetched tasks, in the order sent; each starts as soon as it fits.
        self.queued: dict[tuple[int, int], m.TaskSpec] = {}
        self.idle: list[Runner] = []
        self._runner_count = 0
        self._seq = 0
        self.welcomed = False
        try:
            self._send(
                m.Hello(
                    m.PROTOCOL_VERSION, __version__, self.workspace.name, self.hostname,
                    os.getpid(), {k: int(v or 0) for k, v in self.size.as_dict().items()},
                    self.packs.scan(),
                )
            )
            try:
                self._loop()
            except (_SessionEnd, zmq.ContextTerminated):
                raise
            except Exception as exc:
                log.exception("worker failure; reconnecting with a clean slate")
                raise _SessionEnd(None, f"internal error: {type(exc).__name__}: {exc}") from exc
        except _SessionEnd as end:
            if end.code is not None and self.welcomed:
                with contextlib.suppress(zmq.ZMQError):
                    self._send(m.Goodbye(end.why))
            return self.welcomed, end
        finally:
            self.packs.forget_waiting()
            for r in [*self.idle, *(run.runner for run in self.running.values())]:
                r.kill()
            sock.disable_monitor()
            monitor.close(0)
            sock.close()
            ctx.term()
        raise AssertionError("unreachable")

    def _send(self, msg: m.Message) -> None:
        self.sock.send(m.encode(msg))

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        poller.register(self._sig, zmq.POLLIN)
        poller.register(self.packs.fileno(), zmq.POLLIN)
        connect_deadline = time.monotonic() + self.connect_timeout
        heartbeat = 1.0
        lease = 30.0
        last_heard = last_beat = last_busy = time.monotonic()
        by_fd: dict[int, tuple[int, int]] = {}
        while True:
            now = time.monotonic()
            if self._stop_reason is not None:
                raise _SessionEnd(ExitCode.OK, self._stop_reason)
            if not self.welcomed:
                wake = connect_deadline
            else:
                watch = [r.wake_at() for r in self.running.values()]
                wake = min([last_beat + heartbeat, last_heard + lease, *watch])
                if not self.running:
                    wake = min(wake, last_busy + self.idle_timeout)
            events = dict(poller.poll(max(0, int((wake - now) * 1000)) + 1))
            now = time.monotonic()
            if self._sig.fileno() in events or self._sig in events:
                self._drain_signal_pipe()
            results: list[m.TaskResult] = []
            # Messages before monitor events: an Exit and the closed connection that
            # follows it can arrive in the same poll, and the Exit must win.
            if self.sock in events or self.monitor in events:
                while True:
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    last_heard = now
                    try:
                        msg = m.decode(frames[0].bytes)
                    except ProtocolError as exc:
                        log.error("the manager sent a message this worker cannot read: %s", exc)
                        raise _SessionEnd(ExitCode.REJECTED, f"protocol error: {exc}") from None
                    if isinstance(msg, m.Welcome):
                        self.welcomed = True
                        heartbeat, lease = msg.heartbeat_interval, msg.lease
                        log.info("connected to manager %s:%d (packmule %s)",
                                 self.host, self.port, msg.version)
                        self._warm_runners()
                    elif isinstance(msg, m.Reject):
                        if self.welcomed:  # declared lost while silent: start afresh
                            raise _SessionEnd(None, f"manager dropped this worker: {msg.reason}")
                        log.error("the manager refused this worker: %s", msg.reason)
                        raise _SessionEnd(ExitCode.REJECTED, msg.reason)
                    elif isinstance(msg, m.Exit):
                        raise _SessionEnd(ExitCode.OK, f"manager said exit: {msg.reason}")
                    elif isinstance(msg, m.Dispatch):
                        for spec in msg.tasks:
                            self._begin(spec, now, poller, by_fd, results)
                    elif isinstance(msg, m.PutPack):
                        if len(frames) != 2:
                            raise _SessionEnd(ExitCode.REJECTED, "a pack came without its data")
                        got = self.packs.receive(msg, frames[1])
                        if isinstance(got, int):
                            self._send(m.PackProgress(msg.digest, msg.transfer, got))
                        elif got is not None:  # refused at once (no room on disk)
                            self._pack_done(got, self.packs.pending.pop(msg.digest, []), now,
                                            poller, by_fd, results)
                    elif isinstance(msg, m.PutFile):
                        (self.workspace / "cache" / msg.cache_name).write_bytes(msg.data)
                    elif isinstance(msg, m.Kill):
                        self.queued.pop((msg.task_id, msg.attempt), None)
                        self.packs.drop_task(msg.task_id, msg.attempt)
                        run = self.running.get((msg.task_id, msg.attempt))
                        if run is not None:
                            self._drop(run, poller, by_fd)
                            run.runner.kill()
            if self.monitor in events:
                self._monitor_events()
            if self.packs.fileno() in events:
                for done, waiting in self.packs.finished():
                    self._pack_done(done, waiting, now, poller, by_fd, results)
            for fd, key in list(by_fd.items()):
                if fd in events:
                    run = self.running[key]
                    ended = self._read_runner(run)
                    if ended is not None:
                        self._drop(run, poller, by_fd)
                        results.append(ended)
            for run in list(self.running.values()):
                if now >= run.wake_at():
                    ended = self._watch(run, now)
                    if ended is not None:
                        self._drop(run, poller, by_fd)
                        results.append(ended)
            if self.queued:
                for spec in list(self.queued.values()):
                    if Resources(**spec.allocation).fits_in(self.free):
                        del self.queued[(spec.task_id, spec.attempt)]
                        self._begin(spec, now, poller, by_fd, results)
            if results:
                self._send(m.Results(results))
            if self.running:
                last_busy = now
            if not self.welcomed:
                if now >= connect_deadline:
                    raise _SessionEnd(None, "no answer from the manager")
                continue
            if now - last_heard > lease:
                raise _SessionEnd(None, f"no message from the manager for {lease:.0f} s")
            if not self.running and now - last_busy > self.idle_timeout:
                raise _SessionEnd(ExitCode.OK, f"idle for {self.idle_timeout:.0f} s")
            if now - last_beat >= heartbeat:
                last_beat = now
                self._send(m.WorkerHeartbeat(len(self.running)))

    def _monitor_events(self) -> None:
        for event, value in drain_events(self.monitor):
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshake_failures = 0
            elif event & HANDSHAKE_FAILED and not (event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                                   and value == errno.EAGAIN):
                # (A handshake that timed out is a busy manager, not a wrong password.)
                self._handshake_failures += 1
                if (event != zmq.EVENT_HANDSHAKE_FAILED_AUTH
                        and self._handshake_failures < AUTH_FAILURES):
                    continue  # the manager may have dropped it while busy: try again
                msg = (
                    f"authentication with the manager at {self.host}:{self.port} failed: this "
                    "worker's password differs from the manager's. Use the manager's password "
                    "file (--password-file) or $PACKMULE_PASSWORD."
                )
                log.error("%s", msg)
                print(f"packmule worker: {msg}", file=sys.stderr)
                raise _SessionEnd(ExitCode.AUTH_FAILED, "authentication failed")
            elif event == zmq.EVENT_DISCONNECTED and self.welcomed:
                raise _SessionEnd(None, "connection to the manager closed")

    # ------------------------------------------------------------ tasks
    def _warm_runners(self) -> None:
        want = min(MAX_IDLE_RUNNERS, max(1, self.size.cores or 1))
        while len(self.idle) < want:
            self.idle.append(self._new_runner())

    def _runner_for(self, settings: tuple[str, str, str]) -> Runner:
        """An idle runner that ran tasks with these settings, else a fresh one."""
        pack = settings[2]
        for fresh in (False, True):  # the same settings first, else a fresh one
            for i, r in enumerate(self.idle):
                if (r.settings is None and r.pack == pack) if fresh else r.settings == settings:
                    del self.idle[i]
                    r.settings = settings
                    return r
        runner = self._new_runner(pack)
        runner.settings = settings
        return runner

    def _new_runner(self, pack: str = "") -> Runner:
        """A fresh runner: the worker's own interpreter, or a pack's."""
        self._runner_count += 1
        sandbox = self.workspace / f"r{self._runner_count}"
        if not pack:
            return _spawn_runner(sandbox, self.cgroups)
        return _spawn_runner(sandbox, self.cgroups, self.packs.interpreter(pack),
                             self.packs.environment(), pack)

    def _result(self, run: Running, status: m.TaskStatus, message: str,
                measured: dict[str, float] | None = None,
                exceeded: list[str] | None = None) -> m.TaskResult:
        wall = time.monotonic() - run.started
        return m.TaskResult(
            run.spec.task_id, run.spec.attempt, status, b"", -1, b"", b"", {}, message,
            wall, run.gpu_ids, [], measured or self._measured(run, wall), exceeded or [],
        )

    def _reply(self, spec: m.TaskSpec, status: m.TaskStatus, message: str) -> m.TaskResult:
        return m.TaskResult(spec.task_id, spec.attempt, status, b"", -1, b"", b"", {}, message,
                            0.0, [], [], {}, [])

    def _measured(self, run: Running, wall: float, reply: dict[str, Any] | None = None,
                  cgroup_peak: int = 0) -> dict[str, float]:
        """The task's measurements: the best of the kernel's figures and the samples."""
        reply = reply or {}
        memory = int(reply.get("peak_rss", 0))
        if run.baseline is not None:  # samples count only once the call is unpickled
            memory = max(memory, run.sampler.peak_rss - run.baseline,
                         cgroup_peak - run.baseline)
        cpu = float(reply.get("cpu_time", 0.0))
        run.peak_disk = max(run.peak_disk, tree_size(run.runner.sandbox_str))
        return {
            "memory": memory / MB,
            "disk": run.peak_disk / MB,
            "cores": max(run.sampler.peak_cores, cpu / wall if wall > 0 else 0.0),
            "cores_avg": cpu / wall if wall > 0 else 0.0,
            "wall_time": wall,
            "cpu_time": cpu,
            "bytes_read": float(reply.get("bytes_read", 0)),
            "bytes_written": float(reply.get("bytes_written", 0)),
        }

    def _watch(self, run: Running, now: float) -> m.TaskResult | None:
        """Enforce the task's wall time, memory (without a cgroup) and disk."""
        if run.deadline is not None and now >= run.deadline:
            run.runner.kill()
            return self._result(run, m.TaskStatus.TIMEOUT, f"killed after {run.spec.timeout:g} s")
        if now >= run.sampler.next_at:
            used = run.sampler.sample(now) - (run.baseline or 0)
            if (run.memory_limit and run.runner.cgroup is None and run.baseline is not None
                    and used > run.memory_limit):
                measured = self._measured(run, now - run.started)
                run.runner.kill()
                return self._result(run, m.TaskStatus.EXHAUSTED, _over("memory", used,
                                    run.memory_limit), measured, ["memory"])
        if run.disk_limit and now >= run.next_disk:
            run.next_disk = now + DISK_INTERVAL
            used = tree_size(run.runner.sandbox_str)
            run.peak_disk = max(run.peak_disk, used)
            if used > run.disk_limit:
                measured = self._measured(run, now - run.started)
                run.runner.kill()
                return self._result(run, m.TaskStatus.EXHAUSTED,
                                    _over("disk", used, run.disk_limit), measured, ["disk"])
        return None

    def _begin(self, spec: m.TaskSpec, now: float, poller: zmq.Poller,
               by_fd: dict[int, tuple[int, int]], results: list[m.TaskResult]) -> None:
        """Start a dispatched task, or queue it (prefetched) until it fits."""
        try:
            alloc = Resources(**spec.allocation)
        except (TypeError, ValueError) as exc:
            log.error("the manager sent a bad allocation %r: %s", spec.allocation, exc)
            raise _SessionEnd(ExitCode.REJECTED, f"bad allocation: {exc}") from None
        if spec.pack and spec.pack not in self.packs.ready:
            waiting = self.packs.pending.get(spec.pack)
            if waiting is not None:
                waiting.append(spec)  # starts when its pack is unpacked
                return
            error = self.packs.failed.get(spec.pack)
            if error is not None:
                results.append(self._reply(spec, m.TaskStatus.PACK_ERROR, error))
                return
            self._send(m.PackState(spec.pack, False, "not on this worker", True, 0))
            results.append(self._reply(spec, m.TaskStatus.FORSAKEN,
                                       f"pack {spec.pack[:12]} is not on {self.hostname}"))
            return
        if not alloc.fits_in(self.free) and alloc.fits_in(self.size):
            self.queued[(spec.task_id, spec.attempt)] = spec  # starts when room frees
            return
        r = self._start(spec, alloc, now)
        if isinstance(r, m.TaskResult):
            results.append(r)
        else:
            by_fd[r.fd] = (spec.task_id, spec.attempt)
            poller.register(r.fd, zmq.POLLIN)

    def _pack_done(self, done: Unpacked, waiting: list[m.TaskSpec], now: float,
                   poller: zmq.Poller, by_fd: dict[int, tuple[int, int]],
                   results: list[m.TaskResult]) -> None:
        """A pack is unpacked (its tasks start), or failed (they fail, or go back
        to the manager when the pack arrived damaged and will be sent again)."""
        ok = done.root is not None
        self._send(m.PackState(done.digest, ok, done.error, done.corrupted, done.transfer))
        if not ok:
            log.error("%s", done.error)
        for spec in waiting:
            if ok:
                self._begin(spec, now, poller, by_fd, results)
            else:
                status = m.TaskStatus.FORSAKEN if done.corrupted else m.TaskStatus.PACK_ERROR
                results.append(self._reply(spec, status, done.error))

    def _start(self, spec: m.TaskSpec, alloc: Resources, now: float) -> Running | m.TaskResult:
        if not alloc.fits_in(self.free):
            return self._reply(
                spec, m.TaskStatus.FORSAKEN,
                f"worker {self.hostname} has {self.free} free, the task needs {alloc}",
            )
        cores = str(max(1, alloc.cores or 0))
        gpus = [self.free_gpus.pop(0) for _ in range(alloc.gpus or 0)]
        settings = (cores, ",".join(gpus), spec.pack)
        try:
            runner = self._runner_for(settings)
        except OSError as exc:  # e.g. a pack's interpreter that cannot run here
            self.free_gpus = [g for g in self.gpu_ids if g in self.free_gpus or g in gpus]
            if spec.pack:
                return self._reply(spec, m.TaskStatus.PACK_ERROR,
                                   f"cannot start pack {spec.pack[:12]}'s interpreter on "
                                   f"{self.hostname}: {exc}")
            return self._reply(spec, m.TaskStatus.CRASHED, f"cannot start a runner: {exc}")
        try:
            self._prepare(spec, runner.sandbox)
        except OSError as exc:
            self._recycle(runner)
            self.free_gpus = [g for g in self.gpu_ids if g in self.free_gpus or g in gpus]
            return self._reply(spec, m.TaskStatus.SETUP_ERROR, f"cannot prepare sandbox: {exc}")
        try:
            run = self._launch(spec, runner, alloc, cores, gpus, now)
        except OSError:
            # The runner died while idle (say, the OOM killer): one fresh try.
            runner.kill()
            runner = self._runner_for(settings)
            try:
                self._prepare(spec, runner.sandbox)
                run = self._launch(spec, runner, alloc, cores, gpus, now)
            except OSError as exc:
                runner.kill()
                self.free_gpus = [g for g in self.gpu_ids if g in self.free_gpus or g in gpus]
                return self._reply(spec, m.TaskStatus.CRASHED, f"cannot start a runner: {exc}")
        self.free = self.free - alloc
        self.running[(spec.task_id, spec.attempt)] = run
        return run

    def _prepare(self, spec: m.TaskSpec, sandbox: Path) -> None:
        """Put the task's input files in its sandbox."""
        for name in spec.outputs:
            if "/" in name:
                (sandbox / name).parent.mkdir(parents=True, exist_ok=True)
        for f in spec.inputs:
            dest = sandbox / f.remote_name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if f.cache_name:
                src = self.workspace / "cache" / f.cache_name
                try:
                    os.link(src, dest)
                except OSError:
                    shutil.copyfile(src, dest)
            else:
                dest.write_bytes(f.data)

    def _launch(self, spec: m.TaskSpec, runner: Runner, alloc: Resources, cores: str,
                gpus: list[str], now: float) -> Running:
        """Hand the task to the runner (raises OSError if the runner is dead)."""
        oom_kills = -1
        limit_file = ""
        if runner.cgroup is not None and alloc.memory:
            oom_kills = runner.cgroup.oom_kills()
            limit_file = runner.cgroup.limit_file
        self._seq += 1
        env = {
            **spec.env,
            "CORES": cores, "OMP_NUM_THREADS": cores, "OPENBLAS_NUM_THREADS": cores,
            "MKL_NUM_THREADS": cores, "VECLIB_MAXIMUM_THREADS": cores,
            "NUMEXPR_NUM_THREADS": cores,
            "MEMORY": str(alloc.memory), "DISK": str(alloc.disk), "GPUS": str(alloc.gpus),
            "CUDA_VISIBLE_DEVICES": ",".join(gpus),
            "TMPDIR": runner.sandbox_str, "PACKMULE_SANDBOX": runner.sandbox_str,
            "PACKMULE_RADIO_DIR": runner.radio,
        }
        io = runner.io
        req = {"kind": spec.kind, "payload": spec.payload, "command": spec.command,
               "sandbox": runner.sandbox_str, "env": env, "stdout": io[0], "stderr": io[1],
               "seq": self._seq, "limit_file": limit_file,
               "memory_limit": (alloc.memory or 0) * MB}
        runner.conn.send_bytes(msgpack.packb(req, use_bin_type=True))
        return Running(spec, runner, alloc, gpus, now,
                       now + spec.timeout if spec.timeout > 0 else None,
                       TreeSampler(runner.proc.pid, now), oom_kills,
                       now + DISK_INTERVAL, fd=runner.conn.fileno(), seq=self._seq)

    def _drop(self, run: Running, poller: zmq.Poller, by_fd: dict[int, tuple[int, int]]) -> None:
        """Forget a running task and give back its resources."""
        self.running.pop((run.spec.task_id, run.spec.attempt), None)
        if by_fd.pop(run.fd, None) is not None:
            poller.unregister(run.fd)
        self.free = self.free + run.alloc
        self.free_gpus = [g for g in self.gpu_ids if g in self.free_gpus or g in run.gpu_ids]

    def _recycle(self, runner: Runner) -> None:
        """Keep a healthy runner warm for the next task, with an empty sandbox."""
        try:
            runner.clear_sandbox()
        except OSError:
            runner.kill()
            return
        self.idle.append(runner)
        if len(self.idle) > MAX_IDLE_RUNNERS:
            self.idle.pop(0).kill()  # the least recently used

    def _oom_killed(self, run: Running) -> tuple[bool, int]:
        """(whether the cgroup's OOM killer struck during the task, the cgroup's peak)."""
        cg = run.runner.cgroup
        if cg is None or run.oom_kills < 0:
            return False, 0
        try:
            return cg.oom_kills() > run.oom_kills, cg.peak()
        except OSError:
            return False, 0

    def _read_runner(self, run: Running) -> m.TaskResult | None:
        """The task's end, as its runner reports it (or its death); None if nothing came.

        (A poll event can be stale: a runner killed in this round may have had its
        descriptor number reused by a fresh runner that has said nothing yet.)
        """
        try:
            if not run.runner.conn.poll(0):
                return None
            reply = msgpack.unpackb(run.runner.conn.recv_bytes(), raw=False)
        except (EOFError, OSError):
            return self._runner_died(run)
        run._baseline = int(reply["baseline"])
        if reply["status"] == "exhausted":  # over its limit before it even started
            measured = self._measured(run, 0.0, reply)
            self._recycle(run.runner)
            return self._oom_result(run, measured)
        return self._finished(run, reply)

    def _runner_died(self, run: Running) -> m.TaskResult:
        oom, peak = self._oom_killed(run)
        wall = time.monotonic() - run.started
        measured = self._measured(run, wall, cgroup_peak=peak)
        run.runner.kill()
        if oom:
            return self._oom_result(run, measured)
        code = run.runner.proc.returncode
        how = (f"signal {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exit code {code}")
        return self._result(
            run, m.TaskStatus.CRASHED,
            f"the process running the task died ({how}) on {self.hostname}. It may have run "
            "out of memory or crashed in native code.",
        )

    def _finished(self, run: Running, reply: dict[str, Any]) -> m.TaskResult:
        """Build a finished task's result from the runner's reply."""
        status = m.TaskStatus(reply["status"])
        # A shell task's child killed by the cgroup: the runner lives on.
        oom, peak = self._oom_killed(run) if reply["exit_code"] == -9 else (False, 0)
        measured = self._measured(run, reply["wall_time"], reply, cgroup_peak=peak if oom else 0)
        if oom:
            self._recycle(run.runner)
            return self._oom_result(run, measured)
        outputs: dict[str, bytes] = {}
        if status is m.TaskStatus.SUCCESS:
            for name in run.spec.outputs:  # the manager judges what is missing
                with contextlib.suppress(OSError):
                    outputs[name] = (run.sandbox / name).read_bytes()
        messages = run.runner.take_messages()
        if reply.get("rss_after", 0) > RUNNER_RSS_LIMIT:
            run.runner.kill()  # it kept what its tasks allocated: start afresh
        else:
            self._recycle(run.runner)
        return m.TaskResult(
            run.spec.task_id, run.spec.attempt, status, reply["value"], reply["exit_code"],
            reply["stdout"], reply["stderr"], outputs, "", reply["wall_time"], run.gpu_ids,
            messages, measured, [],
        )

    def _oom_result(self, run: Running, measured: dict[str, float]) -> m.TaskResult:
        """The cgroup stopped the task at its limit: it used at least that much."""
        measured["memory"] = max(measured["memory"], run.memory_limit / MB)
        return self._result(
            run, m.TaskStatus.EXHAUSTED,
            f"memory: reached the {run.memory_limit / MB:.0f} MB allocated and was killed",
            measured, ["memory"],
        )
