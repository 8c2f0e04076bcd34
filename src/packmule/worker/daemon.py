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
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from .._version import __version__
from ..core.slots import Slots
from ..envpack.unpack import default_cache_root
from ..errors import ProtocolError
from ..protocol import messages as m
from ..protocol import pieces
from ..protocol.security import derive_keys
from ..protocol.sockets import HANDSHAKE_FAILED, client_socket, drain_events
from ..resources import Resources
from .filecache import FileCache
from .monitor import (
    DISK_INTERVAL,
    MB,
    CgroupRoot,
    MemoryCgroup,
    TreeSampler,
    kill_recorded,
    subreaper_setter,
    tree_size,
)
from .packs import PackCache, Unpacked
from .runner import BOARD_SIZE, KILL_WAIT, Channel, kill_descendants, read_board
from .runner_messages import MAX_OUTPUT, Done, Run, decode, encode_run

log = logging.getLogger("packmule.worker")

#: The messages a manager sends; any other from it ends the session.
_FROM_MANAGER = tuple(m.FROM_MANAGER)

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
#: The batch block a worker was started in, as Parsl's launch command exports it: sent
#: in the Hello, for Parsl monitoring's node table.
BLOCK_ENV = "PARSL_WORKER_BLOCK_ID"
#: A worker that has not reached a manager says so this many seconds after it began
#: trying, and again every NO_MANAGER_REPEAT seconds, rather than staying silent until
#: its connect timeout: a manager listening on 127.0.0.1 only, a wrong port or a
#: firewall then show at once.
NO_MANAGER_NOTICE = 5.0
NO_MANAGER_REPEAT = 60.0
#: A connection closed within this many seconds of being tried was refused (nothing
#: listens there); one that takes longer timed out (no answer: a firewall, a host down).
REFUSED_WITHIN = 2.0
#: The socket monitor events the worker follows: a refused or silent address, a
#: password that does not match, a connection that closed.
MONITOR_EVENTS = (HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
                  | zmq.EVENT_CONNECT_DELAYED | zmq.EVENT_CONNECTED | zmq.EVENT_CLOSED)
#: How memory limits are enforced: "auto" uses cgroups where writable, else polling.
ENFORCEMENT = ("auto", "cgroup", "poll")
#: Runners kept warm when idle, at most.
MAX_IDLE_RUNNERS = 8
#: A runner whose resident set stays above this after a task is replaced
#: (what a task allocated and kept, e.g. big imports or caches, would
#: otherwise count against the next tasks' memory).
RUNNER_RSS_LIMIT = 512 * MB
#: The longest reply a runner may send (bytes): the largest result the worker can send
#: the manager, with both outputs. A longer one, or one that stops halfway for
#: RUNNER_PATIENCE seconds (a task wrote into its runner's channel), fails its task.
RUNNER_REPLY_LIMIT = pieces.MAX_MESSAGE + 2 * MAX_OUTPUT + (1 << 16)
#: (Short: the worker waits for the rest of a reply without serving anything else, and
#: a runner writes a reply in one go.)
RUNNER_PATIENCE = 1.0
#: How long a killed runner is waited for (seconds). One still there after it (stuck
#: in the kernel, say) is reaped later, once it has exited (:func:`reap_stragglers`).
REAP_WAIT = 5.0

#: Killed runners that had not exited within REAP_WAIT, to reap once they have.
_stragglers: list[subprocess.Popen[bytes]] = []


