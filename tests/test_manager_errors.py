"""The manager's own failures, each a packmule error named for its cause: it cannot
start (port, run directory, password file), it was shut down, or its loop crashed."""

from __future__ import annotations

import errno
import os
import pickle
import signal
import time
from pathlib import Path

import pytest

import packmule
from packmule import PythonTask
from packmule.errors import (
    ManagerClosed,
    ManagerCrashed,
    ManagerError,
    ManagerStartError,
    ManagerTimeout,
    PackmuleError,
    TaskCancelled,
    TaskError,
)
from packmule.manager import ipc
from packmule.manager.manager import _ending

from .conftest import ClusterFactory, connected, wait_until


def test_the_manager_errors_are_packmule_errors_and_what_users_caught_before() -> None:
    for cls in (ManagerStartError, ManagerTimeout, ManagerClosed, ManagerCrashed):
        assert issubclass(cls, ManagerError) and issubclass(cls, PackmuleError)
        assert getattr(packmule, cls.__name__) is cls
    assert issubclass(ManagerStartError, OSError)  # Manager() used to raise OSError
    assert issubclass(ManagerTimeout, TimeoutError)
    assert issubclass(ManagerClosed, RuntimeError)  # submit() after shutdown() did too
    # A future of a task the crash ended used to raise TaskCancelled, a TaskError.
    assert issubclass(ManagerCrashed, TaskError) and issubclass(ManagerCrashed, ManagerClosed)
    assert not issubclass(ManagerCrashed, TaskCancelled)
    crashed = ManagerCrashed("boom", 7, -9, "/run/manager.log")
    again = pickle.loads(pickle.dumps(crashed))
    assert (str(again), again.task_id, again.returncode, again.log) == (
        "boom", 7, -9, "/run/manager.log")
    start = pickle.loads(pickle.dumps(ManagerStartError(errno.EADDRINUSE, "cannot listen")))
    assert (start.errno, str(start)) == (errno.EADDRINUSE, "cannot listen")


def test_how_the_loop_ended_is_said_in_words() -> None:
    assert _ending(-signal.SIGKILL).startswith("killed by SIGKILL (the kernel's out-of-memory")
    assert _ending(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert _ending(ipc.EXIT_CRASHED) == f"an internal error (exit code {ipc.EXIT_CRASHED})"
    assert _ending(3) == "exit code 3"


def test_port_in_use_is_a_start_error_that_is_also_an_oserror(tmp_path: Path) -> None:
    with packmule.Manager(run_dir=tmp_path / "a") as first, pytest.raises(
            ManagerStartError, match=rf"cannot listen on .*:{first.port}.*port=0") as got:
        packmule.Manager(port=first.port, run_dir=tmp_path / "b")
    assert got.value.errno == errno.EADDRINUSE


def test_a_run_directory_that_cannot_be_made_is_a_start_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ManagerStartError, match=r"cannot create the manager's run directory.*"
                                                r"pass run_dir="):
        packmule.Manager(run_dir=blocker / "run")


def test_a_password_file_that_cannot_be_read_is_an_authentication_error(tmp_path: Path) -> None:
    with pytest.raises(packmule.AuthenticationError, match="cannot read password file"):
        packmule.Manager(password_file=tmp_path / "missing", run_dir=tmp_path / "run")


def test_after_shutdown_the_manager_is_closed_not_crashed(cluster: ClusterFactory) -> None:
    with cluster(1) as mgr:
        wait_until(connected(mgr, 1))
        pending = mgr.submit(PythonTask(time.sleep, 30))
        wait_until(lambda: mgr.stats().tasks["running"] == 1)
        mgr.shutdown()
        with pytest.raises(TaskCancelled, match="before the manager shut down") as got:
            pending.result(timeout=10)
        assert not isinstance(got.value, ManagerCrashed)
        with pytest.raises(ManagerClosed, match="shut down; create a new Manager") as closed:
            mgr.submit(PythonTask(len, "x"))
        assert not isinstance(closed.value, ManagerCrashed)
        with pytest.raises(ManagerClosed):
            mgr.stats()


def test_an_internal_error_in_the_loop_is_a_crash_with_its_traceback_logged(
        cluster: ClusterFactory) -> None:
    """A message the loop cannot read from its Manager stops it on an internal error:
    it exits with EXIT_CRASHED, and says why in its log and in the errors."""
    with cluster(1) as mgr:
        wait_until(connected(mgr, 1))
        worker = mgr.worker_processes[0]  # type: ignore[attr-defined]
        pending = mgr.submit(PythonTask(time.sleep, 30))
        wait_until(lambda: mgr.stats().tasks["running"] == 1)
        with mgr._send_lock:
            mgr._conn.send((999,))  # no such message tag
        with pytest.raises(ManagerCrashed, match=r"task \d+ did not finish before .* crashed: "
                                                 "an internal error .*ProtocolError") as got:
            pending.result(timeout=10)
        assert got.value.returncode == ipc.EXIT_CRASHED
        assert got.value.log == str(mgr.loop_log) and got.value.task_id is not None
        log = mgr.loop_log.read_text()
        assert "Traceback" in log and "unknown message tag 999" in log
        with pytest.raises(ManagerCrashed, match="create a new Manager"):
            mgr.submit(PythonTask(len, "x"))
        with pytest.raises(ManagerCrashed):
            mgr.stats()
        assert worker.wait(timeout=20) == 0  # told to exit as the loop stopped



def test_a_fatal_signal_leaves_its_traceback_in_a_file_the_crash_names(
        cluster: ClusterFactory) -> None:
    """faulthandler writes to manager.crash, not to the rotated manager.log: the
    ManagerCrashed names that file once it holds a traceback."""
    with cluster(0) as mgr:
        crash_file = mgr.run_dir / ipc.LOOP_CRASH
        assert crash_file.stat().st_size == 0
        pending = mgr.submit(PythonTask(time.sleep, 30))
        os.kill(mgr.loop_pid, signal.SIGSEGV)
        with pytest.raises(ManagerCrashed, match=r"killed by SIGSEGV \(its traceback as it died "
                                                 rf"is in {crash_file}\)") as got:
            pending.result(timeout=10)
        assert got.value.returncode == -signal.SIGSEGV
        assert "Fatal Python error: Segmentation fault" in crash_file.read_text()
