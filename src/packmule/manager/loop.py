"""The manager's I/O loop, in a process of its own.

:class:`~packmule.manager.Manager` starts it (``python -m packmule.manager
FD``) and talks to it over a socket pair: jobs and
commands in, outcomes, monitoring messages and log records out. The loop owns
the ZeroMQ sockets and the pure :class:`ManagerState`, feeds socket events to
the core and carries out its decisions. Keeping it out of the user's process
(as Parsl's HighThroughputExecutor keeps its interchange) means it never
competes with the user's threads, Parsl's DataFlowKernel among them, for
that process's interpreter lock.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import itertools
import json
import logging
import math
import mmap
import os
import pickle
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import zmq
import zmq.utils.z85

from .._version import __version__
from ..core.categories import CategoryConfig
from ..core.scheduler import MAX_REQUEUES, Assignment, ManagerState
from ..core.states import Verdict
from ..envpack import Pack
from ..errors import (
    FileTransferError,
    PackError,
    ProtocolError,
    ResourceExhausted,
    TaskCancelled,
    TaskCrashed,
    TaskError,
    TaskTimeout,
    WorkerLost,
)
from ..protocol import messages as m
from ..protocol.security import derive_keys
from ..resources import Resources
from ..task import File
from .files import cache_name

log = logging.getLogger("packmule.manager")

#: Delays after a closed connection at which every worker is probed.
_PROBE_DELAYS = (0.02, 0.2, 1.0)
#: Environment packs travel in pieces of PACK_CHUNK bytes, at most PACK_WINDOW
#: of them unacknowledged per transfer: a piece takes ~20 ms on loopback with
#: CURVE, so heartbeats and tasks are never queued behind a whole pack (a
#: 1 GB message would hold the connection for seconds), and a window of
#: 16 MiB keeps a 1 Gbit/s link with 100 ms round trips busy.
PACK_CHUNK = 4 << 20
PACK_WINDOW = 16 << 20


@dataclass
class WorkerConn:
    """The loop's view of a connected worker (the core holds its accounting)."""

    identity: bytes
    hostname: str
    pid: int
    resources: Resources
    cached: set[str] = field(default_factory=set)
    #: Digests of the environment packs it has (or is being sent).
    packs: set[str] = field(default_factory=set)
    #: Packs on their way to it, by digest.
    sending: dict[str, _Transfer] = field(default_factory=dict)


@dataclass
class _Transfer:
    """A pack being sent to one worker."""

    id: int
    pack: Pack
    data: memoryview
    sent: int = 0


@dataclass(frozen=True)
class ManagerStats:
    """A snapshot of the manager.

    ``tasks`` counts unfinished tasks by state (waiting, running); finished ones
    are counted in ``tasks_succeeded``, ``tasks_failed`` and ``tasks_cancelled``.
    """

    workers: int
    tasks: dict[str, int]
    committed: Resources
    total: Resources
    workers_joined: int
    workers_lost: int
    tasks_submitted: int
    tasks_succeeded: int
    tasks_failed: int
    tasks_cancelled: int
    files_sent: int
    #: Attempts sent to a busy worker ahead of time (see ``prefetch``).
    tasks_prefetched: int
    #: Environment packs sent to workers (a worker that has one cached is not sent it).
    packs_sent: int


@dataclass
class Job:
    """What the loop knows of a task: enough to dispatch it and report how it ended."""

    id: int
    kind: str  # "python" or "shell"
    payload: bytes
    command: str
    resources: Resources
    category: str
    priority: float
    max_retries: int | None
    env: dict[str, str]
    input_files: tuple[File, ...]
    output_files: tuple[File, ...]
    timeout: float
    pack: Pack | None
    label: str  # for log messages: the function's name, or the command
    #: What the manager's Task gets when it finishes (attempts, worker, measured...).
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """The loop's settings, sent by the Manager as the first message."""

    host: str
    port: int
    secret: bytes
    run_dir: Path
    heartbeat_interval: float
    lease: float
    shutdown_workers: bool
    validate: bool
    default_category: CategoryConfig | None
    prefetch: bool
    log_level: int
    forward_messages: bool


