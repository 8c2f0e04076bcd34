"""A runner: a warm interpreter that executes a worker's tasks, one at a time.

The worker starts runners with ``python -m packmule.worker.runner CHANNEL BOARD
STDOUT STDERR`` (four inherited file descriptors), each in its own session
(process group) and as a *child subreaper* (``PR_SET_CHILD_SUBREAPER``, set by
the worker between fork and exec), and talks to it over a socket pair (a
:class:`Channel`): one :class:`~.runner_messages.Run` per task, one
:class:`~.runner_messages.Done` back. Python tasks run inside the runner
itself, so they pay no interpreter start; shell tasks run as a child in the
runner's process group.

Nothing the runner needs lives at a path a task could delete: the board and
the two capture files are open descriptors of files the worker has already
unlinked, and its own working directory is put back (or ``/``) after each
task. A task's standard streams, working directory and environment are put
back after it, whatever it did to them.

When a task ends the runner kills every process it left behind
(:func:`end_leftovers`): they are all its descendants, even those that left
its process group or session and were orphaned (a subreaper adopts them), so
it stops them parents first, kills them and reaps them. The runner itself
lives on for the next task; the worker kills the whole runner instead when
the task is killed (timeout, limits, cancel) or its leftovers would not die.

The requests come from the worker, which got them from an authenticated
manager: this is the only place where task calls are unpickled.

A runner is started for every warm slot and again after every killed task,
and holds what it imports for its whole life, so it imports only what it
needs to take requests: ``msgpack``, and ``pickle`` through ``serialize``;
not ``multiprocessing``, ``typing`` or cloudpickle (until a task needs it),
nor ``subprocess`` before its first shell task. ``benchmarks/footprint.py``
measures it.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import select
import signal
import struct
import sys
import threading
import time

from ..errors import ProtocolError, SerializationError
from ..serialize import dumps_exception, dumps_result, loads
from .runner_messages import CUT_MARKER, OUTPUT_LIMIT, Done, Run, decode, encode

#: ``typing`` would cost each runner 1.7 MB and 15 ms; only type checkers need it
#: here (they take any ``TYPE_CHECKING`` as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TextIO

#: Seconds a runner waits for the processes a task left behind to die once killed;
#: those still there after it are reported (``Done.unkillable``), and the worker
#: then kills the whole runner. Also the most time spent looking for a task's
#: processes to stop (:func:`kill_descendants`) when a task or runner is killed.
KILL_WAIT = 2.0
#: A long message to or from a runner is written this many bytes at a time.
SEND_CHUNK = 4 << 20


def _first_bytes(views: list[memoryview], limit: int) -> list[memoryview]:
    """The leading views holding at most ``limit`` bytes (the first cut to fit)."""
    out = []
    for v in views:
        if len(v) >= limit:
            out.append(v[:limit])
            break
        out.append(v)
        limit -= len(v)
    return out


class Channel:
    """One end of the worker-runner socket pair: whole messages, each after its length.

    The framing (a signed 32-bit big-endian length; -1 and a 64-bit length
    beyond 2 GiB) and the methods are those of
    :class:`multiprocessing.connection.Connection`, over the bare descriptor:
    importing ``multiprocessing`` would cost each runner 4.6 MB and 20 ms.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self._open()

    def _open(self) -> int:
        if self.fd < 0:
            raise OSError("the channel is closed")
        return self.fd

    def send_bytes(self, data: bytes | list[bytes],
                   between: Callable[[], object] | None = None) -> None:
        """Send one message: ``data``, or the concatenation of its parts (not copied).
        ``between`` is called after each :data:`SEND_CHUNK` bytes of a long message
        (the worker's heartbeat while a runner takes a task's large argument)."""
        parts = [data] if isinstance(data, bytes) else data
        n = sum(len(p) for p in parts)
        header = struct.pack("!i", n) if n <= 0x7FFFFFFF else struct.pack("!iQ", -1, n)
        fd = self._open()
        views = [memoryview(header), *(memoryview(p) for p in parts if p)]
        while views:
            done = os.writev(fd, _first_bytes(views, SEND_CHUNK))
            while views and done >= len(views[0]):
                done -= len(views.pop(0))
            if views:
                views[0] = views[0][done:]
                if between is not None:
                    between()

    def recv_bytes(self, limit: int | None = None, patience: float | None = None
                   ) -> bytearray:
        """The next message; EOFError when the other end has closed.

        ProtocolError for a negative length, one over ``limit`` bytes, or a message
        whose rest has not come ``patience`` seconds after its last bytes: the
        worker's guard against a task that wrote into its runner's channel.
        """
        (n,) = struct.unpack("!i", self._read(4, patience))
        if n == -1:
            (n,) = struct.unpack("!Q", self._read(8, patience))
        elif n < 0:
            raise ProtocolError(f"a message of length {n}")
        if limit is not None and n > limit:
            raise ProtocolError(f"a message of {n} bytes, more than the {limit} allowed")
        return self._read(n, patience)

    def _read(self, n: int, patience: float | None) -> bytearray:
        fd = self._open()
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            if patience is not None and not self.poll(patience):
                raise ProtocolError(f"a message stopped after {got} of its {n} bytes "
                                    f"(nothing more for {patience:g} s)")
            k = os.readv(fd, [view[got:]])
            if k == 0:
                raise EOFError("the other end closed the channel")
            got += k
        return buf

    def poll(self, timeout: float = 0.0) -> bool:
        """Whether a message (or the end) is waiting, within ``timeout`` seconds."""
        p = select.poll()
        p.register(self._open(), select.POLLIN)
        return bool(p.poll(timeout * 1000))

    def close(self, _close: Callable[[int], None] = os.close) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            _close(fd)

    def __del__(self) -> None:
        self.close()


