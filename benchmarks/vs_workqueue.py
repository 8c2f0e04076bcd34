"""packmule against the real Work Queue (cctools), shell tasks, in the same run.

Run it with::

    python benchmarks/vs_workqueue.py            # N=2000, R=200, 3 repetitions
    python benchmarks/vs_workqueue.py --quick    # N=300, R=50, 1 repetition

It prints one JSON object on stdout (progress goes to stderr).

Both systems get one manager and ONE local worker offering 2 cores, 2000 MB
memory and 2000 MB disk (Work Queue: ``work_queue_worker --cores 2 --memory
2000 --disk 2000 localhost PORT``; packmule: ``local_cluster(1, cores=2,
memory=2000, disk=2000)``). Every task is the shell command ``/bin/true``
asking for 1 core, 10 MB memory and 10 MB disk, so two run at a time.

``all_at_once``
    N tasks (``--tasks``) submitted at once, then all waited for: tasks/s.
``windowed``
    The same N tasks with at most ``--window`` (200) in flight: a new task is
    submitted each time one finishes. Work Queue is known to do better so.
``round_trip_ms``
    Submit one task and wait for it, R times (``--rounds``): median, p90,
    p99, min, max over all repetitions pooled.

``--repeats`` sessions (3; 1 with ``--quick``) are run per system, in
alternating order; each session starts a fresh manager and worker, waits for
the worker to connect and warms up before anything is timed. Throughput
figures are the median over the sessions (each session's value is listed).
``ratios`` are packmule / Work Queue: above 1 is better for throughput,
below 1 is better for round trips.

Work Queue comes from Debian bookworm's packages ``coop-computing-tools``
(the worker) and ``python3-workqueue`` (the ``work_queue`` module, built for
CPython 3.11). When ``--wq-root`` (default ``~/.cache/packmule-bench/wq``)
does not hold them yet they are fetched with ``apt-get download`` (after
``apt-get update`` if that is needed) and unpacked with ``dpkg -x`` there,
out of reach of other apt activity. The Work Queue manager side runs in a
child interpreter (this one if it can import the module, else
``/usr/bin/python3``) driven by a small script; it uses only the public API
(``WorkQueue(port=0)``, ``Task.specify_cores/memory/disk``, ``submit``,
``wait(timeout)``) with no tunables changed. If Work Queue cannot be set up
the JSON says ``"workqueue": {"available": false, "reason": ...}`` and only
packmule is measured. The exit status is non-zero only if a task fails.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import packmule
from packmule.local import local_cluster

#: The task, identical for both systems.
COMMAND = "/bin/true"
TASK_CORES = 1
TASK_MEMORY_MB = 10
TASK_DISK_MB = 10
#: The one worker's size, identical for both systems.
WORKER_CORES = 2
WORKER_MEMORY_MB = 2000
WORKER_DISK_MB = 2000
#: Seconds any one measurement may take before the benchmark gives up.
TIMEOUT = 600.0
#: The timeout handed to each Work Queue ``q.wait(timeout)`` call (whole seconds:
#: the binding takes an int). ``wait`` returns as soon as a task is done.
WQ_WAIT_TIMEOUT = 5
DEBS = ("coop-computing-tools", "python3-workqueue")
#: Written into ``--wq-root`` once both packages are unpacked there.
MARKER = "packmule-bench.json"
SYSTEM_PYTHON = "/usr/bin/python3"


class Unavailable(Exception):
    """Work Queue cannot be set up or run here; the message says why."""


def log(msg: str) -> None:
    print(f"[vs_workqueue {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Latency percentiles (ms) of round-trip samples given in seconds."""
    ms = [s * 1000 for s in samples]
    if len(ms) < 2:
        ms = ms * 2  # quantiles need two points
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return {
        "median": round(statistics.median(ms), 3),
        "p90": round(cuts[89], 3),
        "p99": round(cuts[98], 3),
        "min": round(min(ms), 3),
        "max": round(max(ms), 3),
        "samples": len(samples),
    }


def rate(n: int, seconds: float) -> dict[str, float]:
    return {"seconds": round(seconds, 4), "tasks_per_s": round(n / seconds, 1)}


