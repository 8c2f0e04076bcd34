"""A Parsl workflow on packmule: the one-import change from Parsl's WorkQueueExecutor.

Run it with::

    python examples/parsl_demo.py

It loads a Parsl config whose only executor is ``packmule.WorkQueueExecutor``
(with ``autolabel`` and ``autocategory`` on, as Parsl's documentation
suggests), which starts one local ``packmule worker`` of 2 cores through
Parsl's ``LocalProvider``. Then it runs a small map-reduce of heterogeneous
apps, written exactly as for Parsl's own executor:

* ``simulate``: 1 core and 500 MB each, so two run at once;
* ``reduce_all``: 2 cores, so it runs alone;
* ``archive``: a bash app whose stdout file travels back from the worker;
* ``unlucky``: raises, and the exception arrives with its own type.

While the ``simulate`` apps run, ``packmule.progress`` shows how far they
are: a progress bar in a terminal, a summary line when the output goes to a
file.

Exit status: 0 when everything behaved as described, 1 otherwise.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import parsl
from parsl import bash_app, python_app
from parsl.config import Config
from parsl.providers import LocalProvider

import packmule
from packmule import WorkQueueExecutor  # the one changed line


@python_app
def simulate(seed: int, parsl_resource_specification: dict[str, int] = {  # noqa: B006
        "cores": 1, "memory": 500, "disk": 100}) -> tuple[int, float, float, str]:
    import os
    import random
    import time

    start = time.time()
    rng = random.Random(seed)
    total = sum(rng.random() for _ in range(200_000))
    time.sleep(0.2)
    return int(total), start, time.time(), os.environ["CORES"]


@python_app
def reduce_all(values: list[int], parsl_resource_specification: dict[str, int] = {  # noqa: B006
        "cores": 2}) -> tuple[int, str]:
    import os

    return sum(values), os.environ["CORES"]


@bash_app
def archive(total: int, stdout: str | None = None) -> str:
    return f"echo total={total}; echo archived on $(hostname) in $(pwd)"


@python_app
def unlucky() -> None:
    raise LookupError("this app always fails, on purpose")


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="packmule-parsl-demo-"))
    os.chdir(workdir)
    executor = WorkQueueExecutor(
        provider=LocalProvider(init_blocks=1, max_blocks=1),
        worker_options="--cores 2 --memory 2000 --disk 2000",
        autolabel=True,
        autocategory=True,
    )
    ok = True
    start = time.time()
    with parsl.load(Config(executors=[executor], run_dir=str(workdir / "runinfo"),
                           strategy_period=0.2)):
        sims = [simulate(seed) for seed in range(8)]
        packmule.progress(sims)  # optional: bars in a terminal, a summary line in a log
        results = [f.result() for f in sims]
        total, reduce_cores = reduce_all([r[0] for r in results]).result()
        archive(total, stdout="archive.log").result()
        try:
            unlucky().result()
            ok = False
        except LookupError as exc:
            print(f"unlucky() raised {type(exc).__name__}: {exc}")

    at_once = most_at_once([(s, e) for _, s, e, _ in results])
    print(f"8 simulate() tasks, CORES={results[0][3]} each: at most {at_once} ran at once "
          "on the 2-core worker")
    print(f"reduce_all() ran with CORES={reduce_cores}: total = {total}")
    print("archive.log came back from the worker:")
    print("  " + Path("archive.log").read_text().replace("\n", "\n  ").rstrip())
    print(f"done in {time.time() - start:.1f} s (Parsl start-up and worker start included)")
    ok = ok and at_once == 2 and reduce_cores == "2" and results[0][3] == "1"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