class Outbox:
    """Messages to the Manager, framed as ``Connection.send`` frames them, and
    written without ever blocking the loop: a Manager thread may be sending to
    the loop at that very moment (a future's callback submitting a task), and
    the loop must go on reading, and heartbeating workers, meanwhile."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=os.dup(fd))
        self._buf = bytearray()
        self.broken = False  # the Manager's process is gone

    def put(self, *msg: Any) -> None:
        try:
            data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # say so rather than lose the message silently
            data = pickle.dumps(("log", logging.ERROR, "packmule.manager",
                                 f"a message to the Manager could not be pickled: {exc}"))
        self._buf += struct.pack("!i", len(data))
        self._buf += data
        self.flush()

    def flush(self) -> None:
        while self._buf and not self.broken:
            try:
                n = self._sock.send(self._buf, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                self.broken = True
                return
            del self._buf[:n]

    @property
    def pending(self) -> bool:
        return bool(self._buf) and not self.broken

    def close(self, timeout: float) -> None:
        """Deliver what is left (waiting at most ``timeout`` seconds), then close."""
        with contextlib.suppress(OSError):
            self._sock.settimeout(timeout)
            if self._buf and not self.broken:
                self._sock.sendall(self._buf)
        self._sock.close()


class _Forward(logging.Handler):
    """Log records go to the Manager's process, to be logged there."""

    def __init__(self, outbox: Outbox) -> None:
        super().__init__()
        self.outbox = outbox

    def emit(self, record: logging.LogRecord) -> None:
        self.outbox.put("log", record.levelno, record.name, self.format(record))


