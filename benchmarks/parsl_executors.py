"""No-op ``python_app``s through Parsl: packmule's executor against Parsl's own.

Run it with::

    python benchmarks/parsl_executors.py            # N=5000, R=300, 3 sessions each
    python benchmarks/parsl_executors.py --quick    # N=500, R=50, 1 session each

It prints one JSON object on stdout (progress goes to stderr). Four
executors are measured in the same run, each session in its own fresh Python
subprocess (``parsl.load`` once per process, ``run_dir`` in a temporary
folder, ``Config(strategy_period=0.2)``):

``packmule``
    ``packmule.WorkQueueExecutor``, ``LocalProvider``, one worker started with
    ``worker_options="--cores 2 --memory 2000 --disk 2000"``; every task asks
    for ``{'cores': 1, 'memory': 10, 'disk': 10}`` (``--spec-memory`` changes the
    memory, for packmule and Work Queue alike).
``htex``
    ``parsl.executors.HighThroughputExecutor``, ``LocalProvider``,
    ``max_workers_per_node=2``; tasks carry no resource specification (HTEX
    accepts only ``priority``).
``threadpool``
    ``parsl.executors.ThreadPoolExecutor(max_threads=2)``: the DFK's own ceiling.
``workqueue``
    Parsl's own ``WorkQueueExecutor`` on the real Work Queue (Debian bookworm's
    ``coop-computing-tools`` + ``python3-workqueue``, unpacked by
    ``vs_workqueue.setup_workqueue`` into ``--wq-root``). Parsl imports
    ``ndcctools.work_queue``: a private ``ndcctools`` package re-exporting
    Debian's ``work_queue`` module goes first on ``PYTHONPATH``, and
    ``work_queue_worker`` on ``PATH``. ``shared_fs=True``, ``port=0``, the
    same task specification, everything else the executor's defaults. It
    moves ~4 tasks/s, so it gets ``--wq-tasks`` (100) and ``--wq-rounds`` (10).
    If it cannot be set up, it is reported as ``available: false`` with the
    reason and the others are still measured.

Each session: ``parsl.load`` to the first result (``startup_s``), an untimed
warm-up, then N tasks (``--tasks``) submitted at once and all waited for
(``throughput``: tasks/s end to end, and how long the submitting loop took),
then R sequential round trips (``--rounds``: submit one task, wait for its
result). The executor's own ``submit()`` is wrapped in the subprocess with
``time.perf_counter`` to time each call the DFK makes (``executor_submit_ms``).
Sessions run ``--repeats`` times (3; 1 with ``--quick``), interleaved, the
order rotating each time; throughput is the median over the sessions (each
listed, with the best), round trips are pooled over the sessions.

Parsl's logging (``Config.initialize_logging``) is the same for every
executor in a comparison: ``--logging default`` (Parsl's default: a DEBUG
``parsl.log`` in ``run_dir``, ~3 KB per task), ``off`` or ``both``. The bytes
Parsl's run directory grew by per task are reported for each session.

``parsl-perf --config FILE --time T`` (it ships with Parsl; T=20, 5 with
``--quick``) is run on small config files for packmule (with ``--resources``
giving the task specification above) and HTEX, ``--perf-repeats`` times
each, interleaved; its tasks/s of the last (time-sized) iteration is reported.

Targets: packmule/HTEX throughput >= 1.2, packmule/HTEX median round trip
<= 1.0, original-WQ/packmule median round trip >= 100 (``meets_target``).
The exit status is non-zero only if a packmule, HTEX or ThreadPool session fails.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_workqueue  # the sibling benchmark: machine info, Work Queue set-up

#: Every task's resource specification, for the executors that take one
#: (``--spec-memory`` changes its memory).
TASK_SPEC: dict[str, int] = {"cores": 1, "memory": 10, "disk": 10}
WORKER_OPTIONS = "--cores 2 --memory 2000 --disk 2000"
STRATEGY_PERIOD = 0.2
#: Seconds any one wait in a session may take.
TIMEOUT = 600.0
RESULT_MARKER = "PARSL_EXECUTORS_RESULT "
ERROR_MARKER = "PARSL_EXECUTORS_ERROR "
EXECUTORS = ("packmule", "htex", "threadpool", "workqueue")
#: The executors that count for the exit status (Work Queue is best effort).
REQUIRED = ("packmule", "htex", "threadpool")
LOGGING = {
    "default": "Parsl's default: Config(initialize_logging=True), a DEBUG-level parsl.log "
               "in run_dir",
    "off": "Config(initialize_logging=False): no parsl.log",
}
TARGETS = {
    "throughput_packmule_over_htex_min": 1.2,
    "round_trip_packmule_over_htex_max": 1.0,
    "round_trip_workqueue_over_packmule_min": 100.0,
}
HERE = Path(__file__).resolve().parent

# The shim that makes Debian's ``work_queue`` module importable as
# ``ndcctools.work_queue``; the explicit names are those Parsl's executor uses.
NDCCTOOLS_SHIM = '''"""ndcctools.work_queue for Parsl, from Debian's top-level work_queue module."""
from work_queue import *  # noqa: F403
from work_queue import (  # noqa: F401
    WORK_QUEUE_ALLOCATION_MODE_MAX_THROUGHPUT,
    WORK_QUEUE_DEFAULT_PORT,
    Task,
    WorkQueue,
)
'''


def log(msg: str) -> None:
    print(f"[parsl_executors {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def noop(**_parsl_kwargs: Any) -> int:
    """The app's body: nothing, so only the executor's overhead is measured.

    (``parsl_resource_specification`` arrives in ``**_parsl_kwargs`` when given; it is
    not a named parameter so that Parsl adds no default of its own to each call.)
    """
    return 7


def load_average() -> list[float] | None:
    """The machine's load average (from the sibling benchmark)."""
    result: list[float] | None = vs_workqueue.load_average()
    return result


def dir_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


# ================================================================ child side
def make_config(executor: str, run_dir: str, logging_on: bool) -> Any:
    """The Parsl Config for one executor (imports Parsl lazily: only children need it)."""
    from parsl import providers
    from parsl.config import Config

    LocalProvider: Any = providers.LocalProvider  # Parsl leaves it untyped
    ex: Any
    if executor == "packmule":
        import packmule

        pm_executor: Any = packmule.WorkQueueExecutor
        ex = pm_executor(label="packmule",
                         provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1),
                         worker_options=WORKER_OPTIONS)
    elif executor == "htex":
        from parsl.executors import HighThroughputExecutor

        ex = HighThroughputExecutor(label="htex", max_workers_per_node=2,
                                    provider=LocalProvider(init_blocks=1, min_blocks=0,
                                                           max_blocks=1))
    elif executor == "threadpool":
        from parsl.executors import ThreadPoolExecutor

        ex = ThreadPoolExecutor(label="threadpool", max_threads=2)
    elif executor == "workqueue":
        from parsl.executors import WorkQueueExecutor as ParslWQ

        ex = ParslWQ(label="workqueue", shared_fs=True, port=0)
    else:
        raise ValueError(f"unknown executor {executor!r}")
    return Config(executors=[ex], run_dir=run_dir, strategy_period=STRATEGY_PERIOD,
                  initialize_logging=logging_on)


def child_main(cfg: dict[str, Any]) -> int:
    """One session in this (fresh) process; prints one result (or error) line on stdout."""
    try:
        return child_session(cfg)
    except BaseException as e:
        print(ERROR_MARKER + json.dumps(f"{type(e).__name__}: {e}"[:1000]), flush=True)
        raise


def child_session(cfg: dict[str, Any]) -> int:
    executor, n, rounds = cfg["executor"], cfg["tasks"], cfg["rounds"]
    t_import = time.perf_counter()
    import parsl
    from parsl import python_app

    import_s = time.perf_counter() - t_import
    spec = dict(cfg["spec"]) if cfg["with_spec"] else {}
    app = python_app(noop, executors=[executor])
    run_dir = Path(cfg["run_dir"])
    config = make_config(executor, str(run_dir), cfg["logging"] == "default")

    def call() -> Any:
        return app(parsl_resource_specification=spec) if spec else app()

    def check(fut: Any) -> None:
        value = fut.result(timeout=TIMEOUT)
        if value != 7:
            raise RuntimeError(f"{executor}: a task returned {value!r}")

    t_load = time.perf_counter()
    dfk = parsl.load(config)
    loaded_s = time.perf_counter() - t_load
    ex = dfk.executors[executor]
    submit_times: list[float] = []
    original_submit = ex.submit

    def timed_submit(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original_submit(*args, **kwargs)
        finally:
            submit_times.append(time.perf_counter() - start)

    setattr(ex, "submit", timed_submit)  # noqa: B010 (mypy: no method assignment)
    out: dict[str, Any] = {"executor": executor, "pid": os.getpid(),
                           "load_average_before": load_average()}
    try:
        check(call())
        out["startup_s"] = round(time.perf_counter() - t_load, 4)
        out["parsl_load_s"] = round(loaded_s, 4)
        out["import_parsl_s"] = round(import_s, 4)
        for f in [call() for _ in range(cfg["warmup_tasks"])]:
            check(f)
        for _ in range(cfg["warmup_rounds"]):
            check(call())
        bytes_before = dir_bytes(run_dir)

        submit_times.clear()
        start = time.perf_counter()
        futures = [call() for _ in range(n)]
        submitted = time.perf_counter() - start
        for f in futures:
            check(f)
        seconds = time.perf_counter() - start
        out["throughput"] = {"tasks": n, "seconds": round(seconds, 4),
                             "tasks_per_s": round(n / seconds, 1),
                             "submit_loop_s": round(submitted, 4)}
        out["submit_all_at_once_s"] = list(submit_times)

        submit_times.clear()
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            check(call())
            samples.append(time.perf_counter() - start)
        out["round_trip_s"] = samples
        out["submit_round_trip_s"] = list(submit_times)
        out["run_dir_bytes_per_task"] = round(
            (dir_bytes(run_dir) - bytes_before) / (n + rounds), 1)
    finally:
        setattr(ex, "submit", original_submit)  # noqa: B010
        start = time.perf_counter()
        dfk.cleanup()
        out["cleanup_s"] = round(time.perf_counter() - start, 3)
    out["load_average_after"] = load_average()
    print(RESULT_MARKER + json.dumps(out), flush=True)
    return 0


# ================================================================ Work Queue setup

def base_env() -> dict[str, str]:
    """This interpreter's environment with its bin folder first on PATH (HTEX's
    ``process_worker_pool.py`` and Work Queue's ``python3`` are found there)."""
    env = dict(os.environ)
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([bindir, *[p for p in env.get("PATH", "").split(os.pathsep)
                                             if p and p != bindir]])
    return env


def setup_parsl_workqueue(root: Path, shim_parent: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """The environment under which Parsl's WorkQueueExecutor runs on Debian's Work Queue.

    Raises ``RuntimeError`` with the reason when that cannot be arranged.
    """
    vw = vs_workqueue
    try:
        wq = vw.setup_workqueue(root, sys.executable)
    except (vw.Unavailable, OSError, subprocess.SubprocessError, ValueError) as e:
        raise RuntimeError(f"Work Queue set-up failed: {e}") from e
    if wq.python != sys.executable:
        raise RuntimeError(f"{sys.executable} cannot import Debian's work_queue module")
    module_dir = root / "usr" / "lib" / "python3" / "dist-packages"
    pkg = shim_parent / "ndcctools"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "work_queue.py").write_text(NDCCTOOLS_SHIM)
    env = base_env()
    env["LD_LIBRARY_PATH"] = wq.env.get("LD_LIBRARY_PATH", "")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(shim_parent), str(module_dir),
         *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]])
    parts = env["PATH"].split(os.pathsep)
    env["PATH"] = os.pathsep.join([parts[0], str(wq.worker.parent), *parts[1:]])
    found = shutil.which("work_queue_worker", path=env["PATH"])
    if found is None:
        raise RuntimeError("work_queue_worker is not on PATH after set-up")
    probe = ("from parsl.executors.workqueue import executor as e; "
             "assert e._work_queue_enabled, e.IMPORT_EXCEPTION; "
             "import ndcctools.work_queue as w; print(w.__file__, w.WorkQueue.__module__)")
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError("Parsl cannot import ndcctools.work_queue through the shim: "
                           + (proc.stderr or proc.stdout).strip()[-400:])
    info = {k: wq.info.get(k) for k in ("root", "cctools_version", "debian_packages",
                                        "module", "extension")}
    info["work_queue_worker"] = found
    info["ndcctools_shim"] = ("ndcctools/__init__.py (empty) + ndcctools/work_queue.py doing "
                              "'from work_queue import *' (Debian's module) on PYTHONPATH")
    return env, info


# ================================================================ parent side
def kill_group(proc: subprocess.Popen[str]) -> None:
    """End a child session we started (it leads its own process group) and its helpers."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def child_process(cmd: list[str], env: dict[str, str], cwd: str
                  ) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            kill_group(proc)


def run_session(executor: str, logging: str, n: int, rounds: int, warmup_tasks: int,
                warmup_rounds: int, spec: dict[str, int], env: dict[str, str],
                tmp: Path) -> dict[str, Any]:
    """One session in a fresh interpreter; raises RuntimeError if it fails."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{executor}-", dir=tmp))
    cfg = {"executor": executor, "tasks": n, "rounds": rounds, "logging": logging,
           "warmup_tasks": warmup_tasks, "warmup_rounds": warmup_rounds,
           "with_spec": executor in ("packmule", "workqueue"), "spec": spec,
           "run_dir": str(run_dir / "runinfo")}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(cfg)]
    limit = 4 * TIMEOUT
    try:
        with child_process(cmd, env, str(run_dir)) as proc:
            try:
                stdout, _ = proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired as e:
                raise RuntimeError(f"{executor}: the session ran past {limit:.0f} s") from e
            lines = [line[len(RESULT_MARKER):] for line in stdout.splitlines()
                     if line.startswith(RESULT_MARKER)]
            failures = [json.loads(line[len(ERROR_MARKER):]) for line in stdout.splitlines()
                        if line.startswith(ERROR_MARKER)]
            if proc.returncode != 0 or not lines:
                why = f": {failures[-1]}" if failures else " (its stderr is above)"
                raise RuntimeError(f"{executor}: the session exited with status "
                                   f"{proc.returncode}{why}")
            result: dict[str, Any] = json.loads(lines[-1])
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


def combine(sessions: list[dict[str, Any]], timed_submit: bool = True) -> dict[str, Any]:
    """Median/best throughput over sessions and pooled latency percentiles."""
    rates = [s["throughput"]["tasks_per_s"] for s in sessions]
    loops = [s["throughput"]["submit_loop_s"] for s in sessions]
    n = sessions[0]["throughput"]["tasks"]
    out: dict[str, Any] = {
        "throughput_tasks_per_s": {
            "median": round(statistics.median(rates), 1), "best": max(rates),
            "sessions": rates, "tasks": n,
            "submit_loop_tasks_per_s_median": round(n / statistics.median(loops), 1),
        },
    }
    rtt: dict[str, Any] = vs_workqueue.summarize([x for s in sessions for x in s["round_trip_s"]])
    rtt["session_medians"] = [round(statistics.median(s["round_trip_s"]) * 1000, 3)
                              for s in sessions]
    rtt["best_session_median"] = min(rtt["session_medians"])
    out["round_trip_ms"] = rtt
    starts = [s["startup_s"] for s in sessions]
    out["startup_s"] = {"median": round(statistics.median(starts), 3), "sessions": starts,
                        "what": "parsl.load() to the first result"}
    out["parsl_load_s_median"] = round(statistics.median(s["parsl_load_s"] for s in sessions), 3)
    out["cleanup_s_median"] = round(statistics.median(s["cleanup_s"] for s in sessions), 3)
    if timed_submit:
        out["executor_submit_ms"] = {
            "all_at_once": vs_workqueue.summarize(
                [x for s in sessions for x in s["submit_all_at_once_s"]]),
            "round_trip": vs_workqueue.summarize(
                [x for s in sessions for x in s["submit_round_trip_s"]]),
            "what": "time.perf_counter() around the executor's own submit(), as the DFK "
                    "calls it, pooled over sessions",
        }
    out["run_dir_bytes_per_task"] = [s["run_dir_bytes_per_task"] for s in sessions]
    out["load_average_1_5_15min"] = [
        {"before": s["load_average_before"], "after": s["load_average_after"]}
        for s in sessions]
    return out


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def ratios(res: dict[str, Any]) -> dict[str, Any]:
    pm, htex, wq = res.get("packmule"), res.get("htex"), res.get("workqueue")
    out: dict[str, Any] = {}
    if pm and htex and "round_trip_ms" in pm and "round_trip_ms" in htex:
        tp = ratio(pm["throughput_tasks_per_s"]["median"],
                   htex["throughput_tasks_per_s"]["median"])
        rt = ratio(pm["round_trip_ms"]["median"], htex["round_trip_ms"]["median"])
        out["throughput_packmule_over_htex"] = {
            "value": tp, "best_over_best": ratio(pm["throughput_tasks_per_s"]["best"],
                                                 htex["throughput_tasks_per_s"]["best"]),
            "target_min": TARGETS["throughput_packmule_over_htex_min"],
            "meets_target": tp is not None
            and tp >= TARGETS["throughput_packmule_over_htex_min"]}
        out["round_trip_packmule_over_htex"] = {
            "value": rt, "p90": ratio(pm["round_trip_ms"]["p90"], htex["round_trip_ms"]["p90"]),
            "target_max": TARGETS["round_trip_packmule_over_htex_max"],
            "meets_target": rt is not None
            and rt <= TARGETS["round_trip_packmule_over_htex_max"]}
    if pm and wq and "round_trip_ms" in pm and "round_trip_ms" in wq:
        r = ratio(wq["round_trip_ms"]["median"], pm["round_trip_ms"]["median"])
        out["round_trip_workqueue_over_packmule"] = {
            "value": r, "target_min": TARGETS["round_trip_workqueue_over_packmule_min"],
            "meets_target": r is not None
            and r >= TARGETS["round_trip_workqueue_over_packmule_min"]}
    if pm and wq and "throughput_tasks_per_s" in wq and "throughput_tasks_per_s" in pm:
        out["throughput_packmule_over_workqueue"] = ratio(
            pm["throughput_tasks_per_s"]["median"], wq["throughput_tasks_per_s"]["median"])
    out["how_to_read"] = ("medians over sessions (throughput) and of pooled samples "
                          "(round trip); each with its target and meets_target")
    return out


# ================================================================ parsl-perf
PERF_CONFIG = '''from parsl.config import Config
from parsl.providers import LocalProvider
{import_line}

