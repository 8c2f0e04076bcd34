"""Start ``packmule worker`` processes on this machine for a manager.

Used by the demo, the tests and the benchmarks; handy for trying things out.
The secret reaches the workers through their environment, never their
command line.

Each worker logs to a file, ``<run_dir>/workers/worker-N.log`` (or the
``log_file`` given), so that its lines do not break into the program's own
output. Its warnings and errors, and anything it prints that is not a log line
(a bad option, a crash), are copied to this program's stderr as well.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .manager import Manager
from .protocol.security import PASSWORD_ENV

log = logging.getLogger("packmule.local")

#: A log line a worker writes at INFO or DEBUG (its format: ``packmule.cli``).
_LOG_LINE = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ packmule\[\d+\] (\w+) ")


class LocalWorker(subprocess.Popen[bytes]):
    """A ``packmule worker`` process started by :func:`start_worker`."""

    #: Where its log goes (None: to the ``stderr`` its caller chose).
    log_file: Path | None = None


def worker_log_dir(manager: Manager) -> Path:
    """Where :func:`start_worker` puts workers' logs: ``<run_dir>/workers``."""
    return Path(manager.run_dir) / "workers"


def start_worker(
    manager: Manager,
    *,
    cores: int | None = None,
    memory: int | None = None,
    disk: int | None = None,
    gpus: int | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    log_file: str | os.PathLike[str] | None = None,
    **popen: Any,
) -> LocalWorker:
    """Start one worker process connected to ``manager``; the caller stops it.

    Its log goes to ``log_file`` (default: a new ``worker-N.log`` in
    :func:`worker_log_dir`), and its warnings and errors to this process's
    stderr too; unless ``stderr=`` is given (with the other ``popen`` keyword
    arguments of :class:`subprocess.Popen`), which then gets all of it.
    """
    cmd = [sys.executable, "-m", "packmule", "worker", manager.address]
    for flag, value in (("--cores", cores), ("--memory", memory), ("--disk", disk),
                        ("--gpus", gpus)):
        if value is not None:
            cmd += [flag, str(value)]
    cmd += list(extra_args)
    # A local worker sees the modules this program sees (e.g. a helper module
    # next to the script), as it would on a shared filesystem.
    path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    child_env = {**os.environ, "PYTHONPATH": path, PASSWORD_ENV: manager._secret.decode(),
                 **(env or {})}
    if "stderr" in popen:
        if log_file is not None:
            raise ValueError("give start_worker log_file= or stderr=, not both")
        return LocalWorker(cmd, env=child_env, **popen)
    try:
        where, fh = _open_log(manager, log_file)
    except OSError as exc:
        if log_file is not None:
            raise
        log.warning("cannot write local workers' logs in %s (%s): they go to stderr",
                    worker_log_dir(manager), exc)
        return LocalWorker(cmd, env=child_env, **popen)
    try:
        proc = LocalWorker(cmd, env=child_env, stderr=subprocess.PIPE, **popen)
    except BaseException:
        fh.close()
        raise
    proc.log_file = where
    assert proc.stderr is not None
    threading.Thread(target=_copy_log, args=(proc.stderr, fh), daemon=True,
                     name=f"packmule-worker-log-{proc.pid}").start()
    log.debug("local worker pid %d logs to %s", proc.pid, where)
    return proc


def _open_log(manager: Manager, log_file: str | os.PathLike[str] | None) -> tuple[Path, IO[bytes]]:
    if log_file is not None:
        where = Path(log_file)
        where.parent.mkdir(parents=True, exist_ok=True)
        return where, open(where, "ab")
    folder = worker_log_dir(manager)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(list(folder.glob("worker-*.log"))) + 1
    while True:
        where = folder / f"worker-{n}.log"
        try:
            return where, open(where, "xb")
        except FileExistsError:
            n += 1


def _copy_log(pipe: IO[bytes], fh: IO[bytes]) -> None:
    """Everything the worker writes to its log file; what is not routine (a log line
    above INFO with what follows it, or text that is no log line) to stderr too."""
    routine = False
    with fh, pipe:
        for line in pipe:
            fh.write(line)
            fh.flush()
            m = _LOG_LINE.match(line)
            if m is not None:
                routine = m.group(1) in (b"INFO", b"DEBUG")
            if not routine:
                try:
                    sys.stderr.write(line.decode(errors="replace"))
                    sys.stderr.flush()
                except (OSError, ValueError):  # stderr closed: the log file has it
                    pass


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Stop a worker started here (by its pid): SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def local_cluster(
    workers: int = 2,
    *,
    cores: int | None = None,
    memory: int | None = None,
    disk: int | None = None,
    gpus: int | None = None,
    worker_args: Sequence[str] = (),
    **manager_args: Any,
) -> Iterator[Manager]:
    """A manager with ``workers`` local worker processes, all stopped on exit.

    The workers log to ``<run_dir>/workers/worker-N.log`` (their warnings and
    errors reach stderr too); ``manager.worker_processes`` lists them.
    """
    manager = Manager(**manager_args)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(workers):
            procs.append(start_worker(manager, cores=cores, memory=memory, disk=disk, gpus=gpus,
                                      extra_args=worker_args))
        if procs:
            log.info("%d local worker%s log to %s", len(procs), "s" * (len(procs) > 1),
                     worker_log_dir(manager) / "worker-N.log")
        manager.worker_processes = procs  # type: ignore[attr-defined]
        yield manager
    finally:
        manager.shutdown()
        for p in procs:
            stop_worker(p)