def reap_stragglers(wait: float = 0.0) -> None:
    """Reap the killed runners that have exited since, waiting up to ``wait`` seconds
    for all of them; say which are still there after such a wait."""
    deadline = time.monotonic() + wait
    for proc in list(_stragglers):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            _stragglers.remove(proc)
    if wait and _stragglers:
        log.error("runners %s did not exit after SIGKILL (stuck in the kernel: see their "
                  "state in ps or /proc/PID/stack); the system will reap them once this "
                  "worker exits", ", ".join(str(p.pid) for p in _stragglers))


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
        #: Where tasks may leave monitoring messages for the manager ($PACKMULE_RADIO_DIR).
        self.radio = self.sandbox_str + ".radio"
        #: The processes seen under it during its current task (pid: creation time),
        #: which :meth:`kill` kills too: the task's sampler's record.
        self.recorded: dict[int, float] = {}

    def ensure_dirs(self) -> None:
        """Make the sandbox and radio directories again if a task removed them (or the
        whole work directory), or replaced them with something else."""
        for path in (self.sandbox_str, self.radio):
            try:
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    continue
                os.unlink(path)  # a file or a symbolic link where the directory was
            except FileNotFoundError:
                pass
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            os.mkdir(path, 0o700)

    def take_messages(self) -> list[bytes]:
        """The complete messages the last task left, removed from the radio directory
        (none if the task removed it: :meth:`ensure_dirs` makes it again)."""
        out = []
        try:
            with os.scandir(self.radio) as entries:
                for e in entries:
                    if e.name.endswith(".msg") and e.is_file(follow_symlinks=False):
                        data = _read_regular(e.path)
                        if data is not None:
                            out.append(data)
                    _remove(e)
        except (FileNotFoundError, NotADirectoryError):
            pass
        return out

    def clear_sandbox(self) -> None:
        """Empty the sandbox for the next task (cheaper than a new directory)."""
        self.ensure_dirs()
        with os.scandir(self.sandbox_str) as entries:
            for e in entries:
                _remove(e)

    def kill(self) -> None:
        """Kill the runner and every process its task started, wherever they went: its
        process group; its descendants, stopped parents first (they include those that
        left the group, whom the runner adopted as a subreaper); what its cgroup holds;
        and the processes recorded during its task. Then remove its directories."""
        if self.conn.fd < 0:
            return  # killed already (its pid may belong to another process by now)
        pid = self.proc.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGSTOP)  # the runner and its group: nothing new starts
        kill_descendants(pid, KILL_WAIT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        self.conn.close()
        try:
            self.proc.wait(timeout=REAP_WAIT)
        except subprocess.TimeoutExpired:
            log.warning("runner %d did not exit within %.0f s of SIGKILL (stuck in the kernel?); "
                        "it is reaped later, once it has exited", pid, REAP_WAIT)
            _stragglers.append(self.proc)
        if self.cgroup is not None:
            self.cgroup.kill_all()
        kill_recorded(self.recorded, keep=pid)
        shutil.rmtree(self.sandbox, ignore_errors=True)
        shutil.rmtree(self.radio, ignore_errors=True)
        if self.board is not None:
            self.board.close()
            self.board = None
        if self.cgroup is not None:
            self.cgroup.remove()

    def end_strays(self, left_some: bool) -> int:
        """After a task that ended normally: kill what it left behind that the runner
        could not see (processes in its cgroup, or recorded, other than the runner).

        A subreaper runner sees all its task's processes: its cgroup (40 us to read) is
        only looked at when the task did leave some (``left_some``), or where runners
        cannot be subreapers."""
        killed = 0
        if self.cgroup is not None and (left_some or _BECOME_SUBREAPER is None):
            killed = self.cgroup.kill_all(keep=self.proc.pid)
        if self.recorded:
            killed += kill_recorded(self.recorded, keep=self.proc.pid)
        return killed


def _fmt_measured(measured: dict[str, float]) -> str:
    """Measurements for a log line: ``memory 12.3 MB, cores 0.98, ...``."""
    return ", ".join(f"{k} {v:.3g}{' MB' if k in ('memory', 'disk') else ''}"
                     for k, v in measured.items())


def _remove(e: os.DirEntry[str]) -> None:
    """Remove a directory entry, whatever it is (a directory's content too)."""
    if e.is_dir(follow_symlinks=False):
        shutil.rmtree(e.path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(e.path)


def _read_regular(path: str) -> bytes | None:
    """A regular file's content; None for anything else (a FIFO would block the worker,
    a link to a device could be endless), or if it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    except OSError:
        return None
    finally:
        os.close(fd)


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
    os.makedirs(sandbox.parent, mode=0o700, exist_ok=True)  # a task may have removed it
    sandbox.mkdir()
    Path(str(sandbox) + ".radio").mkdir()
    # The board and the capture files are unlinked at once: the runner has them open,
    # and no task can remove them from under it.
    board, out, err = (_unlinked_file(f"{sandbox}.{name}") for name in ("board", "out", "err"))
    parent, child = socket.socketpair()
    fds = (child.fileno(), board, out, err)
    try:
        os.ftruncate(board, BOARD_SIZE)
        proc = subprocess.Popen(
            [python, "-m", "packmule.worker.runner", *map(str, fds)],
            pass_fds=fds,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_BECOME_SUBREAPER,  # one prctl call, nothing else
        )
        runner = Runner(proc, Channel(parent.detach()), sandbox, pack=pack)
        runner.board = mmap.mmap(board, BOARD_SIZE)
    finally:
        child.close()
        parent.close()
        for fd in (board, out, err):
            os.close(fd)
    if cgroups is not None:
        runner.cgroup = cgroups.new_group()
        if runner.cgroup is not None:
            runner.cgroup.add(proc.pid)
    return runner


def _unlinked_file(path: str) -> int:
    """A new empty file, open for reading and writing, whose name is already gone."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.unlink(path)
    return fd


#: Makes a runner a child subreaper between fork and exec (None: not on this system).
_BECOME_SUBREAPER = subreaper_setter()


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
        #: When to say next that no manager answers (None: one has answered).
        self._notice_at: float | None = None
        self._seeking_since = 0.0
        self.packs = PackCache(pack_cache or default_cache_root())
        #: Input files the manager sent once (PutFile), for the tasks that name them.
        self.files = FileCache(self.workspace / "cache")
        #: Whether --debug asked for every step of every task (checked once per step).
        self._debug = log.isEnabledFor(logging.DEBUG)
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
            reap_stragglers(wait=REAP_WAIT)
            self.packs.close()
            self.files.close()
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
        monitor = sock.get_monitor_socket(MONITOR_EVENTS)
        self._handshake_failures = 0
        #: What this session's connection got so far, for the "no manager" notice.
        self._link = "no answer"
        self._tried_at = time.monotonic()
        if self._notice_at is None:
            self._seeking_since = time.monotonic()
            self._notice_at = self._seeking_since + NO_MANAGER_NOTICE
        sock.connect(f"tcp://{self.host}:{self.port}")
        self.sock, self.monitor = sock, monitor
        #: This session's tasks by (task id, attempt): queued, waiting for a pack,
        #: running, and what is free (see docs/internals.md, "A worker's tasks").
        self.slots: Slots[tuple[int, int], m.TaskSpec, Running] = Slots(self.size)
        self.free_gpus = list(self.gpu_ids)
        self.idle: list[Runner] = []
        self._runner_count = 0
        self._seq = 0
        self.welcomed = False
        #: Seconds between heartbeats (the manager's, once welcomed) and the last one.
        self._beat_every = 1.0
        self._beat_at = time.monotonic()
        #: Messages from the manager that come in pieces, joined (at most MAX_MESSAGE).
        self.incoming = pieces.Incoming()
        try:
            self._send(
                m.Hello(
                    m.PROTOCOL_VERSION, __version__, self.workspace.name, self.hostname,
                    os.getpid(), {k: int(v or 0) for k, v in self.size.as_dict().items()},
                    self.packs.scan(), os.environ.get(BLOCK_ENV, "")[:m.MAX_NAME],
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
            for r in [*self.idle, *(run.runner for run in self.slots.running.values())]:
                r.kill()
            sock.disable_monitor()
            monitor.close(0)
            sock.close()
            ctx.term()
        raise AssertionError("unreachable")

    def _send(self, msg: m.Message) -> None:
        """Send to the manager: a message larger than a piece goes in pieces (the
        manager refuses larger frames), a result too large to send becomes its failure."""
        for frames in pieces.outgoing(msg):
            if len(frames) == 1:
                self.sock.send(frames[0], copy=False)
            else:
                self.sock.send_multipart(frames, copy=False)

    def _from_manager(self, frames: list[zmq.Frame]) -> m.Message | None:
        """The message in frames from the manager, or None while one sent in pieces is
        being joined (its pieces are acknowledged as they come: that paces the manager).
        ProtocolError: frames that are not a message a manager sends."""
        msg = m.decode(frames[0].buffer)  # (no copy of a large task)
        if isinstance(msg, m.Piece):
            if len(frames) != 2:
                raise ProtocolError("a Piece without its data frame")
            whole = self.incoming.add(msg, frames[1].buffer)
            ack = self.incoming.ack()  # (before decoding: a 300 MB message takes seconds
            # to decode on a busy machine, and the manager must hear from this worker)
            if ack is not None:
                self._send(ack)
            if whole is None:
                return None
            msg = m.decode_joined(whole)  # (a large task's call: a view, not a copy)
            if isinstance(msg, (m.Piece, m.PutPack)):  # (they have a frame of their own)
                raise ProtocolError(f"a {type(msg).__name__} sent in pieces")
        if not isinstance(msg, _FROM_MANAGER):
            raise ProtocolError(f"a {type(msg).__name__}, which managers do not send")
        if isinstance(msg, m.PutPack) and len(frames) != 2:
            raise ProtocolError("a PutPack without its data frame")
        return msg

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        poller.register(self._sig, zmq.POLLIN)
        poller.register(self.packs.fileno(), zmq.POLLIN)
        connect_deadline = time.monotonic() + self.connect_timeout
        lease = 30.0
        last_heard = last_busy = time.monotonic()
        by_fd: dict[int, tuple[int, int]] = {}
        while True:
            now = time.monotonic()
            if self._stop_reason is not None:
                raise _SessionEnd(ExitCode.OK, self._stop_reason)
            if not self.welcomed:
                wake = min(connect_deadline, self._notice_at or connect_deadline)
            else:
                watch = [r.wake_at() for r in self.slots.running.values()]
                wake = min([self._beat_at + self._beat_every, last_heard + lease, *watch])
                if not self.slots:
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
                        msg = self._from_manager(frames)
                        if msg is None:
                            continue  # a piece of a message still being joined
                    except ProtocolError as exc:
                        log.error("the manager at %s:%d sent a message this worker cannot use "
                                  "(%s); ending the session", self.host, self.port, exc)
                        raise _SessionEnd(ExitCode.REJECTED, f"protocol error: {exc}") from None
                    if isinstance(msg, m.Welcome):
                        self.welcomed = True
                        self._beat_every, lease = msg.heartbeat_interval, msg.lease
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
                            self._begin(spec, results)
                    elif isinstance(msg, m.PutPack):
                        got = self.packs.receive(msg, frames[1])
                        if isinstance(got, int):
                            self._send(m.PackProgress(msg.digest, msg.transfer, got))
                        elif got is not None:  # refused at once (no room on disk)
                            self._pack_done(got, results)
                    elif isinstance(msg, m.PutFile):
                        self._put_file(msg)
                    elif isinstance(msg, m.Kill):
                        run = self.slots.running.get((msg.task_id, msg.attempt))
                        if run is None:  # queued, waiting for its pack, or not started yet
                            self.slots.release((msg.task_id, msg.attempt))
                        else:
                            self._drop(run, poller, by_fd)
                            run.runner.kill()
            if self.monitor in events:
                self._monitor_events()
            if self.packs.fileno() in events:
                for done in self.packs.finished():
                    self._pack_done(done, results)
            for fd, key in list(by_fd.items()):
                if fd in events:
                    run = self.slots.running[key]
                    ended = self._read_runner(run)
                    if ended is not None:
                        self._drop(run, poller, by_fd)
                        results.append(ended)
            for run in list(self.slots.running.values()):
                if now >= run.wake_at():
                    ended = self._watch(run, now)
                    if ended is not None:
                        self._drop(run, poller, by_fd)
                        results.append(ended)
            self._start_ready(now, poller, by_fd, results)
            if results:
                self._send(m.Results(results))
                if self._debug:
                    for r in results:
                        log.debug("task %d attempt %d: result sent (%s%s)", r.task_id,
                                  r.attempt, r.status.value, f": {r.message}" if r.message else "")
            if self.slots:
                last_busy = now
            if not self.welcomed:
                self._no_manager_notice(now)
                if now >= connect_deadline:
                    raise _SessionEnd(None, "no answer from the manager")
                continue
            self._notice_at = None  # reached: a later loss starts the notices afresh
            if now - last_heard > lease:
                raise _SessionEnd(None, f"no message from the manager for {lease:.0f} s")
            if not self.slots and now - last_busy > self.idle_timeout:
                raise _SessionEnd(ExitCode.OK, f"idle for {self.idle_timeout:.0f} s")
            if self._beat(now) and _stragglers:
                reap_stragglers()

    def _beat(self, now: float) -> bool:
        """Send a heartbeat if one is due; whether one was sent. Also called between
        the parts of a long hand-off to a runner (a task's 300 MB argument), so the
        manager hears from this worker however slowly the runner takes it."""
        if not self.welcomed or now - self._beat_at < self._beat_every:
            return False
        self._beat_at = now
        self._send(m.WorkerHeartbeat(len(self.slots.running)))
        return True

    def _no_manager_notice(self, now: float) -> None:
        """Say, now and then, that no manager has answered yet, and what the address did."""
        if self._notice_at is None or now < self._notice_at:
            return
        self._notice_at = now + NO_MANAGER_REPEAT
        log.warning(
            'no manager at %s:%d yet: %s; is the manager listening on an address this node '
            'can reach (Manager(host="0.0.0.0"))? Still trying, for %.0f s so far (gives up '
            "after --connect-timeout %.0f s).", self.host, self.port, self._link,
            now - self._seeking_since, self.connect_timeout)

    def _monitor_events(self) -> None:
        for event, value in drain_events(self.monitor):
            if event == zmq.EVENT_CONNECT_DELAYED:
                self._tried_at = time.monotonic()
            elif event == zmq.EVENT_CLOSED and not self.welcomed:
                self._link = ("connection refused"
                              if time.monotonic() - self._tried_at < REFUSED_WITHIN
                              else "no answer")
            elif event == zmq.EVENT_CONNECTED:
                self._link = ("no answer (a connection opens, but nothing there answers as a "
                              "packmule manager)")
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshake_failures = 0
                self._link = "connected, but the manager has not answered this worker yet"
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
                    if self._debug:
                        log.debug("runner pid %d chosen (%s)", r.proc.pid,
                                  "warm, unused" if fresh else "warm, same settings")
                    return r
        runner = self._new_runner(pack)
        runner.settings = settings
        if self._debug:
            log.debug("runner pid %d started%s", runner.proc.pid,
                      f" with pack {pack[:12]}'s interpreter" if pack else "")
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

    def _measured(self, run: Running, wall: float, reply: Done | None = None,
                  cgroup_peak: int = 0) -> dict[str, float]:
        """The task's measurements: the best of the kernel's figures and the samples."""
        memory = reply.peak_rss if reply is not None else 0
        if run.baseline is not None:  # samples count only once the call is unpickled
            memory = max(memory, run.sampler.peak_rss - run.baseline,
                         cgroup_peak - run.baseline)
        cpu = float(reply.cpu_time) if reply is not None else 0.0
        run.peak_disk = max(run.peak_disk, tree_size(run.runner.sandbox_str))
        return {
            "memory": memory / MB,
            "disk": run.peak_disk / MB,
            "cores": max(run.sampler.peak_cores, cpu / wall if wall > 0 else 0.0),
            "cores_avg": cpu / wall if wall > 0 else 0.0,
            "wall_time": wall,
            "cpu_time": cpu,
            "bytes_read": float(reply.bytes_read) if reply is not None else 0.0,
            "bytes_written": float(reply.bytes_written) if reply is not None else 0.0,
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

    def _begin(self, spec: m.TaskSpec, results: list[m.TaskResult]) -> None:
        """Take a dispatched task into its slot: READY when it fits what is free (it
        starts at the end of this loop turn), QUEUED (prefetched) until it fits; or
        answer it at once when it cannot run here."""
        try:
            alloc = Resources(**spec.allocation)
        except (TypeError, ValueError) as exc:
            log.error("the manager sent a bad allocation %r: %s", spec.allocation, exc)
            raise _SessionEnd(ExitCode.REJECTED, f"bad allocation: {exc}") from None
        key = (spec.task_id, spec.attempt)
        if self._debug:
            log.debug("task %d attempt %d received: %s task, allocation %s%s", *key, spec.kind,
                      alloc, f", pack {spec.pack[:12]}" if spec.pack else "")
        if key in self.slots:
            log.error("the manager sent task %d attempt %d again; the copy is ignored", *key)
            return
        if spec.pack and spec.pack not in self.packs.ready and spec.pack not in self.packs.pending:
            results.append(self._pack_missing(spec))
        elif self.slots.add(key, spec, alloc) is None:
            results.append(self._reply(
                spec, m.TaskStatus.FORSAKEN,
                f"worker {self.hostname} has {self.size} in all, the task needs {alloc}"))

    def _pack_missing(self, spec: m.TaskSpec) -> m.TaskResult:
        """The answer for a task whose pack is neither here nor arriving."""
        error = self.packs.failed.get(spec.pack)
        if error is not None:
            return self._reply(spec, m.TaskStatus.PACK_ERROR, error)
        self._send(m.PackState(spec.pack, False, "not on this worker", True, 0))
        return self._reply(spec, m.TaskStatus.FORSAKEN,
                           f"pack {spec.pack[:12]} is not on {self.hostname}")

    def _start_ready(self, now: float, poller: zmq.Poller, by_fd: dict[int, tuple[int, int]],
                     results: list[m.TaskResult]) -> None:
        """Start the tasks that hold their allocation (READY), in the order they got
        room; one whose pack is still arriving waits for it, and one that cannot start
        is answered and released (which may give queued ones room)."""
        while ready := self.slots.take_ready():
            for key, entry in ready:
                spec = entry.task
                if spec.pack and spec.pack not in self.packs.ready:
                    if spec.pack in self.packs.pending:
                        self.slots.wait(key, spec.pack)  # it goes on holding its allocation
                        continue
                    results.append(self._pack_missing(spec))
                    self.slots.release(key)
                    continue
                r = self._start(spec, entry.alloc, now)
                if isinstance(r, m.TaskResult):
                    results.append(r)
                    self.slots.release(key)
                else:
                    self.slots.start(key, r)
                    by_fd[r.fd] = key
                    poller.register(r.fd, zmq.POLLIN)

    def _pack_done(self, done: Unpacked, results: list[m.TaskResult]) -> None:
        """A pack is unpacked (the tasks waiting for it start at the end of this loop
        turn), or failed (they fail, or go back to the manager when the pack arrived
        damaged and will be sent again)."""
        ok = done.root is not None
        if self._debug:
            log.debug("pack %s received and %s", done.digest[:12],
                      f"unpacked at {done.root}" if ok else f"not usable: {done.error}")
        self._send(m.PackState(done.digest, ok, done.error, done.corrupted, done.transfer))
        waiting = self.slots.unwait(done.digest)
        if ok:
            return
        log.error("%s", done.error)
        status = m.TaskStatus.FORSAKEN if done.corrupted else m.TaskStatus.PACK_ERROR
        for key in waiting:
            entry = self.slots.release(key)
            assert entry is not None
            results.append(self._reply(entry.task, status, done.error))

    def _start(self, spec: m.TaskSpec, alloc: Resources, now: float) -> Running | m.TaskResult:
        """Launch a task that holds ``alloc`` (READY) on a runner."""
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
            self._prepare(spec, runner)
        except OSError as exc:
            self._recycle(runner)
            self.free_gpus = [g for g in self.gpu_ids if g in self.free_gpus or g in gpus]
            return self._reply(spec, m.TaskStatus.SETUP_ERROR, f"cannot prepare sandbox: {exc}")
        try:
            run = self._launch(spec, runner, alloc, cores, gpus, now)
        except OSError:
            # The runner died while idle (say, the OOM killer): one fresh try.
            runner.kill()
            try:
                runner = self._runner_for(settings)
                self._prepare(spec, runner)
                run = self._launch(spec, runner, alloc, cores, gpus, now)
            except OSError as exc:
                runner.kill()
                self.free_gpus = [g for g in self.gpu_ids if g in self.free_gpus or g in gpus]
                return self._reply(spec, m.TaskStatus.CRASHED, f"cannot start a runner: {exc}")
        return run

    def _put_file(self, msg: m.PutFile) -> None:
        """Cache a file the manager sent; the tasks that need it fail (SETUP_ERROR) if it
        cannot be stored."""
        try:
            self.files.put(msg.cache_name, msg.data)
        except OSError as exc:
            log.error("cannot cache the input file %s the manager sent: %s; the tasks that "
                      "need it will fail here", msg.cache_name[:80], exc)
            return
        if self._debug:
            log.debug("input file %s cached (%d bytes)", msg.cache_name, len(msg.data))

    def _prepare(self, spec: m.TaskSpec, runner: Runner) -> None:
        """Put the task's input files in its runner's sandbox (made again first if an
        earlier task removed it)."""
        runner.ensure_dirs()
        sandbox = runner.sandbox
        for name in spec.outputs:
            if "/" in name:
                (sandbox / name).parent.mkdir(parents=True, exist_ok=True)
        for f in spec.inputs:
            dest = sandbox / f.remote_name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if f.cache_name:
                self.files.place(f.cache_name, str(dest))
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
        runner.conn.send_bytes(encode_run(Run(
            spec.kind, spec.payload, spec.command, runner.sandbox_str, env, self._seq,
            limit_file, (alloc.memory or 0) * MB)), between=lambda: self._beat(time.monotonic()))
        sampler = TreeSampler(runner.proc.pid, now)
        runner.recorded = sampler.seen  # killed with the runner, should it come to that
        if self._debug:
            log.debug("task %d attempt %d started on runner pid %d with %s%s",
                      spec.task_id, spec.attempt, runner.proc.pid, alloc,
                      f", gpus {','.join(gpus)}" if gpus else "")
        return Running(spec, runner, alloc, gpus, now,
                       now + spec.timeout if spec.timeout > 0 else None, sampler, oom_kills,
                       now + DISK_INTERVAL, fd=runner.conn.fileno(), seq=self._seq)

    def _drop(self, run: Running, poller: zmq.Poller, by_fd: dict[int, tuple[int, int]]) -> None:
        """Forget a running task and give back its resources (queued tasks that now fit
        become READY)."""
        self.slots.release((run.spec.task_id, run.spec.attempt))
        if by_fd.pop(run.fd, None) is not None:
            poller.unregister(run.fd)
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
            data = run.runner.conn.recv_bytes(RUNNER_REPLY_LIMIT, RUNNER_PATIENCE)
            reply = decode(Done, data)
        except (EOFError, OSError):
            return self._runner_died(run)
        except ProtocolError as exc:
            return self._malformed(run, exc)
        run._baseline = reply.baseline
        if reply.status == "exhausted":  # over its limit before it even started
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

    def _malformed(self, run: Running, exc: ProtocolError) -> m.TaskResult:
        """The runner answered something that is not a :class:`Done`: the task fails,
        and the runner, whose channel can no longer be trusted, is replaced."""
        log.error("task %d attempt %d: its runner (pid %d) sent a malformed reply: %s",
                  run.spec.task_id, run.spec.attempt, run.runner.proc.pid, exc)
        result = self._result(
            run, m.TaskStatus.CRASHED,
            f"the process running the task on {self.hostname} sent the worker a malformed "
            f"reply ({exc}). The task may have written to a file descriptor it did not open "
            "(the runner's channel to the worker), or the runner is another packmule "
            "version's than the worker (a pack built by another version?).",
        )
        run.runner.kill()  # after measuring: its board goes with it
        return result

    def _finished(self, run: Running, reply: Done) -> m.TaskResult:
        """Build a finished task's result from the runner's reply."""
        status = m.TaskStatus(reply.status)
        runner = run.runner
        # What the task left running: the runner killed what it could see; the rest
        # (in its cgroup, or recorded) is killed here; the runner itself is replaced if
        # some would not die.
        strays = reply.killed + (0 if reply.unkillable else runner.end_strays(reply.killed > 0))
        # A runner whose task's processes would not die, or that kept what its tasks
        # allocated, is replaced; the others stay warm for the next task.
        replace = reply.unkillable > 0 or reply.rss_after > RUNNER_RSS_LIMIT
        # A shell task's child killed by the cgroup: the runner lives on.
        oom, peak = self._oom_killed(run) if reply.exit_code == -9 else (False, 0)
        measured = self._measured(run, reply.wall_time, reply, cgroup_peak=peak if oom else 0)
        if self._debug:
            log.debug("task %d attempt %d finished on runner pid %d: %s, exit code %d, "
                      "%s; %d process(es) it left running killed",
                      run.spec.task_id, run.spec.attempt, runner.proc.pid, reply.status,
                      reply.exit_code, _fmt_measured(measured), strays)
        if oom:
            self._replace_or_recycle(runner, replace)
            return self._oom_result(run, measured)
        outputs: dict[str, bytes] = {}
        if status is m.TaskStatus.SUCCESS:
            for name in run.spec.outputs:  # the manager judges what is missing
                data = _read_regular(str(run.sandbox / name))
                if data is not None:
                    outputs[name] = data
        messages = runner.take_messages()
        self._replace_or_recycle(runner, replace)
        return m.TaskResult(
            run.spec.task_id, run.spec.attempt, status, reply.value, reply.exit_code,
            reply.stdout, reply.stderr, outputs, "", reply.wall_time, run.gpu_ids,
            messages, measured, [],
        )

    def _replace_or_recycle(self, runner: Runner, replace: bool) -> None:
        if replace:
            runner.kill()
        else:
            self._recycle(runner)

    def _oom_result(self, run: Running, measured: dict[str, float]) -> m.TaskResult:
        """The cgroup stopped the task at its limit: it used at least that much."""
        measured["memory"] = max(measured["memory"], run.memory_limit / MB)
        return self._result(
            run, m.TaskStatus.EXHAUSTED,
            f"memory: reached the {run.memory_limit / MB:.0f} MB allocated and was killed",
            measured, ["memory"],
        )
