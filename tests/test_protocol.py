from __future__ import annotations

import pytest

from packmule import AuthenticationError, ProtocolError
from packmule.protocol import messages as m
from packmule.protocol.security import derive_keys, read_password_file


def sample_spec() -> m.TaskSpec:
    return m.TaskSpec(
        task_id=3, attempt=1, kind="python", payload=b"\x80\x05pickle", command="",
        allocation={"cores": 1, "memory": 10, "disk": 10, "gpus": 0}, env={"A": "b"},
        inputs=[m.InputFile("in.txt", "", b"data"), m.InputFile("ref", "file-x-ref", b"")],
        outputs=["out.txt"], timeout=0.0, pack="ab12",
    )


@pytest.mark.parametrize(
    "msg",
    [
        m.Hello(m.PROTOCOL_VERSION, "0.1.0", "w1", "host", 42,
                {"cores": 2, "memory": 1, "disk": 1, "gpus": 0}, ["ab12"]),
        m.Dispatch([sample_spec(), sample_spec()]),
        m.Results([m.TaskResult(3, 1, m.TaskStatus.EXCEPTION, b"x", -1, b"o", b"e",
                                {"out": b"1"}, "", 0.5, ["0"], [b"msg"], {"memory": 1.5},
                                ["memory"])]),
        m.Welcome(m.PROTOCOL_VERSION, "0.1.0", 5.0, 30.0),
        m.ManagerHeartbeat(),
        m.Kill(3, 1),
        m.PutPack("ab12", "cd34", 10, 0, 1),
        m.PackProgress("ab12", 1, 10),
        m.PackState("ab12", False, "corrupted", True, 1),
    ],
)
def test_round_trip(msg: m.Message) -> None:
    assert m.decode(m.encode(msg)) == msg


def test_enum_and_nested_types_are_restored() -> None:
    res = m.decode(m.encode(m.Results([m.TaskResult(1, 1, m.TaskStatus.TIMEOUT, b"", 0, b"", b"",
                                                    {}, "t", 0.0, [], [], {}, [])])))
    assert isinstance(res, m.Results)
    assert res.results[0].status is m.TaskStatus.TIMEOUT
    d = m.decode(m.encode(m.Dispatch([sample_spec()])))
    assert isinstance(d, m.Dispatch) and isinstance(d.tasks[0].inputs[1], m.InputFile)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"\xc1", "undecodable"),
        (b"\x93\x01\x02\x03", "malformed Hello"),
        (b"\x91\xcd\x03\xe7", "unknown message tag 999"),
        (b"\xa3abc", "malformed message"),
    ],
)
def test_malformed_input_is_a_protocol_error(data: bytes, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        m.decode(data)


def test_keys_are_derived_deterministically_and_differ_by_secret() -> None:
    a, b, c = derive_keys(b"s1"), derive_keys(b"s1"), derive_keys(b"s2")
    assert a == b and a.server_public != c.server_public
    assert a.server_public != a.client_public and len(a.server_public) == 40
    with pytest.raises(AuthenticationError, match="empty"):
        derive_keys(b"")


def test_password_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "pw"
    p.write_bytes(b"secret\n")
    assert read_password_file(p) == b"secret"
    p.write_bytes(b"\n")
    with pytest.raises(AuthenticationError, match="is empty"):
        read_password_file(p)
    with pytest.raises(AuthenticationError, match="cannot read password file"):
        read_password_file(tmp_path / "missing")


def test_worker_forsakes_a_task_that_does_not_fit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A manager (played here by a bare socket) over-commits; the real worker hands it back."""
    import os
    import subprocess
    import sys

    import zmq

    secret = b"test-secret"
    keys = derive_keys(secret)
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.curve_server = True
    router.curve_secretkey = keys.server_secret
    router.curve_publickey = keys.server_public
    port = router.bind_to_random_port("tcp://127.0.0.1")
    env = {**os.environ, "PACKMULE_PASSWORD": secret.decode()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "packmule", "worker", f"127.0.0.1:{port}", "--cores", "1",
         "--memory", "100", "--disk", "100", "--workdir", str(tmp_path)],
        env=env, stderr=subprocess.DEVNULL,
    )
    try:
        assert router.poll(20_000)
        ident, data = router.recv_multipart()
        hello = m.decode(data)
        assert isinstance(hello, m.Hello)
        assert hello.resources == {"cores": 1, "memory": 100, "disk": 100, "gpus": 0}
        router.send_multipart([ident, m.encode(m.Welcome(m.PROTOCOL_VERSION, "x", 1.0, 10.0))])
        spec = m.TaskSpec(1, 1, "shell", b"", "true", {"cores": 2, "memory": 10, "disk": 10,
                                                       "gpus": 0}, {}, [], [], 0.0, "")
        router.send_multipart([ident, m.encode(m.Dispatch([spec]))])
        while True:
            assert router.poll(20_000)
            _, data = router.recv_multipart()
            msg = m.decode(data)
            if isinstance(msg, m.Results):
                break
        (res,) = msg.results
        assert res.status is m.TaskStatus.FORSAKEN
        assert "needs Resources(cores=2" in res.message
        router.send_multipart([ident, m.encode(m.Exit("test over"))])
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        router.close(0)
        ctx.term()
