"""Shared fixtures: a real manager with real ``packmule worker`` subprocesses on loopback."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

from packmule import Manager
from packmule.local import local_cluster
from packmule.observe.rundir import RUNS_ENV

# Managers made without run_dir= make their run directories here, not in the checkout
# (set at import, so that it holds for every test and every process they start).
RUNS_DIR = tempfile.mkdtemp(prefix="packmule-test-runs-")
os.environ[RUNS_ENV] = RUNS_DIR


@pytest.fixture(scope="session", autouse=True)
def _runs_dir() -> Iterator[str]:
    """The session's base for run directories; removed at the end."""
    yield RUNS_DIR
    shutil.rmtree(RUNS_DIR, ignore_errors=True)

#: Short heartbeats so that lease expiry is testable in seconds.
FAST = {"heartbeat_interval": 0.2, "lease": 2.0}


def wait_until(pred: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02) -> Any:
    """Poll ``pred`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {pred}")
        time.sleep(interval)


ClusterFactory = Callable[..., AbstractContextManager[Manager]]


@pytest.fixture
def cluster(tmp_path: Any) -> Iterator[ClusterFactory]:
    """Make a manager (core invariants checked after every event) with N local workers."""

    def make(workers: int = 1, **kw: Any) -> AbstractContextManager[Manager]:
        kw.setdefault("cores", 2)
        kw.setdefault("memory", 2000)
        kw.setdefault("disk", 2000)
        kw.setdefault("validate", True)
        kw.setdefault("run_dir", tmp_path / "run")
        kw.setdefault("worker_args", ["--workdir", str(tmp_path / "work")])
        for k, v in FAST.items():
            kw.setdefault(k, v)
        return local_cluster(workers, **kw)

    yield make


def connected(manager: Manager, n: int) -> Callable[[], bool]:
    return lambda: manager.stats().workers >= n
