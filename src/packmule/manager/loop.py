"""The manager's loop, in a process of its own.

:class:`~packmule.manager.Manager` starts it (``python -m packmule.manager
FD``) and talks to it over a socket pair (:mod:`.ipc`): jobs and commands
in, outcomes, monitoring messages and log records out. The loop owns the
worker connections (:mod:`.connections`), the transfers to workers
(:mod:`.transfers`) and the pure :class:`ManagerState`; it feeds socket
events to the core and carries out its decisions. Keeping it out of the
user's process (as Parsl's HighThroughputExecutor keeps its interchange)
means it never competes with the user's threads, Parsl's DataFlowKernel
among them, for that process's interpreter lock.

It is event-driven: it schedules only when something happened that may let
a task start, at most :data:`SCHEDULE_LIMIT` assignments per turn, so that
results and heartbeats are read in between; and it judges leases only after
reading everything that arrived, so a worker is never lost because the loop
was busy.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import faulthandler
import logging
import logging.handlers
import math
import os
import pickle
import signal
import socket
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import zmq

from .._version import __version__
from ..core.alloc import AllocationMode
from ..core.scheduler import MAX_REQUEUES, Assignment, ManagerState
from ..core.states import Failure, Outcome, Verdict
from ..errors import (
    FileTransferError,
    PackError,
    ProtocolError,
    TaskCancelled,
    TaskError,
    WorkerLost,
)
from ..observe.events import EVENTS_FILE, EventLog, resources
from ..observe.status import (
    FAILED_LIMIT,
    STATUS_FILE,
    STATUS_INTERVAL,
    STATUS_SPACING,
    StatusFile,
    header,
    snapshot,
    worker_command,
)
from ..protocol import messages as m
from ..protocol.pieces import MAX_TASK_DATA, PIECE_SIZE, too_large_to_send
from ..resources import ZERO, Resources
from . import ipc
from .connections import HEARTBEAT_SLICES, Connections, WorkerConn
from .outcomes import error_summary, exception_summary, failure, measured_resources
from .transfers import Transfers

log = logging.getLogger("packmule.manager")

#: Assignments per loop turn at most: a pass that could place thousands of tasks
#: places this many, then the loop reads what arrived, and goes on next turn.
SCHEDULE_LIMIT = 512
#: At shutdown, how long workers that connect meanwhile are told to exit (s).
STOP_GRACE = 0.2
#: How long messages already sent (Exit among them) may take to leave at shutdown (s).
STOP_LINGER = 2.0
#: The loop's log file is rotated at this size (one old file kept): it stays bounded.
LOG_BYTES = 10_000_000
#: Joins and losses logged one by one per second at most; beyond, one line says how many.
EVENTS_LOGGED_PER_S = 10
#: Distinct requests, priorities and time limits shared between jobs, at most (then the
#: sharing starts afresh: a stream of all-different requests must not grow it forever).
SHARED_MAX = 10_000
#: The loop's upkeep (event log flush, status file, the no-worker notice) runs at least
#: this often (s).
UPKEEP_STEP = 0.5
#: A manager with queued tasks and no worker connected says so (once) after this long (s).
NO_WORKER_NOTICE = 5.0
#: Outcomes a category learns from (after which its allocation may change).
_LEARNS = frozenset({Outcome.SUCCEEDED, Outcome.RAISED, Outcome.EXHAUSTED})
#: The environment of tasks that set none (shared, never changed).
_NO_ENV: dict[str, str] = {}
#: What each status a worker reports means to the core's outcome policy.
_OUTCOMES = {
    m.TaskStatus.SUCCESS: Outcome.SUCCEEDED,
    m.TaskStatus.EXCEPTION: Outcome.RAISED,
    m.TaskStatus.TIMEOUT: Outcome.BROKE,
    m.TaskStatus.CRASHED: Outcome.BROKE,
    m.TaskStatus.SETUP_ERROR: Outcome.BROKE,
    m.TaskStatus.EXHAUSTED: Outcome.EXHAUSTED,
    m.TaskStatus.FORSAKEN: Outcome.FORSAKEN,
    m.TaskStatus.PACK_ERROR: Outcome.UNUSABLE,
}


class _Tally:
    """Log lines about workers coming and going: one each while they are few, and
    a count per second when thousands move at once."""

    def __init__(self) -> None:
        self._second = 0
        self._said = 0
        self._held: collections.Counter[str] = collections.Counter()

    def tick(self, now: float) -> None:
        """A new second: say what the last one held back."""
        second = int(now)
        if second != self._second:
            self.flush()
            self._second, self._said = second, 0

    def allow(self, now: float, what: str) -> bool:
        self.tick(now)
        self._said += 1
        if self._said <= EVENTS_LOGGED_PER_S:
            return True
        self._held[what] += 1
        return False

    def flush(self) -> None:
        for what, n in self._held.items():
            log.info("... and %d more workers %s", n, what)
        self._held.clear()


class Loop:
    """The manager's sockets and core, driven by one poll loop."""

    def __init__(self, conn: Connection, outbox: ipc.Outbox, cfg: ipc.Config) -> None:
        self.conn = conn
        self.outbox = outbox
        self.cfg = cfg
        self.lease = cfg.lease
        self.core = ManagerState(validate=cfg.validate, default_category=cfg.default_category,
                                 prefetch=cfg.prefetch)
        self.net = Connections(cfg.secret, cfg.host, cfg.port, cfg.heartbeat_interval)
        self.port = self.net.port
        self.transfers = Transfers()
        host = cfg.public_host
        self.address = f"[{host}]:{self.port}" if ":" in host and host[0] != "[" else \
            f"{host}:{self.port}"
        #: Unix time the loop started.
        self.started = time.time()
        #: The event log (None: ``observe=False``, or once it could not be written).
        self.events: EventLog | None = None
        self.status_file: StatusFile | None = None
        if cfg.observe:
            self.events = EventLog(cfg.run_dir / EVENTS_FILE, {
                "packmule": __version__, "t": self.started, "address": self.address,
                "host": socket.gethostname(), "pid": os.getpid(),
                "run_dir": str(cfg.run_dir.resolve())})
            self.status_file = StatusFile(cfg.run_dir / STATUS_FILE)
            self._events_failed()
        #: Making a snapshot failed (a bug): the status file is no longer rewritten while
        #: the loop runs; its last write, when it stops, holds only the header.
        self._snapshot_failed = False
        #: The last failed tasks, as the status file lists them.
        self.failures: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=FAILED_LIMIT)
        #: Each category's allocation for its next tasks, as last written to the event log.
        self._allocations: dict[str, Resources | None] = {}
        #: The status file is due (something happened since it was last written) ...
        self._status_dirty = True
        #: ... and may be written from this time on (the loop's clock).
        self._status_at = 0.0
        self._no_worker_since: float | None = None
        self._no_worker_said = False
        self.jobs: dict[int, ipc.Submit] = {}
        #: What each dispatched task's Task gets when it finishes (attempts, worker...).
        self._attrs: dict[int, dict[str, Any]] = {}
        #: Tasks cancelled before their job arrived (it was still in the pack builder).
        self._cancelled_early: set[int] = set()
        #: One copy of each request, priority and time limit that jobs have in common.
        self._shared: dict[Any, Any] = {}
        self.counters = collections.Counter[str]()
        self._largest = ZERO  # as last told to the Manager
        self._tally = _Tally()
        self._stopping = False
        self._told_to_stop = False

    # ---------------------------------------------------------------- to the Manager
    def _tell(self, msg: ipc.Message) -> None:
        self.outbox.put(msg)
        if self.outbox.broken:
            self._stopping = True  # the Manager's process is gone

    def _largest_changed(self) -> None:
        largest = self.core.largest_worker()
        if largest != self._largest:
            self._largest = largest
            self._tell(ipc.Largest(largest))

    # ================================================================ the I/O loop
    def run(self) -> bool:
        """Serve until told to stop, or the Manager's process is gone; True if it stopped
        on an internal error (a bug in packmule: the traceback is logged)."""
        net, core = self.net, self.core
        fd = self.conn.fileno()
        poller = zmq.Poller()
        poller.register(net.router, zmq.POLLIN)
        poller.register(net.zap, zmq.POLLIN)
        poller.register(net.monitor, zmq.POLLIN)
        poller.register(fd, zmq.POLLIN)
        writing = False  # whether the poller waits for room to write to the Manager
        lease_step = self.cfg.heartbeat_interval / HEARTBEAT_SLICES
        next_lease = time.monotonic() + lease_step
        next_upkeep = time.monotonic() + UPKEEP_STEP
        busy = False  # more to read, or to schedule, than one turn does
        crash: Exception | None = None
        try:
            self._write_status(time.monotonic())
            while not self._stopping:
                now = time.monotonic()
                timer = min(net.wake_at(), next_lease, next_upkeep)
                timeout = 0 if busy else max(0, int((timer - now) * 1000))
                if self.outbox.pending != writing:
                    writing = not writing
                    poller.register(fd, zmq.POLLIN | (zmq.POLLOUT if writing else 0))
                events = dict(poller.poll(timeout))
                if writing:
                    self.outbox.flush()
                now = time.monotonic()
                if events or busy:
                    self._status_dirty = True
                if events.get(fd, 0) & zmq.POLLIN and not self._commands(now):
                    break
                if net.monitor in events:  # first: a full monitor pipe holds up the I/O thread
                    net.events(now)
                if net.zap in events:
                    net.answer_zap()
                drained = True
                if net.router in events or busy:
                    drained = self._receive(now)
                if now >= timer:
                    for wid in list(net.tick(now)):
                        self._lose_worker(wid, now, "connection closed")
                    if drained and now >= next_lease:
                        # Judged on what arrived: everything waiting has just been read.
                        next_lease = now + lease_step
                        for wid in core.expired(now, self.lease):
                            self._lose_worker(wid, now, f"no message for {self.lease:.0f} s "
                                                        "(lease expired)")
                    if now >= next_upkeep:
                        next_upkeep = now + UPKEEP_STEP
                    self._upkeep(now, idle=not events)
                    self._tally.tick(now)
                if core.changed:
                    self._schedule(now)
                busy = not drained or core.changed
        except Exception as exc:
            crash = exc
            log.exception("the packmule manager's loop stopped on an internal error (a bug in "
                          "packmule: please report it with this log); unfinished tasks fail "
                          "with ManagerCrashed")
        finally:
            self._stop(time.monotonic(), crash)
        return crash is not None

    # ---------------------------------------------------------------- records
    def _upkeep(self, now: float, idle: bool) -> None:
        """Flush the event log (when idle, or a second after the last flush), rewrite the
        status file when due, and say once if tasks wait with no worker connected."""
        if self.events is not None:
            self.events.tick(now, idle)
            self._events_failed()
        if self._status_dirty and now >= self._status_at:
            self._write_status(now)
        if not self._no_worker_said:
            if self.core.workers or not self.jobs:
                self._no_worker_since = None
            elif self._no_worker_since is None:
                self._no_worker_since = now
            elif now - self._no_worker_since >= NO_WORKER_NOTICE:
                self._no_worker_said = True
                self._no_worker_warning(now - self._no_worker_since)

    def _events_failed(self) -> None:
        """After the event log failed to be written (said once by it), events are no longer
        even formatted."""
        if self.events is not None and self.events._failed:
            self.events = None

    def _no_worker_warning(self, waited: float) -> None:
        command = worker_command(self.address, self.cfg.password_file)
        log.warning("%d task(s) queued and no worker has connected to this manager at %s for "
                    "%.0f s; start one on each node with: %s", len(self.jobs), self.address,
                    waited, command)

    def _write_status(self, now: float, state: str = "running") -> None:
        """Rewrite the status file; the next rewrite waits :data:`STATUS_INTERVAL`, or
        :data:`STATUS_SPACING` times what this one took if that is longer."""
        self._status_dirty = False
        running = state == "running"
        if self.status_file is None or (running and self._snapshot_failed):
            self._status_at = math.inf
            return
        start = time.monotonic()
        snap: dict[str, Any] | None = None
        if not self._snapshot_failed:
            try:
                snap = snapshot(self, state)
            except Exception:
                # Like the event log, the status file never stops the manager.
                self._snapshot_failed = True
                log.exception("cannot make the status file's snapshot (a bug in packmule: "
                              "please report it with this log); the manager goes on without "
                              "rewriting %s (said once)", self.status_file.path)
        if snap is None:
            if running:  # the last good one stays
                self._status_at = math.inf
                return
            snap = header(self, state)  # the final state, at least
        self.status_file.write(snap)
        took = time.monotonic() - start
        self._status_at = now + max(STATUS_INTERVAL, STATUS_SPACING * took)

    def _category_changed(self, name: str, exhausted: bool) -> None:
        """After a result of category ``name``: log its next tasks' allocation if it
        changed (the category of the result just handled only: nothing is scanned)."""
        ev = self.events
        cat = self.core.categories.get(name)
        if ev is None or cat is None or cat.mode is AllocationMode.FIXED:
            return  # a FIXED category learns nothing
        new = cat.current_allocation(self.core.largest_worker())
        old = self._allocations.get(name)
        if new == old:
            return
        self._allocations[name] = new
        if exhausted:
            why = "exhausted"
        elif new is None:
            why = "a new peak: learning again"
        else:
            why = f"learned from {cat.tasks_recorded} tasks"
        ev.write("category_changed", category=name, old=resources(old), new=resources(new),
                 why=why)

    # ---------------------------------------------------------------- from the Manager
    def _commands(self, now: float) -> bool:
        """Everything the Manager has sent: jobs, cancels, calls. False: stop."""
        try:
            while self.conn.poll(0):
                msg = ipc.decode(self.conn.recv())
                if isinstance(msg, ipc.Submit):
                    if msg.shared:
                        msg = msg._replace(payload=ipc.receive_shared(self.conn), shared=False)
                    self._submit(msg, now)
                elif isinstance(msg, ipc.Cancel):
                    self._cancel(msg.task_id, now)
                elif isinstance(msg, ipc.Call):
                    self._answer(msg)
                elif isinstance(msg, ipc.PackBuilt):
                    if self.events is not None:
                        self.events.write("pack_built", pack=msg.digest, path=msg.path,
                                          size=msg.size, seconds=round(msg.seconds, 3))
                elif isinstance(msg, ipc.Stop):
                    self._told_to_stop = True
                    return False
                else:
                    raise ProtocolError(f"the Manager sent the loop a {type(msg).__name__}")
        except (EOFError, OSError):
            return False  # the Manager's process is gone
        return not self._stopping

    def _submit(self, job: ipc.Submit, now: float) -> None:
        ev = self.events
        if job.id in self._cancelled_early:
            self._cancelled_early.discard(job.id)
            self.counters["tasks_cancelled"] += 1
            if ev is not None:
                ev.task_submitted(job.id, job.category, job.label, job.resources, job.priority)
                ev.write("task_cancelled", task=job.id, why="user")
            return
        # Tasks of one kind share one copy of what they have in common (a million may wait).
        same = self._shared
        if len(same) > SHARED_MAX:
            same.clear()
        job = job._replace(
            kind=sys.intern(job.kind), category=sys.intern(job.category),
            label=sys.intern(job.label),
            resources=same.setdefault(job.resources, job.resources),
            priority=same.setdefault(("priority", job.priority), job.priority),
            timeout=same.setdefault(("timeout", job.timeout), job.timeout))
        self.jobs[job.id] = job
        self.core.submit(job.id, job.resources, now, job.priority, job.max_retries,
                         job.category)
        self.counters["tasks_submitted"] += 1
        if ev is not None:
            ev.task_submitted(job.id, job.category, job.label, job.resources, job.priority)

    def _cancel(self, tid: int, now: float) -> None:
        job = self.jobs.pop(tid, None)
        self._attrs.pop(tid, None)
        if job is None:
            self._cancelled_early.add(tid)  # its job may still be on its way
            return
        running = self.core.cancel(tid, now)
        self.core.forget(tid)
        if running is not None:
            self.net.send(running.worker, m.Kill(running.task_id, running.attempt))
        self.counters["tasks_cancelled"] += 1
        if self.events is not None:
            self.events.write("task_cancelled", task=tid, why="user")

    def _answer(self, call: ipc.Call) -> None:
        try:
            if call.name == "stats":
                value: Any = self._stats()
            elif call.name == "category_stats":
                value = {n: c.stats() for n, c in self.core.categories.items()}
            elif call.name == "configure_category":
                self.core.configure_category(*call.args)
                value = None
            elif call.name == "status":
                value = snapshot(self, brief=bool(call.args and call.args[0]))
            else:
                raise ValueError(f"unknown call {call.name!r}; the calls are "
                                 f"{', '.join(sorted(ipc.CALLS))}")
        except Exception as exc:
            self._tell(ipc.Reply(call.call_id, False, exc))
        else:
            self._tell(ipc.Reply(call.call_id, True, value))

    def _stats(self) -> ipc.ManagerStats:
        committed, total = self.core.totals()
        c = self.counters
        counts = self.core.counts()
        return ipc.ManagerStats(
            workers=len(self.core.workers),
            tasks={k: counts[k] for k in ("waiting", "running")},
            committed=committed,
            total=total,
            workers_joined=c["workers_joined"],
            workers_lost=c["workers_lost"],
            tasks_submitted=c["tasks_submitted"],
            tasks_succeeded=c["tasks_succeeded"],
            tasks_failed=c["tasks_failed"],
            tasks_cancelled=c["tasks_cancelled"],
            files_sent=self.transfers.counts["files_sent"],
            tasks_prefetched=c["tasks_prefetched"],
            packs_sent=self.transfers.counts["packs_sent"],
        )

    # ---------------------------------------------------------------- from workers
    def _receive(self, now: float) -> bool:
        """Read what the workers sent (a turn's worth); True when nothing more waits."""
        received, drained = self.net.receive()
        for identity, frames in received:
            wid = identity.hex()
            data = None
            try:
                data = self.net.assemble(identity, frames)
                if data is None:  # a piece of a message still being joined
                    self.core.seen(wid, now)  # (a large result may take longer than a lease)
                    continue
                # (joined from pieces: a large result is a view of them, not a copy)
                msg = m.decode_joined(data) if isinstance(data, bytearray) else m.decode(data)
            except ProtocolError as exc:
                versions = (m.hello_versions(data) if data is not None
                            and wid not in self.net.workers else None)
                if versions is not None and versions[0] != m.PROTOCOL_VERSION:
                    self._refuse_version(identity, wid, *versions)
                    continue
                self._malformed(identity, wid, now, exc)
                continue
            if wid not in self.net.workers:
                self._hello(identity, wid, msg, now)
            else:
                self.core.seen(wid, now)
                self._from_worker(identity, wid, msg, now)
        return drained

    def _malformed(self, identity: bytes, wid: str, now: float, exc: ProtocolError) -> None:
        """A peer sent what is not a valid message: it alone is disconnected, with one
        log line naming it and the field."""
        self.net.reject(identity, f"{exc}; check that the worker runs packmule {__version__}")
        if wid in self.net.workers:
            self._lose_worker(wid, now, f"sent an invalid message ({exc}); disconnected it")
        else:
            log.warning("peer %s (%s) sent an invalid message (%s); disconnected it", wid[:12],
                        self.net.address_of(identity), exc)

    def _from_worker(self, identity: bytes, wid: str, msg: m.Message, now: float) -> None:
        if isinstance(msg, m.Results):
            for r in msg.results:
                try:
                    self._result(wid, r, now)
                except Exception as exc:
                    log.error("worker %s sent a result this manager cannot use (%s: %s); "
                              "disconnecting it", wid, type(exc).__name__, exc)
                    self.net.reject(identity, f"bad result: {exc}")
                    self._lose_worker(wid, now, "sent a bad result")
                    return
        elif isinstance(msg, m.WorkerHeartbeat):
            pass  # seen: that is all a heartbeat says
        elif isinstance(msg, m.PieceProgress):
            try:
                sent = self.net.progress(wid, msg.received)
            except ProtocolError as exc:
                self._malformed(identity, wid, now, exc)
                return
            if not sent:
                self._lose_worker(wid, now, "connection closed")
        elif isinstance(msg, m.PackProgress):
            if not self.transfers.progress(wid, msg, self._sender(identity)):
                self._lose_worker(wid, now, "connection closed")
        elif isinstance(msg, m.PackState):
            conn = self.net.workers[wid]
            self.transfers.pack_state(wid, conn.hostname, msg)
        elif isinstance(msg, m.Goodbye):
            self._lose_worker(wid, now, f"worker left: {msg.reason}", lost=False)
        else:
            log.warning("worker %s sent a %s, which workers do not send; disconnecting it",
                        wid, type(msg).__name__)
            self.net.reject(identity, f"unexpected message {type(msg).__name__}")
            self._lose_worker(wid, now, "protocol error")

    def _sender(self, identity: bytes) -> Any:
        return lambda frames: self.net.send_frames(identity, frames, copy=False)

    def _refuse_version(self, identity: bytes, who: str, protocol: int, version: str) -> None:
        reason = (
            f"protocol version mismatch: this manager (packmule {__version__}) speaks "
            f"protocol {m.PROTOCOL_VERSION}, the worker (packmule {version}) speaks "
            f"{protocol}. Install packmule=={__version__} where the worker runs."
        )
        log.error("refused worker %s: %s", who, reason)
        self.net.reject(identity, reason)

    def _hello(self, identity: bytes, wid: str, msg: m.Message, now: float) -> None:
        if not isinstance(msg, m.Hello):
            # Most likely a worker this manager declared lost (silent past its lease)
            # that woke up: its attempts were requeued, so make it start afresh.
            log.info("worker %s is not connected (declared lost?); told it to reconnect", wid)
            self.net.reject(identity, "this manager declared the worker lost; reconnect")
            return
        if msg.protocol != m.PROTOCOL_VERSION:
            self._refuse_version(identity, f"{msg.hostname} (pid {msg.pid})", msg.protocol,
                                 msg.version)
            return
        if self._stopping:
            self.net.send_frames(identity, [m.encode(m.Exit("the manager is shutting down"))])
            return
        try:
            size = Resources(**msg.resources)
            if not size.is_complete:
                raise ValueError("incomplete")
        except (TypeError, ValueError) as exc:
            reason = f"bad resource report {msg.resources!r}: {exc}"
            log.error("refused worker %s: %s", msg.hostname, reason)
            self.net.reject(identity, reason)
            return
        joined = time.time()
        self.net.add(wid, WorkerConn(identity, msg.hostname, msg.pid, size, joined=joined))
        self.transfers.joined(wid, msg.packs)
        self.core.add_worker(wid, size, now)
        self._largest_changed()
        self.counters["workers_joined"] += 1
        if self.events is not None or self.cfg.report_joins:
            event = {"t": joined, "event": "worker_joined", "worker": wid,
                     "host": msg.hostname, "pid": msg.pid, "block": msg.block,
                     "resources": resources(size)}
            if self.events is not None:
                self.events.record(event)
            if self.cfg.report_joins:
                self._tell(ipc.WorkerJoined(event))
        if self._tally.allow(now, "joined"):
            log.info("worker %s joined from %s (pid %d) with %s", wid, msg.hostname, msg.pid,
                     size)
        self.net.send(wid, m.Welcome(m.PROTOCOL_VERSION, __version__,
                                     self.cfg.heartbeat_interval, self.lease))

    def _lose_worker(self, wid: str, now: float, why: str, lost: bool = True) -> None:
        """The worker is gone: ``lost`` (this manager gave up on it) or not (it left)."""
        conn = self.net.remove(wid)
        if conn is None:
            return
        self.transfers.forget(wid)
        self.counters["workers_lost"] += 1
        outcomes = self.core.remove_worker(wid, now, why)
        self._largest_changed()
        ev = self.events
        if ev is not None:
            ev.write("worker_left", worker=wid, host=conn.hostname, why=why, lost=lost,
                     requeued=sum(v is Verdict.REQUEUED for _, v in outcomes))
            for tid, _ in outcomes:
                t = self.core.tasks.get(tid)
                ev.write("task_lost", task=tid, attempt=t.attempt if t else 0, worker=wid,
                         why=why)
        if outcomes or self._tally.allow(now, "gone"):
            log.log(logging.WARNING if outcomes else logging.INFO,
                    "worker %s (%s pid %d) gone: %s; %d task(s) back in the queue",
                    wid, conn.hostname, conn.pid, why, len(outcomes))
        for tid, verdict in outcomes:
            if verdict is Verdict.FAILED:
                self._finish_error(tid, WorkerLost(
                    f"task {tid} lost its worker {MAX_REQUEUES + 1} times (last: "
                    f"{conn.hostname}: {why}). The task may be killing its workers "
                    "(memory, segfault); check that it runs alone, or give it more resources.",
                    tid))

    # ---------------------------------------------------------------- results
    def _result(self, wid: str, r: m.TaskResult, now: float) -> None:
        """An attempt ended: the core rules on it; this carries the ruling out."""
        S = m.TaskStatus
        core = self.core
        outcome = _OUTCOMES[r.status]
        why = r.message
        job = self.jobs.get(r.task_id)
        written: FileTransferError | None = None
        if (outcome is Outcome.SUCCEEDED and job is not None and job.output_files
                and core.current(r.task_id, r.attempt, wid)):
            try:  # before the ruling: a declared output missing fails the task at once
                self._write_outputs(job, r)
            except FileTransferError as exc:
                outcome, why, written = Outcome.FATAL, str(exc), exc
        verdict, failed = core.result(
            r.task_id, r.attempt, outcome, now, wid, measured=measured_resources(r),
            wall_time=r.wall_time, cores=r.measured.get("cores"), exceeded=r.exceeded, why=why)
        if verdict is Verdict.STALE:
            log.debug("discarded a stale result of task %d attempt %d", r.task_id, r.attempt)
            return
        conn = self.net.workers.get(wid)
        ev = self.events
        if ev is not None:
            ev.attempt_finished(r.task_id, r.attempt, wid, r.status.value, r.wall_time,
                                r.measured, r.exceeded, r.exit_code)
            if verdict is Verdict.RETRY or verdict is Verdict.REQUEUED:
                if verdict is Verdict.REQUEUED:
                    ev.write("task_retried", task=r.task_id, attempt=r.attempt + 1,
                             why="requeued")
                elif r.status is S.EXHAUSTED:
                    ev.write("task_retried", task=r.task_id, attempt=r.attempt + 1,
                             why="exhausted", exceeded=list(r.exceeded))
                else:
                    ev.write("task_retried", task=r.task_id, attempt=r.attempt + 1,
                             why="failed")
            if job is not None and outcome in _LEARNS:
                self._category_changed(job.category, r.status is S.EXHAUSTED)
        if (r.messages and self.cfg.forward_messages and r.status is not S.FORSAKEN
                and r.status is not S.PACK_ERROR):
            self._tell(ipc.Messages([_owned(x) for x in r.messages]))
        if job is None:
            return
        if verdict is Verdict.REQUEUED:
            return
        attrs = self._attrs.setdefault(r.task_id, {})
        attrs.update(
            attempts=r.attempt, worker=wid, hostname=conn.hostname if conn else None,
            gpu_ids=list(r.gpu_ids), exit_code=r.exit_code, stdout=_owned(r.stdout),
            stderr=_owned(r.stderr),
            wall_time=r.wall_time, measured=dict(r.measured))
        if verdict is Verdict.RETRY:
            log.info("task %d attempt %d failed (%s); retrying",
                     r.task_id, r.attempt, r.status.value)
        elif verdict is Verdict.DONE:
            self._deliver(r.task_id, True, job.kind, r.value)
        elif failed is Failure.TASK and r.status is S.EXCEPTION:
            self._deliver(r.task_id, False, "exception", r.value)  # unpickled by the Manager
        elif failed is Failure.REQUEUES:
            self._finish_error(r.task_id, WorkerLost(
                f"task {r.task_id} could not be run: its workers handed it back "
                f"{MAX_REQUEUES + 1} times (last: {r.message}). Check that its resource "
                "request fits the workers, and the workers' logs", r.task_id))
        elif failed is Failure.UNUSABLE:
            self._finish_error(r.task_id, PackError(
                f"task {r.task_id}: {r.message}. No connected worker could run it (each one "
                f"tried, up to {MAX_REQUEUES + 1}, failed this way): fix the pack (see the "
                "workers' logs), or connect workers that can use it"))
        elif written is not None:
            self._finish_error(r.task_id, written)
        else:
            self._finish_error(r.task_id, failure(job, r, attrs.get("allocation")))

    def _write_outputs(self, job: ipc.Submit, r: m.TaskResult) -> None:
        for f in job.output_files:
            data = r.outputs.get(f.sandbox_name)
            if data is None and f.optional:
                continue
            if data is None:
                raise FileTransferError(
                    f"task {job.id} did not produce output file {f.sandbox_name!r}: it must "
                    "write it under that name in its working directory (the sandbox), or "
                    "declare it File(..., optional=True) if it may be absent", job.id)
            try:
                with open(f.local_path, "wb") as out:
                    out.write(data)
            except OSError as exc:
                raise FileTransferError(
                    f"cannot write output file {f.local_path} of task {job.id}: {exc}", job.id
                ) from None

    def _finish_error(self, tid: int, exc: BaseException) -> None:
        self._deliver(tid, False, "error", exc)

    def _deliver(self, tid: int, ok: bool, kind: str, data: Any,
                 cancelled: bool = False) -> None:
        """Send a finished task's outcome to the Manager (``cancelled``: by the shutdown)."""
        job = self.jobs.pop(tid, None)
        attrs = self._attrs.pop(tid, {})
        t = self.core.tasks.get(tid)
        attempts = t.attempt if t is not None else attrs.get("attempts", 0)
        self.core.forget(tid)
        if job is None:
            return
        ev = self.events
        if cancelled:
            self.counters["tasks_cancelled"] += 1
            if ev is not None:
                ev.write("task_cancelled", task=tid, why="shutdown")
        elif ok:
            self.counters["tasks_succeeded"] += 1
            if ev is not None:
                ev.task_done(tid, True, attempts)
        else:
            self.counters["tasks_failed"] += 1
            error, message = (exception_summary(data) if kind == "exception"
                              else error_summary(data))
            self.failures.append({"task": tid, "category": job.category, "label": job.label,
                                  "attempts": attempts, "error": error, "message": message})
            if ev is not None:
                ev.task_done(tid, False, attempts, error, message)
        if kind == "error":
            try:
                pickle.dumps(data)
            except Exception:  # an exception that cannot travel: keep its message
                data = TaskError(f"{type(data).__name__}: {data}", tid)
        self._tell(ipc.Done(tid, ok, kind, ipc.out_of_band(data), attrs))

    # ---------------------------------------------------------------- dispatch
    def _schedule(self, now: float) -> None:
        assignments = self.core.schedule(now, limit=SCHEDULE_LIMIT)
        for note in self.core.take_notices():
            job = self.jobs.get(note.task_id)
            log.warning(
                "%s (%s) need%s %s but the largest connected worker has %s; %s until a worker "
                "that large connects",
                f"task {note.task_id}" if note.waiting == 1 else
                f"{note.waiting} tasks like task {note.task_id}",
                job.label if job else "?", "s" if note.waiting == 1 else "",
                note.request, note.largest, "it waits" if note.waiting == 1 else "they wait")
        if not assignments:
            return
        ev = self.events
        if ev is not None:
            for a in assignments:
                ev.attempt_dispatched(a.task_id, a.attempt, a.worker, a.allocation,
                                      a.prefetched)
        by_worker: dict[str, list[m.TaskSpec]] = collections.defaultdict(list)
        large: list[tuple[str, list[m.TaskSpec]]] = []  # each in a Dispatch of its own
        for a in assignments:
            if a.worker not in self.net.workers:
                continue  # lost during this pass: the core has requeued the task
            made = self._spec(a, now)
            if a.prefetched:
                self.counters["tasks_prefetched"] += 1
            if made is not None:
                spec, size = made
                if size > PIECE_SIZE:
                    large.append((a.worker, [spec]))
                else:
                    by_worker[a.worker].append(spec)
        for wid, specs in by_worker.items():
            if wid in self.net.workers and not self.net.send(wid, m.Dispatch(specs)):
                self._lose_worker(wid, now, "connection closed")
        for wid, specs in large:  # (in paced pieces, after the small ones)
            if wid in self.net.workers and not self.net.send(wid, m.Dispatch(specs),
                                                             large=True):
                self._lose_worker(wid, now, "connection closed")

    def _send_to(self, wid: str) -> Callable[[m.Message], bool]:
        return lambda msg: self.net.send(wid, msg, large=True)

    def _spec(self, a: Assignment, now: float) -> tuple[m.TaskSpec, int] | None:
        """The task as sent to its worker, and the bytes of its call and input files in it;
        None: it failed (or its worker is gone)."""
        job = self.jobs[a.task_id]
        self._attrs.setdefault(a.task_id, {}).update(allocation=a.allocation,
                                                     start_time=time.time())
        identity = self.net.workers[a.worker].identity
        send = self._sender(identity)
        pack = job.pack
        if pack is not None and self.transfers.needs_pack(a.worker, pack):
            try:
                if not self.transfers.send_pack(a.worker, pack, send):
                    self._lose_worker(a.worker, now, "connection closed")
                    return None  # its tasks were requeued
                if self.events is not None:
                    self.events.write("pack_sent", pack=pack.digest, worker=a.worker,
                                      size=pack.size)
            except OSError as exc:
                why = (f"cannot send the environment pack {pack.path} of task {a.task_id}: "
                       f"{exc}. Delete it (and its .json) from the pack cache to have it rebuilt")
                self.core.result(a.task_id, a.attempt, Outcome.FATAL, now, a.worker, why=why)
                self._finish_error(a.task_id, PackError(why))
                return None
        problem: str | None = None
        inputs: list[m.InputFile] | None = []
        try:
            if job.input_files:
                inputs = self.transfers.inputs(a.worker, job.input_files, self._send_to(a.worker))
        except OSError as exc:
            problem = (f"cannot read input file of task {a.task_id}: {exc}; it must stay "
                       "readable until the task has started")
        except FileTransferError as exc:  # one too large to send
            problem = f"task {a.task_id}: {exc}"
        if inputs is None:
            self._lose_worker(a.worker, now, "connection closed")
            return None
        size = len(job.payload)
        if inputs:
            size += sum(len(i.data) for i in inputs)
        if size > MAX_TASK_DATA and problem is None:
            problem = too_large_to_send(f"task {a.task_id}: its call (function and arguments) "
                                        "and input files are", size)
        if problem is not None:
            self.core.result(a.task_id, a.attempt, Outcome.FATAL, now, a.worker, why=problem)
            self._finish_error(a.task_id, FileTransferError(problem, a.task_id))
            return None
        alloc = a.allocation
        return m.TaskSpec(
            task_id=a.task_id,
            attempt=a.attempt,
            kind=job.kind,
            # (a shared payload is a memoryview of its pages: encoded as the bytes it holds)
            payload=cast(bytes, job.payload),
            command=job.command,
            allocation={"cores": alloc.cores or 0, "memory": alloc.memory or 0,
                        "disk": alloc.disk or 0, "gpus": alloc.gpus or 0},
            env=job.env or _NO_ENV,
            inputs=inputs,
            outputs=[f.sandbox_name for f in job.output_files],
            timeout=job.timeout,
            pack=pack.digest if pack is not None else "",
        ), size

    # ---------------------------------------------------------------- shutdown
    def _stop(self, now: float, crash: Exception | None = None) -> None:
        """Tell workers to exit (once the monitor is off: thousands of closing connections
        must not fill its pipe), fail what is unfinished, and close within seconds.

        After an internal error (``crash``) the core is not trusted: unfinished tasks are
        left to the Manager, which fails them with ManagerCrashed."""
        self._stopping = True
        net = self.net
        net.stop_monitoring()
        if self.cfg.shutdown_workers:
            for wid in list(net.workers):  # (at once: not behind a transfer in pieces)
                net.send(wid, m.Exit("the manager is shutting down"), urgent=True)
        for tid in list(self.jobs) if crash is None else ():
            self.core.cancel(tid, now)
            self._deliver(tid, False, "error", TaskCancelled(
                f"task {tid} did not finish before the manager shut down", tid), cancelled=True)
        if self.cfg.shutdown_workers and crash is None:
            deadline = time.monotonic() + STOP_GRACE
            while time.monotonic() < deadline:  # workers connecting now are told to exit
                if not net.router.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                    break
                net.answer_zap()
                self._receive(time.monotonic())
        self._tally.flush()
        if self.events is not None:  # the workers still connected: let go, not lost
            for wid, conn in net.workers.items():
                self.events.write("worker_left", worker=wid, host=conn.hostname,
                                  why="manager stopped", lost=False, requeued=0)
        net.close(linger=STOP_LINGER)
        if self.events is not None:
            why = "crashed" if crash is not None else (
                "shutdown" if self._told_to_stop else "disconnected")
            self.events.write("manager_stopped", why=why,
                              tasks=self.counters["tasks_submitted"],
                              failed=self.counters["tasks_failed"])
            self.events.close()
        self._write_status(time.monotonic(), "stopped" if crash is None else "crashed")
        self._tell(ipc.Stopped("" if crash is None else f"{type(crash).__name__}: {crash}"))


