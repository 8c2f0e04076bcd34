"""How well, and how cheaply, packmule measures its tasks. Prints one JSON object.

Run::

    python benchmarks/measurement.py [--quick]

Three questions, each on one local worker (2 cores), for both ways a worker
can enforce memory (a cgroup per runner where writable, else polling):

* **overhead**: a task that keeps one core busy for a few seconds; the CPU
  time the worker process spends (sampling, bookkeeping) while it runs, as a
  fraction of the task's own CPU time. Target: at most 2 %.
* **accuracy**: a task that holds N MB for 1 s; measured peak / N for several
  N. Target: within 5 %.
* **spike**: a task that holds 300 MB for only 200 ms inside a 2 s run: is
  the peak caught? The peer is the kernel's own figure for the same task run
  as a shell command under ``/usr/bin/time -v`` (when installed), in the
  same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from typing import Any

import psutil

import packmule
from packmule.local import local_cluster
from packmule.worker.monitor import CgroupRoot


def busy(seconds: float) -> float:
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x += 1
    return time.process_time()


def hold(mb: int, seconds: float, then: float = 0.0) -> int:
    block = bytearray(mb << 20)
    block[::4096] = b"x" * len(block[::4096])
    time.sleep(seconds)
    del block
    time.sleep(then)
    return mb


def measure_mode(mode: str, quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with local_cluster(1, cores=2, memory=4000, disk=2000,
                       worker_args=["--enforce", mode]) as mgr:
        mgr.submit(packmule.PythonTask(hold, 1, 0.0)).result(timeout=60)  # warm the runner
        worker = psutil.Process(mgr.worker_processes[0].pid)  # type: ignore[attr-defined]
        seconds = 2.0 if quick else 5.0
        before = sum(worker.cpu_times()[:2])
        task = packmule.PythonTask(busy, seconds)
        mgr.submit(task).result(timeout=120)
        worker_cpu = sum(worker.cpu_times()[:2]) - before
        task_cpu = task.measured["cpu_time"]
        out["overhead"] = {
            "task_cpu_s": round(task_cpu, 3),
            "worker_cpu_s": round(worker_cpu, 4),
            "fraction": round(worker_cpu / task_cpu, 5),
            "target": 0.02,
            "meets_target": worker_cpu / task_cpu <= 0.02,
        }
        accuracy = {}
        for mb in (100, 500) if quick else (100, 500, 1000, 2000):
            t = packmule.PythonTask(hold, mb, 1.0)
            mgr.submit(t).result(timeout=120)
            accuracy[str(mb)] = round(t.measured["memory"] / mb, 4)
        worst = max(abs(v - 1) for v in accuracy.values())
        out["accuracy"] = {"measured_over_true": accuracy, "worst_error": round(worst, 4),
                           "target": 0.05, "meets_target": worst <= 0.05}
        t = packmule.PythonTask(hold, 300, 0.2, 1.8)
        mgr.submit(t).result(timeout=120)
        caught = t.measured["memory"] >= 300 * 0.95
        out["spike_200ms_300MB"] = {"measured_mb": round(t.measured["memory"], 1),
                                    "caught": caught}
    return out


def gnu_time_peer() -> dict[str, Any]:
    """The kernel's max RSS for the same spike, via /usr/bin/time -v."""
    if not shutil.which("time") or not os.path.exists("/usr/bin/time"):
        return {"available": False, "reason": "/usr/bin/time not installed"}
    code = ("import time; b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096]); "
            "time.sleep(0.2); del b; time.sleep(1.8)")
    res = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", code],
                         capture_output=True, text=True, check=False)
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr)
    if not match:
        return {"available": False, "reason": "no max RSS in /usr/bin/time output"}
    mb = int(match.group(1)) / 1024
    return {"available": True, "max_rss_mb_including_interpreter": round(mb, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (CI smoke test)")
    args = parser.parse_args(argv)
    modes = ["poll"]
    if CgroupRoot.create("packmule-bench-probe") is not None:
        modes.insert(0, "cgroup")
    result: dict[str, Any] = {
        "benchmark": "packmule measurement",
        "packmule_version": packmule.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "load_average": os.getloadavg(),
        "modes": {mode: measure_mode(mode, args.quick) for mode in modes},
        "peer_gnu_time": gnu_time_peer(),
    }
    result["meets_targets"] = {
        f"{mode}_{key}": result["modes"][mode][key].get("meets_target",
                                                        result["modes"][mode][key].get("caught"))
        for mode in modes for key in ("overhead", "accuracy", "spike_200ms_300MB")
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    started = time.time()
    code = main()
    print(f"took {time.time() - started:.1f} s", file=sys.stderr)
    sys.exit(code)