def _read_capped(fd: int) -> bytes:
    """What a task wrote to a capture file, its end only beyond ``OUTPUT_LIMIT``."""
    try:
        size = os.fstat(fd).st_size
        if size > OUTPUT_LIMIT:
            return CUT_MARKER % OUTPUT_LIMIT + _pread_all(fd, OUTPUT_LIMIT, size - OUTPUT_LIMIT)
        return _pread_all(fd, size, 0)
    except OSError:
        return b""


def _pread_all(fd: int, n: int, offset: int) -> bytes:
    parts = []
    while n > 0:
        got = os.pread(fd, n, offset)
        if not got:
            break
        parts.append(got)
        n -= len(got)
        offset += len(got)
    return b"".join(parts)


def _rewind(fd: int) -> None:
    """Empty a capture file for the next task."""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)


def unpickle_call(payload: bytes) -> tuple[Any, ...] | bytes:
    """(fn, args, kwargs), or a pickled SerializationError saying why not."""
    try:
        call: tuple[Any, ...] = loads(payload)
        return call
    except Exception as exc:
        problem = SerializationError(
            f"the worker cannot unpickle the task's call: {type(exc).__name__}: {exc}. Whatever "
            "defines the function and its arguments must be importable where the worker runs "
            "(install it there, or put it on the worker's PYTHONPATH)."
        )
        problem.__cause__ = exc
        return dumps_exception(problem)


def run_python(call: tuple[Any, ...]) -> tuple[str, bytes]:
    """Call the function; returns (status, pickled value or exception)."""
    fn, args, kwargs = call
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:  # SystemExit or KeyboardInterrupt in a task: not the runner's
        return "exception", dumps_exception(exc)
    try:
        return "success", dumps_result(value)
    except Exception as exc:
        return "exception", dumps_exception(exc)


