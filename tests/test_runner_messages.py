"""The typed messages between the worker daemon and its runners, and a real runner
talking them: every field checked on decode, a bad message a ProtocolError, and a
runner that puts its process back in order after each task."""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packmule.errors import ProtocolError
from packmule.protocol import messages as m
from packmule.resources import Resources
from packmule.serialize import dumps_call, loads_exception
from packmule.worker import daemon
from packmule.worker.runner import Channel
from packmule.worker.runner_messages import MAX_OUTPUT, Done, Run, decode, encode

RUN = Run("python", b"payload", "", "/tmp/sandbox", {"A": "1"}, 3, "", 0)
DONE = Done("success", b"value", 0, b"out", b"err", 0.5, 10, 20, 30, 0.25, 1, 2, 0, 0)


def test_messages_are_named_tuples_that_survive_the_codec() -> None:
    assert isinstance(RUN, tuple) and RUN._fields[:2] == ("kind", "payload")
    assert RUN.env == {"A": "1"} and DONE.cpu_time == 0.25
    assert decode(Run, encode(RUN)) == RUN
    assert decode(Done, encode(DONE)) == DONE
    assert decode(Done, bytearray(encode(DONE))) == DONE  # as a Channel gives it


@pytest.mark.parametrize(("bad", "says"), [
    (DONE._replace(stdout=3), "stdout must be bytes, got int"),
    (DONE._replace(exit_code=True), "exit_code must be int, got bool"),
    (DONE._replace(wall_time=float("nan")), "wall_time must be float"),
    (DONE._replace(wall_time="1"), "wall_time must be float, got str"),
    (DONE._replace(status="fine"), "status must be one of success, exception, exhausted"),
    (DONE._replace(peak_rss=-1), "a measurement is negative"),
    (DONE._replace(stderr=b"x" * (MAX_OUTPUT + 1)), "longer than"),
    (RUN._replace(env={"A": 1}), "env must be dict[str, str], got dict"),
    (RUN._replace(kind="perl"), "kind must be 'python' or 'shell'"),
    (RUN._replace(seq=0), "must be positive"),
])
def test_every_field_is_checked(bad: Run | Done, says: str) -> None:
    with pytest.raises(ProtocolError, match=f"malformed {type(bad).__name__}: .*{re.escape(says)}"):
        decode(type(bad), encode(bad))


def test_a_message_of_another_kind_or_shape_is_refused() -> None:
    with pytest.raises(ProtocolError, match="expected a Done, got"):
        decode(Done, encode(RUN))
    with pytest.raises(ProtocolError, match="a Done has 14 fields, this one 2"):
        decode(Done, b"\x93\xa4Done\x01\x02")
    with pytest.raises(ProtocolError, match="undecodable Run"):
        decode(Run, b"\xc1")
    with pytest.raises(ProtocolError, match="expected a Run, got"):
        decode(Run, b"\x00")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.builds(lambda xs: encode(DONE)[: len(xs)], st.binary()))
def test_any_bytes_are_a_message_or_a_protocol_error(data: bytes) -> None:
    for cls in (Run, Done):
        with contextlib.suppress(ProtocolError):
            decode(cls, data)  # type: ignore[type-var]


# ---------------------------------------------------------------- a real runner


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[daemon.Runner]:
    r = daemon._spawn_runner(tmp_path / "r1", None)
    yield r
    r.kill()


def run(r: daemon.Runner, req: Run) -> Done:
    r.conn.send_bytes(encode(req))
    return decode(Done, r.conn.recv_bytes())


def request(r: daemon.Runner, seq: int, *, call: tuple[object, ...] = (), command: str = ""
            ) -> Run:
    kind = "shell" if command else "python"
    payload = dumps_call(*call) if call else b""
    return Run(kind, payload, command, r.sandbox_str, {"X": str(seq)}, seq, "", 0)


def test_a_runner_answers_a_malformed_request_with_that_tasks_failure(
    runner: daemon.Runner,
) -> None:
    runner.conn.send_bytes(encode(Done("success", b"", 0, b"", b"", 0, 0, 0, 0, 0, 0, 0, 0, 0)))
    reply = decode(Done, runner.conn.recv_bytes())
    assert reply.status == "exception"
    exc = loads_exception(reply.value)
    assert isinstance(exc, ProtocolError) and "expected a Run" in str(exc)
    # and it goes on serving
    assert run(runner, request(runner, 1, command="echo ok")).stdout == b"ok\n"


def test_a_runner_kills_what_a_task_left_and_lives_on(runner: daemon.Runner) -> None:
    reply = run(runner, request(runner, 1, command="sleep 300 & sleep 301 & echo $!"))
    assert reply.killed == 2 and reply.unkillable == 0
    pid = int(reply.stdout)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert runner.proc.poll() is None
    assert run(runner, request(runner, 2, command="true")).killed == 0


