"""The README's demo and the benchmark keep working (not a speed test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_every_task() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "succeeded, 0 failed" in res.stdout
    assert "Most tasks running at once: 4 overall" in res.stdout


def test_parsl_demo_behaves_as_described() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "parsl_demo.py")],
                         capture_output=True, text=True, timeout=180, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "at most 2 ran at once" in res.stdout


def test_pack_demo_runs_in_the_pack() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "pack_demo.py")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "No module named 'pack_helper'" in res.stdout
    assert "all ran in the same pack: True" in res.stdout


def test_throughput_benchmark_prints_json() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--quick"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["throughput"]["cores_1"]["tasks_per_s"] > 0
    assert out["round_trip"]["packmule_ms"]["median"] > 0
    assert set(out["meets_targets"]) >= {"throughput_cores_1", "round_trip_median",
                                         "packing_ratio"}