class _Proc:
    """This process's /proc files, opened once: a task pays microseconds to be measured."""

    def __init__(self) -> None:
        self.clear_refs = self._open("/proc/self/clear_refs", os.O_WRONLY)
        self.status = self._open("/proc/self/status", os.O_RDONLY)
        self.io = self._open("/proc/self/io", os.O_RDONLY)

    @staticmethod
    def _open(path: str, flags: int) -> int:
        try:
            return os.open(path, flags)
        except OSError:
            return -1  # not Linux, or not allowed: that figure reads 0

    def reset_peak(self) -> None:
        """Make VmHWM start again from the current resident set."""
        if self.clear_refs >= 0:
            with contextlib.suppress(OSError):
                os.write(self.clear_refs, b"5")

    def rss(self) -> tuple[int, int]:
        """(resident set, peak resident set since the last reset), in bytes."""
        rss = hwm = 0
        if self.status >= 0:
            for line in os.pread(self.status, 8192, 0).splitlines():
                if line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
                elif line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1]) * 1024
        return rss, hwm

    def read_written(self) -> tuple[int, int]:
        """Bytes read and written, all sources (this process and waited-for children)."""
        read = written = 0
        if self.io >= 0:
            for line in os.pread(self.io, 4096, 0).splitlines():
                key, _, value = line.partition(b":")
                if key == b"rchar":
                    read = int(value)
                elif key == b"wchar":
                    written = int(value)
        return read, written


_proc: _Proc | None = None


def _self() -> _Proc:
    global _proc
    if _proc is None:
        _proc = _Proc()
    return _proc


