"""The typed messages between the worker daemon and its runners, and a real runner
talking them: every field checked on decode, a bad message a ProtocolError, and a
runner that puts its process back in order after each task."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packmule.errors import ProtocolError
from packmule.serialize import dumps_call, loads_exception
from packmule.worker import daemon
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
