"""Peers that hold the password sending every message type with fuzzed fields.

The strategies are derived from the message definitions (the registry of tags and
each dataclass's type hints, with their ``Annotated`` bounds), so a new message or
field is fuzzed without touching this file. Each field is drawn well-typed (values
across its range and just outside it) or wrong-typed (any msgpack value).

- Manager side: fake workers send fuzzed messages, before and after a valid
  ``Hello``; the loop process never dies, and a real worker is served afterwards.
- Worker side: a fake manager sends a real ``packmule worker`` fuzzed messages;
  the worker never crashes with a traceback (it ends the session cleanly, exits
  cleanly, or goes on), and runs a task afterwards. The fake manager does not ask
  it to run arbitrary commands (a manager may: a worker runs what it is sent), so
  a task's command and payload are fixed and harmless.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgpack
import psutil
import zmq
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from packmule import Manager, PythonTask
from packmule.protocol import messages as m
from packmule.protocol.security import PASSWORD_ENV, derive_keys

from .conftest import ClusterFactory, connected, wait_until, zmq_context

Strategy = st.SearchStrategy[Any]
#: Fixed values for fields (by structure and name) where a drawn value would be harmful.
Overrides = Mapping[tuple[type, str], Strategy]

# msgpack carries integers in [-2**63, 2**64 - 1].
_ENCODABLE = (-(2**63), 2**64 - 1)

#: Anything msgpack can carry: what a wrong-typed field holds.
ANY_VALUE: Strategy = st.recursive(
    st.none() | st.booleans() | st.integers(*_ENCODABLE) | st.floats()
    | st.text(max_size=12) | st.binary(max_size=12),
    lambda kids: st.lists(kids, max_size=3)
    | st.dictionaries(st.text(max_size=4) | st.integers(0, 9), kids, max_size=3),
    max_leaves=6,
)


def _unwrap(hint: Any) -> tuple[Any, list[Any]]:
    if typing.get_origin(hint) is typing.Annotated:
        base, *marks = typing.get_args(hint)
        inner, more = _unwrap(base)
        return inner, [*more, *marks]
    return hint, []


def _encodable(values: list[int]) -> list[int]:
    return [v for v in values if _ENCODABLE[0] <= v <= _ENCODABLE[1]]


def typed(hint: Any, overrides: Overrides, edges: bool) -> Strategy:
    """Values of the hinted type: across its range, and (``edges``) just outside it."""
    base, marks = _unwrap(hint)
    rng = next((b for b in marks if isinstance(b, m.Range)), None)
    size = next((b.n for b in marks if isinstance(b, m.MaxLen)), None)
    origin = typing.get_origin(base)
    if base is bool:
        return st.booleans()
    if base is int:
        lo, hi = (int(rng.low), int(rng.high)) if rng else (0, m.INT_MAX)
        out = st.integers(lo, hi) | st.integers(max(lo, 0), min(hi, 5))
        return out | st.sampled_from(_encodable([lo - 1, hi + 1, lo, hi])) if edges else out
    if base is float:
        flo, fhi = (rng.low, rng.high) if rng else (0.0, m.FLOAT_MAX)
        out = st.floats(flo, min(fhi, 1e6)) | st.floats(flo, fhi)
        bad = [flo - 1.0, fhi * 2, math.nan, math.inf, -math.inf]
        return out | st.sampled_from(bad) if edges else out
    if base is str:
        choices = next((b.values for b in marks if isinstance(b, m.OneOf)), None)
        if choices is not None:
            return st.sampled_from(choices) | st.text(max_size=8) if edges else \
                st.sampled_from(choices)
        names = ["a", "a/b", "x.txt", "0" * 64]
        if any(isinstance(b, m.Form) for b in marks):
            out = st.sampled_from(names)
            bad = ["", ".", "..", "../x", "/etc/passwd", "a/../../b", "a\0b"]
            return out | st.sampled_from(bad) if edges else out
        out = st.text(max_size=16) | st.sampled_from(names)
        n = size if size is not None else m.MAX_TEXT
        return out | st.just(n + 1).map("x".__mul__) if edges else out
    if base is bytes:
        return st.binary(max_size=64)
    if isinstance(base, type) and issubclass(base, m.enum.Enum):
        values = st.sampled_from([e.value for e in base])
        return values | st.text(max_size=8) if edges else values
    if base in m.FIELD_HINTS:
        return struct(base, overrides, edges)
    if origin is list:
        (item,) = typing.get_args(base)
        return st.lists(typed(item, overrides, edges), max_size=3)
    if origin is dict:
        key, value = typing.get_args(base)
        return st.dictionaries(typed(key, overrides, edges), typed(value, overrides, edges),
                               max_size=3)
    raise TypeError(f"no strategy for {base!r}: teach this fuzzer the new type")


def field(owner: type, name: str, hint: Any, overrides: Overrides, wrong: bool) -> Strategy:
    fixed = overrides.get((owner, name))
    if fixed is not None:
        return fixed
    if not wrong:
        return typed(hint, overrides, edges=False)
    good = typed(hint, overrides, edges=True)
    return st.one_of(good, good, good, ANY_VALUE)  # mostly well-typed


def struct(cls: type, overrides: Overrides, wrong: bool) -> Strategy:
    """A structure as it travels: the list of its fields (sometimes of the wrong length)."""
    fields = [field(cls, n, h, overrides, wrong) for n, h in m.FIELD_HINTS[cls].items()]
    out = st.tuples(*fields).map(list)
    if wrong:
        out = out | out.map(lambda v: v[:-1]) | out.map(lambda v: [*v, 0])
    return out


def wire(classes: list[type[m.Message]], overrides: Overrides = {},  # noqa: B006
         wrong: bool = True) -> Strategy:
    """The frames of one message of any of ``classes``, fuzzed."""
    def one(cls: type[m.Message]) -> Strategy:
        body = struct(cls, overrides, wrong).map(
            lambda fields: [msgpack.packb([cls.TAG, *fields], use_bin_type=True)])
        if cls is m.Piece:  # its data travels as a second frame
            body = body | st.tuples(body, st.binary(max_size=256)).map(lambda t: [*t[0], t[1]])
        return body
    return st.one_of([one(cls) for cls in classes])


ALL_MESSAGES = sorted(m._BY_TAG.values(), key=lambda c: c.TAG)


def test_every_message_type_has_a_strategy() -> None:
    """New messages are fuzzed automatically; this fails if one has a type the fuzzer
    cannot draw (then teach ``typed`` that type)."""
    assert {c.TAG for c in ALL_MESSAGES} == set(m._BY_TAG)
    for cls in ALL_MESSAGES:  # (strategies are built eagerly: an unknown type raises)
        wire([cls])
        wire([cls], wrong=False)


# ------------------------------------------------------------------ manager side
def valid_hello() -> bytes:
    return m.encode(m.Hello(m.PROTOCOL_VERSION, "fuzz", "fuzz", "fuzzer", 1,
                            {"cores": 1, "memory": 1, "disk": 1, "gpus": 0}, []))


def loop_alive(mgr: Manager) -> bool:
    try:
        return psutil.Process(mgr.loop_pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_fuzzed_messages_from_peers_with_the_password_never_stop_the_manager(
    cluster: ClusterFactory,
) -> None:
    with cluster(1, validate=False) as mgr, zmq_context() as ctx:
        wait_until(connected(mgr, 1))
        keys = derive_keys(mgr._secret)
        examples = 0

        def peer() -> zmq.Socket[Any]:
            sock = ctx.socket(zmq.DEALER)
            sock.curve_serverkey = keys.server_public
            sock.curve_publickey = keys.client_public
            sock.curve_secretkey = keys.client_secret
            sock.linger = 0
            sock.connect(f"tcp://{mgr.address}")
            return sock

        @settings(max_examples=150, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate])
        @given(hello_first=st.booleans(),
               sent=st.lists(wire(ALL_MESSAGES), min_size=1, max_size=3))
        def fuzz(hello_first: bool, sent: list[list[bytes]]) -> None:
            nonlocal examples
            examples += 1
            sock = peer()
            try:
                if hello_first:
                    sock.send(valid_hello())
                    assert sock.poll(10_000), "no answer to a valid Hello"
                    assert isinstance(m.decode(sock.recv()), m.Welcome)
                for frames in sent:
                    sock.send_multipart(frames)
                sock.poll(20)  # (a Reject, or nothing)
            finally:
                sock.close(0)
            assert loop_alive(mgr), f"the loop died after {sent!r:.2000}"

        fuzz()
        assert examples >= 100
        assert loop_alive(mgr)
        wait_until(lambda: mgr.stats().workers == 1, timeout=30)  # the fake ones are gone
        futs = [mgr.submit(PythonTask(pow, 3, i, resources={"cores": 1})) for i in range(10)]
        assert [f.result(timeout=30) for f in futs] == [3**i for i in range(10)]
        log = mgr.loop_log.read_text()
        assert "invalid message" in log  # the bad ones were refused, each with its line
        assert "Traceback" not in log and "cannot use" not in log, log[-3000:]


# ------------------------------------------------------------------ worker side
#: A task the fake manager may send: fixed, harmless command and payload; small
#: allocations and timeouts; sessions that do not end at once.
SAFE: dict[tuple[type, str], Strategy] = {
    (m.TaskSpec, "command"): st.just("true"),
    (m.TaskSpec, "payload"): st.just(b""),
    (m.TaskSpec, "timeout"): st.floats(0, 5),
    (m.TaskSpec, "allocation"): st.fixed_dictionaries(
        {"cores": st.integers(0, 2), "memory": st.integers(0, 200),
         "disk": st.integers(0, 200), "gpus": st.just(0)}),
    (m.TaskSpec, "env"): st.dictionaries(st.sampled_from(["A", "FUZZ_X"]),
                                         st.text(max_size=10).filter(lambda s: "\0" not in s),
                                         max_size=2),
    (m.Welcome, "heartbeat_interval"): st.floats(0.05, 1.0),
    (m.Welcome, "lease"): st.floats(5.0, 60.0),
}


class FakeManager:
    """A CURVE server holding the password, and the real worker it talks to."""

    def __init__(self, ctx: zmq.Context[Any], tmp: Path) -> None:
        self.secret = b"fuzz-secret"
        keys = derive_keys(self.secret)
        self.router = ctx.socket(zmq.ROUTER)
        self.router.curve_server = True
        self.router.curve_secretkey = keys.server_secret
        self.router.curve_publickey = keys.server_public
        self.router.linger = 0
        self.port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None
        self.identity: bytes | None = None
        self.starts = 0
        self.exits: list[int] = []

    def start_worker(self) -> None:
        self.starts += 1
        log = self.tmp / f"worker-{self.starts}.log"
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "packmule", "worker", f"127.0.0.1:{self.port}",
                 "--cores", "2", "--memory", "400", "--disk", "400",
                 "--workdir", str(self.tmp / "work"), "--pack-cache", str(self.tmp / "packs"),
                 "--idle-timeout", "120", "--connect-timeout", "60"],
                env={**os.environ, PASSWORD_ENV: self.secret.decode()}, stderr=err,
                stdin=subprocess.DEVNULL)
        self.identity = None

    def session(self) -> bytes:
        """The identity of a welcomed session with the worker (restarting it if it exited)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            self.exits.append(self.proc.returncode)
            self.start_worker()
        deadline = time.monotonic() + 30
        while self.identity is None or self.router.poll(0):
            assert time.monotonic() < deadline, "the worker did not say Hello"
            if not self.router.poll(100):
                if self.proc.poll() is not None:
                    self.exits.append(self.proc.returncode)
                    self.start_worker()
                continue
            ident, *frames = self.router.recv_multipart()
            with contextlib.suppress(Exception):
                if isinstance(m.decode(frames[0]), m.Hello):
                    self.identity = ident
                    self.router.send_multipart(
                        [ident, m.encode(m.Welcome(m.PROTOCOL_VERSION, "fuzz", 0.2, 30.0))])
        return self.identity

    def tracebacks(self) -> list[str]:
        return [p.name for p in self.tmp.glob("worker-*.log") if "Traceback" in p.read_text()]

    def stop(self) -> None:
        """Stop the worker as a user would (SIGTERM): it stops its runners too."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.exits.append(self.proc.returncode)


def test_fuzzed_messages_from_a_manager_never_crash_the_worker(tmp_path: Path) -> None:
    with zmq_context() as ctx:
        fake = FakeManager(ctx, tmp_path)
        fake.start_worker()
        try:
            @settings(max_examples=40, deadline=None, database=None,
                      phases=[Phase.explicit, Phase.generate])
            @given(sent=st.lists(wire(m.FROM_MANAGER, SAFE, wrong=False), min_size=1,
                                 max_size=3))
            def well_typed(sent: list[list[bytes]]) -> None:
                ident = fake.session()
                for frames in sent:
                    fake.router.send_multipart([ident, *frames])
                fake.router.poll(100)

            well_typed()
            fake.stop()  # (an Exit it was sent may still be on its way)
            fake.exits.pop()  # (a worker just restarted may not handle SIGTERM yet)
            fake.start_worker()
            # Malformed ones: each ends the session with a log line and exit status 4.
            for bad in ([m.encode(m.WorkerHeartbeat(1))],
                        [msgpack.packb([m.Welcome.TAG, m.PROTOCOL_VERSION, "x", 0.0, 1.0])],
                        [msgpack.packb([m.Dispatch.TAG, [[1, 1, "python", b"", "", {}, {},
                                                          [["../x", "", b""]], [], 0.0, ""]]])],
                        [m.encode(m.PutPack("0" * 64, "0" * 64, 10, 0, 1))],
                        [m.encode(m.Piece(0, 1 << 20))],  # (no data frame)
                        [m.encode(m.Piece(0, 3 << 30)), b"x"],  # (over MAX_MESSAGE)
                        [b"\xc1 not msgpack"]):
                ident = fake.session()
                fake.router.send_multipart([ident, *bad])
                assert fake.proc is not None
                assert fake.proc.wait(timeout=30) == 4, bad
                log = (tmp_path / f"worker-{fake.starts}.log").read_text()
                assert "cannot use" in log and "ending the session" in log, log[-2000:]
            # It still runs a task afterwards.
            ident = fake.session()
            spec = m.TaskSpec(1, 1, "shell", b"", "echo ok", {"cores": 1, "memory": 10,
                              "disk": 10, "gpus": 0}, {}, [], [], 0.0, "")
            fake.router.send_multipart([ident, m.encode(m.Dispatch([spec]))])
            deadline = time.monotonic() + 30
            result = None
            while result is None:
                assert time.monotonic() < deadline, "no result from the worker"
                if fake.router.poll(200):
                    _, *frames = fake.router.recv_multipart()
                    msg = m.decode(frames[0])
                    if isinstance(msg, m.Results) and msg.results[0].task_id == 1:
                        result = msg.results[0]
            assert result.status is m.TaskStatus.SUCCESS and result.stdout == b"ok\n", result
            assert set(fake.exits) <= {0, 4}, fake.exits
            assert not fake.tracebacks(), [
                (tmp_path / name).read_text()[-3000:] for name in fake.tracebacks()]
        finally:
            fake.stop()
