"""Large calls and results: how long they take, and whether the rest of the cluster waits.

Run it with::

    python benchmarks/large_payloads.py            # a 300 MB argument, a 200 MB result
    python benchmarks/large_payloads.py --quick    # 50 MB and 30 MB, for CI smoke runs

Two local workers of 2 cores, a 4 s lease (heartbeats every 0.4 s), as in
``tests/test_large_payloads.py``. One task takes a whole worker and a large
argument (its length and two bytes come back); another returns a large
result. Meanwhile a thread of your process keeps submitting no-op tasks,
which run on the other worker: their slowest round trip while the large task
is submitted and runs (``others_slowest_s``, against ``others_before_s``
before it) says how long the cluster waited for it, and ``workers_lost`` must
stay 0. The peer in the same run is ``ProcessPoolExecutor(1)`` doing the same
calls on this machine (no network, no encryption): the ratios are packmule's
time over the pool's. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_workqueue import load_average, machine_info

from packmule import PythonTask
from packmule.local import local_cluster

MB = 1_000_000
LEASE = {"heartbeat_interval": 0.4, "lease": 4.0}


def checksum(data: bytes) -> tuple[int, int, int]:
    """What the task sends back about its large argument."""
    return len(data), data[0], data[-1]


def make_bytes(n: int) -> bytes:
    """A large value: ``n`` bytes, first and last marked."""
    body = bytearray(n)
    body[0], body[-1] = 7, 9
    return bytes(body)


def noop(i: int) -> int:
    return i


def _check(kind: str, got: Any, n: int) -> None:
    want_len = n
    length = got[0] if kind == "call" else len(got)
    if length != want_len:
        raise SystemExit(f"large_payloads: the {kind} came back wrong ({length} bytes)")


def packmule_run(call_mb: int, result_mb: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with local_cluster(2, cores=2, memory=12000, **LEASE) as mgr:
        for i in range(20):
            mgr.submit(PythonTask(noop, i)).result(timeout=60)
        for kind, n in (("call", call_mb * MB), ("result", result_mb * MB)):
            times: list[tuple[float, float]] = []
            stop = threading.Event()

            def others(times: list[tuple[float, float]] = times,
                       stop: threading.Event = stop) -> None:
                i = 0
                while not stop.is_set():
                    t = time.monotonic()
                    mgr.submit(PythonTask(noop, i, resources={"cores": 1})).result(timeout=120)
                    times.append((t, time.monotonic() - t))
                    i += 1

            thread = threading.Thread(target=others)
            thread.start()
            time.sleep(1.0)  # (a second of round trips before, to compare with)
            big = make_bytes(n) if kind == "call" else b""
            lost = mgr.stats().workers_lost
            start = time.monotonic()
            task = (PythonTask(checksum, big, resources={"cores": 2}) if kind == "call" else
                    PythonTask(make_bytes, n, resources={"cores": 2}))
            fut = mgr.submit(task)
            submitted = time.monotonic()
            del big
            got = fut.result(timeout=600)
            done = time.monotonic()
            stop.set()
            thread.join()
            _check(kind, got, n)
            del got
            before = [d for t, d in times if t < start]
            during = [d for t, d in times if start <= t <= done]
            out[kind] = {
                "mb": n // MB,
                "submit_s": round(submitted - start, 3),
                "total_s": round(done - start, 3),
                "others_before_s": round(max(before, default=0.0), 3),
                "others_slowest_s": round(max(during, default=0.0), 3),
                "others_during": len(during),
                "attempts": task.attempts,
                "workers_lost": mgr.stats().workers_lost - lost,
            }
    return out


def pool_run(call_mb: int, result_mb: int) -> dict[str, float]:
    with ProcessPoolExecutor(1) as pool:
        pool.submit(noop, 0).result()
        big = make_bytes(call_mb * MB)
        start = time.monotonic()
        _check("call", pool.submit(checksum, big).result(), call_mb * MB)
        call = time.monotonic() - start
        del big
        start = time.monotonic()
        _check("result", pool.submit(make_bytes, result_mb * MB).result(), result_mb * MB)
        result = time.monotonic() - start
    return {"call_s": round(call, 3), "result_s": round(result, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="50 MB and 30 MB")
    p.add_argument("--call-mb", type=int, default=None, help="argument size (default 300)")
    p.add_argument("--result-mb", type=int, default=None, help="result size (default 200)")
    args = p.parse_args(argv)
    call_mb = args.call_mb or (50 if args.quick else 300)
    result_mb = args.result_mb or (30 if args.quick else 200)
    started = time.monotonic()
    ours = packmule_run(call_mb, result_mb)
    peer = pool_run(call_mb, result_mb)
    ok = all(r["workers_lost"] == 0 and r["attempts"] == 1 for r in ours.values())
    print(json.dumps({
        "machine": machine_info(), "load_avg": load_average(), "lease": LEASE,
        "packmule": ours, "process_pool": peer,
        "ratio_to_process_pool": {
            "call": round(ours["call"]["total_s"] / max(peer["call_s"], 1e-3), 2),
            "result": round(ours["result"]["total_s"] / max(peer["result_s"], 1e-3), 2)},
        "ok": ok, "duration_s": round(time.monotonic() - started, 1),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
