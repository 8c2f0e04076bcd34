"""The Manager: the public API, in the user's process.

The sockets and the scheduling core live in a process of their own
(:mod:`packmule.manager.loop`, started as ``python -m packmule.manager``), so
that dispatching never competes with the user's threads for this process's
interpreter lock. This side pickles calls, builds environment packs, and
resolves futures: one thread reads what the loop reports (outcomes,
monitoring messages, replies, log records) and runs the futures' callbacks,
Parsl's DataFlowKernel among them.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import ipaddress
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent import futures
from concurrent.futures import Future
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..core.alloc import STEADY_N, AllocationMode, CategoryConfig
from ..envpack import Pack
from ..errors import (
    FileTransferError,
    ManagerClosed,
    ManagerCrashed,
    ManagerStartError,
    ManagerTimeout,
    ProtocolError,
    SerializationError,
    TaskCancelled,
    TaskError,
)
from ..observe.events import EVENTS_FILE
from ..observe.rundir import RUNS_ENV, new_run_dir, point_latest, remove_run_dir, runs_base
from ..observe.status import STATUS_FILE
from ..protocol.security import load_secret, write_new_password_file
from ..resources import Resources
from ..serialize import loads, loads_exception
from ..task import CommandResult, Task
from . import ipc
from .future import TaskFuture
from .ipc import ManagerStats
from .packs import PackBuilder

log = logging.getLogger("packmule.manager")

#: Seconds between heartbeats in each direction. Short enough that a hung
#: worker is noticed within a lease; cheap (one small message per worker).
HEARTBEAT_INTERVAL = 5.0
#: A worker not heard from for this long is declared lost and its tasks are
#: requeued (six missed heartbeats). A worker whose process dies is noticed at
#: once instead, through its closed connection.
LEASE = 30.0
#: How long the manager's loop may take to start, or to answer a call.
LOOP_TIMEOUT = 60.0
#: After the loop's connection closed without a goodbye, how long to wait for its exit
#: code before failing the unfinished tasks with ManagerCrashed (it exits at once when
#: killed: the connection closes as it exits).
CRASH_WAIT = 0.5

__all__ = ["HEARTBEAT_INTERVAL", "LEASE", "Manager", "ManagerStats"]

#: What a Manager writes in its run directory (removed again if its constructor fails).
_RUN_FILES = ("password", ipc.LOOP_LOG, ipc.LOOP_CRASH, EVENTS_FILE, STATUS_FILE)
#: Hosts that mean "listen on every interface": :attr:`Manager.address` then gives a
#: name (or address) that workers on other nodes can use instead.
_ALL_INTERFACES = frozenset({"0.0.0.0", "*", "", "::", "[::]"})


class Manager:
    """Queue tasks and run them on ``packmule worker`` daemons.

    ``port=0`` picks a free port (see :attr:`port`). The secret comes from
    ``password_file``, else ``$PACKMULE_PASSWORD``; with neither, a fresh one
    is written to ``<run_dir>/password`` (mode 0600) for workers to use
    (:attr:`password_file`). ``host`` is the interface to listen on:
    loopback by default, ``"0.0.0.0"`` to accept workers on other machines
    (:attr:`address` then names this machine as they can reach it).
    ``run_dir`` (default: a new ``./packmule-runs/NNN-YYYYMMDD-HHMMSS/``, or
    under ``$PACKMULE_RUNS_DIR``, with a ``latest`` link next to it) holds the
    password file, the event log ``events.jsonl`` (:attr:`events_path`), the
    status file ``status.json`` (:attr:`status_path`; :meth:`status` makes it fresh,
    ``status(brief=True)`` only its counts, cheap to ask often), the
    loop's own log ``manager.log`` (:attr:`loop_log`) and the traceback of a
    fatal signal that kills it, ``manager.crash`` (docs/observability.md).
    ``observe=False`` writes neither the event log nor the status file. A
    Manager whose constructor fails removes the run directory it made.
    ``message_sink`` receives the monitoring messages tasks leave in
    ``$PACKMULE_RADIO_DIR`` (the Parsl executor's monitoring radio).
    ``on_worker_joined`` is called (on the thread that resolves futures) with
    each worker's ``worker_joined`` event as it joins.
    ``default_category`` is the allocation policy of categories not
    configured with :meth:`configure_category` (default: FIXED, nothing
    learned).
    Its own errors derive from :class:`~packmule.errors.ManagerError`: it cannot
    start (:class:`~packmule.errors.ManagerStartError`, an ``OSError``), it was
    shut down (``ManagerClosed``), or its loop process died (``ManagerCrashed``,
    which unfinished futures then raise).
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
        observe: bool = True,
        on_worker_joined: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if heartbeat_interval <= 0 or lease < 2 * heartbeat_interval:
            raise ValueError(
                f"need heartbeat_interval > 0 and lease >= 2 x interval, got "
                f"{heartbeat_interval} and {lease}"
            )
        # What this constructor made, removed again if it fails.
        made: Path | None = None
        made_base: Path | None = None
        there: set[str] = set()  # what a run_dir= that existed held before
        base = runs_base()
        try:
            if run_dir:
                self.run_dir = Path(run_dir)
                if self.run_dir.is_dir():
                    there = set(os.listdir(self.run_dir))
                else:
                    made = self.run_dir
                self.run_dir.mkdir(parents=True, exist_ok=True)
            else:
                if not base.exists():
                    made_base = base
                self.run_dir = made = new_run_dir(base).absolute()
        except OSError as exc:
            if made_base is not None:
                remove_run_dir(made_base)
            where = run_dir or f"under {base} (${RUNS_ENV} or ./packmule-runs)"
            raise ManagerStartError(
                exc.errno, f"cannot create the manager's run directory {where}: "
                f"{exc.strerror or exc}; pass run_dir= a directory this user can write") from exc
        try:
            self._start(port, password_file, host, heartbeat_interval, lease,
                        shutdown_workers, validate, message_sink, default_category, prefetch,
                        pack_cache, observe, on_worker_joined)
        except BaseException:
            proc = getattr(self, "_proc", None)
            if proc is not None and proc.poll() is None:  # (interrupted while it started)
                proc.kill()
                proc.wait()
            if made is not None:
                remove_run_dir(made, made_base)
            else:  # the user's directory: only what this constructor wrote there goes
                for name in set(_RUN_FILES) - there:
                    with contextlib.suppress(OSError):
                        (self.run_dir / name).unlink()
            raise
        if not run_dir:
            try:
                point_latest(self.run_dir)
            except OSError as exc:
                log.warning("cannot point %s at %s: %s", self.run_dir.parent / "latest",
                            self.run_dir, exc)
        log.info("manager listening on %s%s (run dir %s)", self.address,
                 f" (all interfaces, {host or '*'})" if host in _ALL_INTERFACES else "",
                 self.run_dir)

    def _start(
        self, port: int, password_file: str | os.PathLike[str] | None, host: str,
        heartbeat_interval: float, lease: float, shutdown_workers: bool, validate: bool,
        message_sink: Callable[[list[bytes]], None] | None,
        default_category: CategoryConfig | None, prefetch: bool,
        pack_cache: str | os.PathLike[str] | None, observe: bool,
        on_worker_joined: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        """The constructor's part after the run directory: the secret, and the loop."""
        secret = load_secret(password_file)  # AuthenticationError: unreadable or empty
        if secret is None:
            password_file = self.run_dir / "password"
            try:
                secret = write_new_password_file(Path(password_file))
            except OSError as exc:
                raise ManagerStartError(
                    exc.errno, f"cannot write a new password file {password_file}: "
                    f"{exc.strerror or exc}; pass run_dir= a directory this user can write, "
                    "or password_file= an existing one") from exc
        self.password_file: Path | None = Path(password_file) if password_file else None
        self._secret = secret
        self.host = host
        self.heartbeat_interval = heartbeat_interval
        self.lease = lease
        self.message_sink = message_sink
        self.on_worker_joined = on_worker_joined
        self.pack_cache = Path(pack_cache) if pack_cache is not None else None
        self.observe = observe
        self._public_host = public_host(host)
        #: Element-wise largest connected worker (updated as workers come and go).
        self.largest_worker: Resources = Resources(0, 0, 0, 0)
        self._packer: PackBuilder | None = None
        self._ids = itertools.count(1)
        self._calls = itertools.count(1)
        self._replies: dict[int, Future[Any]] = {}
        # Tasks submitted and not yet finished: what wait() and as_completed() look at.
        self._unfinished: dict[int, Task] = {}
        self._unfinished_cv = threading.Condition()
        self._send_lock = threading.Lock()
        #: Tasks whose call may yet go to the loop in shared memory (see ipc.share).
        self._shared_slots = threading.BoundedSemaphore(ipc.MAX_SHARED)
        self._replies_lock = threading.Lock()
        self._closed = False  # no more submissions: shut down, or the loop ended
        self._shut_down = False
        #: Why the loop ended, when it was not told to (it crashed); None while it runs.
        self._crash: str | None = None
        self._returncode: int | None = None

        ours, theirs = socket.socketpair()
        # The loop imports packmule as this program does (say, from a source tree).
        path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "packmule.manager", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": path},
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send(ipc.Config(
            host=host or "0.0.0.0", port=port, secret=secret, run_dir=self.run_dir,
            heartbeat_interval=heartbeat_interval, lease=lease,
            shutdown_workers=shutdown_workers, validate=validate,
            default_category=default_category, prefetch=prefetch,
            log_level=log.getEffectiveLevel(),
            forward_messages=message_sink is not None,
            observe=observe, public_host=self._public_host,
            password_file=str(self.password_file) if self.password_file else None,
            report_joins=on_worker_joined is not None,
        ))
        started = self._first_reply()
        if isinstance(started, ipc.StartFailed):
            self._proc.wait()
            self._conn.close()
            raise ManagerStartError(started.errno, started.message)
        self.port: int = started.port
        #: Outcomes read while a future's callback waited for a reply (see _call).
        self._backlog: collections.deque[ipc.Message] = collections.deque()
        self._reader = threading.Thread(target=self._read_loop, name="packmule-results",
                                        daemon=True)
        self._reader.start()

    def _first_reply(self) -> ipc.Ready | ipc.StartFailed:
        """The loop's ``Ready`` (or why it could not start); its log records are passed on."""
        try:
            while self._conn.poll(LOOP_TIMEOUT):
                msg = ipc.receive(self._conn)
                if isinstance(msg, ipc.Log):
                    self._relog(msg)
                elif isinstance(msg, ipc.Ready | ipc.StartFailed):
                    return msg
                else:
                    raise ProtocolError(f"the loop sent {type(msg).__name__} before Ready")
            timed_out = True
        except (EOFError, OSError):
            timed_out = False
        self._proc.kill()
        code = self._proc.wait()
        self._conn.close()
        advice = (f"check that {sys.executable} -m packmule.manager can import packmule; "
                  f"its error is above (on standard error) or in {self.loop_log}")
        if timed_out:
            raise ManagerTimeout(f"the packmule manager's loop process did not start within "
                                 f"{LOOP_TIMEOUT:.0f} s; {advice}")
        raise ManagerStartError(errno.ECHILD, f"the packmule manager's loop process exited at "
                                              f"start ({_ending(code)}); {advice}")

    # ================================================================ public API
    @property
    def loop_pid(self) -> int:
        """The process id of the manager's loop process (for monitoring its CPU and memory)."""
        return self._proc.pid

    @property
    def loop_log(self) -> Path:
        """The loop process's log file: what it logs, and the traceback if it crashes."""
        return self.run_dir / ipc.LOOP_LOG

    @property
    def address(self) -> str:
        """``host:port`` for ``packmule worker``. Listening on every interface (``host``
        ``"0.0.0.0"``), this machine's name as other nodes can reach it: its fully
        qualified name or host name when that does not resolve to loopback only, else the
        address of an interface that is not loopback."""
        host = self._public_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"

    @property
    def events_path(self) -> Path:
        """The event log, ``run_dir/events.jsonl`` (docs/observability.md)."""
        return self.run_dir / EVENTS_FILE

    @property
    def status_path(self) -> Path:
        """The status file, ``run_dir/status.json``, rewritten about once a second."""
        return self.run_dir / STATUS_FILE

    def status(self, brief: bool = False) -> dict[str, Any]:
        """What the manager is doing now: the same as ``status.json`` holds, made fresh
        (tasks, categories, workers, unfinished tasks with why they wait, failures).

        ``brief=True`` leaves out the lists (``workers``, ``waiting_reasons``,
        ``unfinished``, ``failed`` and their ``_omitted`` counts) and keeps the counts:
        the tasks, the resources and the categories. Its cost does not grow with the
        workers nor the waiting tasks (only with the categories), so it may be asked
        often, as :meth:`progress` does twice a second."""
        status: dict[str, Any] = self._call("status", brief)
        return status

    def progress(self, futures: Iterable[Future[Any]] | None = None, **kw: Any) -> None:
        """Progress bars, a line per category (see :func:`packmule.progress`): of this
        manager's tasks, or of ``futures``."""
        from ..observe.progress import progress

        return progress(self if futures is None else futures, **kw)

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
        task.id = next(self._ids)
        fut = TaskFuture(self, task.id)
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
        if self._closed:
            raise self._closed_error()
        with self._unfinished_cv:
            self._unfinished[task.id] = task
        if task.pack_functions:
            if self._packer is None:
                self._packer = PackBuilder(self.pack_cache, self._pack_ready, self._pack_failed,
                                           self._pack_built)
            self._packer.submit(task, payload)
        else:
            self._queue(task, payload)
        return fut

    def _queue(self, task: Task, payload: bytes) -> None:
        """Hand the task to the loop (or cancel it if the manager has shut down)."""
        assert task.id is not None
        fd = self._share(task, payload) if len(payload) >= ipc.SHARED_PAYLOAD else None
        job = ipc.Submit(task.id, task.kind, payload if fd is None else b"", task.command,
                         task.resources, task.category, task.priority, task.max_retries,
                         dict(task.env) if task.env else None,
                         task.input_files, task.output_files, task.timeout, task.pack,
                         task.describe(), shared=fd is not None)
        try:
            sent = self._send(job, fd)
        finally:
            if fd is not None:
                os.close(fd)
        if not sent:
            self._fail(task, self._end_error(task.id, "was submitted while"))

    def _share(self, task: Task, payload: bytes) -> int | None:
        """A memfd holding a large call for the loop to map (None: it crosses the socket),
        while fewer than MAX_SHARED unfinished tasks have one."""
        slots = self._shared_slots
        if task.future is None or not slots.acquire(blocking=False):
            return None
        fd = ipc.share(payload)
        if fd is None:
            slots.release()
        else:
            task.future.add_done_callback(lambda _: slots.release())
        return fd

    def _pack_ready(self, task: Task, payload: bytes, pack: Pack) -> None:
        """(Pack thread) the task's pack is built: it joins the queue."""
        task.pack = pack
        if task.future is not None and task.future.done():
            return  # cancelled while its pack was being built, or the manager stopped
        self._queue(task, payload)

    def _pack_built(self, pack: Pack, seconds: float) -> None:
        """(Pack thread) a pack was found or built: for the event log."""
        self._send(ipc.PackBuilt(pack.digest, str(pack.path), pack.size, seconds))

    def _pack_failed(self, task: Task, exc: BaseException) -> None:
        """(Pack thread) the task's pack cannot be built: the task fails with why."""
        self._fail(task, exc)

    def _future_cancelled(self, task_id: int) -> None:
        """(Any thread) a task's future was cancelled: the loop drops or kills it."""
        self._send(ipc.Cancel(task_id))
        self._mark_finished(task_id)

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
        mode: str | AllocationMode = AllocationMode.AUTO,
        *,
        max: Resources | Mapping[str, int] | None = None,
        min: Resources | Mapping[str, int] | None = None,
        first_guess: Resources | Mapping[str, int] | None = None,
        steady_n: int = STEADY_N,
    ) -> None:
        """Choose how tasks of category ``name`` get their allocations.

        ``mode``: auto (the default: learned optimal ladders that follow the
        workload), fixed, max, min_waste, max_throughput, greedy_bucketing,
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
        self._call("configure_category", name, config)

    def category_stats(self) -> dict[str, dict[str, object]]:
        """Per category: mode, tasks seen, exhaustions, max seen, current first allocation..."""
        stats: dict[str, dict[str, object]] = self._call("category_stats")
        return stats

    def stats(self) -> ManagerStats:
        """Workers, tasks by state, and committed vs total resources, right now."""
        stats: ManagerStats = self._call("stats")
        return stats

    def shutdown(self, wait: bool = True) -> None:
        """Stop the manager: tell workers to exit (``shutdown_workers``), fail unfinished tasks.

        May be called from a future's callback (it then does not wait).
        """
        if self._shut_down:
            return
        self._shut_down = self._closed = True
        try:
            if self._packer is not None:
                self._packer.close(wait=wait)  # tasks still waiting for packs are cancelled
        finally:
            self._send(ipc.Stop())
        if wait and threading.current_thread() is not self._reader:
            self._reader.join()

    def __enter__(self) -> Manager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ================================================================ to and from the loop
    def _send(self, msg: ipc.Message, fd: int | None = None) -> bool:
        """Send to the loop, with a descriptor right after it (a shared payload); False if
        the loop has stopped."""
        with self._send_lock:
            try:
                self._conn.send(ipc.encode(msg))
                if fd is not None:
                    ipc.send_shared(self._conn, fd)
                return True
            except (OSError, ValueError):
                return False

    def _call(self, name: str, *args: Any) -> Any:
        fut: Future[Any] = Future()
        call_id = next(self._calls)
        with self._replies_lock:
            if self._closed or not self._reader.is_alive():
                raise self._closed_error()
            self._replies[call_id] = fut
        if not self._send(ipc.Call(call_id, name, args)):
            raise self._closed_error()
        if threading.current_thread() is self._reader:
            # A future's callback asks: this thread must read the reply itself;
            # outcomes that come first wait in the backlog.
            deadline = time.monotonic() + LOOP_TIMEOUT
            while not fut.done() and self._conn.poll(max(0.0, deadline - time.monotonic())):
                msg = ipc.receive(self._conn)
                if isinstance(msg, ipc.Done | ipc.Messages | ipc.Stopped):
                    self._backlog.append(msg)
                else:
                    self._handle(msg)
            if not fut.done():
                with self._replies_lock:
                    self._replies.pop(call_id, None)
                raise self._call_timeout(name)
        try:
            return fut.result(timeout=LOOP_TIMEOUT)
        except futures.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            with self._replies_lock:
                self._replies.pop(call_id, None)
            raise self._call_timeout(name) from None

    def _call_timeout(self, name: str) -> ManagerTimeout:
        return ManagerTimeout(
            f"the manager's loop (pid {self.loop_pid}) did not answer {name}() within "
            f"{LOOP_TIMEOUT:.0f} s; it may be overloaded (see its CPU use, and {self.loop_log})")

    def _handle(self, msg: ipc.Message) -> bool:
        """Act on one message from the loop; False once it has stopped."""
        if isinstance(msg, ipc.Done):
            self._done(msg)
        elif isinstance(msg, ipc.Messages):
            self._deliver_messages(msg.messages)
        elif isinstance(msg, ipc.Reply):
            with self._replies_lock:
                fut = self._replies.pop(msg.call_id)
            if msg.ok:
                fut.set_result(msg.value)
            else:
                fut.set_exception(msg.value)
        elif isinstance(msg, ipc.Largest):
            self.largest_worker = msg.resources
        elif isinstance(msg, ipc.WorkerJoined):
            if self.on_worker_joined is not None:
                try:
                    self.on_worker_joined(msg.event)
                except Exception:
                    log.exception("the manager's on_worker_joined callback failed")
        elif isinstance(msg, ipc.Log):
            self._relog(msg)
        elif isinstance(msg, ipc.Stopped):
            if msg.error:
                self._crash = (f"an internal error ({msg.error}), a bug in packmule: please "
                               "report it with the log")
            elif not self._shut_down:
                self._crash = ("it stopped, unasked and without an error of its own, on losing "
                               "its connection to this process")
            return False
        else:
            raise ProtocolError(f"the loop sent the Manager a {type(msg).__name__}")
        return True

    def _read_loop(self) -> None:
        """Outcomes (futures resolved, their callbacks run, here), monitoring
        messages, replies and log records from the loop."""
        try:
            while True:
                msg = (self._backlog.popleft() if self._backlog
                       else ipc.receive(self._conn))
                try:
                    if not self._handle(msg):
                        break
                except Exception:  # one bad message must not take the others with it
                    log.exception("packmule could not handle a %s message from its loop",
                                  type(msg).__name__)
        except (EOFError, OSError):
            # The loop's end of the socket closed without a Stopped: the process died.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=CRASH_WAIT)
            self._crash = (_ending(self._proc.returncode) if self._proc.returncode is not None
                           else "it closed its connection and is still running")
        finally:
            if self._crash is not None:
                if self._proc.returncode is None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self._proc.wait(timeout=CRASH_WAIT)
                self._returncode = self._proc.returncode
                crash_file = self.run_dir / ipc.LOOP_CRASH
                with contextlib.suppress(OSError):
                    if crash_file.stat().st_size:
                        self._crash += f" (its traceback as it died is in {crash_file})"
                log.error("%s", self._closed_error())
            with self._replies_lock:
                self._closed = True
                replies = list(self._replies.values())
                self._replies.clear()
            self._conn.close()
            for fut in replies:
                fut.set_exception(self._closed_error())
            if self._crash is not None:
                self._fail_the_rest()  # at once: a crashed loop has nothing more to say
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=30)
            self._fail_the_rest()

    def _closed_error(self) -> ManagerClosed:
        """What submit() and calls raise once the loop has ended."""
        if self._crash is None:
            return ManagerClosed("the manager has been shut down; create a new Manager")
        return ManagerCrashed(
            f"the packmule manager's loop process (pid {self._proc.pid}) crashed: "
            f"{self._crash}. Its log is {self.loop_log}. Unfinished tasks failed; create a "
            "new Manager and submit them again",
            None, self._returncode, str(self.loop_log))

    def _end_error(self, tid: int, when: str = "did not finish before") -> TaskError:
        """The error of a task the loop ended without finishing: TaskCancelled after a
        shutdown, ManagerCrashed after a crash."""
        if self._crash is None:
            return TaskCancelled(f"task {tid} {when} the manager shut down", tid)
        return ManagerCrashed(
            f"task {tid} {when} the packmule manager's loop process (pid {self._proc.pid}) "
            f"crashed: {self._crash}. Its log is {self.loop_log}. Submit the task again to a "
            "new Manager", tid, self._returncode, str(self.loop_log))

    def _fail_the_rest(self) -> None:
        with self._unfinished_cv:
            left = list(self._unfinished.values())
        for task in left:
            assert task.id is not None
            self._fail(task, self._end_error(task.id))

    def _done(self, done: ipc.Done) -> None:
        """A task finished: fill in the Task, then resolve its future."""
        tid, ok, kind, data, attrs = done
        with self._unfinished_cv:
            task = self._unfinished.get(tid)
        if task is None or task.future is None:
            return
        for name, value in attrs.items():
            if name in ("stdout", "stderr"):
                value = value.decode("utf-8", "replace")
            setattr(task, name, value)
        task.finish_time = time.time()
        try:
            if kind == "python":
                outcome: Any = loads(data)
            elif kind == "shell":
                outcome = CommandResult(task.exit_code or 0, task.stdout, task.stderr)
            elif kind == "exception":
                outcome = loads_exception(data)
            else:
                outcome = data
        except Exception as exc:  # e.g. a result whose class cannot be imported here
            ok, outcome = False, SerializationError(
                f"the result of task {tid} cannot be unpickled here: {type(exc).__name__}: "
                f"{exc}. Return plain data, or objects of classes this program can import")
        fut = task.future
        with contextlib.suppress(Exception):  # cancelled concurrently
            if ok:
                fut.set_result(outcome)
            else:
                fut.set_exception(outcome)
        self._mark_finished(tid)

    def _fail(self, task: Task, exc: BaseException) -> None:
        if task.future is not None and not task.future.done():
            with contextlib.suppress(Exception):  # cancelled concurrently
                task.future.set_exception(exc)
        if task.id is not None:
            self._mark_finished(task.id)

    def _deliver_messages(self, messages: list[bytes]) -> None:
        if self.message_sink is not None:
            try:
                self.message_sink(messages)
            except Exception:
                log.exception("delivering monitoring messages failed")

    @staticmethod
    def _relog(record: ipc.Log) -> None:
        logging.getLogger(record.logger).log(record.level, "%s", record.message)

    def _mark_finished(self, tid: int) -> None:
        with self._unfinished_cv:
            self._unfinished.pop(tid, None)
            if not self._unfinished:
                self._unfinished_cv.notify_all()


def _ending(code: int | None) -> str:
    """How a process ended, from its exit status, for a message."""
    if code is None:
        return "it is still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the kernel's out-of-memory killer sends it too: see dmesg)" if (
            -code == signal.SIGKILL) else ""
        return f"killed by {name}{hint}"
    if code == ipc.EXIT_CRASHED:
        return f"an internal error (exit code {code})"
    return f"exit code {code}"


def public_host(host: str) -> str:
    """The host workers are told to connect to: ``host`` itself, or, for every interface,
    this machine's fully qualified name or host name when it resolves to something other
    than loopback, else the address of an interface that is not loopback (never
    127.0.0.1, unless this machine has nothing else)."""
    if host not in _ALL_INTERFACES:
        return host
    names = []
    with contextlib.suppress(OSError):
        names.append(socket.getfqdn())
    with contextlib.suppress(OSError):
        names.append(socket.gethostname())
    for name in names:
        if name and _reachable_name(name):
            return name
    address = _interface_address()
    if address is not None:
        return address
    return next((n for n in names if n), "127.0.0.1")


def _reachable_name(name: str) -> bool:
    """Whether ``name`` resolves here to some address that is not loopback."""
    try:
        infos = socket.getaddrinfo(name, None)
    except (OSError, UnicodeError):
        return False
    for info in infos:
        try:
            address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        except ValueError:
            continue
        if not address.is_loopback and not address.is_link_local:
            return True
    return False


def _interface_address() -> str | None:
    """The first IPv4 (else IPv6) address of an interface that is not loopback."""
    import psutil  # (only when listening on every interface)

    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    try:
        interfaces = psutil.net_if_addrs()
    except Exception:
        return None
    for addrs in interfaces.values():
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                address = ipaddress.ip_address(str(a.address).split("%")[0])
            except ValueError:
                continue
            if not (address.is_loopback or address.is_link_local or address.is_unspecified):
                found.append(address)
    found.sort(key=lambda a: a.version)
    return str(found[0]) if found else None
