"""Measuring a task's process tree, and enforcing its memory limit.

Two sources are combined, because each misses something:

* **Kernel figures at exit** (exact, including short spikes): the runner's
  own peak resident set (``VmHWM``, reset with ``/proc/self/clear_refs`` at
  task start), a shell child's ``ru_maxrss`` from ``wait4``, and, where the
  worker can create memory cgroups (v1), the cgroup's
  ``memory.max_usage_in_bytes``, which covers the whole tree.
* **Sampling** of the whole tree (``psutil``), summing the resident sets of
  the runner and all its descendants, and the CPU time over each interval
  for peak cores. The schedule is fast at first and backs off: samples at
  10 ms, 20 ms, 40 ms ... doubling up to one per second, then every second
  (:data:`FIRST_SAMPLE`, :data:`MAX_SAMPLE_INTERVAL`), so short tasks cost
  nothing and long ones little. Peak cores is taken over windows of at
  least :data:`CORES_WINDOW` (CPU times tick in 10 ms steps).

A memory limit is enforced by the cgroup when there is one (the kernel kills
the task the moment it goes over), else by the sampler (checked at every
sample). The sandbox's disk use is measured every :data:`DISK_INTERVAL` s
and at the end.

The sampler also records every process it sees in the tree, by pid and
creation time (:attr:`TreeSampler.seen`), and keeps those that leave the tree
alive: a process that escaped its runner (a new session, a double fork) is
still known, and killed with the runner (:func:`kill_recorded`), without
killing an unrelated process that reused its pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil

MB = 1 << 20
FIRST_SAMPLE = 0.01
MAX_SAMPLE_INTERVAL = 1.0
DISK_INTERVAL = 2.0
#: Peak cores is CPU time over wall time in windows of at least this many seconds.
CORES_WINDOW = 1.0


class TreeSampler:
    """Peak memory and cores of a process and its descendants, sampled."""

    def __init__(self, pid: int, now: float) -> None:
        self.pid = pid
        self.start = now
        self.interval = FIRST_SAMPLE
        self.next_at = now + FIRST_SAMPLE
        self.peak_rss = 0
        self.peak_cores = 0.0
        self._last: tuple[float, float] | None = None  # (time, cpu seconds)
        self._root: psutil.Process | None = None  # made at the first sample: most tasks end sooner
        #: Every descendant seen (pid: creation time), less those gone since.
        self.seen: dict[int, float] = {}

    def sample(self, now: float) -> int:
        """Take one sample; returns the tree's resident set in bytes."""
        self.next_at = now + self.interval
        self.interval = min(MAX_SAMPLE_INTERVAL, self.interval * 2)
        if self._root is None:
            try:
                self._root = psutil.Process(self.pid)
            except psutil.Error:
                return 0
        rss, cpu = 0, 0.0
        try:
            procs = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return 0
        for p in procs:
            with contextlib.suppress(psutil.Error), p.oneshot():
                rss += p.memory_info().rss
                t = p.cpu_times()
                cpu += t.user + t.system + t.children_user + t.children_system
        self._record(procs[1:])
        self.peak_rss = max(self.peak_rss, rss)
        # CPU times tick in 10 ms steps: only a window of a second or more gives cores.
        if self._last is None:
            self._last = (now, cpu)
        elif now - self._last[0] >= CORES_WINDOW:
            self.peak_cores = max(self.peak_cores, (cpu - self._last[1]) / (now - self._last[0]))
            self._last = (now, cpu)
        return rss

    def _record(self, procs: list[psutil.Process]) -> None:
        """Add the tree's processes to ``seen``; drop those that left it and are gone
        (those that left it alive escaped: they stay)."""
        now = {}
        for p in procs:
            with contextlib.suppress(psutil.Error):
                now[p.pid] = p.create_time()
        for pid, created in self.seen.items():
            if pid not in now and _alive(pid, created):
                now[pid] = created
        self.seen.clear()  # in place: the runner holds this dict (Runner.recorded)
        self.seen.update(now)


