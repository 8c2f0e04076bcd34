"""What an idle ``packmule worker`` and an idle runner cost: memory and start-up imports.

Run it with::

    python benchmarks/footprint.py             # about 30 s
    python benchmarks/footprint.py --quick     # fewer start-up samples

It prints one JSON object on stdout (progress goes to stderr).

``packmule``
    A manager in this process and one ``packmule worker`` offering 1 core (so
    it keeps one warm runner), started as ``local_cluster`` starts workers.
    Once the worker is connected and has been idle for ``--settle`` seconds,
    ``psutil``'s ``memory_full_info`` of the worker daemon and of its warm
    runner: RSS, USS (memory only that process holds) and PSS (shared pages
    split between their users), in MB. ``runner_after_task``: the same runner
    once it has run one no-op task defined in this script (pickled by value,
    so the runner has unpickled code with cloudpickle) and is idle again.
``imports``
    For the worker daemon (``import packmule.cli, packmule.worker.detect,
    packmule.worker.daemon``: what ``python -m packmule worker`` loads before
    it connects) and for a runner (``import packmule.worker.runner``): the
    modules loaded beyond a bare interpreter's and their summed import time
    from ``python -X importtime`` (median of ``--runs`` fresh interpreters);
    the start-up wall time of that interpreter against ``python -c pass``;
    the resident set the imports add; and the top packages by import time,
    each with the resident set a fresh interpreter gains importing that
    package's modules alone (their own dependencies included, so these
    overlap).
``peers``
    Measured in the same run and the same way: ``python -c "import time;
    time.sleep(60)"`` (the floor for any Python process), and Debian's
    ``work_queue_worker`` (cctools, in C) connected to a real Work Queue
    manager, found on ``PATH`` or set up as ``benchmarks/vs_workqueue.py``
    sets it up (``apt-get download`` + ``dpkg -x`` into ``--wq-root``). When
    Work Queue's Python module cannot be used, the worker connects to a
    plain TCP listener standing in for the manager; when there is no worker
    binary at all the peer says ``"available": false`` and why.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psutil
import vs_workqueue  # the sibling benchmark: machine info, Work Queue set-up

HERE = Path(__file__).resolve().parent
MB = 1024 * 1024
#: What the worker daemon imports before it connects, and what a runner imports.
WORKER_IMPORTS = "packmule.cli, packmule.worker.detect, packmule.worker.daemon"
RUNNER_IMPORTS = "packmule.worker.runner"
#: Seconds to wait for a worker to connect.
CONNECT_TIMEOUT = 60.0
#: Work Queue's manager side, run by an interpreter that imports ``work_queue``:
#: prints its port, then once a worker has connected "connected", and serves
#: until its stdin closes.
WQ_MANAGER = r"""
import os, sys, threading, time
import work_queue as wq
q = wq.WorkQueue(port=0)
print(q.port, flush=True)
closed = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
told = False
while not closed.is_set():
    q.wait(1)
    if not told and q.stats.workers_connected > 0:
        print("connected", flush=True)
        told = True
del q  # while the module is still whole (its __del__ needs it)
"""


def log(msg: str) -> None:
    print(f"[footprint {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)



# ================================================================ memory
def memory(pid: int) -> dict[str, Any]:
    """One process's memory (MB) and thread count."""
    p = psutil.Process(pid)
    with p.oneshot():
        full = p.memory_full_info()
        threads = p.num_threads()
        name = " ".join(p.cmdline()[:3])
    return {
        "rss_mb": round(full.rss / MB, 1),
        "uss_mb": round(full.uss / MB, 1),
        "pss_mb": round(getattr(full, "pss", 0) / MB, 1),
        "shared_mb": round(getattr(full, "shared", 0) / MB, 1),
        "threads": threads,
        "command": name,
    }


def settled(pid: int, seconds: float) -> dict[str, Any]:
    """A process's memory after ``seconds`` of idleness (the median of three readings)."""
    time.sleep(seconds)
    samples = []
    for _ in range(3):
        samples.append(memory(pid))
        time.sleep(0.3)
    out = dict(samples[-1])
    for key in ("rss_mb", "uss_mb", "pss_mb", "shared_mb"):
        out[key] = statistics.median(s[key] for s in samples)
    return out


def total(*procs: dict[str, Any]) -> dict[str, float]:
    return {key: round(sum(p[key] for p in procs), 1) for key in ("rss_mb", "uss_mb", "pss_mb")}


