"""The benchmarks keep working (smoke runs, not speed tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(name: str, *args: str, timeout: float = 110) -> dict[str, Any]:
    """Run ``benchmarks/NAME`` with ``args``; its JSON (it must exit 0)."""
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args],
                         capture_output=True, text=True, timeout=timeout, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out: dict[str, Any] = json.loads(res.stdout)
    return out


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_many_workers_quick_connects_every_emulated_worker() -> None:
    out = run_benchmark("many_workers.py", "--quick", timeout=80)
    assert {"machine", "settings", "targets", "emulated", "meets_targets",
            "duration_s"} <= set(out)
    section = out["emulated"]
    assert section["sizes"] == [10, 100]
    assert set(section["ratio_vs_smallest"]) == {"100"}
    for size, run in section["runs"].items():
        k = int(size)
        assert "error" not in run and "skipped" not in run, run
        assert {"connect", "idle", "throughput", "shutdown", "emulator", "manager_log",
                "loop_rss_mb_max", "meets_targets"} <= set(run)
        assert run["connect"]["connected"] == k and not run["connect"]["timed_out"]
        assert run["workers_connected"] == k
        assert run["workers_lost"] == 0
        assert run["emulator"]["welcomed_once"] == k
        assert run["emulator"]["rejected"] == 0 and run["emulator"]["protocol_errors"] == 0
        tp = run["throughput"]
        assert tp["completed"] == tp["tasks"] and tp["failed"] == 0 and tp["tasks_per_s"] > 0
        assert run["emulator"]["tasks_answered"] == tp["tasks"] + tp["warmup"]
        assert run["idle"]["loop_cpu_cores"] >= 0 and run["idle"]["loop_rss_mb"] > 0
        assert "emulators" in tp["cpu_cores"]
        assert run["shutdown"]["exits_received"] == k
        assert set(run["meets_targets"]) >= {"all_connected", "none_lost", "connect_s",
                                             "idle_loop_cpu", "loop_rss_mb", "shutdown_s"}
    assert "emulated_100_throughput_ratio" in out["meets_targets"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_reliability_quick_loses_nothing_and_leaves_nothing_running() -> None:
    out = run_benchmark("reliability.py", "--quick")
    assert {"machine", "settings", "partition", "fault_free", "faulty", "tasks",
            "faults_injected", "results_lost", "delivered_twice", "executed_more_than_once",
            "orphans", "slowdown", "ok", "duration_s"} <= set(out)
    assert out["ok"] and out["tasks"] == 300
    assert out["results_lost"] == out["delivered_twice"] == out["orphans"] == 0
    assert out["faults_injected"].get("worker_sigkill", 0) >= 1
    assert out["fault_free"]["faults"] == {} and out["slowdown"] > 0
    for run in (out["fault_free"], out["faulty"]):
        assert run["delivered_never"] == run["never_executed"] == 0
        assert run["workers_exited_on_shutdown"], run


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not Path("/work/shared/workloads/phung2021").is_dir(),
                    reason="the Phung 2021 traces are not present")
def test_alloc_quick_reports_every_setting_and_target() -> None:
    out = run_benchmark("alloc.py", "--quick", "--modes", "auto,max_throughput", "--seeds",
                        "1", "--workloads", "/work/shared/workloads/phung2021")
    assert {"machine", "config", "settings", "targets", "meets_targets",
            "duration_s"} <= set(out)
    assert set(out["settings"]) == {"public/one/as_given", "public/one/clipped",
                                    "public/tag/as_given", "public/tag/clipped",
                                    "shifts/one", "shifts/tag"}
    for name, block in out["settings"].items():
        assert block["traces"] == (3 if name.startswith("shifts") else 4), name
        assert block["consistent"], name  # simulate's memory efficiency is table's
        assert set(block["means"]) == {"auto", "max_throughput"}
        for means in block["means"].values():
            assert set(means) == {"memory_efficiency", "retries", "cores_efficiency",
                                  "disk_efficiency"}
            assert 0 < means["memory_efficiency"] <= 1
        assert block["auto_vs_max_throughput"]["efficiency_ratio"] > 1, name
    assert set(out["targets"]) == {"one", "tag", "retries", "cores_disk", "shifts",
                                   "beats_max_throughput"}
    assert all(t["pass"] in (True, False) for t in out["targets"].values())
    cost = out["learning_cost"]
    assert set(cost["traces"]) == {"exponential", "normal_large", "constant"}
    for per_mode in cost["traces"].values():
        assert set(per_mode) == {"auto", "max_throughput"}
        assert all(us > 0 for us in per_mode.values())
    assert set(cost["auto_vs_max_throughput"]) == set(cost["traces"])
    bound = out["ceiling"]["one_category"]
    assert len(bound["per_trace"]) == 4
    for trace, got in bound["per_trace"].items():
        assert 0 < got["two_fold"] <= 1 and 0 < got["hindsight"] <= 1, trace


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_large_payloads_quick_loses_no_worker() -> None:
    out = run_benchmark("large_payloads.py", "--quick")
    assert {"machine", "packmule", "process_pool", "ratio_to_process_pool", "ok"} <= set(out)
    assert out["ok"], out
    for kind, mb in (("call", 50), ("result", 30)):
        run = out["packmule"][kind]
        assert run["mb"] == mb and run["workers_lost"] == 0 and run["attempts"] == 1
        assert run["others_during"] > 0 and run["total_s"] > 0
    assert set(out["ratio_to_process_pool"]) == {"call", "result"}
