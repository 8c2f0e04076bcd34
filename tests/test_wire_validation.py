"""Every field of every wire message is checked on decode, and large messages travel in
pieces. The samples here are built from the message definitions, so a new message or
field is checked without editing this file."""

from __future__ import annotations

import enum
import math
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packmule.errors import ProtocolError
from packmule.protocol import messages as m
from packmule.protocol import pieces

ALL = sorted(m._BY_TAG.values(), key=lambda c: c.TAG)


def _unwrap(hint: Any) -> tuple[Any, list[Any]]:
    if typing.get_origin(hint) is typing.Annotated:
        base, *marks = typing.get_args(hint)
        return base, marks
    return hint, []


def sample(hint: Any) -> Any:
    """A valid wire value for a hint."""
    base, marks = _unwrap(hint)
    rng = next((b for b in marks if isinstance(b, m.Range)), None)
    choices = next((b.values for b in marks if isinstance(b, m.OneOf)), None)
    if base is bool:
        return True
    if base is int:
        return int(rng.low) if rng and rng.low > 0 else 1
    if base is float:
        return rng.low if rng else 0.5
    if base is str:
        return choices[0] if choices else "a"
    if base is bytes:
        return b"x"
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return next(iter(base)).value
    if base in m.FIELD_HINTS:
        return [sample(h) for h in m.FIELD_HINTS[base].values()]
    if typing.get_origin(base) is list:
        return [sample(typing.get_args(base)[0])]
    if typing.get_origin(base) is dict:
        k, v = typing.get_args(base)
        return {sample(k): sample(v)}
    raise TypeError(base)


def wrong(hint: Any) -> Any:
    """A value of another type than the hint's."""
    base, _ = _unwrap(hint)
    return 7 if base in (str, bytes, list, dict, bool) or typing.get_origin(base) in (
        list, dict) or (isinstance(base, type) and issubclass(base, enum.Enum)) else ["x"]