class Loop:
    """The manager's sockets and core, driven by one poll loop."""

    def __init__(self, conn: Connection, outbox: Outbox, cfg: Config) -> None:
        self.conn = conn
        self.outbox = outbox
        self.cfg = cfg
        self.heartbeat_interval = cfg.heartbeat_interval
        self.lease = cfg.lease
        self.shutdown_workers = cfg.shutdown_workers
        self._core = ManagerState(validate=cfg.validate, default_category=cfg.default_category,
                                  prefetch=cfg.prefetch)
        #: One JSON object per finished attempt: what it asked for, got and used.
        self.task_log = cfg.run_dir / "tasks.jsonl"
        self._task_log_failed = False
        self._tasks: dict[int, Job] = {}
        #: Tasks cancelled before their job arrived (it was still in the pack builder).
        self._cancelled_early: set[int] = set()
        self._conns: dict[str, WorkerConn] = {}
        self._counters = collections.Counter[str]()
        self._handshake_failures = 0
        self._transfer_ids = itertools.count(1)
        self._stopping = False

        keys = derive_keys(cfg.secret)
        self._client_public = keys.client_public
        self._ctx = zmq.Context()
        self._zap = self._ctx.socket(zmq.REP)
        self._zap.bind("inproc://zeromq.zap.01")
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.curve_server = True
        self._router.curve_secretkey = keys.server_secret
        self._router.curve_publickey = keys.server_public
        self._router.zap_domain = b"packmule"
        self._router.router_mandatory = True
        self._router.sndhwm = 0
        self._router.rcvhwm = 0
        self._router.linger = 0
        self._monitor = self._router.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        )
        host, port = cfg.host, cfg.port
        try:
            if port:
                self._router.bind(f"tcp://{host}:{port}")
                self.port = port
            else:
                self.port = self._router.bind_to_random_port(f"tcp://{host}")
        except (zmq.ZMQError, zmq.ZMQBindError) as exc:
            self._close_sockets()
            why = getattr(exc, "strerror", None) or exc
            raise OSError(
                getattr(exc, "errno", None) or errno.EADDRINUSE,
                f"packmule manager cannot listen on {host}:{port}: {why}. "
                "Choose another port, or port=0 for any free one.",
            ) from None
        self._task_log = self.task_log.open("a", buffering=1 << 16)

    # ---------------------------------------------------------------- to the Manager
    def _tell(self, *msg: Any) -> None:
        self.outbox.put(*msg)
        if self.outbox.broken:
            self._stopping = True  # the Manager's process is gone

    # ================================================================ the I/O loop
    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._zap, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        poller.register(self.conn.fileno(), zmq.POLLIN)
        next_beat = time.monotonic() + self.heartbeat_interval
        probes: list[float] = []
        last_flush = time.monotonic()
        try:
            while not self._stopping:
                now = time.monotonic()
                wake_at = min([next_beat, *probes])
                timeout = max(0, int((wake_at - now) * 1000))
                poller.register(self.conn.fileno(), zmq.POLLIN | (
                    zmq.POLLOUT if self.outbox.pending else 0))
                events = dict(poller.poll(timeout))
                self.outbox.flush()
                now = time.monotonic()
                if events.get(self.conn.fileno(), 0) & zmq.POLLIN and not self._commands(now):
                    break
                if self._router in events:
                    self._receive_all(now)
                if self._zap in events:
                    self._answer_zap()
                if self._monitor in events and self._monitor_events():
                    probes = [now + d for d in _PROBE_DELAYS]
                if probes and now >= probes[0]:
                    probes.pop(0)
                    self._probe_workers(now)
                if now >= next_beat:
                    next_beat = now + self.heartbeat_interval
                    self._heartbeat(now)
                self._schedule(now)
                if not events or now - last_flush > 1.0:  # idle, or a second went by
                    self._task_log.flush()
                    last_flush = now
        except Exception:
            log.exception("packmule manager loop crashed; failing all unfinished tasks")
        finally:
            self._stop(time.monotonic())

    def _commands(self, now: float) -> bool:
        """Everything the Manager has sent: jobs, cancels, calls. False: stop."""
        try:
            while self.conn.poll(0):
                kind, *args = self.conn.recv()
                if kind == "submit":
                    self._submit(Job(*args[0]), now)
                elif kind == "cancel":
                    self._cancel(args[0], now)
                elif kind == "call":
                    self._answer(*args)
                elif kind == "stop":
                    return False
        except (EOFError, OSError):
            return False  # the Manager's process is gone
        return not self._stopping

    def _submit(self, job: Job, now: float) -> None:
        if job.id in self._cancelled_early:
            self._cancelled_early.discard(job.id)
            self._counters["tasks_cancelled"] += 1
            return
        self._tasks[job.id] = job
        self._core.submit(job.id, job.resources, now, job.priority, job.max_retries,
                          job.category)
        self._counters["tasks_submitted"] += 1

    def _cancel(self, tid: int, now: float) -> None:
        job = self._tasks.pop(tid, None)
        if job is None:
            self._cancelled_early.add(tid)  # its job may still be on its way
            return
        running = self._core.cancel(tid, now)
        self._core.forget(tid)
        if running is not None:
            self._send(running.worker, m.Kill(running.task_id, running.attempt))
        self._counters["tasks_cancelled"] += 1

    def _answer(self, call_id: int, name: str, args: tuple[Any, ...]) -> None:
        try:
            if name == "stats":
                value: Any = self._stats()
            elif name == "category_stats":
                value = {n: c.stats() for n, c in self._core.categories.items()}
            elif name == "configure_category":
                self._core.configure_category(*args)
                value = None
            else:
                raise ValueError(f"unknown call {name!r}")
        except Exception as exc:
            self._tell("reply", call_id, False, exc)
        else:
            self._tell("reply", call_id, True, value)

    def _stats(self) -> ManagerStats:
        committed, total = self._core.totals()
        c = self._counters
        return ManagerStats(
            workers=len(self._core.workers),
            tasks={k: v for k, v in self._core.counts().items() if k in ("waiting", "running")},
            committed=committed,
            total=total,
            workers_joined=c["workers_joined"],
            workers_lost=c["workers_lost"],
            tasks_submitted=c["tasks_submitted"],
            tasks_succeeded=c["tasks_succeeded"],
            tasks_failed=c["tasks_failed"],
            tasks_cancelled=c["tasks_cancelled"],
            files_sent=c["files_sent"],
            tasks_prefetched=c["tasks_prefetched"],
            packs_sent=c["packs_sent"],
        )

    def _largest_changed(self) -> None:
        self._tell("largest", self._core.largest_worker())

    def _send(self, wid: str, msg: m.Message) -> bool:
        conn = self._conns.get(wid)
        if conn is None:
            return False
        try:
            self._router.send_multipart([conn.identity, m.encode(msg)])
            return True
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                self._lose_worker(wid, time.monotonic(), "connection closed")
                return False
            raise

    def _heartbeat(self, now: float) -> None:
        for wid in self._core.expired(now, self.lease):
            self._lose_worker(wid, now, f"no message for {self.lease:.0f} s (lease expired)")
        beat = m.ManagerHeartbeat()
        for wid in list(self._conns):
            self._send(wid, beat)

    def _probe_workers(self, now: float) -> None:
        beat = m.ManagerHeartbeat()
        for wid in list(self._conns):
            self._send(wid, beat)

    # ---------------------------------------------------------------- receiving
    def _receive_all(self, now: float) -> None:
        for _ in range(1000):
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            if len(frames) != 2:
                log.warning("dropped a malformed message (%d frames)", len(frames))
                continue
            identity, data = frames
            wid = identity.hex()
            try:
                msg = m.decode(data)
            except ProtocolError as exc:
                versions = m.hello_versions(data) if wid not in self._conns else None
                if versions is not None and versions[0] != m.PROTOCOL_VERSION:
                    self._refuse_version(identity, wid, *versions)
                    continue
                log.warning("worker %s sent a malformed message (%s); disconnecting it", wid, exc)
                self._reject(identity, f"malformed message: {exc}")
                self._lose_worker(wid, now, "protocol error")
                continue
            if wid not in self._conns:
                self._hello(identity, wid, msg, now)
                continue
            self._core.seen(wid, now)
            if isinstance(msg, m.Results):
                for r in msg.results:
                    try:
                        self._result(wid, r, now)
                    except Exception as exc:
                        log.error("worker %s sent a result this manager cannot use (%s: %s); "
                                  "disconnecting it", wid, type(exc).__name__, exc)
                        self._reject(identity, f"bad result: {exc}")
                        self._lose_worker(wid, now, "sent a bad result")
                        break
            elif isinstance(msg, m.PackProgress):
                self._pump(wid, self._conns[wid], msg.digest, msg.transfer, msg.received)
            elif isinstance(msg, m.PackState):
                conn = self._conns[wid]
                sending = conn.sending.get(msg.digest)
                if sending is not None and sending.id != msg.transfer:
                    continue  # about an earlier sending, or from before this one began
                conn.sending.pop(msg.digest, None)
                if msg.ok or not msg.resend:  # a pack it cannot use: its tasks fail there
                    conn.packs.add(msg.digest)
                else:
                    conn.packs.discard(msg.digest)  # sent again with its next task
                if not msg.ok:
                    log.warning("worker %s (%s) cannot use pack %s: %s", wid, conn.hostname,
                                msg.digest[:12], msg.message)
            elif isinstance(msg, m.Goodbye):
                self._lose_worker(wid, now, f"worker left: {msg.reason}")

    def _reject(self, identity: bytes, reason: str) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self._router.send_multipart([identity, m.encode(m.Reject(reason))])

    def _refuse_version(self, identity: bytes, who: str, protocol: int, version: str) -> None:
        reason = (
            f"protocol version mismatch: this manager (packmule {__version__}) speaks "
            f"protocol {m.PROTOCOL_VERSION}, the worker (packmule {version}) speaks "
            f"{protocol}. Install packmule=={__version__} where the worker runs."
        )
        log.error("refused worker %s: %s", who, reason)
        self._reject(identity, reason)

    def _hello(self, identity: bytes, wid: str, msg: m.Message, now: float) -> None:
        if not isinstance(msg, m.Hello):
            # Most likely a worker this manager declared lost (silent past its lease)
            # that woke up: its attempts were requeued, so make it start afresh.
            log.info("worker %s is not connected (declared lost?); told it to reconnect", wid)
            self._reject(identity, "this manager declared the worker lost; reconnect")
            return
        if msg.protocol != m.PROTOCOL_VERSION:
            self._refuse_version(identity, f"{msg.hostname} (pid {msg.pid})", msg.protocol,
                                 msg.version)
            return
        try:
            size = Resources(**msg.resources)
            if not size.is_complete:
                raise ValueError("incomplete")
        except (TypeError, ValueError) as exc:
            reason = f"bad resource report {msg.resources!r}: {exc}"
            log.error("refused worker %s: %s", msg.hostname, reason)
            self._reject(identity, reason)
            return
        self._conns[wid] = WorkerConn(identity, msg.hostname, msg.pid, size,
                                      packs=set(msg.packs))
        self._core.add_worker(wid, size, now)
        self._largest_changed()
        self._counters["workers_joined"] += 1
        log.info("worker %s joined from %s (pid %d) with %s", wid, msg.hostname, msg.pid, size)
        self._send(
            wid, m.Welcome(m.PROTOCOL_VERSION, __version__, self.heartbeat_interval, self.lease)
        )

    def _lose_worker(self, wid: str, now: float, why: str) -> None:
        conn = self._conns.pop(wid, None)
        if conn is None:
            return
        self._counters["workers_lost"] += 1
        outcomes = self._core.remove_worker(wid, now, why)
        self._largest_changed()
        log.log(
            logging.WARNING if outcomes else logging.INFO,
            "worker %s (%s pid %d) gone: %s; %d task(s) back in the queue",
            wid, conn.hostname, conn.pid, why, len(outcomes),
        )
        for tid, verdict in outcomes:
            if verdict is Verdict.FAILED:
                self._finish_error(
                    tid,
                    WorkerLost(
                        f"task {tid} lost its worker {MAX_REQUEUES + 1} times (last: "
                        f"{conn.hostname}: {why}). The task may be killing its workers "
                        "(memory, segfault); check that it runs alone, or give it more resources.",
                        tid,
                    ),
                )

    def _monitor_events(self) -> bool:
        """Drain monitor events; True if a connection closed (probe workers soon)."""
        closed = False
        while True:
            try:
                frames = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return closed
            event = int.from_bytes(frames[0][:2], "little")
            if event == zmq.EVENT_DISCONNECTED:
                closed = True
            elif event & (
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            ):
                self._handshake_failures += 1
                if self._handshake_failures == 1:
                    log.error(
                        "a peer failed the encrypted handshake on port %d: most likely a worker "
                        "with the wrong password. Give workers this manager's password file "
                        "(--password-file) or $PACKMULE_PASSWORD. (Logged once.)",
                        self.port,
                    )

    def _answer_zap(self) -> None:
        """ZAP: admit only CURVE clients holding the key derived from the shared secret."""
        frames = self._zap.recv_multipart()
        version, request_id = frames[0], frames[1]
        mechanism = frames[5] if len(frames) > 5 else b""
        key = frames[6] if len(frames) > 6 else b""
        ok = mechanism == b"CURVE" and key == zmq.utils.z85.decode(self._client_public)
        status = (b"200", b"OK") if ok else (b"400", b"wrong key: the password differs")
        self._zap.send_multipart([version, request_id, status[0], status[1], b"", b""])
        if not ok:
            self._handshake_failures += 1
            if self._handshake_failures == 1:
                log.error("refused a worker whose key does not match this manager's password")

    # ---------------------------------------------------------------- results
    def _result(self, wid: str, r: m.TaskResult, now: float) -> None:
        S = m.TaskStatus
        if r.status is S.FORSAKEN:
            verdict = self._core.forsake(r.task_id, r.attempt, now, r.message, worker=wid)
            if verdict is Verdict.FAILED:
                self._finish_error(r.task_id, WorkerLost(
                    f"task {r.task_id} could not be run: its workers handed it back "
                    f"{MAX_REQUEUES + 1} times (last: {r.message})", r.task_id))
            return
        if r.status is S.PACK_ERROR and self._core.current(r.task_id, r.attempt, wid):
            # That worker cannot use the task's pack; another one may.
            t = self._core.tasks[r.task_id]
            if any(w != wid and w not in t.avoid for w in self._conns):
                verdict = self._core.forsake(r.task_id, r.attempt, now, r.message, worker=wid,
                                             avoid=True)
                if verdict is not Verdict.FAILED:
                    return
            self._core.cancel(r.task_id, now)
            self._finish_error(r.task_id, PackError(f"task {r.task_id}: {r.message}"))
            return
        measured = _measured_resources(r)
        cores = r.measured.get("cores")
        if r.status is S.EXHAUSTED:
            verdict = self._core.exhausted(r.task_id, r.attempt, r.exceeded, now, worker=wid,
                                           measured=measured, wall_time=r.wall_time, cores=cores)
        else:
            ran = r.status in (S.SUCCESS, S.EXCEPTION)
            verdict = self._core.complete(r.task_id, r.attempt, r.status is S.SUCCESS, now,
                                          worker=wid, measured=measured if ran else None,
                                          wall_time=r.wall_time, cores=cores)
        if verdict is not Verdict.STALE:
            self._log_attempt(wid, r)
        if verdict is Verdict.STALE:
            log.debug("discarded a stale result of task %d attempt %d", r.task_id, r.attempt)
            return
        if r.messages and self.cfg.forward_messages:
            self._tell("messages", r.messages)
        task = self._tasks.get(r.task_id)
        if task is None:
            return
        conn = self._conns.get(wid)
        task.attrs.update(
            attempts=r.attempt, worker=wid, hostname=conn.hostname if conn else None,
            gpu_ids=list(r.gpu_ids), exit_code=r.exit_code, stdout=r.stdout, stderr=r.stderr,
            wall_time=r.wall_time, measured=dict(r.measured))
        if verdict is Verdict.RETRY:
            log.info("task %d attempt %d failed (%s); retrying",
                     r.task_id, r.attempt, r.status.value)
            return
        if verdict is Verdict.DONE:
            try:
                self._write_outputs(task, r)
            except FileTransferError as exc:
                self._finish_error(r.task_id, exc)
                return
            self._finish(r.task_id, (task.kind, r.value))
        elif r.status is m.TaskStatus.EXCEPTION:  # the user's own: unpickled by the Manager
            self._deliver(r.task_id, False, ("exception", r.value))
        else:
            self._finish_error(r.task_id, self._failure(task, r))

    def _write_outputs(self, task: Job, r: m.TaskResult) -> None:
        for f in task.output_files:
            data = r.outputs.get(f.sandbox_name)
            if data is None and f.optional:
                continue
            if data is None:
                raise FileTransferError(
                    f"task {task.id} did not produce output file {f.sandbox_name!r}", task.id
                )
            try:
                Path(f.local_path).write_bytes(data)
            except OSError as exc:
                raise FileTransferError(
                    f"cannot write output file {f.local_path} of task {task.id}: {exc}", task.id
                ) from None

    def _failure(self, task: Job, r: m.TaskResult) -> BaseException:
        S = m.TaskStatus
        tid = task.id
        if r.status is S.TIMEOUT:
            return TaskTimeout(
                f"task {tid} ran past its {task.timeout:g} s limit and was killed "
                f"(attempt {r.attempt}). Raise timeout= if it needs longer.",
                tid,
            )
        if r.status is S.CRASHED:
            return TaskCrashed(f"task {tid}: {r.message}", tid)
        if r.status is S.EXHAUSTED:
            resource = r.exceeded[0] if r.exceeded else "memory"
            limit = float(getattr(task.attrs.get("allocation"), resource, 0) or 0)
            measured = r.measured.get(resource, 0.0)
            explicit = getattr(task.resources, resource) is not None
            advice = (f"ask for more (resources={{'{resource}': ...}}), or leave {resource} "
                      "out to let packmule size it" if explicit else
                      "it needs more than the largest worker has")
            return ResourceExhausted(
                f"task {tid} needed more {resource} than its "
                f"{'explicit limit' if explicit else 'allocation'} of {limit:.0f} MB and was "
                f"killed (attempt {r.attempt}, {measured:.0f} MB when stopped); {advice}",
                tid, resource, measured, limit,
            )
        if r.status is S.SETUP_ERROR:
            return FileTransferError(f"task {tid}: {r.message}", tid)
        return TaskError(f"task {tid} failed: {r.message}", tid)

    def _finish(self, tid: int, value: tuple[str, Any]) -> None:
        self._deliver(tid, True, value)

    def _finish_error(self, tid: int, exc: BaseException) -> None:
        self._deliver(tid, False, ("error", exc))

    def _deliver(self, tid: int, ok: bool, value: tuple[str, Any]) -> None:
        """Send a finished task's outcome to the Manager."""
        job = self._tasks.pop(tid, None)
        self._core.forget(tid)
        if job is None:
            return
        self._counters["tasks_succeeded" if ok else "tasks_failed"] += 1
        kind, data = value
        if kind == "error":
            try:
                pickle.dumps(data)
            except Exception:  # an exception that cannot travel: keep its message
                data = TaskError(f"{type(data).__name__}: {data}", tid)
        self._tell("done", tid, ok, kind, data, job.attrs)

    def _log_attempt(self, wid: str, r: m.TaskResult) -> None:
        task = self._tasks.get(r.task_id)
        conn = self._conns.get(wid)
        record = {
            "task": r.task_id, "attempt": r.attempt, "status": r.status.value,
            "category": task.category if task else None,
            "requested": task.resources.as_dict() if task else None,
            "allocated": task.attrs["allocation"].as_dict()
            if task and "allocation" in task.attrs else None,
            "measured": r.measured, "exceeded": r.exceeded,
            "worker": wid, "host": conn.hostname if conn else None, "time": time.time(),
        }
        try:
            self._task_log.write(json.dumps(record) + "\n")
        except (OSError, ValueError) as exc:
            if not self._task_log_failed:
                log.error("cannot write the task log %s: %s (logged once)", self.task_log, exc)
            self._task_log_failed = True

    def _schedule(self, now: float) -> None:
        assignments = self._core.schedule(now)
        for note in self._core.notices:
            task = self._tasks.get(note.task_id)
            log.warning(
                "task %d (%s) asks for %s but the largest connected worker has %s; it waits "
                "until a worker that large connects",
                note.task_id, task.label if task else "?", note.request, note.largest,
            )
        self._core.notices.clear()
        if not assignments:
            return
        by_worker: dict[str, list[m.TaskSpec]] = collections.defaultdict(list)
        for a in assignments:
            if a.worker not in self._conns:
                continue  # lost during this pass: the core has requeued the task
            spec = self._spec(a, now)
            if a.prefetched:
                self._counters["tasks_prefetched"] += 1
            if spec is not None:
                by_worker[a.worker].append(spec)
        for wid, specs in by_worker.items():
            if wid in self._conns:
                self._send(wid, m.Dispatch(specs))

    def _spec(self, a: Assignment, now: float) -> m.TaskSpec | None:
        task = self._tasks[a.task_id]
        conn = self._conns[a.worker]
        task.attrs.update(allocation=a.allocation, start_time=time.time())
        inputs = []
        if task.pack is not None and task.pack.digest not in conn.packs:
            try:
                if not self._send_pack(a.worker, conn, task.pack):
                    return None  # the worker is gone; its tasks were requeued
            except OSError as exc:
                self._core.cancel(a.task_id, now)
                self._finish_error(a.task_id, PackError(
                    f"cannot send the environment pack {task.pack.path} of task {a.task_id}: "
                    f"{exc}. Delete it (and its .json) from the pack cache to have it rebuilt"))
                return None
        try:
            for f in task.input_files:
                if f.cache:
                    name = cache_name(f.local_path)
                    if name not in conn.cached:
                        data = Path(f.local_path).read_bytes()
                        if not self._send(a.worker, m.PutFile(name, data)):
                            return None  # the worker is gone; its tasks were requeued
                        self._counters["files_sent"] += 1
                        conn.cached.add(name)
                    inputs.append(m.InputFile(f.sandbox_name, name, b""))
                else:
                    inputs.append(m.InputFile(f.sandbox_name, "", Path(f.local_path).read_bytes()))
                    self._counters["files_sent"] += 1
        except OSError as exc:
            self._core.cancel(a.task_id, now)
            self._finish_error(
                a.task_id,
                FileTransferError(
                    f"cannot read input file of task {a.task_id}: {exc}; it must stay readable "
                    "until the task has started",
                    a.task_id,
                ),
            )
            return None
        alloc = a.allocation.filled().as_dict()
        return m.TaskSpec(
            task_id=a.task_id,
            attempt=a.attempt,
            kind=task.kind,
            payload=task.payload,
            command=task.command,
            allocation={k: int(v or 0) for k, v in alloc.items()},
            env=task.env,
            inputs=inputs,
            outputs=[f.sandbox_name for f in task.output_files],
            timeout=task.timeout,
            pack=task.pack.digest if task.pack is not None else "",
        )

    def _send_pack(self, wid: str, conn: WorkerConn, pack: Pack) -> bool:
        """Start sending a pack to a worker (once), mapped from its file so that
        no copy is held; the worker's progress reports pace the rest."""
        with open(pack.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != pack.size or not size:
                raise OSError(f"it has {size} bytes, {pack.size} were built")
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        transfer = next(self._transfer_ids)
        conn.sending[pack.digest] = _Transfer(transfer, pack, memoryview(data))
        conn.packs.add(pack.digest)
        self._counters["packs_sent"] += 1
        return self._pump(wid, conn, pack.digest, transfer, 0)

    def _pump(self, wid: str, conn: WorkerConn, digest: str, transfer: int,
              received: int) -> bool:
        """Send the next pieces of a pack, keeping at most PACK_WINDOW bytes in
        flight: heartbeats and tasks go out between them. False: worker gone."""
        t = conn.sending.get(digest)
        if t is None or t.id != transfer:
            return True  # an answer about an earlier sending
        p = t.pack
        while t.sent < p.size and t.sent - received < PACK_WINDOW:
            chunk = t.data[t.sent:t.sent + PACK_CHUNK]
            header = m.encode(m.PutPack(p.digest, p.sha256, p.size, t.sent, t.id))
            try:
                self._router.send_multipart([conn.identity, header, chunk], copy=False)
            except zmq.ZMQError as exc:
                if exc.errno == errno.EHOSTUNREACH:
                    self._lose_worker(wid, time.monotonic(), "connection closed")
                    return False
                raise
            t.sent += len(chunk)
        if received >= p.size:
            del conn.sending[digest]
        return True

    # ---------------------------------------------------------------- shutdown
    # ---------------------------------------------------------------- shutdown
    def _stop(self, now: float) -> None:
        if self.shutdown_workers:
            for wid in list(self._conns):
                self._send(wid, m.Exit("the manager is shutting down"))
        for tid in list(self._tasks):
            self._core.cancel(tid, now)
            self._finish_error(
                tid, TaskCancelled(f"task {tid} did not finish before the manager shut down", tid)
            )
        self._close_sockets()
        self._task_log.close()
        self._tell("stopped")

    def _close_sockets(self) -> None:
        self._router.disable_monitor()
        self._monitor.close(linger=0)
        self._zap.close(linger=0)
        self._router.close(linger=2000)  # let the Exit messages reach the workers
        self._ctx.term()



def _measured_resources(r: m.TaskResult) -> Resources | None:
    """What an attempt used, as whole units (cores rounded by the category's rule later)."""
    if not r.measured:
        return None
    return Resources(
        cores=math.ceil(r.measured.get("cores", 0.0)),
        memory=math.ceil(r.measured.get("memory", 0.0)),
        disk=math.ceil(r.measured.get("disk", 0.0)),
        gpus=len(r.gpu_ids),
    )



def main(argv: list[str] | None = None) -> int:
    """``python -m packmule.manager FD``: serve the Manager on socket FD."""
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the Manager's to handle
    conn = Connection(socket.socket(fileno=int(argv[0])).detach())
    outbox = Outbox(conn.fileno())
    cfg: Config = conn.recv()
    logger = logging.getLogger("packmule")
    logger.setLevel(cfg.log_level)
    logger.addHandler(_Forward(outbox))
    logger.propagate = False
    try:
        loop = Loop(conn, outbox, cfg)
    except OSError as exc:
        outbox.put("error", exc.errno or errno.EADDRINUSE, str(exc))
        outbox.close(timeout=10)
        return 1
    outbox.put("ready", loop.port)
    try:
        loop.run()
    finally:
        outbox.close(timeout=30)
    return 0
