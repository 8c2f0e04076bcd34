from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from packmule.worker import detect


def test_cores_match_affinity_or_quota() -> None:
    n = detect.detect_cores()
    assert 1 <= n <= len(os.sched_getaffinity(0))
    quota = detect.cgroup_cpu_limit()
    if quota is None:
        assert n == len(os.sched_getaffinity(0))


def test_memory_is_physical_or_cgroup_limit() -> None:
    mb = detect.detect_memory()
    total = psutil.virtual_memory().total // (1 << 20)
    assert 0 < mb <= total
    limit = detect.cgroup_memory_limit()
    assert mb == (total if limit is None else min(total, limit // (1 << 20)))


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