def test_a_runner_that_outlives_the_kill_wait_is_reaped_later(
        runner: daemon.Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed runner still there after REAP_WAIT (stuck in the kernel) is not left
    a zombie: it is kept, and reaped once it has exited."""
    wait = runner.proc.wait
    waits = 0

    def first_wait_times_out(timeout: float | None = None) -> int:
        nonlocal waits
        waits += 1
        if waits == 1:
            raise subprocess.TimeoutExpired(runner.proc.args, timeout or 0)
        return wait(timeout)

    monkeypatch.setattr(runner.proc, "wait", first_wait_times_out)
    runner.kill()
    assert daemon._stragglers == [runner.proc] and runner.proc.returncode is None
    daemon.reap_stragglers(wait=5)
    assert daemon._stragglers == [] and runner.proc.returncode == -9


def closes_everything() -> str:
    sys.stdout.close()
    os.close(1)
    os.close(2)
    os.chdir("/")
    os.environ["X"] = "changed"
    return "done"


def talks() -> tuple[str, str]:
    print("hello")
    print("to stderr", file=sys.stderr)
    return os.getcwd(), os.environ.get("X", "")


def test_a_runner_puts_streams_directory_and_environment_back(runner: daemon.Runner) -> None:
    first = run(runner, request(runner, 1, call=(closes_everything, (), {})))
    assert first.status == "success" and pickle.loads(first.value) == "done"
    second = run(runner, request(runner, 2, call=(talks, (), {})))
    assert second.status == "success", loads_exception(second.value)
    assert pickle.loads(second.value) == (runner.sandbox_str, "2")
    assert (second.stdout, second.stderr) == (b"hello\n", b"to stderr\n")
    assert "X" not in os.environ or os.environ["X"] != "changed"


def test_a_runner_whose_worker_is_gone_exits_quietly(
    tmp_path: Path, capfd: pytest.CaptureFixture[str],
) -> None:
    r = daemon._spawn_runner(tmp_path / "r1", None)
    try:
        r.conn.send_bytes(encode(request(r, 1, command="true")))
        r.conn.close()  # the worker dies before the answer: it meets a broken pipe
        assert r.proc.wait(timeout=30) == 0
    finally:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize(("frame", "says"), [
    (struct.pack("!i", -2), "a message of length -2"),
    (struct.pack("!iQ", -1, 1 << 62), f"a message of {1 << 62} bytes, more than the 100"),
    (struct.pack("!i", 50) + b"x" * 10, "stopped after 10 of its 50 bytes"),
    (b"\x00\x00", "stopped after 2 of its 4 bytes"),
])
def test_a_channel_refuses_a_broken_frame_when_asked_to(frame: bytes, says: str) -> None:
    """What a task may write into its runner's channel: a ProtocolError for the worker,
    not a crash, a huge allocation or a wait for bytes that never come."""
    ours, theirs = socket.socketpair()
    channel = Channel(ours.detach())
    try:
        theirs.sendall(frame)
        with pytest.raises(ProtocolError, match=re.escape(says)):
            channel.recv_bytes(limit=100, patience=0.05)
    finally:
        channel.close()
        theirs.close()


def test_a_runner_that_cannot_be_replaced_fails_its_task_not_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A runner found dead when its task is handed over gets one fresh try; when no fresh
    one can start (out of descriptors, say), the task fails alone."""
    worker = daemon.Worker("127.0.0.1", 1, secret=b"s", resources=Resources(1, 100, 100, 0),
                           gpu_ids=[], workdir=tmp_path, enforce="poll",
                           pack_cache=tmp_path / "packs")
    worker.free_gpus, worker._seq = [], 0  # (as a session sets them)
    dead = daemon._spawn_runner(tmp_path / "r1", None)
    dead.proc.kill()  # it died while idle
    dead.proc.wait()
    runners = iter([dead])

    def runner_for(settings: tuple[str, str, str]) -> daemon.Runner:
        r = next(runners, None)
        if r is None:
            raise OSError(errno.EMFILE, "Too many open files")
        return r

    monkeypatch.setattr(worker, "_runner_for", runner_for)
    spec = m.TaskSpec(1, 1, "shell", b"", "true", {"cores": 1, "memory": 10, "disk": 10,
                      "gpus": 0}, {}, [], [], 0.0, "")
    try:
        got = worker._start(spec, Resources(1, 10, 10, 0), 0.0)
    finally:
        worker.packs.close()
    assert isinstance(got, m.TaskResult), got
    assert got.status is m.TaskStatus.CRASHED and "Too many open files" in got.message