# ================================================================ packmule
PmSubmit = Callable[[], "Future[Any]"]


def pm_check(future: Future[Any]) -> None:
    result = future.result(timeout=TIMEOUT)
    if result.exit_code != 0:
        raise RuntimeError(f"packmule task exited {result.exit_code}: {result.stderr[-500:]!r}")


def pm_all_at_once(submit: PmSubmit, n: int) -> dict[str, float]:
    start = time.perf_counter()
    futures = [submit() for _ in range(n)]
    for f in futures:
        pm_check(f)
    return rate(n, time.perf_counter() - start)


def pm_windowed(submit: PmSubmit, n: int, window: int) -> dict[str, float]:
    """At most ``window`` tasks in flight; one more is submitted as each one finishes."""
    slots = threading.BoundedSemaphore(window)
    release: Callable[[Future[Any]], None] = lambda _f: slots.release()  # noqa: E731
    futures = []
    start = time.perf_counter()
    for _ in range(n):
        if not slots.acquire(timeout=TIMEOUT):
            raise RuntimeError("packmule: no task finished within the timeout")
        f = submit()
        f.add_done_callback(release)
        futures.append(f)
    for f in futures:
        pm_check(f)
    return rate(n, time.perf_counter() - start)


def pm_round_trips(submit: PmSubmit, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        f = submit()
        f.result(timeout=TIMEOUT)
        samples.append(time.perf_counter() - start)
        pm_check(f)
    return samples


def pm_session(n: int, rounds: int, window: int, warmup: int) -> dict[str, Any]:
    """One packmule session: fresh manager and worker, warm-up, then the three measurements."""
    with local_cluster(1, cores=WORKER_CORES, memory=WORKER_MEMORY_MB,
                       disk=WORKER_DISK_MB) as manager:
        deadline = time.monotonic() + 60
        while manager.stats().workers < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("packmule: the worker did not connect within 60 s")
            time.sleep(0.05)
        resources = {"cores": TASK_CORES, "memory": TASK_MEMORY_MB, "disk": TASK_DISK_MB}

        def submit() -> Future[Any]:
            return manager.submit(packmule.Task(COMMAND, resources=resources))

        log("packmule: warming up")
        pm_all_at_once(submit, warmup)
        pm_round_trips(submit, 20)
        log(f"packmule: {n} tasks at once")
        all_at_once = pm_all_at_once(submit, n)
        log(f"packmule: {n} tasks, at most {window} in flight")
        windowed = pm_windowed(submit, n, window)
        log(f"packmule: {rounds} round trips")
        samples = pm_round_trips(submit, rounds)
        stats = manager.stats()
        if stats.tasks_failed:
            raise RuntimeError(f"{stats.tasks_failed} packmule task(s) failed")
    return {"all_at_once": all_at_once, "windowed": windowed, "round_trip_s": samples}


# ================================================================ Work Queue
#: Run by the Work Queue interpreter: argv[1] is a JSON config; prints one JSON line.
WQ_DRIVER = r'''
import json, shutil, subprocess, sys, tempfile, time
import work_queue as wq

cfg = json.loads(sys.argv[1])
WAIT = int(cfg["wait_timeout"])
failures = []


def log(msg):
    stamp = time.strftime("%H:%M:%S")
    print("[vs_workqueue " + stamp + "] workqueue: " + msg, file=sys.stderr, flush=True)


def make():
    t = wq.Task(cfg["command"])
    t.specify_cores(cfg["cores"])
    t.specify_memory(cfg["memory"])
    t.specify_disk(cfg["disk"])
    return t


def wait_one(q, deadline):
    while True:
        t = q.wait(WAIT)
        if t is not None:
            if t.result != wq.WORK_QUEUE_RESULT_SUCCESS or t.return_status != 0:
                failures.append({"result": t.result, "return_status": t.return_status,
                                 "output": (t.output or "")[-300:]})
            return t
        if time.monotonic() > deadline:
            raise RuntimeError("no task finished before the deadline")


def all_at_once(q, n):
    deadline = time.monotonic() + cfg["timeout"]
    start = time.perf_counter()
    for _ in range(n):
        q.submit(make())
    for _ in range(n):
        wait_one(q, deadline)
    return time.perf_counter() - start


def windowed(q, n, window):
    deadline = time.monotonic() + cfg["timeout"]
    start = time.perf_counter()
    submitted = done = 0
    while done < n:
        while submitted < n and submitted - done < window:
            q.submit(make())
            submitted += 1
        wait_one(q, deadline)
        done += 1
    return time.perf_counter() - start


def round_trips(q, rounds):
    samples = []
    for _ in range(rounds):
        deadline = time.monotonic() + cfg["timeout"]
        start = time.perf_counter()
        q.submit(make())
        wait_one(q, deadline)
        samples.append(time.perf_counter() - start)
    return samples


def main():
    n, rounds, window = cfg["tasks"], cfg["rounds"], cfg["window"]
    q = wq.WorkQueue(port=0)
    workdir = tempfile.mkdtemp(prefix="wq-worker-")
    cmd = [cfg["worker"], "--cores", str(cfg["worker_cores"]),
           "--memory", str(cfg["worker_memory"]), "--disk", str(cfg["worker_disk"]),
           "--single-shot", "--parent-death", "--workdir", workdir, "localhost", str(q.port)]
    worker = subprocess.Popen(cmd, stdout=sys.stderr, stderr=sys.stderr)
    try:
        deadline = time.monotonic() + 60
        while q.stats.workers_connected < 1 or q.stats.total_cores < cfg["worker_cores"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not connect within 60 s")
            if worker.poll() is not None:
                raise RuntimeError("the worker exited with status %d" % worker.returncode)
            q.wait(1)
        log("warming up")
        all_at_once(q, cfg["warmup"])
        round_trips(q, 20)
        log("%d tasks at once" % n)
        a = all_at_once(q, n)
        log("%d tasks, at most %d in flight" % (n, window))
        w = windowed(q, n, window)
        log("%d round trips" % rounds)
        r = round_trips(q, rounds)
        print(json.dumps({"all_at_once_s": a, "windowed_s": w, "round_trip_s": r,
                          "failures": failures[:5], "failed": len(failures),
                          "worker_cmd": cmd[:-1] + ["PORT"]}), flush=True)
    finally:
        worker.terminate()
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        shutil.rmtree(workdir, ignore_errors=True)


main()
'''


class WorkQueueSetup:
    """Where the unpacked Work Queue lives and how to run its manager side."""

    def __init__(self, root: Path, python: str, env: dict[str, str],
                 info: dict[str, Any]) -> None:
        self.root = root
        self.python = python
        self.env = env
        self.info = info

    @property
    def worker(self) -> Path:
        return self.root / "usr" / "bin" / "work_queue_worker"


def run_quiet(cmd: Sequence[str], cwd: Path | None = None, timeout: float = 300,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def tail(proc: subprocess.CompletedProcess[str]) -> str:
    return (proc.stderr or proc.stdout or "").strip()[-400:]


def unpack_workqueue(root: Path) -> None:
    """``apt-get download`` + ``dpkg -x`` the two packages into ``root``."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} not found: Work Queue is set up from Debian's packages")
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wq-debs-", dir=root.parent) as tmp:
        debs_dir = Path(tmp) / "debs"
        debs_dir.mkdir()
        log(f"workqueue: apt-get download {' '.join(DEBS)}")
        proc = run_quiet(["apt-get", "download", *DEBS], cwd=debs_dir)
        if proc.returncode != 0:
            log("workqueue: download failed; running apt-get update and trying again")
            update = run_quiet(["apt-get", "update"], timeout=600)
            if update.returncode != 0:
                raise Unavailable(f"apt-get download failed ({tail(proc)}) and apt-get update "
                                  f"failed too ({tail(update)})")
            proc = run_quiet(["apt-get", "download", *DEBS], cwd=debs_dir)
            if proc.returncode != 0:
                raise Unavailable(f"apt-get download {' '.join(DEBS)} failed: {tail(proc)}")
        staging = Path(tmp) / "root"
        versions: dict[str, str] = {}
        for deb in sorted(debs_dir.glob("*.deb")):
            fields = run_quiet(["dpkg-deb", "-f", str(deb), "Package", "Version"])
            meta = dict(line.split(": ", 1) for line in fields.stdout.splitlines()
                        if ": " in line)
            versions[meta.get("Package", deb.name)] = meta.get("Version", "?")
            unpacked = run_quiet(["dpkg-deb", "-x", str(deb), str(staging)])
            if unpacked.returncode != 0:
                raise Unavailable(f"dpkg -x {deb.name} failed: {tail(unpacked)}")
        missing = [d for d in DEBS if d not in versions]
        if missing:
            raise Unavailable(f"apt-get download did not produce {missing}")
        (staging / MARKER).write_text(json.dumps({"debian_packages": versions}) + "\n")
        if root.exists():  # empty (checked by the caller)
            root.rmdir()
        staging.rename(root)
    log(f"workqueue: unpacked {versions} into {root}")


def missing_libraries(path: Path, env: dict[str, str]) -> list[str]:
    """The shared libraries ``ldd`` cannot find for ``path`` (empty if ldd is absent)."""
    if shutil.which("ldd") is None:
        return []
    proc = run_quiet(["ldd", str(path)], env=env)
    return [line.split()[0] for line in proc.stdout.splitlines() if "not found" in line]


def library_names(path: Path, env: dict[str, str]) -> list[str]:
    if shutil.which("ldd") is None:
        return []
    proc = run_quiet(["ldd", str(path)], env=env)
    return [line.split()[0] for line in proc.stdout.splitlines()
            if "=>" in line and "vdso" not in line]


def setup_workqueue(root: Path, python: str | None) -> WorkQueueSetup:
    """Unpack Work Queue if needed, then find an interpreter that imports it."""
    worker = root / "usr" / "bin" / "work_queue_worker"
    module_dir = root / "usr" / "lib" / "python3" / "dist-packages"
    if not (root / MARKER).is_file() and not worker.is_file():
        if root.exists() and any(root.iterdir()):
            raise Unavailable(f"{root} exists but holds no unpacked Work Queue: "
                              "empty it or pass another --wq-root")
        unpack_workqueue(root)
    sos = sorted(glob.glob(str(module_dir / "_work_queue*.so")))
    if not worker.is_file() or not (module_dir / "work_queue.py").is_file() or not sos:
        raise Unavailable(f"{root} lacks work_queue_worker or the work_queue module; "
                          "delete it to unpack again")
    # The packages' own libraries (none are needed by this build, but a later
    # build may ship some) come before the system's.
    lib_dirs = [str(d) for d in (root / "usr" / "lib" / "x86_64-linux-gnu",
                                 root / "lib" / "x86_64-linux-gnu") if d.is_dir()]
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        lib_dirs + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    env["PYTHONPATH"] = str(module_dir)
    env.pop("PYTHONHOME", None)
    for binary in (worker, Path(sos[0])):
        missing = missing_libraries(binary, env)
        if missing:
            raise Unavailable(f"{binary.name} needs shared libraries not found here: {missing}")
    candidates = [python] if python else [sys.executable, SYSTEM_PYTHON]
    probe = ("import json, platform, sys, work_queue; print(json.dumps("
             "{'python': platform.python_version(), 'module': work_queue.__file__}))")
    errors = []
    for exe in candidates:
        if not exe or not os.path.exists(exe):
            errors.append(f"{exe}: not found")
            continue
        proc = run_quiet([exe, "-c", probe], env=env, timeout=60)
        if proc.returncode == 0:
            probed = json.loads(proc.stdout.strip().splitlines()[-1])
            break
        errors.append(f"{exe}: {tail(proc).splitlines()[-1] if tail(proc) else proc.returncode}")
    else:
        raise Unavailable("no interpreter here imports Debian's work_queue module "
                          f"(built for CPython 3.11): {errors}")
    version = run_quiet([str(worker), "--version"], env=env)
    marker_file = root / MARKER
    marker = json.loads(marker_file.read_text()) if marker_file.is_file() else {}
    info = {
        "root": str(root),
        "cctools_version": (version.stdout or version.stderr).strip().splitlines()[0]
        .replace(str(worker), "work_queue_worker"),
        "debian_packages": marker.get("debian_packages", {}),
        "manager_python": {"executable": exe, "version": probed["python"]},
        "module": probed["module"],
        "extension": os.path.basename(sos[0]),
        "shared_libraries": {"work_queue_worker": library_names(worker, env),
                             "_work_queue": library_names(Path(sos[0]), env)},
        "ld_library_path_added": lib_dirs,
    }
    return WorkQueueSetup(root, exe, env, info)


def wq_session(wq: WorkQueueSetup, n: int, rounds: int, window: int,
               warmup: int) -> dict[str, Any]:
    """One Work Queue session in a child interpreter: fresh queue and worker."""
    cfg = {
        "worker": str(wq.worker), "worker_cores": WORKER_CORES,
        "worker_memory": WORKER_MEMORY_MB, "worker_disk": WORKER_DISK_MB,
        "command": COMMAND, "cores": TASK_CORES, "memory": TASK_MEMORY_MB,
        "disk": TASK_DISK_MB, "tasks": n, "rounds": rounds, "window": window,
        "warmup": warmup, "wait_timeout": WQ_WAIT_TIMEOUT, "timeout": TIMEOUT,
    }
    with tempfile.NamedTemporaryFile("w", suffix="_wq_driver.py", delete=False) as f:
        f.write(WQ_DRIVER)
        script = f.name
    try:
        proc = subprocess.run([wq.python, script, json.dumps(cfg)], env=wq.env,
                              stdout=subprocess.PIPE, text=True, timeout=4 * TIMEOUT,
                              check=False)
    finally:
        os.unlink(script)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise Unavailable(f"the Work Queue driver exited with status {proc.returncode}")
    out: dict[str, Any] = json.loads(lines[-1])
    if out["failed"]:
        raise RuntimeError(f"{out['failed']} Work Queue task(s) failed: {out['failures']}")
    return {
        "all_at_once": rate(n, out["all_at_once_s"]),
        "windowed": rate(n, out["windowed_s"]),
        "round_trip_s": out["round_trip_s"],
        "worker_cmd": out["worker_cmd"],
    }


# ================================================================ report
def combine(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """Median throughput over sessions (each listed) and pooled round-trip percentiles."""
    out: dict[str, Any] = {}
    for key in ("all_at_once", "windowed"):
        rates = [s[key]["tasks_per_s"] for s in sessions]
        out[key] = {"tasks_per_s": round(statistics.median(rates), 1),
                    "min": min(rates), "max": max(rates), "sessions": rates}
    samples = [x for s in sessions for x in s["round_trip_s"]]
    out["round_trip_ms"] = summarize(samples)
    out["round_trip_ms"]["session_medians"] = [
        round(statistics.median(s["round_trip_s"]) * 1000, 3) for s in sessions]
    return out


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_info() -> dict[str, Any]:
    try:
        mem_gib: float | None = round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    return {
        "cpus": os.cpu_count(),
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
    }


def report(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    n, rounds, window, repeats = args.tasks, args.rounds, args.window, args.repeats
    warmup = min(n, 200)
    load_before = load_average()
    wq: WorkQueueSetup | None = None
    wq_status: dict[str, Any]
    try:
        wq = setup_workqueue(Path(args.wq_root).expanduser(), args.wq_python)
        wq_status = {"available": True, **wq.info}
    except (Unavailable, OSError, subprocess.SubprocessError, ValueError) as e:
        log(f"workqueue: unavailable: {e}")
        wq_status = {"available": False, "reason": str(e)}

    pm_sessions: list[dict[str, Any]] = []
    wq_sessions: list[dict[str, Any]] = []
    status = 0
    for i in range(repeats):
        order = ("packmule", "workqueue") if i % 2 == 0 else ("workqueue", "packmule")
        for system in order:
            log(f"session {i + 1}/{repeats}: {system}")
            if system == "packmule":
                pm_sessions.append(pm_session(n, rounds, window, warmup))
            elif wq is not None:
                try:
                    wq_sessions.append(wq_session(wq, n, rounds, window, warmup))
                except (Unavailable, subprocess.SubprocessError, RuntimeError) as e:
                    log(f"workqueue: {e}")
                    wq_status = {**wq_status, "available": False, "reason": str(e)}
                    if isinstance(e, RuntimeError):
                        status = 1
                    wq = None

    pm = combine(pm_sessions)
    result: dict[str, Any] = {
        "benchmark": "packmule vs Work Queue, shell tasks",
        "setup": {
            "worker": f"1 local worker: {WORKER_CORES} cores, {WORKER_MEMORY_MB} MB memory, "
                      f"{WORKER_DISK_MB} MB disk",
            "task": {"command": COMMAND, "cores": TASK_CORES, "memory_mb": TASK_MEMORY_MB,
                     "disk_mb": TASK_DISK_MB},
            "tasks": n, "rounds": rounds, "window": window, "repeats": repeats,
            "warmup_tasks": warmup, "quick": args.quick,
            "order": "sessions alternate which system goes first; each session has a fresh "
                     "manager and worker, waits for the worker, and warms up untimed",
            "workqueue_api": f"WorkQueue(port=0); Task(cmd).specify_cores/memory/disk; "
                             f"q.submit; q.wait({WQ_WAIT_TIMEOUT}) loops",
            "workqueue_tunables": "none: library defaults (no q.tune / specify_* on the queue)",
            "packmule_api": "local_cluster(1, cores=2, memory=2000, disk=2000); "
                            "manager.submit(Task(cmd, resources=...)); future.result()",
        },
        "machine": {**machine_info(), "load_average_1_5_15min": {
            "before": load_before, "after": load_average(),
            "note": "this run's own load included; other load makes the numbers noisy"}},
        "versions": {"packmule": packmule.__version__,
                     "cctools": wq_status.get("cctools_version"),
                     "debian_packages": wq_status.get("debian_packages")},
        "packmule": pm,
        "workqueue": wq_status,
    }
    if wq_sessions and wq is not None:
        w = combine(wq_sessions)
        result["workqueue"] = {**wq_status, **w,
                               "worker_cmd": " ".join(wq_sessions[0]["worker_cmd"])}
        result["ratios_packmule_over_workqueue"] = {
            "all_at_once_tasks_per_s": round(
                pm["all_at_once"]["tasks_per_s"] / w["all_at_once"]["tasks_per_s"], 3),
            "windowed_tasks_per_s": round(
                pm["windowed"]["tasks_per_s"] / w["windowed"]["tasks_per_s"], 3),
            "round_trip_median": round(
                pm["round_trip_ms"]["median"] / w["round_trip_ms"]["median"], 3),
            "round_trip_p90": round(pm["round_trip_ms"]["p90"] / w["round_trip_ms"]["p90"], 3),
            "how_to_read": "throughput: above 1 = packmule faster; "
                           "round trip: below 1 = packmule faster",
        }
    return result, status


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small sizes (N=300, R=50, 1 repetition)")
    p.add_argument("--tasks", type=int, metavar="N",
                   help="tasks per throughput run (default 2000; 300 with --quick)")
    p.add_argument("--rounds", type=int, metavar="R",
                   help="round trips per session (default 200; 50 with --quick)")
    p.add_argument("--window", type=int, default=200, metavar="W",
                   help="most tasks in flight in the windowed run (default 200)")
    p.add_argument("--repeats", type=int, metavar="K",
                   help="sessions per system (default 3; 1 with --quick)")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    p.add_argument("--wq-root", default=os.path.join(cache, "packmule-bench", "wq"),
                   help="private folder holding the unpacked Debian packages "
                        "(made when missing; default %(default)s)")
    p.add_argument("--wq-python", metavar="EXE",
                   help="interpreter for the Work Queue manager side (default: this one "
                        f"if it imports work_queue, else {SYSTEM_PYTHON})")
    args = p.parse_args(argv)
    for name, full, small in (("tasks", 2000, 300), ("rounds", 200, 50), ("repeats", 3, 1)):
        if getattr(args, name) is None:
            setattr(args, name, small if args.quick else full)
    for name, least in (("tasks", 1), ("rounds", 2), ("window", 1), ("repeats", 1)):
        if getattr(args, name) < least:
            p.error(f"--{name} must be at least {least}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result, status = report(args)
    print(json.dumps(result, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
