"""The Manager: the public API and the I/O loop around the pure core.

One background thread owns the ZeroMQ sockets and the :class:`ManagerState`.
Callers talk to it only through a command inbox (``submit``, ``cancel``,
``stats``, ``shutdown``), so the core is never touched by two threads. The
loop feeds socket events to the core and carries out its decisions.
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
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.utils.z85

from .._version import __version__
from ..core.categories import STEADY_N, AllocationMode, CategoryConfig
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
from ..protocol.security import derive_keys, load_secret, write_new_password_file
from ..resources import Resources
from ..serialize import loads, loads_exception
from ..task import CommandResult, Task
from .files import cache_name
from .packs import PackBuilder

log = logging.getLogger("packmule.manager")

#: Seconds between heartbeats in each direction. Short enough that a hung
#: worker is noticed within a lease; cheap (one small message per worker).
HEARTBEAT_INTERVAL = 5.0
#: A worker not heard from for this long is declared lost and its tasks are
#: requeued (six missed heartbeats). A worker whose process dies is noticed at
#: once instead, through its closed connection.
LEASE = 30.0
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
    """The shell's view of a connected worker (the core holds its accounting)."""

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


class Manager:
    """Queue tasks and run them on ``packmule worker`` daemons.

    ``port=0`` picks a free port (see :attr:`port`). The secret comes from
    ``password_file``, else ``$PACKMULE_PASSWORD``; with neither, a fresh one
    is written to ``<run_dir>/password`` (mode 0600) for workers to use
    (:attr:`password_file`). ``host`` is the interface to listen on:
    loopback by default, ``"0.0.0.0"`` to accept workers on other machines.
    ``message_sink`` receives the monitoring messages tasks leave in
    ``$PACKMULE_RADIO_DIR`` (the Parsl executor's monitoring radio).
    ``default_category`` is the allocation policy of categories not
    configured with :meth:`configure_category` (default: FIXED, nothing
    learned). Every finished attempt is logged to ``run_dir/tasks.jsonl``.
    ``prefetch``: send short tasks (typically under 0.1 s in their category)
    to busy workers ahead of time, to start the moment room frees there.
    ``pack_cache`` is where environment packs are built (default
    ``$XDG_CACHE_HOME/packmule/packs``).
    """

    def __init__(
        self,
        port: int = 0,
        password_file: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        run_dir: str | os.PathLike[str] | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        lease: float = LEASE,
        shutdown_workers: bool = True,
        validate: bool = False,
        message_sink: Callable[[list[bytes]], None] | None = None,
        default_category: CategoryConfig | None = None,
        prefetch: bool = True,
        pack_cache: str | os.PathLike[str] | None = None,
    ) -> None:
        if heartbeat_interval <= 0 or lease < 2 * heartbeat_interval:
            raise ValueError(
                f"need heartbeat_interval > 0 and lease >= 2 x interval, got "
                f"{heartbeat_interval} and {lease}"
            )
        self.run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="packmule-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        secret = load_secret(password_file)
        if secret is None:
            password_file = self.run_dir / "password"
            secret = write_new_password_file(Path(password_file))
        self.password_file: Path | None = Path(password_file) if password_file else None
        self._secret = secret
        self.heartbeat_interval = heartbeat_interval
        self.lease = lease
        self.shutdown_workers = shutdown_workers
        self.message_sink = message_sink
        self.pack_cache = Path(pack_cache) if pack_cache is not None else None
        self._packer: PackBuilder | None = None
        #: Element-wise largest connected worker (updated as workers come and go).
        self.largest_worker: Resources = Resources(0, 0, 0, 0)
        self._core = ManagerState(validate=validate, default_category=default_category,
                                  prefetch=prefetch)
        #: One JSON object per finished attempt: what it asked for, got and used.
        self.task_log = self.run_dir / "tasks.jsonl"
        self._task_log_failed = False
        self._tasks: dict[int, Task] = {}
        self._payloads: dict[int, bytes] = {}
        self._future_ids: dict[Future[Any], int] = {}
        self._conns: dict[str, WorkerConn] = {}
        self._ids = itertools.count(1)
        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()
        # Tasks submitted and not yet finished: what wait() and as_completed() look at.
        self._unfinished: dict[int, Task] = {}
        self._unfinished_cv = threading.Condition()
        self._counters = collections.Counter[str]()
        self._closed = False
        self._handshake_failures = 0

        keys = derive_keys(secret)
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
        try:
            if port:
                self._router.bind(f"tcp://{host}:{port}")
                self.port = port
            else:
                self.port = self._router.bind_to_random_port(f"tcp://{host}")
        except zmq.ZMQError as exc:
            self._close_sockets()
            raise OSError(
                exc.errno,
                f"packmule manager cannot listen on {host}:{port}: {exc.strerror}. "
                "Choose another port, or port=0 for any free one.",
            ) from None
        self.host = host
        self._task_log = self.task_log.open("a", buffering=1 << 16)
        self._wake_r, self._wake_w = os.pipe()
        self._transfer_ids = itertools.count(1)
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._post_lock = threading.Lock()
        self._deliveries: queue.SimpleQueue[tuple[Task, bool, Any] | None] = queue.SimpleQueue()
        self._deliverer = threading.Thread(target=self._deliver_loop, name="packmule-results",
                                           daemon=True)
        self._deliverer.start()
        self._thread = threading.Thread(target=self._run, name="packmule-manager", daemon=True)
        self._thread.start()
        log.info("manager listening on %s:%d (run dir %s)", host, self.port, self.run_dir)

    # ================================================================ public API
    @property
    def address(self) -> str:
        """``host:port`` for ``packmule worker``."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "*") else self.host
        return f"{host}:{self.port}"

    def submit(self, task: Task) -> Future[Any]:
        """Queue a task; returns its future (also at ``task.future``).

        Never blocks on the cluster. A call that cannot be pickled, or an
        input file that does not exist, fails the returned future at once.
        """
        if not isinstance(task, Task):
            raise TypeError(
                f"submit() takes a packmule Task or PythonTask, got {type(task).__name__}"
            )
        if task.future is not None:
            raise ValueError(f"{task!r} was already submitted; create a new task")
        fut: Future[Any] = Future()
        task.id = next(self._ids)
        task.future = fut
        task.submit_time = time.time()
        try:
            payload = task.payload()
            for f in task.input_files:
                if not os.path.isfile(f.local_path):
                    raise FileTransferError(
                        f"input file {f.local_path} of task {task.id} does not exist; "
                        "create it before submitting the task",
                        task.id,
                    )
        except Exception as exc:
            fut.set_exception(exc)
            return fut
        with self._post_lock:
            if self._closed:
                raise RuntimeError("the manager has been shut down; create a new Manager")
            with self._unfinished_cv:
                self._unfinished[task.id] = task
            fut.add_done_callback(self._on_future_done)
            if task.pack_functions:
                if self._packer is None:
                    self._packer = PackBuilder(self.pack_cache, self._pack_ready,
                                               self._pack_failed)
                self._packer.submit(task, payload)
            else:
                self._post("submit", (task, payload))
        return fut

    def _pack_ready(self, task: Task, payload: bytes, pack: Pack) -> None:
        """(Pack thread) the task's pack is built: it joins the queue."""
        task.pack = pack
        with self._post_lock:
            if not self._closed:
                self._post("submit", (task, payload))
                return
        self._pack_failed(task, TaskCancelled(
            f"task {task.id} was waiting for its pack when the manager shut down", task.id))

    def _pack_failed(self, task: Task, exc: BaseException) -> None:
        """(Pack thread) the task's pack cannot be built: the task fails with why."""
        if task.future is not None and not task.future.done():
            with contextlib.suppress(Exception):  # cancelled concurrently
                task.future.set_exception(exc)
        self._mark_finished(task)

    def _on_future_done(self, fut: Future[Any]) -> None:
        if fut.cancelled():
            self._post("cancel", fut)

    def cancel(self, task: Task | Future[Any]) -> bool:
        """Cancel a task (waiting or running). Returns False if it had already finished."""
        fut = task.future if isinstance(task, Task) else task
        return fut.cancel() if fut is not None else False

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every task submitted so far has finished; False on timeout."""
        with self._unfinished_cv:
            return self._unfinished_cv.wait_for(lambda: not self._unfinished, timeout)

    def as_completed(
        self, tasks: Iterable[Task] | None = None, timeout: float | None = None
    ) -> Iterator[Task]:
        """Yield tasks as they finish: ``tasks``, or every task unfinished right now.

        Raises TimeoutError if some are still unfinished after ``timeout`` seconds.
        """
        if tasks is None:
            with self._unfinished_cv:
                tasks = list(self._unfinished.values())
        by_future = {t.future: t for t in tasks if t.future is not None}
        try:
            for fut in futures.as_completed(by_future, timeout=timeout):
                yield by_future[fut]
        except futures.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise TimeoutError(f"tasks still unfinished after {timeout} s") from None

    def configure_category(
        self,
        name: str,
        mode: str | AllocationMode = AllocationMode.FIXED,
        *,
        max: Resources | Mapping[str, int] | None = None,
        min: Resources | Mapping[str, int] | None = None,
        first_guess: Resources | Mapping[str, int] | None = None,
        steady_n: int = STEADY_N,
    ) -> None:
        """Choose how tasks of category ``name`` get their allocations.

        ``mode``: fixed, max, min_waste, max_throughput, greedy_bucketing,
        exhaustive_bucketing or ladder (see docs/allocation.md). ``max`` and
        ``min`` are explicit limits (a task going over the max fails);
        ``first_guess`` starts learning from a known allocation. Bad values
        raise ValueError here.
        """
        config = CategoryConfig(
            mode=AllocationMode.parse(mode), max=Resources.coerce(max),
            min=Resources.coerce(min),
            first_guess=None if first_guess is None else Resources.coerce(first_guess),
            steady_n=steady_n,
        )
        self._call(lambda: self._core.configure_category(name, config))

    def category_stats(self) -> dict[str, dict[str, object]]:
        """Per category: mode, tasks seen, exhaustions, max seen, current first allocation..."""
        stats: dict[str, dict[str, object]] = self._call(
            lambda: {n: c.stats() for n, c in self._core.categories.items()})
        return stats

    def stats(self) -> ManagerStats:
        """Workers, tasks by state, and committed vs total resources, right now."""
        stats: ManagerStats = self._call(self._stats)
        return stats

    def shutdown(self, wait: bool = True) -> None:
        """Stop the manager: tell workers to exit (``shutdown_workers``), fail unfinished tasks."""
        with self._post_lock:
            if self._closed:
                return
            self._closed = True
            self._post("stop", None)
        if self._packer is not None:
            self._packer.close()  # tasks still waiting for packs are cancelled
        if wait:
            self._thread.join()

    def __enter__(self) -> Manager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def _call(self, fn: Callable[[], Any]) -> Any:
        if threading.current_thread() is self._thread:
            return fn()
        fut: Future[Any] = Future()
        if self._closed or not self._thread.is_alive():
            raise RuntimeError("the manager is not running")
        self._post("call", (fn, fut))
        return fut.result(timeout=30)

    def _post(self, kind: str, arg: Any) -> None:
        self._inbox.append((kind, arg))
        if self._wake_w >= 0:  # -1 once the loop has stopped
            with contextlib.suppress(OSError):  # a full pipe: the loop is awake already
                os.write(self._wake_w, b"x")

    # ================================================================ the I/O loop
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._zap, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        next_beat = time.monotonic() + self.heartbeat_interval
        probes: list[float] = []
        stopping = False
        last_flush = time.monotonic()
        try:
            while not stopping:
                now = time.monotonic()
                wake_at = min([next_beat, *probes])
                timeout = max(0, int((wake_at - now) * 1000))
                events = dict(poller.poll(timeout))
                now = time.monotonic()
                if self._wake_r in events:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                while self._inbox:
                    kind, arg = self._inbox.popleft()
                    if kind == "stop":
                        stopping = True
                        break
                    self._command(kind, arg, now)
                if stopping:
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

    def _command(self, kind: str, arg: Any, now: float) -> None:
        if kind == "submit":
            task, payload = arg
            if task.future.cancelled():  # while its pack was being built
                self._counters["tasks_cancelled"] += 1
                self._mark_finished(task)
                return
            self._payloads[task.id] = payload
            self._tasks[task.id] = task
            self._future_ids[task.future] = task.id
            self._core.submit(task.id, task.resources, now, task.priority, task.max_retries,
                              task.category)
            self._counters["tasks_submitted"] += 1
        elif kind == "cancel":
            tid = self._future_ids.pop(arg, None)
            if tid is None:
                return
            running = self._core.cancel(tid, now)
            task = self._tasks.pop(tid, None)
            self._payloads.pop(tid, None)
            self._core.forget(tid)
            if running is not None:
                self._send(running.worker, m.Kill(running.task_id, running.attempt))
            if task is not None:
                self._counters["tasks_cancelled"] += 1
                self._mark_finished(task)
        elif kind == "call":
            fn, fut = arg
            try:
                fut.set_result(fn())
            except Exception as exc:
                fut.set_exception(exc)

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

    # ---------------------------------------------------------------- sending
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
        self.largest_worker = self._core.largest_worker()
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
        self.largest_worker = self._core.largest_worker()
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
        if r.messages and self.message_sink is not None:
            try:
                self.message_sink(r.messages)
            except Exception:
                log.exception("delivering task %d's monitoring messages failed", r.task_id)
        task = self._tasks.get(r.task_id)
        if task is None:
            return
        conn = self._conns.get(wid)
        task.attempts = r.attempt
        task.worker = wid
        task.hostname = conn.hostname if conn else None
        task.gpu_ids = list(r.gpu_ids)
        task.exit_code = r.exit_code
        task.stdout = r.stdout.decode("utf-8", "replace")
        task.stderr = r.stderr.decode("utf-8", "replace")
        task.wall_time = r.wall_time
        task.measured = dict(r.measured)
        if verdict is Verdict.RETRY:
            log.info("task %d attempt %d failed (%s); retrying",
                     r.task_id, r.attempt, r.status.value)
            return
        if verdict is Verdict.DONE:
            try:
                value = self._success_value(task, r)
            except Exception as exc:
                self._finish_error(r.task_id, exc)
                return
            self._finish(r.task_id, value=value)
        else:
            self._finish_error(r.task_id, self._failure(task, r))

    def _success_value(self, task: Task, r: m.TaskResult) -> Any:
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
        if task.kind == "python":
            return loads(r.value)
        return CommandResult(r.exit_code, task.stdout, task.stderr)

    def _failure(self, task: Task, r: m.TaskResult) -> BaseException:
        S = m.TaskStatus
        tid = task.id
        if r.status is S.EXCEPTION:
            return loads_exception(r.value)
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
            limit = float(getattr(task.allocation, resource, 0) or 0)
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

    def _finish(self, tid: int, value: Any) -> None:
        self._deliver(tid, True, value)

    def _finish_error(self, tid: int, exc: BaseException) -> None:
        self._deliver(tid, False, exc)

    def _deliver(self, tid: int, ok: bool, value: Any) -> None:
        """Hand a finished task's outcome to the delivery thread."""
        self._payloads.pop(tid, None)
        task = self._tasks.pop(tid, None)
        self._core.forget(tid)
        if task is None or task.future is None:
            return
        self._future_ids.pop(task.future, None)
        task.finish_time = time.time()
        self._counters["tasks_succeeded" if ok else "tasks_failed"] += 1
        self._deliveries.put((task, ok, value))

    def _deliver_loop(self) -> None:
        """Resolve futures off the I/O thread: their callbacks (Parsl's DFK among
        them) then run here, while the I/O loop goes on dispatching."""
        while True:
            item = self._deliveries.get()
            if item is None:
                return
            task, ok, value = item
            fut = task.future
            if fut is not None and not fut.done():
                with contextlib.suppress(Exception):  # cancelled concurrently
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
            self._mark_finished(task)

    def _log_attempt(self, wid: str, r: m.TaskResult) -> None:
        task = self._tasks.get(r.task_id)
        conn = self._conns.get(wid)
        record = {
            "task": r.task_id, "attempt": r.attempt, "status": r.status.value,
            "category": task.category if task else None,
            "requested": task.resources.as_dict() if task else None,
            "allocated": task.allocation.as_dict() if task and task.allocation else None,
            "measured": r.measured, "exceeded": r.exceeded,
            "worker": wid, "host": conn.hostname if conn else None, "time": time.time(),
        }
        try:
            self._task_log.write(json.dumps(record) + "\n")
        except (OSError, ValueError) as exc:
            if not self._task_log_failed:
                log.error("cannot write the task log %s: %s (logged once)", self.task_log, exc)
            self._task_log_failed = True

    def _mark_finished(self, task: Task) -> None:
        with self._unfinished_cv:
            self._unfinished.pop(task.id or 0, None)
            if not self._unfinished:
                self._unfinished_cv.notify_all()

    # ---------------------------------------------------------------- dispatch
    def _schedule(self, now: float) -> None:
        assignments = self._core.schedule(now)
        for note in self._core.notices:
            task = self._tasks.get(note.task_id)
            log.warning(
                "task %d (%s) asks for %s but the largest connected worker has %s; it waits "
                "until a worker that large connects",
                note.task_id, task.describe() if task else "?", note.request, note.largest,
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
        task.allocation = a.allocation
        task.start_time = time.time()
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
            payload=self._payloads[a.task_id],
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
    def _stop(self, now: float) -> None:
        self._closed = True
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
        with self._post_lock:
            self._closed = True
            wake_r, wake_w = self._wake_r, self._wake_w
            self._wake_r = self._wake_w = -1
            left = list(self._inbox)
            self._inbox.clear()
        for fd in (wake_r, wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._deliveries.put(None)  # after every outcome queued above
        if threading.current_thread() is not self._deliverer:
            self._deliverer.join()
        for kind, arg in left:  # posted while the loop was stopping
            if kind == "submit":
                task = arg[0]
                with contextlib.suppress(Exception):
                    task.future.set_exception(TaskCancelled(
                        f"task {task.id} was submitted while the manager shut down", task.id))
                self._mark_finished(task)
            elif kind == "call":
                with contextlib.suppress(Exception):
                    arg[1].set_exception(RuntimeError("the manager has shut down"))

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
