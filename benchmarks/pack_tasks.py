"""Tasks in environment packs, end to end: a real manager and ``packmule worker``.

Run it with::

    python benchmarks/pack_tasks.py            # 3 rounds of 600 tasks each way

(``pip install -e '.[bench]'`` installs numpy and scipy.) It prints one JSON
object on stdout:

``first_use``
    A worker that has never seen the pack (its pack cache empty; the manager's
    pack already built): seconds from ``submit()`` to the first packed task's
    result, which covers sending the pack, verifying and unpacking it, and
    starting a runner with its interpreter. Against a plain ``tar -xf`` of
    the same tar. The unpack step alone is measured by ``envpack.py``.
``in_pack``
    The same numpy + scipy app run ``--tasks`` times on one 2-core worker,
    once as plain tasks (the worker's own environment has numpy and scipy)
    and once with ``pack=True``: wall time of each batch, interleaved over
    ``--rounds`` rounds, alternating which goes first. Target: the packed
    batch at most 1.10 x the plain one (median over rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from packmule import Manager, PythonTask
from packmule.local import start_worker, stop_worker

TARGET_IN_PACK = 1.10


def app(n: int) -> float:
    """About 10 ms of numpy and scipy, imported inside the body as Parsl apps do."""
    import numpy as np
    import scipy.linalg

    a = np.random.default_rng(n).random((300, 300)) + np.eye(300) * 300
    return float(scipy.linalg.det(a))


def wait_for_worker(mgr: Manager, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while mgr.stats().workers < 1:
        if time.monotonic() > deadline:
            raise RuntimeError("no worker connected")
        time.sleep(0.05)


def batch(mgr: Manager, n: int, pack: bool) -> float:
    start = time.perf_counter()
    futs = [mgr.submit(PythonTask(app, i, pack=pack, resources={"cores": 1})) for i in range(n)]
    for f in futs:
        f.result(timeout=600)
    return time.perf_counter() - start


def first_use(tmp: Path, i: int) -> dict[str, Any]:
    """A fresh worker's first packed task, against untarring the same pack."""
    untar_s = untar(tmp, i) if i % 2 else 0.0  # alternate which goes first
    with Manager(run_dir=tmp / f"run-first-{i}", pack_cache=tmp / "packs") as mgr:
        from packmule.manager.packs import PackBuilder

        builder = PackBuilder(tmp / "packs", lambda *a: None, lambda *a: None)
        pack = builder.pack_for([app], ())  # built ahead: only the worker side is timed
        builder.close()
        proc = start_worker(mgr, cores=2, memory=4000, disk=8000,
                            extra_args=["--pack-cache", str(tmp / f"node-first-{i}"),
                                        "--workdir", str(tmp)])
        try:
            wait_for_worker(mgr)
            os.sync()
            start = time.perf_counter()
            mgr.submit(PythonTask(app, 1, pack=True)).result(timeout=600)
            first = time.perf_counter() - start
            start = time.perf_counter()
            mgr.submit(PythonTask(app, 2, pack=True)).result(timeout=600)
            second = time.perf_counter() - start
        finally:
            stop_worker(proc)
    untar_s = untar_s or untar(tmp, i)
    return {"pack_mb": round(pack.size / 1e6, 1), "first_task_s": first,
            "second_task_s": second, "plain_untar_s": untar_s}


def untar(tmp: Path, i: int) -> float:
    """Seconds for a plain ``tar -xf`` of the pack built in ``tmp / "packs"``."""
    (pack,) = (tmp / "packs").glob("*.tar") or [None]
    if pack is None:  # not built yet: build it as first_use does
        from packmule.envpack import analyze, build_pack

        pack = build_pack(analyze([app]), tmp / "packs").path
    out = tmp / f"untar-{i}"
    out.mkdir()
    os.sync()
    start = time.perf_counter()
    subprocess.run(["tar", "-xf", str(pack), "-C", str(out)], check=True)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=600)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pack-bench-"))
    try:
        uses = [first_use(tmp, i) for i in range(args.rounds)]
        print(f"first use: {uses}", file=sys.stderr)
        med = {k: statistics.median(u[k] for u in uses)
               for k in ("first_task_s", "second_task_s", "plain_untar_s")}
        first = {"pack_mb": uses[0]["pack_mb"], **{k: round(v, 4) for k, v in med.items()},
                 "ratio_first_task_over_untar": round(med["first_task_s"]
                                                      / med["plain_untar_s"], 2),
                 "samples": uses}
        times: dict[str, list[float]] = {"plain": [], "pack": []}
        with Manager(run_dir=tmp / "run", pack_cache=tmp / "packs") as mgr:
            proc = start_worker(mgr, cores=2, memory=4000, disk=8000,
                                extra_args=["--pack-cache", str(tmp / "node"),
                                            "--workdir", str(tmp)])
            try:
                wait_for_worker(mgr)
                batch(mgr, 20, False)  # warm up: runners, imports, the pack on the worker
                batch(mgr, 20, True)
                for r in range(args.rounds):
                    for side in (("plain", "pack") if r % 2 == 0 else ("pack", "plain")):
                        times[side].append(batch(mgr, args.tasks, side == "pack"))
                    print(f"round {r + 1}: plain {times['plain'][-1]:.3f} s, "
                          f"pack {times['pack'][-1]:.3f} s", file=sys.stderr)
            finally:
                stop_worker(proc)
        plain, packed = statistics.median(times["plain"]), statistics.median(times["pack"])
        ratio = round(packed / plain, 3)
        print(json.dumps({
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "load_avg": os.getloadavg()},
            "first_use": first,
            "in_pack": {"tasks": args.tasks, "rounds": args.rounds,
                        "plain_s": round(plain, 3), "pack_s": round(packed, 3),
                        "ratio": ratio, "target": TARGET_IN_PACK,
                        "meets_target": ratio <= TARGET_IN_PACK,
                        "samples": {k: [round(x, 3) for x in v] for k, v in times.items()}},
        }, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
