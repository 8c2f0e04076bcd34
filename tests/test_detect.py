from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from packmule.worker import detect

SLURM_VARS = ("SLURM_CPUS_ON_NODE", "SLURM_MEM_PER_NODE", "SLURM_MEM_PER_CPU")


@pytest.fixture
def no_slurm(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Detection as outside a Slurm job (these tests may run inside one)."""
    for name in SLURM_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.usefixtures("no_slurm")
def test_cores_match_affinity_or_quota() -> None:
    n = detect.detect_cores()
    assert 1 <= n <= len(os.sched_getaffinity(0))
    quota = detect.cgroup_cpu_limit()
    if quota is None:
        assert n == len(os.sched_getaffinity(0))


@pytest.mark.usefixtures("no_slurm")
def test_memory_is_physical_or_cgroup_limit() -> None:
    mb = detect.detect_memory()
    total = psutil.virtual_memory().total // (1 << 20)
    assert 0 < mb <= total
    limit = detect.cgroup_memory_limit()
    assert mb == (total if limit is None else min(total, limit // (1 << 20)))


@pytest.mark.parametrize(
    ("env", "cpus", "memory"),
    [
        ({}, None, None),
        ({"SLURM_CPUS_ON_NODE": "3"}, 3, None),
        ({"SLURM_CPUS_ON_NODE": "2", "SLURM_MEM_PER_NODE": "1500"}, 2, 1500),
        # --mem-per-cpu: the node's share is per CPU times the CPUs on this node.
        ({"SLURM_CPUS_ON_NODE": "2", "SLURM_MEM_PER_CPU": "700"}, 2, 1400),
        ({"SLURM_MEM_PER_CPU": "700"}, None, None),
        # --mem=0 is "all of the node's memory"; nonsense is ignored.
        ({"SLURM_CPUS_ON_NODE": "0", "SLURM_MEM_PER_NODE": "0"}, None, None),
        ({"SLURM_CPUS_ON_NODE": "x", "SLURM_MEM_PER_NODE": "2G"}, None, None),
    ],
)
def test_slurm_allocation_from_the_environment(
    env: dict[str, str], cpus: int | None, memory: int | None
) -> None:
    assert detect.slurm_cpu_limit(env) == cpus
    assert detect.slurm_memory_limit(env) == memory


def test_a_slurm_job_bounds_cores_and_memory(no_slurm: pytest.MonkeyPatch) -> None:
    cores, memory = detect.detect_cores(), detect.detect_memory()
    no_slurm.setenv("SLURM_CPUS_ON_NODE", "1")
    no_slurm.setenv("SLURM_MEM_PER_CPU", "100")
    assert (detect.detect_cores(), detect.detect_memory()) == (1, min(memory, 100))
    no_slurm.setenv("SLURM_MEM_PER_NODE", "200")
    assert detect.detect_memory() == min(memory, 200)
    # An upper bound only: a job larger than what this process can use changes nothing.
    no_slurm.setenv("SLURM_CPUS_ON_NODE", "100000")
    no_slurm.setenv("SLURM_MEM_PER_NODE", str(memory + 1000))
    assert (detect.detect_cores(), detect.detect_memory()) == (cores, memory)


def test_disk_is_free_space_of_workdir(tmp_path: Path) -> None:
    import shutil

    free = shutil.disk_usage(tmp_path).free // (1 << 20)
    assert abs(detect.detect_disk(tmp_path / "w") - free) < 64


@pytest.mark.parametrize(
    ("value", "ids"),
    [("0,2", ["0", "2"]), ("", []), ("-1", []), ("1,-1,2", ["1"]), ("GPU-abc", ["GPU-abc"])],
)
def test_cuda_visible_devices_is_honoured(
    monkeypatch: pytest.MonkeyPatch, value: str, ids: list[str]
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert detect.detect_gpus() == ids


def test_gpu_override() -> None:
    assert detect.choose_gpus(None, ["3", "5"]) == ["3", "5"]
    assert detect.choose_gpus(1, ["3", "5"]) == ["3"]
    assert detect.choose_gpus(2, []) == ["0", "1"]
    assert detect.choose_gpus(0, ["3"]) == []