def raw(cls: type[m.Message], **fields: Any) -> bytes:
    values = {n: sample(h) for n, h in m.FIELD_HINTS[cls].items()} | fields
    return msgpack.packb([cls.TAG, *values.values()], use_bin_type=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_a_valid_sample_of_every_message_decodes(cls: type[m.Message]) -> None:
    msg = m.decode(raw(cls))
    assert type(msg) is cls
    assert m.decode(m.encode(msg)) == msg


@pytest.mark.parametrize(
    ("cls", "name"), [(c, n) for c in ALL for n in m.FIELD_HINTS[c]],
    ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_every_field_of_the_wrong_type_is_named(cls: type[m.Message], name: str) -> None:
    with pytest.raises(ProtocolError, match=rf"malformed {cls.__name__}: field '{name}\b"):
        m.decode(raw(cls, **{name: wrong(m.FIELD_HINTS[cls][name])}))


def test_nested_fields_are_named_with_their_path() -> None:
    result = sample(m.TaskResult)
    result[2] = "bogus"
    with pytest.raises(ProtocolError, match=r"field 'results\[1\]\.status' must be one of "
                                            r"'success'"):
        m.decode(msgpack.packb([m.Results.TAG, [sample(m.TaskResult), result]]))
    spec = sample(m.TaskSpec)
    spec[7] = [["../etc/passwd", "", b""]]
    with pytest.raises(ProtocolError, match=r"tasks\[0\]\.inputs\[0\]\.remote_name' must be "
                                            "a relative path"):
        m.decode(msgpack.packb([m.Dispatch.TAG, [spec]], use_bin_type=True))


@pytest.mark.parametrize(("cls", "field", "value", "needle"), [
    (m.Hello, "resources", [1, 2], "must be a dict"),
    (m.Hello, "packs", [1], r"packs\[0\]' must be a str"),
    (m.Hello, "pid", -1, "an int in"),
    (m.Hello, "pid", 2**63, "an int in"),
    (m.Hello, "pid", True, "got bool"),
    (m.Hello, "hostname", "h" * (m.MAX_NAME + 1), "at most 4096 characters"),
    (m.Hello, "resources", {"cores": -1}, r"resources\['cores'\]' must be an int"),
    (m.PackState, "digest", ["a"], "'digest' must be a str"),
    (m.PackState, "ok", 1, "must be a bool"),
    (m.PackProgress, "received", 1.5, "an int"),
    (m.WorkerHeartbeat, "running", None, "an int"),
    (m.Welcome, "heartbeat_interval", 0.0, "a finite number in"),
    (m.Welcome, "lease", math.inf, "a finite number in"),
    (m.Welcome, "lease", math.nan, "a finite number in"),
    (m.PutFile, "cache_name", "../x", "a file name"),
    (m.PutFile, "cache_name", "", "a file name"),
    (m.Kill, "attempt", -3, "an int in"),
    (m.Piece, "total", "x", "an int"),
])
def test_values_out_of_range_are_refused(cls: type[m.Message], field: str, value: Any,
                                         needle: str) -> None:
    with pytest.raises(ProtocolError, match=rf"malformed {cls.__name__}: .*{needle}"):
        m.decode(raw(cls, **{field: value}))


def test_a_result_may_exceed_only_a_resource() -> None:
    """The core looks each name up among the resources: another is the peer's error."""
    result = sample(m.TaskResult)
    result[13] = ["memory", "foo"]
    with pytest.raises(ProtocolError, match=r"field 'results\[0\]\.exceeded\[1\]' must be "
                                            r"one of 'cores', 'memory', 'disk', 'gpus'"):
        m.decode(msgpack.packb([m.Results.TAG, [result]], use_bin_type=True))


def test_what_is_allowed_stays_allowed() -> None:
    r = sample(m.TaskResult)
    r[4] = -9  # exit codes may be negative (signals)
    r[9] = 3  # a float field takes a whole number
    r[7] = {"out/a.txt": b"1"}
    assert m.decode(msgpack.packb([m.Results.TAG, [r]], use_bin_type=True))
    assert m.decode(raw(m.Hello, protocol=999))  # any version: refused by the manager, named
    spec = sample(m.TaskSpec)
    spec[10] = ""  # no pack
    spec[7] = [["in.txt", "", b"data"], ["ref", "file-x-ref", b""]]
    assert m.decode(msgpack.packb([m.Dispatch.TAG, [spec]], use_bin_type=True))


def test_wrong_shapes_are_refused() -> None:
    with pytest.raises(ProtocolError, match="a list of 8 fields"):
        m.decode(msgpack.packb([m.Hello.TAG, 1]))
    with pytest.raises(ProtocolError, match=r"field 'results\[0\]' must be a list of 14"):
        m.decode(msgpack.packb([m.Results.TAG, [[1, 2]]]))
    with pytest.raises(ProtocolError, match="unknown message tag"):
        m.decode(msgpack.packb([99]))
    with pytest.raises(ProtocolError, match="malformed message"):
        m.decode(msgpack.packb({"a": 1}))


def test_a_type_without_a_check_cannot_be_registered() -> None:
    import dataclasses

    with pytest.raises(TypeError, match="no wire check"):
        @m.struct
        @dataclasses.dataclass(frozen=True)
        class Odd:
            when: complex


def test_every_message_is_sent_by_one_side() -> None:
    assert set(m.FROM_WORKER) | set(m.FROM_MANAGER) == set(ALL)
    assert m.Piece in m.FROM_WORKER and m.Dispatch in m.FROM_MANAGER


# ---------------------------------------------------------------- pieces
def big_result(n: int) -> m.TaskResult:
    return m.TaskResult(1, 1, m.TaskStatus.SUCCESS, b"v" * n, 0, b"out", b"err", {}, "", 1.0,
                        [], [], {"memory": 2.0}, [])


def test_small_messages_go_whole_and_large_ones_in_pieces() -> None:
    small = m.encode(m.WorkerHeartbeat(1))
    assert list(pieces.frames(small)) == [[small]]
    data = m.encode(m.Results([big_result(3 * pieces.PIECE_SIZE)]))
    parts = list(pieces.frames(data))
    assert len(parts) == 4
    headers = [m.decode(p[0]) for p in parts]
    assert [h.offset for h in headers] == [i * pieces.PIECE_SIZE for i in range(4)]  # type: ignore[attr-defined]
    assert b"".join(bytes(p[1]) for p in parts) == data
    asm = pieces.Assembler()
    out = [asm.add(b"p", h, bytes(p[1])) for h, p in zip(headers, parts, strict=True)]  # type: ignore[arg-type]
    assert out[:3] == [None] * 3 and out[3] == data and asm.held == 0


@pytest.mark.parametrize(("offset", "total", "size", "needle"), [
    (0, pieces.PIECE_SIZE, 10, "needs no pieces"),
    (0, pieces.MAX_MESSAGE + 1, 10, "more than the"),
    (5, 10 * pieces.PIECE_SIZE, 10, "offset 5, 0 bytes"),
    (0, 10 * pieces.PIECE_SIZE, pieces.PIECE_SIZE + 1, "carries"),
    (0, 10 * pieces.PIECE_SIZE, 0, "carries 0 bytes"),
])
def test_pieces_that_do_not_fit_are_a_protocol_error(offset: int, total: int, size: int,
                                                     needle: str) -> None:
    asm = pieces.Assembler()
    with pytest.raises(ProtocolError, match=needle):
        asm.add(b"p", m.Piece(offset, total), b"x" * size)
    assert asm.held == 0


def test_a_change_of_total_midway_is_refused_and_forgotten() -> None:
    asm = pieces.Assembler()
    total = 3 * pieces.PIECE_SIZE
    asm.add(b"p", m.Piece(0, total), b"x" * pieces.PIECE_SIZE)
    asm.add(b"q", m.Piece(0, total), b"x" * 10)
    assert asm.held == pieces.PIECE_SIZE + 10
    with pytest.raises(ProtocolError, match="earlier pieces"):
        asm.add(b"p", m.Piece(pieces.PIECE_SIZE, total + 1), b"x")
    assert asm.held == 10  # only the other peer's
    asm.forget(b"q")
    assert asm.held == 0


def test_a_result_over_the_limit_becomes_its_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pieces, "MAX_MESSAGE", 10 * pieces.PIECE_SIZE)
    ok, huge = big_result(100), big_result(20 * pieces.PIECE_SIZE)
    sent = [b"".join(bytes(f[-1]) for f in [fs]) for fs in pieces.outgoing(m.Results([ok, huge]))]
    results = [r for data in sent for r in m.decode(data).results]  # type: ignore[attr-defined]
    assert results[0] == ok
    failed = results[1]
    assert failed.status is m.TaskStatus.SETUP_ERROR and failed.value == b""
    assert "more than the" in failed.message and failed.measured == {"memory": 2.0}


def test_a_hello_always_fits_one_frame() -> None:
    packs = [f"{i:064x}" for i in range(5000)]
    hello = m.Hello(m.PROTOCOL_VERSION, "v", "w", "h", 1, {"cores": 1}, packs)
    (frames,) = list(pieces.outgoing(hello))
    assert len(frames) == 1 and len(frames[0]) <= pieces.PIECE_SIZE
    sent = m.decode(bytes(frames[0]))
    assert isinstance(sent, m.Hello) and 0 < len(sent.packs) < 5000
    assert sent.packs == packs[:len(sent.packs)]


# ------------------------------------------------------------------ joined messages
def test_a_joined_message_decodes_as_a_whole_one_with_views_of_its_large_fields() -> None:
    """decode_joined reads what decode reads; a bytes field of VIEW_BYTES or more is a
    read-only view of the joined buffer (a 300 MB argument is not copied)."""
    big = bytes(range(256)) * (m.VIEW_BYTES // 256 + 1)
    spec = m.TaskSpec(1, 0, "python", big, "", {"cores": 1, "memory": 0, "disk": 0,
                      "gpus": 0}, {"A": "b"}, [m.InputFile("in", "", big)], ["out"], 0.0, "")
    joined = bytearray(m.encode(m.Dispatch([spec, spec])))
    got = m.decode_joined(joined)
    assert got == m.decode(bytes(joined)) == m.Dispatch([spec, spec])
    assert isinstance(got, m.Dispatch)
    first = got.tasks[0]
    views = [first.payload, first.inputs[0].data]
    assert all(type(v) is memoryview and v.readonly and v.obj is joined for v in views)
    assert type(first.command) is str and type(first.env["A"]) is str


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_message_decodes_joined_as_it_decodes_whole(cls: type[m.Message]) -> None:
    data = raw(cls)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(m, "VIEW_BYTES", 1)  # every bytes field a view, every message parsed
        assert m.decode_joined(bytearray(data)) == m.decode(data)


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=40) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.integers(0, 9) | st.text(max_size=5), inner, max_size=5),
    max_leaves=30)


