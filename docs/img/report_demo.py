"""Make docs/img/report.png: a small run on local workers, its report, a screenshot.

Run from the repository root (needs ``chromium`` on PATH)::

    python docs/img/report_demo.py [--keep DIR]

Three workers of 2 cores and 1000 MB run five categories: CPU-bound
``simulate``, memory-holding ``load``, 2-core shell ``assemble``, ``grow``
(which outgrows the memory it was given and is retried bigger) and
``parse`` (which fails). One worker is killed part-way: its tasks are lost
and run again elsewhere. The run directory goes to a temporary directory
(or ``--keep DIR``), never to ./packmule-runs.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def simulate(seconds: float, mb: int) -> float:
    work = bytearray(mb << 20)  # a working buffer, touched
    work[::4096] = b"x" * len(work[::4096])
    end = time.process_time() + seconds
    x = 0.0
    while time.process_time() < end:
        x += 1.0
    return x + len(work)


def load(mb: int, seconds: float) -> int:
    block = bytearray(mb << 20)
    block[::4096] = b"x" * len(block[::4096])
    time.sleep(seconds)
    return len(block) >> 20


def grow(mb: int) -> int:
    return load(mb, 1.0)


def parse(row: int) -> None:
    raise ValueError(f"row {row}: expected 7 columns, found {row % 5 + 2}")


def run(runs: Path) -> Path:
    os.environ["PACKMULE_RUNS_DIR"] = str(runs)
    import packmule
    from packmule.local import local_cluster

    rng = random.Random(7)
    with local_cluster(3, cores=2, memory=1000, disk=2000) as manager:
        futures = []

        def submit(task: packmule.Task) -> None:
            futures.append(manager.submit(task))

        for i in range(4):
            submit(packmule.Task("timeout 1.5 yes >/dev/null & timeout 1.5 yes >/dev/null; "
                                 "wait; true", resources={"cores": 2}, category="assemble",
                                 priority=1))
            if i < 2:
                submit(packmule.PythonTask(grow, 700, resources={"cores": 1},
                                           category="grow"))
        for i in range(26):
            submit(packmule.PythonTask(simulate, rng.uniform(0.3, 1.2), rng.randint(20, 160),
                                       resources={"cores": 1, "memory": 250},
                                       category="simulate"))
            if i % 2 == 0:
                submit(packmule.PythonTask(load, rng.randint(60, 300), rng.uniform(0.4, 1.0),
                                           resources={"cores": 1, "memory": 400},
                                           category="load"))
            if i % 9 == 4:
                submit(packmule.PythonTask(parse, 10 + i, resources={"cores": 1},
                                           category="parse"))
        time.sleep(3.0)
        victim = manager.worker_processes[2]  # type: ignore[attr-defined]
        victim.kill()  # a worker started here, by its pid
        for f in futures:
            f.exception(timeout=120)
        return Path(manager.run_dir)


def screenshot(page: Path, png: Path, width: int, height: int) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not on PATH")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-quic", "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--hide-scrollbars",
                        f"--screenshot={png}", f"--window-size={width},{height}",
                        page.as_uri()], check=True, capture_output=True, timeout=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", metavar="DIR", help="keep the run directories here")
    ap.add_argument("--out", default=str(HERE / "report.png"))
    ap.add_argument("--height", type=int, default=2500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="packmule-report-demo-") as tmp:
        runs = Path(args.keep or tmp)
        run_dir = run(runs)
        res = subprocess.run([sys.executable, "-m", "packmule", "report", str(run_dir)],
                             capture_output=True, text=True, check=True)
        page = Path(res.stdout.strip())
        screenshot(page, Path(args.out), 1200, args.height)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