# ================================================================ imports
def importtime(python: str, code: str) -> dict[str, int]:
    """Each module's own import time (us) in a fresh interpreter running ``code``
    (only modules it then holds: -X importtime lists failed tries too)."""
    proc = subprocess.run(
        [python, "-X", "importtime", "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True)
    held = set(proc.stdout.split())
    own: dict[str, int] = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m and m.group(4) in held:
            own[m.group(4)] = int(m.group(1))
    return own


def rss_after(python: str, code: str) -> int:
    """VmRSS (bytes) of a fresh interpreter once it has run ``code``."""
    probe = (f"{code}\nfor l in open('/proc/self/status'):\n"
             "    if l.startswith('VmRSS:'): print(int(l.split()[1]) * 1024)")
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def wall_ms(python: str, code: str, runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([python, "-c", code], check=True)
        samples.append(time.perf_counter() - start)
    return round(statistics.median(samples) * 1000, 1)


def group(module: str) -> str:
    """The package an import is counted under: the top level, or packmule's subpackage."""
    parts = module.split(".")
    if parts[0] == "packmule" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def imports(python: str, modules: str, runs: int, top: int) -> dict[str, Any]:
    """Import cost of ``import modules`` beyond a bare interpreter's start-up."""
    code = f"import {modules}"
    bare = set(importtime(python, "pass"))
    timings = [importtime(python, code) for _ in range(runs)]
    names = sorted(set().union(*timings) - bare)
    own = {n: statistics.median(t.get(n, 0) for t in timings) for n in names}
    by_group: dict[str, list[str]] = defaultdict(list)
    for n in names:
        by_group[group(n)].append(n)
    ranked = sorted(by_group, key=lambda g: -sum(own[n] for n in by_group[g]))[:top]
    base_rss = statistics.median(rss_after(python, "pass") for _ in range(3))
    heaviest = []
    for g in ranked:
        load = "".join(f"\ntry: import {n}\nexcept Exception: pass" for n in by_group[g])
        alone = statistics.median(rss_after(python, load) for _ in range(3))
        heaviest.append({
            "package": g,
            "modules": len(by_group[g]),
            "import_ms": round(sum(own[n] for n in by_group[g]) / 1000, 1),
            "rss_alone_mb": round((alone - base_rss) / MB, 1),
        })
    with_rss = statistics.median(rss_after(python, code) for _ in range(3))
    return {
        "code": code,
        "modules_loaded": len(names),
        "import_ms": round(sum(own.values()) / 1000, 1),
        "startup_wall_ms": wall_ms(python, code, runs),
        "bare_startup_wall_ms": wall_ms(python, "pass", runs),
        "rss_added_mb": round((with_rss - base_rss) / MB, 1),
        "third_party": sorted({group(n) for n in names if _third_party(n)}),
        "top_by_import_time": heaviest,
    }


def _third_party(module: str) -> bool:
    top = module.split(".")[0]
    return top != "packmule" and top not in sys.stdlib_module_names


# ================================================================ packmule
def noop() -> None:
    """A task defined here: pickled by value, as most users' functions are."""


def packmule_idle(settle: float) -> dict[str, Any]:
    import packmule
    from packmule.local import local_cluster

    with local_cluster(1, cores=1, memory=1000, disk=1000) as manager:
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while manager.stats().workers < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the packmule worker did not connect")
            time.sleep(0.05)
        worker_pid = manager.worker_processes[0].pid  # type: ignore[attr-defined]
        log(f"packmule: worker {worker_pid} connected; idle for {settle:g} s")
        worker = settled(worker_pid, settle)
        runners = psutil.Process(worker_pid).children()
        if len(runners) != 1:
            raise RuntimeError(f"expected one warm runner, found {len(runners)}")
        runner = memory(runners[0].pid)
        manager.submit(packmule.PythonTask(noop)).result(timeout=CONNECT_TIMEOUT)
        log("packmule: one task run; idle again")
        after = settled(runners[0].pid, settle)
        worker_after = memory(worker_pid)
    return {
        "worker": worker,
        "runner": runner,
        "worker_plus_runner": total(worker, runner),
        "runner_after_task": after,
        "worker_after_task": worker_after,
        "setup": "local_cluster(1, cores=1, memory=1000, disk=1000): one warm runner",
    }


# ================================================================ peers
def floor(python: str, settle: float) -> dict[str, Any]:
    proc = subprocess.Popen([python, "-c", "import time; time.sleep(60)"])
    try:
        return settled(proc.pid, settle)
    finally:
        proc.kill()
        proc.wait()


def workqueue_idle(args: argparse.Namespace) -> dict[str, Any]:
    """An idle ``work_queue_worker`` connected to a Work Queue manager (or a stand-in)."""
    vq = vs_workqueue
    binary = shutil.which("work_queue_worker")
    setup = None
    reason = ""
    if not args.no_wq_setup:
        try:
            setup = vq.setup_workqueue(Path(args.wq_root).expanduser(), args.wq_python)
        except (vq.Unavailable, OSError, subprocess.SubprocessError, ValueError) as exc:
            reason = str(exc)
            log(f"workqueue: cannot set up the Python module: {exc}")
    if binary is None and setup is None:
        return {"available": False,
                "reason": f"no work_queue_worker on PATH and no Work Queue set up: {reason}"}
    worker_bin = binary or str(setup.worker)  # type: ignore[union-attr]
    env = setup.env if setup is not None else dict(os.environ)
    workdir = tempfile.mkdtemp(prefix="footprint-wq-")
    manager: subprocess.Popen[str] | None = None
    listener: socket.socket | None = None
    held: socket.socket | None = None
    worker: subprocess.Popen[bytes] | None = None
    try:
        if setup is not None:
            manager = subprocess.Popen([setup.python, "-c", WQ_MANAGER], env=env, text=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert manager.stdout is not None
            port = int(manager.stdout.readline())
            how = "a Work Queue manager (WorkQueue(port=0), q.wait(1) in a loop)"
        else:
            listener = socket.create_server(("127.0.0.1", 0))
            port = listener.getsockname()[1]
            how = "a TCP listener standing in for the manager"
        worker = subprocess.Popen(
            [worker_bin, "--cores", "1", "--memory", "1000", "--disk", "1000",
             "--workdir", workdir, "localhost", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if manager is not None:
            assert manager.stdout is not None
            if manager.stdout.readline().strip() != "connected":
                raise RuntimeError("the Work Queue worker did not connect")
        else:
            assert listener is not None
            listener.settimeout(CONNECT_TIMEOUT)
            held, _ = listener.accept()  # open until the worker is measured
        log(f"workqueue: worker {worker.pid} connected; idle for {args.settle:g} s")
        measured = settled(worker.pid, args.settle)
        children = []
        for child in psutil.Process(worker.pid).children(recursive=True):
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    children.append(memory(child.pid))
            except psutil.NoSuchProcess:
                pass
        version = subprocess.run([worker_bin, "--version"], capture_output=True, text=True,
                                 env=env, check=False).stdout.strip().splitlines()
        return {
            "available": True,
            "worker": measured,
            "children": children,
            "worker_with_children": total(measured, *children),
            "binary": worker_bin if binary else "work_queue_worker (unpacked, see --wq-root)",
            "version": version[0].replace(worker_bin, "work_queue_worker") if version else "?",
            "manager": how,
        }
    finally:
        if worker is not None:
            worker.kill()
            worker.wait()
        if manager is not None:
            assert manager.stdin is not None
            manager.stdin.close()
            try:
                manager.wait(timeout=10)
            except subprocess.TimeoutExpired:
                manager.kill()
                manager.wait()
        for sock in (held, listener):
            if sock is not None:
                sock.close()
        shutil.rmtree(workdir, ignore_errors=True)


# ================================================================ report
def report(args: argparse.Namespace) -> dict[str, Any]:
    python = sys.executable
    log("imports: worker daemon")
    worker_imports = imports(python, WORKER_IMPORTS, args.runs, args.top)
    log("imports: runner")
    runner_imports = imports(python, RUNNER_IMPORTS, args.runs, args.top)
    pm = packmule_idle(args.settle)
    log("floor: a bare python sleeping")
    bare = floor(python, args.settle)
    wq: dict[str, Any] = workqueue_idle(args) if not args.no_workqueue else {
        "available": False, "reason": "--no-workqueue"}
    pair = pm["worker_plus_runner"]
    ratios: dict[str, float] = {
        "worker_plus_runner_uss_vs_bare_python": round(pair["uss_mb"] / bare["uss_mb"], 2),
        "runner_uss_vs_bare_python": round(pm["runner"]["uss_mb"] / bare["uss_mb"], 2),
    }
    if wq.get("available"):
        peer = wq["worker_with_children"]
        ratios["worker_plus_runner_rss_vs_workqueue"] = round(pair["rss_mb"] / peer["rss_mb"], 1)
        ratios["worker_plus_runner_uss_vs_workqueue"] = round(pair["uss_mb"] / peer["uss_mb"], 1)
    vq = vs_workqueue
    return {
        "benchmark": "idle footprint: packmule worker and runner, Work Queue worker, bare python",
        "packmule": {**pm, "imports": {"worker": worker_imports, "runner": runner_imports}},
        "peers": {"bare_python": bare, "workqueue_worker": wq},
        "ratios": ratios,
        "setup": {"settle_s": args.settle, "import_runs": args.runs,
                  "memory": "psutil memory_full_info: RSS, USS, PSS in MB"},
        "machine": {**vq.machine_info(), "load_average_1_5_15min": vq.load_average()},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="3 import runs, 1 s settling")
    p.add_argument("--runs", type=int, default=None, help="fresh interpreters per import figure")
    p.add_argument("--settle", type=float, default=None, help="idle seconds before measuring")
    p.add_argument("--top", type=int, default=8, help="packages listed by import time")
    p.add_argument("--no-workqueue", action="store_true", help="skip the Work Queue peer")
    p.add_argument("--no-wq-setup", action="store_true",
                   help="only a work_queue_worker on PATH (against a TCP stand-in manager)")
    p.add_argument("--wq-root", default="~/.cache/packmule-bench/wq",
                   help="where benchmarks/vs_workqueue.py unpacks Work Queue")
    p.add_argument("--wq-python", default=None, help="interpreter for Work Queue's manager")
    args = p.parse_args()
    args.runs = args.runs or (3 if args.quick else 9)
    args.settle = args.settle if args.settle is not None else (1.0 if args.quick else 3.0)
    print(json.dumps(report(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
