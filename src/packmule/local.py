"""Start ``packmule worker`` processes on this machine for a manager.

Used by the demo, the tests and the benchmarks; handy for trying things out.
The secret reaches the workers through their environment, never their
command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .manager import Manager
from .protocol.security import PASSWORD_ENV


def start_worker(
    manager: Manager,
    *,
    cores: int | None = None,
    memory: int | None = None,
    disk: int | None = None,
    gpus: int | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """Start one worker process connected to ``manager``; the caller stops it."""
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
    return subprocess.Popen(cmd, env=child_env, **popen)


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
    """A manager with ``workers`` local worker processes, all stopped on exit."""
    manager = Manager(**manager_args)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(workers):
            procs.append(start_worker(manager, cores=cores, memory=memory, disk=disk, gpus=gpus,
                                      extra_args=worker_args))
        manager.worker_processes = procs  # type: ignore[attr-defined]
        yield manager
    finally:
        manager.shutdown()
        for p in procs:
            stop_worker(p)
