"""The README's demo and the benchmark keep working (not a speed test).

Each runs in a temporary directory, where its run directories go
(``./packmule-runs``), so that the checkout stays clean.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_every_task(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PACKMULE_RUNS_DIR"}  # as users run it
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "succeeded, 0 failed" in res.stdout
    assert "Most tasks running at once: 4 overall" in res.stdout
    # the workers' log lines go to files, not into the demo's table
    assert "packmule[" not in res.stdout + res.stderr, res.stderr
    last = res.stdout.splitlines()[-1]
    assert last.startswith("The workers' logs: packmule-runs/") and last.endswith("/worker-*.log")
    logs = sorted((tmp_path / last.split(": ", 1)[1]).parent.glob("worker-*.log"))
    assert [p.name for p in logs] == ["worker-1.log", "worker-2.log"]
    assert all("connected to manager" in p.read_text() for p in logs)


def test_parsl_demo_behaves_as_described(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "parsl_demo.py")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "at most 2 ran at once" in res.stdout


def test_pack_demo_runs_in_the_pack(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "pack_demo.py")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "packmule[" not in res.stdout + res.stderr, res.stderr  # the worker's log
    assert "No module named 'pack_helper'" in res.stdout
    assert "all ran in the same pack: True" in res.stdout


def test_throughput_benchmark_prints_json(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--quick"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["throughput"]["cores_1"]["tasks_per_s"] > 0
    assert out["round_trip"]["packmule_ms"]["median"] > 0
    assert set(out["meets_targets"]) >= {"throughput_cores_1", "round_trip_median",
                                         "packing_ratio"}