def run_shell(command: str, sandbox: str, env: dict[str, str], out: int,
              err: int) -> tuple[int, int, float]:
    """Run a command; returns (exit code, child's peak RSS in bytes, child CPU seconds)."""
    import subprocess  # only runners that run shell tasks pay for it

    proc = subprocess.Popen(
        ["/bin/sh", "-c", command], cwd=sandbox, env={**os.environ, **env},
        stdin=subprocess.DEVNULL, stdout=out, stderr=err,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime


class Board:
    """Where the runner posts (task number, baseline) for its worker to read: 16 bytes
    of a shared file, so no message is needed while the task runs."""

    def __init__(self, fd: int) -> None:
        try:
            self.map = mmap.mmap(fd, BOARD_SIZE)
        finally:
            os.close(fd)

    def post(self, seq: int, baseline: int) -> None:
        struct.pack_into("qq", self.map, 0, seq, baseline)


BOARD_SIZE = 16


def read_board(data: mmap.mmap, seq: int) -> int | None:
    """The baseline the runner posted for task number ``seq``, if it has."""
    posted, baseline = struct.unpack_from("qq", data, 0)
    return int(baseline) if posted == seq else None


def _anon_charge(limit_file: str, fallback: int) -> int:
    """What the runner's cgroup is charged now less the page cache it could reclaim
    (cgroup v1: ``memory.usage_in_bytes`` - ``active_file`` - ``inactive_file``): the
    base of a task's limit. Not the runner's resident set, which counts file pages
    mapped from elsewhere and what it touched before joining the group (about 9 MB
    the task could have used beyond its allocation); not the whole charge, whose
    cache (files earlier tasks wrote) is reclaimed before the limit bites; shared
    memory left behind stays counted, as it cannot be reclaimed. ``fallback`` if the
    files cannot be read."""
    base = limit_file[:limit_file.rindex("/") + 1]
    try:
        with open(base + "memory.usage_in_bytes", "rb") as f:
            charge = int(f.read())
        with open(base + "memory.stat", "rb") as f:
            for line in f:
                if line.startswith((b"active_file ", b"inactive_file ")):
                    charge -= int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return fallback
    return max(charge, 0)


def _set_limit(path: str, limit: int | None) -> None:
    """Write a cgroup memory limit (None: unlimited); OSError (EBUSY) if already over."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, b"-1" if limit is None else str(limit).encode())
    finally:
        os.close(fd)


# ---------------------------------------------------------------- a task's processes


def children(pid: int) -> list[int]:
    """The children of process ``pid`` (of all its threads), from ``/proc``."""
    out: list[int] = []
    base = f"/proc/{pid}/task/"
    try:
        threads = os.listdir(base)
    except OSError:
        return out
    for tid in threads:
        try:
            fd = os.open(f"{base}{tid}/children", os.O_RDONLY)
        except OSError:  # the thread ended (or a kernel without the file: see below)
            continue
        try:
            data = b""
            while chunk := os.read(fd, 65536):
                data += chunk
        finally:
            os.close(fd)
        out.extend(int(x) for x in data.split())
    if not out and not _HAVE_CHILDREN_FILES:
        out = _children_by_scan(pid)
    return out


def _children_by_scan(pid: int) -> list[int]:
    """``children`` on a kernel without ``/proc/PID/task/TID/children``: every
    process's parent, from ``/proc/*/stat``."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            out.append(int(name))
    return out


_HAVE_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def stop_descendants(root: int, stopped: dict[int, None]) -> None:
    """SIGSTOP every descendant of ``root`` not in ``stopped``, and add it there.

    Parents first: a stopped process cannot reap its children, so a child's pid
    cannot be freed and reused between reading it and stopping it, and a stopped
    process cannot start more. Call again until ``stopped`` grows no more: a
    process that exits before it is reached orphans its children, who then turn
    up under the nearest subreaper (the runner).
    """
    todo = [root]
    while todo:
        for child in children(todo.pop()):
            if child in stopped:
                continue
            try:
                os.kill(child, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            stopped[child] = None
            todo.append(child)


def kill_descendants(root: int, wait: float) -> int:
    """Stop every descendant of ``root``, then SIGKILL them; how many were killed.

    Passes of :func:`stop_descendants` repeat until one finds no new process, for
    at most ``wait`` seconds (a fork bomb may outrun a pass or two); ``wait`` 0 makes
    one pass. Whoever is their parent (or subreaper) reaps them.
    """
    stopped: dict[int, None] = {}
    deadline = time.monotonic() + wait
    while True:
        before = len(stopped)
        stop_descendants(root, stopped)
        if len(stopped) == before or time.monotonic() >= deadline:
            break
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(stopped)


def end_leftovers(wait: float = KILL_WAIT) -> tuple[int, int]:
    """Kill every process this runner's task left behind, and reap them.

    Returns (how many were killed, how many were still there after ``wait``
    seconds). Costs one ``waitpid`` when the task left nothing.
    """
    if not _reap():
        return 0, 0
    deadline = time.monotonic() + wait
    killed = kill_descendants(os.getpid(), wait)
    pause = 0.0005
    while _reap():
        if time.monotonic() > deadline:
            return killed, len(children(os.getpid()))
        time.sleep(pause)  # a killed process takes a moment to exit
        pause = min(0.02, pause * 2)
    return killed, 0


def _reap() -> bool:
    """Reap this process's children that have exited; whether any are left."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        return False
    return True


# ---------------------------------------------------------------- one task


class RunnerState:
    """What the runner puts back after every task: its standard streams (descriptors
    and ``sys`` objects), working directory and environment."""

    def __init__(self, out: int, err: int) -> None:
        #: The capture files of the tasks' stdout and stderr (unlinked by the worker).
        self.out, self.err = out, err
        for fd in (0, 1, 2):  # a worker started with a stream closed: /dev/null there
            try:
                os.fstat(fd)
            except OSError:
                os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one
        self.null = os.open(os.devnull, os.O_RDWR)
        # A task's output must not go to the worker's terminal between tasks either.
        os.dup2(self.null, 0)
        #: Descriptors 1 and 2 between tasks (the worker's), kept at other numbers.
        self.saved = os.dup(1), os.dup(2)
        self.streams = sys.stdin, sys.stdout, sys.stderr
        try:
            self.home = os.getcwd()
        except OSError:  # started in a directory that is gone
            self.home = "/"

    def enter(self, sandbox: str, env: dict[str, str]) -> dict[str, str | None]:
        """Set up a Python task: its environment, directory and captured streams."""
        saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        for stream in self.streams[1:]:
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(self.out, 1)
        os.dup2(self.err, 2)
        os.chdir(sandbox)
        return saved_env

    def leave(self, saved_env: dict[str, str | None]) -> None:
        """Put back what a Python task may have changed, whatever it did."""
        for stream in (sys.stdout, sys.stderr, *self.streams[1:]):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(self.null, 0)
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        # A task may have closed or replaced sys.stdin/stdout/stderr: ours again, or
        # fresh ones on 0-2 where it closed ours.
        self.streams = sys.stdin, sys.stdout, sys.stderr = (
            _reopened(0, self.streams[0]), _reopened(1, self.streams[1]),
            _reopened(2, self.streams[2]))
        try:
            os.chdir(self.home)
        except OSError:  # the task removed it
            self.home = "/"
            os.chdir(self.home)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _reopened(fd: int, stream: TextIO) -> TextIO:
    """``stream``, or a new one on descriptor ``fd`` if a task closed it."""
    if stream is None or not stream.closed:
        return stream
    return open(fd, "r" if fd == 0 else "w", closefd=False,
                encoding=stream.encoding, errors=stream.errors, buffering=-1 if fd == 0 else 1)


def execute(req: Run, started: Callable[[int], None], proc: RunnerState) -> Done:
    """Run one task as described by the worker's request, and measure it.

    The call is unpickled first, so the modules it imports into this warm
    interpreter are not billed to the task; then ``started`` gets the
    runner's resident set, the baseline the task's memory is measured from,
    and the runner's cgroup (``limit_file``) is limited to what it is charged
    then (:func:`_anon_charge`) plus the task's ``memory_limit`` bytes. When
    the task has ended, the processes it left running are killed.
    """
    sandbox, env = req.sandbox, req.env
    limit_file, limit = req.limit_file, req.memory_limit
    if limit_file and limit:
        _set_limit(limit_file, None)  # imports while unpickling are not the task's
    call = unpickle_call(req.payload) if req.kind == "python" else ()
    me = _self()
    me.reset_peak()
    baseline = me.rss()[0]
    started(baseline)
    if limit_file and limit:
        try:
            _set_limit(limit_file, _anon_charge(limit_file, baseline) + limit)
        except OSError:  # the group already holds more than the task may use
            return Done("exhausted", b"", -1, b"", b"", 0.0, limit + 1, baseline, baseline,
                        0.0, 0, 0, 0, 0)
    _rewind(proc.out)
    _rewind(proc.err)
    io_before = me.read_written()
    cpu_before = time.process_time()
    start = time.perf_counter()
    exit_code = 0
    child_rss, child_cpu = 0, 0.0
    if req.kind == "shell":
        exit_code, child_rss, child_cpu = run_shell(req.command, sandbox, env, proc.out,
                                                    proc.err)
        status, value = "success", b""
    else:
        saved_env = proc.enter(sandbox, env)
        try:
            if isinstance(call, bytes):
                status, value = "exception", call
            else:
                status, value = run_python(call)
        finally:
            proc.leave(saved_env)
    wall = time.perf_counter() - start
    killed, unkillable = end_leftovers()
    io_after = me.read_written()
    rss_after, hwm = me.rss()
    # A Python task's memory is what it added to the warm interpreter; a shell
    # task's is its child's own peak (the runner only waits for it).
    task_peak = child_rss if req.kind == "shell" else max(0, hwm - baseline)
    return Done(
        status, value, exit_code, _read_capped(proc.out), _read_capped(proc.err), wall,
        task_peak, baseline, rss_after, max(0.0, time.process_time() - cpu_before + child_cpu),
        max(0, io_after[0] - io_before[0]), max(0, io_after[1] - io_before[1]), killed,
        unkillable,
    )


def refused(exc: Exception) -> Done:
    """The answer to a request this runner cannot read: that task's failure."""
    problem = ProtocolError(
        f"the worker's request to its runner was malformed ({exc}); the runner may be "
        "another packmule version's than the worker (a pack built by another version?)")
    return Done("exception", dumps_exception(problem), -1, b"", b"", 0.0, 0, 0, 0, 0.0, 0, 0,
                0, 0)


def _die_with_parent(interval: float = 0.5) -> None:
    """End this runner, its task and what the task started once the worker is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        kill_descendants(os.getpid(), KILL_WAIT)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main() -> None:
    conn = Channel(int(sys.argv[1]))
    board = Board(int(sys.argv[2]))
    proc = RunnerState(int(sys.argv[3]), int(sys.argv[4]))
    _die_with_parent()
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            req = decode(Run, data)
        except ProtocolError as exc:
            reply = refused(exc)
        else:
            reply = execute(req, functools.partial(board.post, req.seq), proc)
        try:
            conn.send_bytes(encode(reply))
        except OSError:  # the worker is gone (killed): no one to answer, nothing to say
            return


if __name__ == "__main__":
    main()