def _alive(pid: int, created: float) -> bool:
    """Whether process ``pid`` still runs and is the one created at ``created``."""
    try:
        p = psutil.Process(pid)
        return bool(p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def kill_recorded(seen: dict[int, float], keep: int = 0) -> int:
    """SIGKILL the recorded processes still running (not ``keep``); returns how many."""
    return sum(_kill(pid, created) for pid, created in seen.items() if pid != keep)


#: Whether processes can be signalled through a pidfd (Linux 5.3+, Python 3.9+).
_PIDFD = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")


def _kill(pid: int, created: float) -> bool:
    """SIGKILL process ``pid`` if it still runs and is the one created at ``created``;
    whether it was killed.

    Through a pidfd, opened before the check: the process checked is then the one
    signalled, even if it exits and its pid is reused in between. Without one
    (an older kernel, or a filter that refuses the call) a pid reused between the
    check and the kill, a few microseconds, would be hit.
    """
    if _PIDFD:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        except OSError:  # ENOSYS, EPERM: no pidfd here after all
            pass
        else:
            try:
                if not _alive(pid, created):
                    return False
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                return True
            except OSError:  # it exited since the check
                return False
            finally:
                os.close(fd)
    if not _alive(pid, created):
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        return False
    return True


#: ``prctl(2)`` option: orphaned descendants are reparented to this process, not init.
PR_SET_CHILD_SUBREAPER = 36


def subreaper_setter() -> Callable[[], None] | None:
    """A function that makes the calling process a child subreaper (Linux), to run in
    a runner between fork and exec (``preexec_fn``); None where there is no ``prctl``."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    # Probe on this process (and undo): a kernel or a seccomp filter may refuse it.
    if prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        return None
    prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)

    def become_subreaper() -> None:
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # a failure leaves the runner as it was

    return become_subreaper


def tree_size(path: str) -> int:
    """Bytes used by the files under ``path``."""
    total = 0
    stack = [path]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as entries:
            for e in entries:
                with contextlib.suppress(OSError):
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    else:
                        total += e.stat(follow_symlinks=False).st_blocks * 512
    return total


class MemoryCgroup:
    """One runner's cgroup (v1 memory controller): limit, peak, OOM kills.

    Set per task, so kept cheap: plain ``os`` calls, and a limit is only
    written when it changes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._base = str(path) + "/"
        #: The file a runner writes its own per-task limit into.
        self.limit_file = self._base + "memory.limit_in_bytes"
        self._limit: int | None = -1  # unknown: the first set_limit always writes

    def _write(self, name: str, value: str) -> None:
        fd = os.open(self._base + name, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def _read(self, name: str) -> str:
        fd = os.open(self._base + name, os.O_RDONLY)
        try:
            return os.read(fd, 4096).decode()
        finally:
            os.close(fd)

    def _read_all(self, name: str) -> str:
        fd = os.open(self._base + name, os.O_RDONLY)
        try:
            data = b""
            while chunk := os.read(fd, 65536):
                data += chunk
            return data.decode()
        finally:
            os.close(fd)

    def add(self, pid: int) -> None:
        self._write("cgroup.procs", str(pid))

    def procs(self) -> list[int]:
        """The processes in the group (a task's, however far they went from its runner)."""
        try:
            return [int(x) for x in self._read_all("cgroup.procs").split()]
        except (OSError, ValueError):
            return []

    def kill_all(self, keep: int = 0, wait: float = 2.0) -> int:
        """SIGKILL every process in the group but ``keep``, again until none is left or
        ``wait`` seconds have passed; returns how many it killed."""
        killed: set[int] = set()
        deadline = 0.0
        pause = 0.0005
        while True:
            left = [pid for pid in self.procs() if pid != keep]
            if not left:
                return len(killed)
            if not deadline:
                deadline = time.monotonic() + wait
            elif time.monotonic() > deadline:
                return len(killed)
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            time.sleep(pause)  # a killed process takes a moment to leave the group
            pause = min(0.02, pause * 2)

    def set_limit(self, mb: int | None) -> None:
        """Limit the group to ``mb`` MB (None: no limit). Raises OSError (EBUSY) if the
        group already uses more."""
        if mb == self._limit:
            return
        self._write("memory.limit_in_bytes", "-1" if not mb else str(mb * MB))
        self._limit = mb

    def peak(self) -> int:
        """Bytes: the group's highest usage (read after an OOM kill)."""
        return int(self._read("memory.max_usage_in_bytes"))

    def oom_kills(self) -> int:
        for line in self._read("memory.oom_control").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()


class CgroupRoot:
    """Where a worker makes its runners' memory cgroups: under its own cgroup."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._count = 0

    @classmethod
    def create(cls, name: str) -> CgroupRoot | None:
        """A writable cgroup v1 memory hierarchy for this worker, or None."""
        base = Path("/sys/fs/cgroup/memory")
        try:
            for line in Path("/proc/self/cgroup").read_text().splitlines():
                _, controllers, rel = line.split(":", 2)
                if "memory" in controllers.split(","):
                    path = base / rel.lstrip("/") / name
                    path.mkdir(exist_ok=True)
                    (path / "memory.limit_in_bytes").read_text()
                    return cls(path)
        except (OSError, ValueError):
            pass
        return None

    def new_group(self) -> MemoryCgroup | None:
        self._count += 1
        path = self.path / f"r{self._count}"
        try:
            path.mkdir()
            group = MemoryCgroup(path)
            group.set_limit(None)
            return group
        except OSError:
            return None

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()