config = Config(
    executors=[{executor}],
    run_dir={run_dir!r},
    strategy_period={period},
    initialize_logging={logging},
)
'''


def perf_command() -> list[str]:
    exe = Path(sys.executable).parent / "parsl-perf"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("parsl-perf")
    return [found] if found else [sys.executable, "-m", "parsl.benchmark.perf"]


def write_perf_config(executor: str, folder: Path, logging: str) -> Path:
    provider = "LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1)"
    if executor == "packmule":
        import_line = "from packmule import WorkQueueExecutor"
        ex = (f"WorkQueueExecutor(label='packmule', provider={provider}, "
              f"worker_options={WORKER_OPTIONS!r})")
    else:
        import_line = "from parsl.executors import HighThroughputExecutor"
        ex = (f"HighThroughputExecutor(label='htex', max_workers_per_node=2, "
              f"provider={provider})")
    path = folder / f"perf_{executor}_{logging}.py"
    path.write_text(PERF_CONFIG.format(import_line=import_line, executor=ex,
                                       run_dir=str(folder / f"runinfo-{executor}-{logging}"),
                                       period=STRATEGY_PERIOD, logging=logging == "default"))
    return path


def run_perf(executor: str, logging: str, seconds: float, spec: dict[str, int],
             env: dict[str, str], tmp: Path) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix=f"perf-{executor}-", dir=tmp))
    try:
        cmd = [*perf_command(), "--config", str(write_perf_config(executor, folder, logging)),
               "--time", f"{seconds:g}"]
        if executor == "packmule":
            cmd += ["--resources", json.dumps(spec)]
        limit = 6 * seconds + 180
        with child_process(cmd, env, str(folder)) as proc:
            try:
                stdout, _ = proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired as e:
                raise RuntimeError(f"parsl-perf ({executor}) ran past {limit:.0f} s") from e
        sizes = [int(x) for x in re.findall(r"^Will run (\d+) tasks", stdout, re.M)]
        rates = [float(x) for x in re.findall(r"^Tasks per second: ([0-9.]+)", stdout, re.M)]
        if proc.returncode != 0 or not rates:
            raise RuntimeError(f"parsl-perf ({executor}) exited with status {proc.returncode}: "
                               f"{stdout.strip()[-400:]!r}")
        return {"tasks_per_s": round(rates[-1], 1), "tasks": sizes[len(rates) - 1],
                "iterations": [{"tasks": s, "tasks_per_s": round(r, 1)}
                               for s, r in zip(sizes, rates, strict=False)],
                "command": shlex.join([*cmd[:1], "--config", f"perf_{executor}.py", *cmd[3:]])}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ================================================================ report
def versions() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mod in ("parsl", "packmule"):
        try:
            module = importlib.import_module(mod)
            out[mod] = module.__version__
            out[f"{mod}_from"] = os.path.dirname(module.__file__ or "?")
        except ImportError as e:
            out[mod] = f"not importable: {e}"
    return out


def machine_info() -> dict[str, Any]:
    """Cores, memory, platform, Python (from the sibling benchmark)."""
    info: dict[str, Any] = vs_workqueue.machine_info()
    return info


def rotate(items: Sequence[str], k: int) -> list[str]:
    k %= max(len(items), 1)
    return [*items[k:], *items[:k]]


def report(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    load_before = load_average()
    settings = ["default", "off"] if args.logging == "both" else [args.logging]
    executors = [e for e in EXECUTORS if e not in args.skip]
    spec = {**TASK_SPEC, "memory": args.spec_memory}
    status = 0
    tmp = Path(tempfile.mkdtemp(prefix="parsl-executors-"))
    try:
        env = base_env()
        envs: dict[str, dict[str, str]] = {e: env for e in executors}
        wq_status: dict[str, Any] = {"available": False, "reason": "skipped (--skip)"}
        if "workqueue" in executors:
            try:
                envs["workqueue"], info = setup_parsl_workqueue(
                    Path(args.wq_root).expanduser(), tmp / "ndcctools-shim")
                wq_status = {"available": True, **info}
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                log(f"workqueue: unavailable: {e}")
                wq_status = {"available": False, "reason": str(e)}
                executors.remove("workqueue")

        sessions: dict[str, dict[str, list[dict[str, Any]]]] = {
            s: {e: [] for e in executors} for s in settings}
        errors: dict[str, dict[str, str]] = {s: {} for s in settings}
        for i in range(args.repeats):
            for logging in settings:
                for executor in rotate(executors, i):
                    if executor in errors[logging]:
                        continue
                    wq = executor == "workqueue"
                    n = args.wq_tasks if wq else args.tasks
                    rounds = args.wq_rounds if wq else args.rounds
                    warm_n = min(n, 4 if wq else 200)
                    warm_r = 2 if wq else 20
                    log(f"session {i + 1}/{args.repeats}, logging {logging}: {executor} "
                        f"({n} tasks, {rounds} round trips); load {load_average()}")
                    try:
                        sessions[logging][executor].append(run_session(
                            executor, logging, n, rounds, warm_n, warm_r, spec, envs[executor],
                            tmp))
                    except (RuntimeError, OSError, ValueError) as e:
                        log(str(e))
                        errors[logging][executor] = str(e)
                        if executor in REQUIRED:
                            status = 1

        results: dict[str, Any] = {}
        for logging in settings:
            res: dict[str, Any] = {}
            for executor in EXECUTORS:
                got = sessions[logging].get(executor) or []
                if executor == "workqueue" and not wq_status["available"]:
                    res[executor] = {"available": False, "reason": wq_status["reason"]}
                elif executor in errors[logging]:
                    res[executor] = {"available": executor != "workqueue",
                                     "error": errors[logging][executor],
                                     **({"completed_sessions": combine(got)} if got else {})}
                elif got:
                    res[executor] = combine(got)
                    if executor == "workqueue":
                        res[executor]["reduced_sizes"] = (
                            f"{args.wq_tasks} tasks, {args.wq_rounds} round trips per session "
                            "(it moves ~4 tasks/s)")
            results[logging] = {"logging": LOGGING[logging], "executors": res,
                                "ratios": ratios(res)}

        perf: dict[str, Any] = {"time_s": args.perf_time, "repeats": args.perf_repeats,
                                "command": " ".join(perf_command())}
        if args.perf_repeats > 0:
            for logging in settings:
                runs: dict[str, list[dict[str, Any]]] = {"packmule": [], "htex": []}
                perr: dict[str, str] = {}
                for i in range(args.perf_repeats):
                    for executor in rotate(["packmule", "htex"], i):
                        if executor in perr:
                            continue
                        log(f"parsl-perf {i + 1}/{args.perf_repeats}, logging {logging}: "
                            f"{executor}, --time {args.perf_time:g}; load {load_average()}")
                        try:
                            runs[executor].append(
                                run_perf(executor, logging, args.perf_time, spec, env, tmp))
                        except (RuntimeError, OSError) as e:
                            log(str(e))
                            perr[executor] = str(e)
                summary: dict[str, Any] = {}
                for executor, got in runs.items():
                    rates = [r["tasks_per_s"] for r in got]
                    summary[executor] = {
                        **({"error": perr[executor]} if executor in perr else {}),
                        **({"tasks_per_s_median": round(statistics.median(rates), 1),
                            "best": max(rates), "runs": got} if got else {})}
                pm_r = summary["packmule"].get("tasks_per_s_median")
                ht_r = summary["htex"].get("tasks_per_s_median")
                if pm_r and ht_r:
                    summary["packmule_over_htex"] = round(pm_r / ht_r, 3)
                perf[logging] = summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    result: dict[str, Any] = {
        "benchmark": "no-op python_app through Parsl: packmule.WorkQueueExecutor vs "
                     "HighThroughputExecutor vs ThreadPoolExecutor vs Parsl's WorkQueueExecutor "
                     "on the real Work Queue",
        "setup": {
            "tasks": args.tasks, "rounds": args.rounds, "repeats": args.repeats,
            "workqueue_tasks": args.wq_tasks, "workqueue_rounds": args.wq_rounds,
            "quick": args.quick, "logging": {s: LOGGING[s] for s in settings},
            "task_spec_packmule_and_workqueue": spec,
            "strategy_period": STRATEGY_PERIOD,
            "session": "a fresh Python subprocess per session: parsl.load once, run_dir in a "
                       "temporary folder; untimed warm-up (200 tasks + 20 round trips; Work "
                       "Queue 4 + 2); then N at once, then R round trips",
            "order": "sessions interleaved, the executor order rotating each repetition",
            "executors": {
                "packmule": f"packmule.WorkQueueExecutor(provider=LocalProvider(init_blocks=1, "
                            f"max_blocks=1), worker_options={WORKER_OPTIONS!r}); tasks carry "
                            f"parsl_resource_specification={spec}",
                "htex": "HighThroughputExecutor(max_workers_per_node=2, provider=LocalProvider("
                        "init_blocks=1, max_blocks=1)), other parameters default (encrypted="
                        "True); no resource specification (HTEX only accepts 'priority')",
                "threadpool": "ThreadPoolExecutor(max_threads=2); no resource specification",
                "workqueue": f"parsl.executors.WorkQueueExecutor(shared_fs=True, port=0), other "
                             f"parameters default (its default LocalProvider; worker_options='' "
                             f"so work_queue_worker sizes itself to the machine); tasks carry "
                             f"{spec}",
            },
            "app": "python_app(def noop(**kwargs): return 7); packmule and workqueue calls pass "
                   "parsl_resource_specification",
        },
        "machine": {**machine_info(), "load_average_1_5_15min": {
            "before": load_before, "after": load_average(),
            "note": "this run's own load included; other load on the shared machine makes "
                    "the numbers noisy"}},
        "versions": {**versions(), "workqueue": {
            k: wq_status.get(k) for k in ("cctools_version", "debian_packages")}},
        "workqueue_setup": wq_status,
        "results": results,
        "parsl_perf": perf,
    }
    return result, status


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small sizes: N=500, R=50, Work Queue 30/5, parsl-perf --time 5, "
                        "1 session each")
    p.add_argument("--tasks", type=int, metavar="N",
                   help="tasks submitted at once per session (default 5000; 500 with --quick)")
    p.add_argument("--rounds", type=int, metavar="R",
                   help="sequential round trips per session (default 300; 50 with --quick)")
    p.add_argument("--wq-tasks", type=int, metavar="N",
                   help="tasks at once for the original WorkQueueExecutor (default 100; 30)")
    p.add_argument("--wq-rounds", type=int, metavar="R",
                   help="round trips for the original WorkQueueExecutor (default 10; 5)")
    p.add_argument("--repeats", type=int, metavar="K",
                   help="sessions per executor (default 3; 1 with --quick)")
    p.add_argument("--logging", choices=("default", "off", "both"), default="default",
                   help="Parsl's logging for every executor (default: Parsl's default, on)")
    p.add_argument("--perf-time", type=float, metavar="S",
                   help="parsl-perf --time (default 20; 5 with --quick)")
    p.add_argument("--perf-repeats", type=int, metavar="K",
                   help="parsl-perf runs per executor (default: --repeats; 0 skips it)")
    p.add_argument("--spec-memory", type=int, default=TASK_SPEC["memory"], metavar="MB",
                   help="the 'memory' of the task specification given to packmule and Work "
                        "Queue (default %(default)s)")
    p.add_argument("--skip", action="append", default=[], choices=EXECUTORS,
                   help="leave an executor out (repeatable)")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    p.add_argument("--wq-root", default=os.path.join(cache, "packmule-bench", "wq"),
                   help="private folder holding the unpacked Debian packages "
                        "(made when missing; default %(default)s)")
    p.add_argument("--child", metavar="JSON", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults: Sequence[tuple[str, float, float]] = (
        ("tasks", 5000, 500), ("rounds", 300, 50), ("wq_tasks", 100, 30),
        ("wq_rounds", 10, 5), ("repeats", 3, 1), ("perf_time", 20.0, 5.0))
    for name, full, small in defaults:
        if getattr(args, name) is None:
            setattr(args, name, type(full)(small if args.quick else full))
    if args.perf_repeats is None:
        args.perf_repeats = args.repeats
    least: Sequence[tuple[str, float]] = (
        ("tasks", 1), ("rounds", 2), ("wq_tasks", 1), ("wq_rounds", 2), ("repeats", 1),
        ("spec_memory", 0),
        ("perf_time", 0.1), ("perf_repeats", 0))
    for name, low in least:
        if getattr(args, name) < low:
            p.error(f"--{name.replace('_', '-')} must be at least {low:g}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return child_main(json.loads(args.child))
    result, status = report(args)
    print(json.dumps(result, indent=2))
    return status

if __name__ == "__main__":
    sys.exit(main())
