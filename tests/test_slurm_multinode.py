"""packmule.WorkQueueExecutor on a real two-node Slurm whose nodes differ in size.

The module starts a private Slurm with two nodes on this machine, each in its own network
and UTS namespace (tests/slurm/start-slurm.sh with ``PACKMULE_SLURM_NODES``; the network
is described in tests/slurm/netns.sh): n1 with 2 CPUs and n2 with 1. The manager listens
on the root namespace's address on the nodes' bridge, the only way in from the nodes.

One Parsl block spans both nodes (``nodes_per_block=2``, ``SrunLauncher``: a worker per
node) and asks for ``--exclusive --mem-per-cpu=1000``. Slurm then gives the job all of
each node's CPUs and 1000 MB per CPU, and each worker offers what its node's job
environment says (SLURM_CPUS_ON_NODE, SLURM_MEM_PER_CPU): 2 cores and 2000 MB on n1, 1
core and 1000 MB on n2, though both nodes see the same two CPUs and all of the memory.

Needs root (skipped with the reason without it, or when the cluster does not come up);
one such cluster runs on a machine at a time. Select with ``-m slurm``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import parsl
import pytest
from parsl.config import Config
from parsl.launchers import SrunLauncher
from parsl.providers import SlurmProvider

from packmule import WorkQueueExecutor

from .conftest import wait_until
from .test_cluster import max_overlap
from .test_slurm import REPO_ROOT, job_id_of, private_slurm, where

pytestmark = pytest.mark.slurm

PARTITION = "packmule2"
#: Slurm's nodes: name -> (CPUs, RealMemory MB); node i gets address 10.213.77.i.
NODES = {"n1": (2, 4000), "n2": (1, 2000)}
MEM_PER_CPU = 1000
#: What each node's worker offers: (cores, memory MB).
SIZES = {name: (cpus, cpus * MEM_PER_CPU) for name, (cpus, _) in NODES.items()}
#: The root namespace's address on the nodes' bridge (tests/slurm/netns.sh).
MANAGER_ADDRESS = "10.213.77.254"

SMALL = {"cores": 1, "memory": 400, "disk": 100}
WIDE = {"cores": 2, "memory": 800, "disk": 100}  # fits n1 only: 2 cores
FAT = {"cores": 1, "memory": 1500, "disk": 100}  # fits n1 only: 1500 MB


@pytest.fixture(scope="module")
def slurm2() -> Iterator[Path]:
    spec = " ".join(f"{name}:{cpus}:{mem}" for name, (cpus, mem) in NODES.items())
    with private_slurm(PARTITION, nodes=spec) as conf:
        yield conf


def spans(results: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return [(r["start"], r["end"]) for r in results]


def test_workers_on_two_nodes_of_different_sizes_pack_heterogeneous_tasks(
    slurm2: Path, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    provider = SlurmProvider(
        partition=PARTITION, nodes_per_block=2, init_blocks=1, min_blocks=0, max_blocks=1,
        walltime="00:05:00", launcher=SrunLauncher(), exclusive=True,
        scheduler_options=f"#SBATCH --mem-per-cpu={MEM_PER_CPU}", cmd_timeout=30,
        # The apps live in tests.test_slurm: make it importable on the workers.
        worker_init=f"export PYTHONPATH={REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}",
    )
    ex = WorkQueueExecutor(label="slurm2", address=MANAGER_ADDRESS, port=0, provider=provider)
    config = Config(executors=[ex], run_dir=str(tmp_path / "runinfo"), strategy_period=0.5)
    with parsl.load(config):
        assert ex.manager is not None
        manager = ex.manager
        wait_until(lambda: manager.stats().workers == 2, timeout=60, interval=0.1)
        t_workers = time.monotonic() - t0
        total = manager.stats().total
        assert (total.cores, total.memory) == (3, 3000), total

        # A task asking for nothing takes a whole worker, and its CORES and MEMORY say the
        # worker's size: two at once take one worker each.
        whole = [where(1.0, parsl_resource_specification={}) for _ in range(2)]
        sizes = {r["host"]: (r["cores"], r["memory"]) for r in
                 (f.result(timeout=60) for f in whole)}
        assert sizes == SIZES

        small = [where(1.0, parsl_resource_specification=SMALL) for _ in range(6)]
        fat = [where(1.0, parsl_resource_specification=FAT) for _ in range(2)]
        wide = [where(1.0, parsl_resource_specification=WIDE) for _ in range(2)]
        results: dict[str, list[dict[str, Any]]] = {
            kind: [f.result(timeout=60) for f in futures]
            for kind, futures in (("small", small), ("fat", fat), ("wide", wide))
        }
        job = job_id_of(ex)
        t_tasks = time.monotonic() - t0
    elapsed = time.monotonic() - t0

    every = [r for rs in results.values() for r in rs]
    # All in the one block's Slurm job, in its srun step: a worker on each node.
    assert {(r["job"], r["step"], r["block"]) for r in every} == {(job, "0", "0")}
    assert len({r["worker"] for r in every}) == 2
    # Small tasks ran on both nodes; those that fit only n1 ran only there.
    assert {r["host"] for r in results["small"]} == set(NODES)
    assert {r["host"] for r in results["fat"] + results["wide"]} == {"n1"}
    for kind, spec in (("small", SMALL), ("fat", FAT), ("wide", WIDE)):
        assert {(r["cores"], r["memory"]) for r in results[kind]} == {
            (spec["cores"], spec["memory"])}, kind
    # Packed to each node's size and never beyond: n2 ran one task at a time; n1 two
    # 1-core tasks at once, each 2-core task alone, and never both 1500 MB tasks at once
    # (its 2000 MB: at most 1500 + 400 MB were in use).
    on_n1 = [r for r in every if r["host"] == "n1"]
    assert max_overlap(spans([r for r in every if r["host"] == "n2"])) == 1
    assert max_overlap(spans([r for r in on_n1 if r["cores"] == 1])) == 2
    for s2, e2 in spans(results["wide"]):
        assert all(e <= s2 or s >= e2 for s, e in spans(on_n1) if (s, e) != (s2, e2))
    assert max_overlap(spans(results["fat"])) == 1
    print(f"workers on n1 and n2 after {t_workers:.1f} s, tasks done after {t_tasks:.1f} s, "
          f"shut down after {elapsed:.1f} s (Slurm job {job})")
