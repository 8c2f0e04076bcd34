"""Large user payloads under the manager's frame limit: arguments of hundreds of MB go
to the worker in one frame, results of hundreds of MB come back in pieces."""

from __future__ import annotations

import time

import pytest

from packmule import PythonTask
from packmule.protocol.pieces import MAX_FRAME

from .conftest import ClusterFactory

MB = 1_000_000


def checksum(data: bytes) -> tuple[int, int, int]:
    """What a task reports about a large argument: its length and two samples."""
    return len(data), data[0], data[-1]


def make_bytes(n: int) -> bytes:
    """A large result: ``n`` bytes, first and last marked."""
    body = bytearray(n)
    body[0], body[-1] = 7, 9
    return bytes(body)


@pytest.mark.slow
def test_a_300_mb_argument_and_a_200_mb_result_travel(cluster: ClusterFactory) -> None:
    big = make_bytes(300 * MB)
    # (A 300 MB task holds the connection for seconds: heartbeats wait behind it, so the
    # tests' 2 s lease is too short.)
    with cluster(1, memory=12000, heartbeat_interval=1.0, lease=60.0) as mgr:
        started = time.monotonic()
        fut = mgr.submit(PythonTask(checksum, big))
        assert fut.result(timeout=120) == (300 * MB, 7, 9)
        sent = time.monotonic() - started
        del big
        started = time.monotonic()
        result = mgr.submit(PythonTask(make_bytes, 200 * MB)).result(timeout=120)
        received = time.monotonic() - started
        assert len(result) == 200 * MB and result[0] == 7 and result[-1] == 9
        assert len(result) > 1000 * MAX_FRAME  # it did come in pieces
        del result
        # ... and the connection is fine afterwards
        assert mgr.submit(PythonTask(len, "abc")).result(timeout=30) == 3
    print(f"300 MB argument: {sent:.1f} s; 200 MB result: {received:.1f} s")


def test_a_result_just_over_one_piece_arrives_whole(cluster: ClusterFactory) -> None:
    with cluster(1) as mgr:
        sizes = [MAX_FRAME - 100, MAX_FRAME, 3 * MAX_FRAME + 17]
        futs = [mgr.submit(PythonTask(make_bytes, n)) for n in sizes]
        for n, fut in zip(sizes, futs, strict=True):
            value = fut.result(timeout=60)
            assert len(value) == n and value[0] == 7 and value[-1] == 9
