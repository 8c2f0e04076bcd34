"""A runner: a warm interpreter that executes a worker's tasks, one at a time.

The worker starts runners with ``python -m packmule.worker.runner FD BOARD``,
each in its own session (process group), and talks to it over a socket pair
(a :class:`Channel`): one msgpack request per task, one reply. Python tasks
run inside the runner itself, so they pay no interpreter start; shell tasks
run as a child in the runner's process group. Killing the group kills the task and anything it
started; the worker then starts a fresh runner.

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

import msgpack

from ..errors import SerializationError
from ..serialize import dumps_exception, dumps_result, loads

#: ``typing`` would cost each runner 1.7 MB and 15 ms; only type checkers need it
#: here (they take any ``TYPE_CHECKING`` as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: Captured stdout/stderr beyond this many bytes is cut (the end is kept).
OUTPUT_LIMIT = 1 << 20


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

    def send_bytes(self, data: bytes) -> None:
        n = len(data)
        header = struct.pack("!i", n) if n <= 0x7FFFFFFF else struct.pack("!iQ", -1, n)
        fd = self._open()
        views = [memoryview(header), memoryview(data)]
        while views:
            done = os.writev(fd, views)
            while views and done >= len(views[0]):
                done -= len(views.pop(0))
            if views:
                views[0] = views[0][done:]

    def recv_bytes(self) -> bytearray:
        """The next message; EOFError when the other end has closed."""
        (n,) = struct.unpack("!i", self._read(4))
        if n == -1:
            (n,) = struct.unpack("!Q", self._read(8))
        return self._read(n)

    def _read(self, n: int) -> bytearray:
        fd = self._open()
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
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


def _read_capped(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > OUTPUT_LIMIT:
                f.seek(size - OUTPUT_LIMIT)
                return b"[... output cut, last %d bytes follow ...]\n" % OUTPUT_LIMIT + f.read()
            return f.read()
    except OSError:
        return b""


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


def run_shell(command: str, sandbox: str, env: dict[str, str], out_path: str,
              err_path: str) -> tuple[int, int, float]:
    """Run a command; returns (exit code, child's peak RSS in bytes, child CPU seconds)."""
    import subprocess  # only runners that run shell tasks pay for it

    with open(out_path, "wb") as out, open(err_path, "wb") as err:
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

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR)
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


def _set_limit(path: str, limit: int | None) -> None:
    """Write a cgroup memory limit (None: unlimited); OSError (EBUSY) if already over."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, b"-1" if limit is None else str(limit).encode())
    finally:
        os.close(fd)


def execute(req: dict[str, Any], started: Callable[[int], None]) -> dict[str, Any]:
    """Run one task as described by the worker's request, and measure it.

    The call is unpickled first, so the modules it imports into this warm
    interpreter are not billed to the task; then ``started`` gets the
    runner's resident set, the baseline the task's memory is measured from,
    and the runner's cgroup (``limit_file``) is limited to baseline plus the
    task's ``memory_limit`` bytes.
    """
    sandbox, env = req["sandbox"], req["env"]
    out_path, err_path = req["stdout"], req["stderr"]
    limit_file, limit = req.get("limit_file", ""), req.get("memory_limit", 0)
    if limit_file and limit:
        _set_limit(limit_file, None)  # imports while unpickling are not the task's
    call = unpickle_call(req["payload"]) if req["kind"] == "python" else ()
    me = _self()
    me.reset_peak()
    baseline = me.rss()[0]
    started(baseline)
    if limit_file and limit:
        try:
            _set_limit(limit_file, baseline + limit)
        except OSError:  # the group already holds more than the task may use
            return {"status": "exhausted", "value": b"", "exit_code": -1, "stdout": b"",
                    "stderr": b"", "wall_time": 0.0, "peak_rss": limit + 1,
                    "baseline": baseline, "rss_after": baseline, "cpu_time": 0.0,
                    "bytes_read": 0, "bytes_written": 0}
    io_before = me.read_written()
    cpu_before = time.process_time()
    start = time.perf_counter()
    exit_code = 0
    child_rss, child_cpu = 0, 0.0
    if req["kind"] == "shell":
        exit_code, child_rss, child_cpu = run_shell(req["command"], sandbox, env, out_path,
                                                    err_path)
        status, value = "success", b""
    else:
        saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        home = os.getcwd()
        sys.stdout.flush()
        sys.stderr.flush()
        saved_fds = os.dup(1), os.dup(2)
        out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.close(out_fd)
        os.close(err_fd)
        try:
            os.chdir(sandbox)
            if isinstance(call, bytes):
                status, value = "exception", call
            else:
                status, value = run_python(call)
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except Exception:
                pass
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            os.close(saved_fds[0])
            os.close(saved_fds[1])
            os.chdir(home)
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    wall = time.perf_counter() - start
    io_after = me.read_written()
    rss_after, hwm = me.rss()
    # A Python task's memory is what it added to the warm interpreter; a shell
    # task's is its child's own peak (the runner only waits for it).
    task_peak = child_rss if req["kind"] == "shell" else max(0, hwm - baseline)
    return {
        "status": status,
        "value": value,
        "exit_code": exit_code,
        "stdout": _read_capped(out_path),
        "stderr": _read_capped(err_path),
        "wall_time": wall,
        "peak_rss": task_peak,
        "baseline": baseline,
        "rss_after": rss_after,
        "cpu_time": time.process_time() - cpu_before + child_cpu,
        "bytes_read": io_after[0] - io_before[0],
        "bytes_written": io_after[1] - io_before[1],
    }


def _die_with_parent(interval: float = 0.5) -> None:
    """End this runner's whole process group (its task too) once the worker is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main() -> None:
    conn = Channel(int(sys.argv[1]))
    board = Board(sys.argv[2])
    _die_with_parent()
    # A task's output must not go to the worker's terminal between tasks either.
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)

    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        req = msgpack.unpackb(data, raw=False)
        reply = execute(req, functools.partial(board.post, req["seq"]))
        conn.send_bytes(msgpack.packb(reply, use_bin_type=True))


if __name__ == "__main__":
    main()
