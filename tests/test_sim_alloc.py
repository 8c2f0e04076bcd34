"""The trace-driven allocation simulator (``packmule sim alloc``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from packmule import Resources
from packmule.core.categories import AllocationMode, CategoryConfig
from packmule.sim.alloc import PHUNG_MACHINE, TraceTask, load_trace, main, simulate, table

WORKLOADS = Path("/work/shared/workloads/phung2021")
needs_workloads = pytest.mark.skipif(not WORKLOADS.is_dir(),
                                     reason=f"{WORKLOADS} (the Phung 2021 traces) not present")
M = AllocationMode
HEADER = "taskid -- core -- memory -- virtual_memory -- disk -- time -- average_cores -- tag\n"


def _trace(tmp_path: Path, lines: list[str], header: bool = True) -> Path:
    p = tmp_path / "trace.txt"
    p.write_text((HEADER if header else "") + "".join(line + "\n" for line in lines))
    return p


def test_parse_a_good_trace(tmp_path: Path) -> None:
    p = _trace(tmp_path, [
        "1 -- 4 -- 27194 -- 0 -- 4000 -- 500 -- 0 -- 1",
        "",
        "2 -- 1.08 -- -12 -- 0 -- 10.5 -- 20.5 -- 0.9 -- b",
    ])
    tasks = load_trace(p)
    assert tasks == [
        TraceTask("1", (4, 27194, 4000, 0), 500.0, "1"),
        TraceTask("2", (1, 0, 11, 0), 20.5, "b"),  # negative memory clamped, cores de-noised
    ]


@pytest.mark.parametrize(("line", "why"), [
    ("1 -- 4 -- 100 -- 0 -- 4000 -- 500 -- 0", "expected 8 fields"),
    ("1 -- 4 -- lots -- 0 -- 4000 -- 500 -- 0 -- 1", "memory is not a number"),
    ("1 -- 4 -- 100 -- 0 -- 4000 -- -5 -- 0 -- 1", "time must not be negative"),
    ("1 -- nan -- 100 -- 0 -- 4000 -- 5 -- 0 -- 1", "core is not finite"),
])
def test_a_bad_line_names_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    p = _trace(tmp_path, ["1 -- 4 -- 100 -- 0 -- 4000 -- 500 -- 0 -- 1", line])
    with pytest.raises(ValueError, match=rf"trace\.txt:3: {why}"):
        load_trace(p)


def test_empty_trace_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no tasks"):
        load_trace(_trace(tmp_path, []))


def test_metrics_by_hand() -> None:
    """Machine 4 cores / 1000 MB / 1000 MB, FIXED (whole machine): a task using 2 cores,
    250 MB, 100 MB for 10 s, and one larger than the machine (unrunnable, all waste)."""
    tasks = [TraceTask("a", (2, 250, 100, 0), 10.0), TraceTask("b", (1, 2000, 1, 0), 10.0)]
    r = simulate(tasks, CategoryConfig(), Resources(4, 1000, 1000, 0))
    mem = r["resources"]["memory"]  # type: ignore[index]
    assert mem["allocated"] == 20000 and mem["used"] == 2500 and mem["waste"] == 17500
    assert mem["efficiency"] == pytest.approx(0.125)
    assert mem["mean_task_efficiency"] == pytest.approx((0.25 + 0) / 2)
    assert r["completed"] == 1 and r["failed"] == 1 and r["unrunnable"] == 1
    assert r["retries"] == 0 and r["attempts"] == 2
    # 2 attempts x 10 s of a whole machine: 1 completed task per 20 s
    assert r["throughput"] == pytest.approx(180.0)


def test_learning_modes_retry_and_give_up_on_tasks_larger_than_the_machine() -> None:
    tasks = [TraceTask(str(i), (1, 300 + 10 * i, 10, 0), 5.0) for i in range(40)]
    tasks.append(TraceTask("huge", (1, 5000, 10, 0), 5.0))
    for mode in M:
        if mode is M.FIXED:
            continue
        r = simulate(tasks, CategoryConfig(mode=mode, steady_n=2), Resources(2, 1000, 1000, 0))
        assert r["completed"] == 40 and r["unrunnable"] == 1, mode
        assert r["attempts"] == 41 + r["retries"]
        if mode is not M.MAX:  # MAX never gets steady on a growing trace: whole machine
            assert r["retries"] >= 1, mode


@needs_workloads
def test_whole_machine_baseline_matches_the_published_figure() -> None:
    """README: memory efficiency 0.31 for "whole machine" on bimodal_small_std."""
    tasks = load_trace(WORKLOADS / "bimodal_small_std.txt")
    assert len(tasks) == 2000
    r = simulate(tasks, CategoryConfig(mode=M.FIXED), PHUNG_MACHINE)
    assert r["resources"]["memory"]["efficiency"] == pytest.approx(0.313, abs=0.002)  # type: ignore[index]
    assert r["resources"]["cores"]["efficiency"] == pytest.approx(0.25)  # type: ignore[index]
    assert r["retries"] == 0 and r["failed"] == 0


@needs_workloads
def test_exponential_has_tasks_larger_than_the_machine() -> None:
    tasks = load_trace(WORKLOADS / "exponential.txt")
    big = sum(1 for t in tasks if t.peak[1] > 64000)
    assert big == 72
    r = simulate(tasks, CategoryConfig(mode=M.FIXED), PHUNG_MACHINE)
    assert r["unrunnable"] == big and r["completed"] == 2000 - big


@needs_workloads
def test_cli_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--workload", str(WORKLOADS / "uniform_small.txt"), "--strategy", "MAX-XPUT",
               "--machine", "16,64000,64000", "--seed", "3", "--steady-n", "5"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["strategy"] == "max_throughput" and out["steady_n"] == 5 and out["seed"] == 3
    assert set(out["resources"]) == {"cores", "memory", "disk"}
    for res in out["resources"].values():
        assert {"allocated", "used", "waste", "efficiency", "mean_task_efficiency"} <= set(res)
    assert out["tasks"] == 2000 and out["retries"] >= 0 and out["throughput"] > 0


def test_cli_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _trace(tmp_path, ["1 -- 4 -- 100 -- 0 -- 4000 -- 500 -- 0 -- 1", "oops"])
    assert main(["--workload", str(bad), "--strategy", "max"]) == 2
    assert "trace.txt:3" in capsys.readouterr().err
    assert main(["--workload", str(bad), "--strategy", "biggest"]) == 2
    assert "valid modes" in capsys.readouterr().err
    assert main(["--workload", str(bad), "--strategy", "max", "--machine", "16,64000"]) == 2
    assert main(["--strategy", "max"]) == 2
    assert main(["--workload", str(tmp_path / "missing.txt"), "--strategy", "max"]) == 2


def test_table_renders_markdown(tmp_path: Path) -> None:
    lines = [f"{i} -- 1 -- {1000 + 37 * (i % 11)} -- 0 -- 10 -- 60 -- 0 -- 1" for i in range(60)]
    _trace(tmp_path, lines)
    text, results = table(tmp_path, modes=(M.FIXED, M.GREEDY_BUCKETING, M.LADDER),
                          seeds=(0, 1), machine=Resources(4, 8000, 8000, 0))
    assert text.splitlines()[0] == "| workload | fixed | greedy_bucketing | ladder |"
    assert text.splitlines()[-1].startswith("| **mean** |")
    eff, retries = results["trace"]["fixed"]
    assert eff == pytest.approx(sum(1000 + 37 * (i % 11) for i in range(60)) / 60 / 8000)
    assert retries == 0


@needs_workloads
@pytest.mark.slow
def test_ladder_beats_the_best_work_queue_mode() -> None:
    """Our mode, one setting for all twelve workloads, against Work Queue's best mode at
    its default category-steady-n-tasks (25) and at Parsl's autolabel_window (1): higher
    mean memory efficiency, no more retries on average. (Two seeds here for the
    probabilistic modes to stay quick; docs/allocation.md has the ten-seed table.)"""
    wq = [m for m in M if m is not M.LADDER]
    _, res25 = table(WORKLOADS, modes=[*wq, M.LADDER], seeds=(0, 1), steady_n=25, jobs=2)
    _, res1 = table(WORKLOADS, modes=(M.MAX, M.MIN_WASTE, M.MAX_THROUGHPUT), steady_n=1,
                    jobs=2)

    def means(res: dict[str, dict[str, tuple[float, float]]], mode: str) -> tuple[float, float]:
        rows = [row[mode] for row in res.values()]
        return (sum(e for e, _ in rows) / len(rows), sum(n for _, n in rows) / len(rows))

    assert len(res25) == 12
    ours_eff, ours_retries = means(res25, M.LADDER.value)
    for res, modes in ((res25, wq), (res1, [M.MAX, M.MIN_WASTE, M.MAX_THROUGHPUT])):
        best = max(modes, key=lambda m: means(res, m.value)[0])
        best_eff, best_retries = means(res, best.value)
        assert ours_eff > best_eff + 0.005, (best, best_eff, ours_eff)
        assert ours_retries <= best_retries, (best, best_retries, ours_retries)