def _owned(data: bytes) -> bytes:
    """``data`` as bytes of its own: a large field of a message joined from pieces is a
    view of them (:func:`~packmule.protocol.messages.decode_joined`), which cannot be
    pickled to the Manager (a result's value goes out of band instead)."""
    return data if type(data) is bytes else bytes(data)


def _log_to_file(run_dir: Path) -> logging.Handler | None:
    """The loop's log file (see :data:`ipc.LOOP_LOG`); fatal signals' tracebacks go to a
    file of their own (:data:`ipc.LOOP_CRASH`), which the log's rotation leaves alone."""
    try:
        handler = logging.handlers.RotatingFileHandler(
            run_dir / ipc.LOOP_LOG, maxBytes=LOG_BYTES, backupCount=1)
        crash = open(run_dir / ipc.LOOP_CRASH, "w")  # noqa: SIM115 (open while the loop lives)
    except OSError as exc:
        log.warning("cannot write the manager's log files in %s (%s): the loop logs to your "
                    "process only; make that directory writable, or pass another run_dir= "
                    "to the Manager", run_dir, exc)
        return None
    faulthandler.enable(crash)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s %(name)s [pid {os.getpid()}] %(message)s"))
    handler.setLevel(logging.INFO)
    return handler


def main(argv: list[str] | None = None) -> int:
    """``python -m packmule.manager FD``: serve the Manager on socket FD. Exits 0 when
    told to stop (or the Manager's process is gone), :data:`ipc.EXIT_CRASHED` after an
    internal error, 1 when it could not start."""
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the Manager's to handle
    conn = Connection(socket.socket(fileno=int(argv[0])).detach())
    outbox = ipc.Outbox(conn.fileno())
    cfg: ipc.Config = conn.recv()
    logger = logging.getLogger("packmule")
    forward = ipc.ForwardLogs(outbox)
    forward.setLevel(cfg.log_level)
    logger.addHandler(forward)
    logger.propagate = False
    logger.setLevel(cfg.log_level)
    to_file = _log_to_file(cfg.run_dir)
    if to_file is not None:
        logger.addHandler(to_file)
        logger.setLevel(min(cfg.log_level, logging.INFO))
    try:
        loop = Loop(conn, outbox, cfg)
    except Exception as exc:
        log.error("the manager's loop cannot start: %s", exc)
        number = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
        outbox.put(ipc.StartFailed(number, str(exc)))
        outbox.close(timeout=10)
        return 1
    outbox.put(ipc.Ready(loop.port))
    crashed = True
    try:
        crashed = loop.run()
    except BaseException:
        log.exception("the packmule manager's loop failed while stopping")
        raise
    finally:
        with contextlib.suppress(Exception):
            outbox.close(timeout=30)
    return ipc.EXIT_CRASHED if crashed else 0
