"""What a real ``packmule worker`` says on its stderr: that no manager answers (and
why), and with ``--debug`` every step of a task's life."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import packmule
from packmule import File, PythonTask, Task
from packmule.local import start_worker, stop_worker
from packmule.protocol.security import PASSWORD_ENV
from packmule.resources import Resources
from packmule.worker import daemon

from .conftest import wait_until


class Stderr:
    """A worker process's stderr lines, read as they come by a thread."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        self.proc = proc
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for raw in stream:  # type: ignore[attr-defined]
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def having(self, *parts: str) -> list[str]:
        return [line for line in list(self.lines) if all(p in line for p in parts)]

    def wait_for(self, *parts: str, timeout: float = 20.0) -> str:
        def found() -> list[str]:
            return self.having(*parts)

        try:
            return str(wait_until(found, timeout=timeout)[0])
        except AssertionError:
            raise AssertionError(f"no line with {parts} within {timeout} s; the worker said:\n"
                                 + "\n".join(self.lines)) from None


def bare_worker(address: str, tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """``packmule worker ADDRESS`` with a password and no manager to talk to."""
    path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    env = {**os.environ, "PYTHONPATH": path, PASSWORD_ENV: "some secret"}
    return subprocess.Popen(
        [sys.executable, "-m", "packmule", "worker", address, "--cores", "1", "--memory", "100",
         "--disk", "100", "--workdir", str(tmp_path / "work"), *args],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture
def closed_port() -> int:
    """A loopback port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


ADVICE = ('is the manager listening on an address this node can reach '
          '(Manager(host="0.0.0.0"))?')


@pytest.mark.parametrize("answer", ["connection refused", "no answer"])
def test_a_worker_says_within_10_s_that_no_manager_answers(
    answer: str, closed_port: int, silent_port: int, tmp_path: Path,
) -> None:
    port = closed_port if answer == "connection refused" else silent_port
    worker = bare_worker(f"127.0.0.1:{port}", tmp_path)
    try:
        err = Stderr(worker)
        line = err.wait_for(f"no manager at 127.0.0.1:{port} yet: {answer}", timeout=10)
        assert ADVICE in line, line
        assert "--connect-timeout 900 s" in line, line
        assert worker.poll() is None  # it goes on trying
    finally:
        stop_worker(worker)


def test_the_no_manager_notice_repeats_every_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="packmule.worker")
    w = daemon.Worker("10.1.2.3", 9, secret=b"x" * 32, resources=Resources(1, 100, 100, 0),
                      gpu_ids=[], workdir=tmp_path, enforce="poll", pack_cache=tmp_path / "p")
    w._seeking_since, w._notice_at = 0.0, daemon.NO_MANAGER_NOTICE
    w._link = "no answer"
    said: list[float] = []
    for t in range(0, 200):  # seconds since the worker began trying
        before = len(caplog.records)
        w._no_manager_notice(float(t))
        if len(caplog.records) > before:
            said.append(t)
    assert said == [5, 65, 125, 185]
    assert "no manager at 10.1.2.3:9 yet: no answer; " + ADVICE in caplog.records[0].message
    assert daemon.NO_MANAGER_NOTICE < 10 and daemon.NO_MANAGER_REPEAT == 60


def test_a_reached_manager_silences_the_notice(tmp_path: Path) -> None:
    with packmule.Manager(run_dir=tmp_path / "run") as mgr:
        worker = start_worker(mgr, cores=1, memory=100, disk=100, stderr=subprocess.PIPE,
                              extra_args=["--workdir", str(tmp_path / "work")])
        try:
            err = Stderr(worker)
            assert mgr.submit(PythonTask(len, "ab")).result(timeout=30) == 2
            err.wait_for("connected to manager")
            wait_until(lambda: mgr.stats().tasks_succeeded == 1)
        finally:
            stop_worker(worker)
        assert not err.having("no manager at")


def test_debug_logs_every_step_of_a_task(tmp_path: Path) -> None:
    data = tmp_path / "in.txt"
    data.write_text("input")
    with packmule.Manager(run_dir=tmp_path / "run") as mgr:
        worker = start_worker(mgr, cores=1, memory=100, disk=100, stderr=subprocess.PIPE,
                              extra_args=["--workdir", str(tmp_path / "work"), "--debug"])
        try:
            err = Stderr(worker)
            task = Task("cat in.txt; sleep 300 &", resources={"cores": 1},
                        input_files=[File(str(data), "in.txt", cache=True)])
            assert mgr.submit(task).result(timeout=30).stdout == "input"
            assert mgr.submit(PythonTask(divmod, 7, 2)).result(timeout=30) == (3, 1)
            for step in (
                ("input file", "cached"),
                ("task 1 attempt 1 received: shell task, allocation Resources(cores=1",),
                ("runner pid", "chosen (warm, unused)"),
                ("task 1 attempt 1 started on runner pid", "with Resources(cores=1"),
                ("task 1 attempt 1 finished on runner pid", "success, exit code 0", "memory ",
                 "wall_time ", "1 process(es) it left running killed"),
                ("task 1 attempt 1: result sent (success)",),
                ("task 2 attempt 1 received: python task",),
                ("task 2 attempt 1 finished on runner pid", "success"),
                ("task 2 attempt 1: result sent (success)",),
            ):
                err.wait_for(*step)
            assert all(" DEBUG " in line for line in err.having("task 1 attempt 1"))
        finally:
            stop_worker(worker)


def test_without_debug_a_worker_logs_no_task_steps(tmp_path: Path) -> None:
    with packmule.Manager(run_dir=tmp_path / "run") as mgr:
        worker = start_worker(mgr, cores=1, memory=100, disk=100, stderr=subprocess.PIPE,
                              extra_args=["--workdir", str(tmp_path / "work")])
        try:
            err = Stderr(worker)
            assert mgr.submit(PythonTask(len, "abc")).result(timeout=30) == 3
        finally:
            stop_worker(worker)
        worker.wait(timeout=10)
        err._thread.join(timeout=10)
        assert err.having("connected to manager")
        assert not err.having("DEBUG")