@given(_values)
@settings(max_examples=300, deadline=None)
def test_the_joined_parser_reads_msgpack_as_msgpack_does(value: Any) -> None:
    data = msgpack.packb(value, use_bin_type=True)
    want = msgpack.unpackb(data, raw=False, strict_map_key=False)
    got, end = m._unpack(memoryview(data), 0)
    assert end == len(data) and got == want
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(m, "VIEW_BYTES", 0)  # (views compare equal to the bytes they show)
        assert m._unpack(memoryview(data), 0)[0] == want


@given(st.binary(max_size=300), st.sampled_from(ALL))
@settings(max_examples=300, deadline=None)
def test_garbage_joined_is_a_protocol_error_as_whole(noise: bytes, cls: type[m.Message]) -> None:
    """Damaged messages: decode_joined refuses exactly what decode refuses, with a
    ProtocolError, and reads the same message from what decode reads."""
    for data in (noise, raw(cls)[:len(noise) % 40] + noise):
        outcomes = []
        for read in (m.decode, m.decode_joined):
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(m, "VIEW_BYTES", 1)
                try:
                    outcomes.append(read(bytearray(data)))
                except ProtocolError:
                    outcomes.append(ProtocolError)
        assert outcomes[0] == outcomes[1]


def test_a_joined_message_declaring_too_many_items_is_refused_before_reading_them() -> None:
    """A peer's array header of 2**32 - 1 items (then a megabyte of one-byte items) is a
    ProtocolError at once, not a billion-step parse."""
    data = bytearray(b"\x92\x07\xdd" + (2**32 - 1).to_bytes(4, "big") + b"\x01" * m.VIEW_BYTES)
    with pytest.raises(ProtocolError, match="items, more than"):
        m.decode_joined(data)
