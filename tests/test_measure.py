"""Per-task measurement and enforcement on real workers (cgroup and polling modes)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import packmule
from packmule import PythonTask, Task
from packmule.observe.events import read_events
from packmule.worker.monitor import CgroupRoot, kill_recorded

from .conftest import ClusterFactory, connected, wait_until
from .test_cluster import max_overlap

MODES = ["poll", pytest.param("cgroup", marks=pytest.mark.skipif(
    CgroupRoot.create("packmule-probe") is None,
    reason="no writable cgroup v1 memory controller (needs root)"))]


def hold(mb: int, seconds: float) -> int:
    """Hold ``mb`` MB of touched memory for ``seconds``."""
    block = bytearray(mb << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(seconds)
    return len(block) >> 20


def spike(mb: int, seconds: float, then: float) -> None:
    """A short spike of ``mb`` MB, then a quiet stretch."""
    hold(mb, seconds)
    time.sleep(then)


def test_peak_memory_is_measured_within_five_percent(cluster: ClusterFactory) -> None:
    with cluster(1) as mgr:
        # The first task in a fresh runner also pays for imports; warm it first.
        mgr.submit(PythonTask(hold, 1, 0.0)).result(timeout=60)
        task = PythonTask(hold, 300, 1.0)
        assert mgr.submit(task).result(timeout=60) == 300
        assert 300 * 0.95 <= task.measured["memory"] <= 300 * 1.05
        assert task.measured["wall_time"] >= 1.0
        assert task.measured["cores_avg"] < 1.5


def test_a_200_ms_spike_is_caught(cluster: ClusterFactory) -> None:
    with cluster(1) as mgr:
        mgr.submit(PythonTask(hold, 1, 0.0)).result(timeout=60)
        task = PythonTask(spike, 250, 0.2, 1.5)
        mgr.submit(task).result(timeout=60)
        assert task.measured["memory"] >= 250 * 0.95


def test_shell_task_child_memory_and_io(cluster: ClusterFactory) -> None:
    with cluster(1) as mgr:
        hog = f"{sys.executable} -c 'b = bytearray(150 << 20); b[::4096] = b\"x\" * len(b[::4096])'"
        task = Task(f"{hog}; echo ok")
        assert mgr.submit(task).result(timeout=60).stdout == "ok\n"
        assert task.measured["memory"] >= 140


@pytest.mark.parametrize("mode", MODES)
def test_explicit_memory_limit_kills_the_task_not_the_worker(
    cluster: ClusterFactory, mode: str
) -> None:
    with cluster(1, worker_args=["--enforce", mode]) as mgr:
        greedy = PythonTask(hold, 400, 3.0, resources={"cores": 1, "memory": 100})
        with pytest.raises(packmule.ResourceExhausted) as info:
            mgr.submit(greedy).result(timeout=60)
        err = info.value
        assert err.resource == "memory" and err.limit == 100 and err.measured >= 100
        assert "explicit limit of 100 MB" in str(err)
        # the worker and its other tasks carry on
        assert mgr.submit(PythonTask(hold, 50, 0.1)).result(timeout=60) == 50
        assert mgr.stats().workers == 1


def write_file(path: str, mb: int) -> int:
    """Leave ``mb`` MB of page cache behind (a file outside the sandbox)."""
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(b"\1" * (1 << 20))
    return mb


@pytest.mark.parametrize("mode", MODES)
def test_a_task_just_over_its_limit_is_killed(cluster: ClusterFactory, mode: str,
                                              tmp_path: Path) -> None:
    """8 MB over 100: the limit counts from what the task adds, whatever its runner
    holds or the cgroup was charged before (here 150 MB of page cache an earlier task
    left, which the kernel would reclaim to make room); 10 MB under it is fine."""
    with cluster(1, worker_args=["--enforce", mode]) as mgr:
        cache = PythonTask(write_file, str(tmp_path / "cache.bin"), 150,
                           resources={"cores": 1, "memory": 200})
        assert mgr.submit(cache).result(timeout=60) == 150
        over = PythonTask(hold, 108, 1.0, resources={"cores": 1, "memory": 100})
        with pytest.raises(packmule.ResourceExhausted):
            mgr.submit(over).result(timeout=60)
        under = PythonTask(hold, 90, 0.3, resources={"cores": 1, "memory": 100})
        assert mgr.submit(under).result(timeout=60) == 90


@pytest.mark.parametrize("mode", MODES)
def test_exceeding_a_filled_in_allocation_retries_at_the_max_and_succeeds(
    cluster: ClusterFactory, mode: str
) -> None:
    # 1 core of a 2-core, 2000 MB worker gets 1000 MB filled in; the task needs 1300
    with cluster(1, worker_args=["--enforce", mode]) as mgr:
        wait_until(connected(mgr, 1))
        task = PythonTask(hold, 1300, 1.5, resources={"cores": 1})
        assert mgr.submit(task).result(timeout=60) == 1300
        assert task.attempts == 2
        assert task.allocation is not None and task.allocation.memory == 2000


def test_disk_limit(cluster: ClusterFactory) -> None:
    with cluster(1) as mgr:
        task = Task("head -c 60000000 /dev/zero > big; sleep 5", resources={"cores": 1, "disk": 20})
        with pytest.raises(packmule.ResourceExhausted, match="disk"):
            mgr.submit(task).result(timeout=60)
        assert task.measured["disk"] >= 50


@pytest.mark.parametrize("mode", ["max_throughput", "ladder"])
def test_autolabel_learns_allocations_and_retries_a_task_that_outgrows_them(
    cluster: ClusterFactory, mode: str
) -> None:
    with cluster(1, cores=2, memory=2000) as mgr:
        wait_until(connected(mgr, 1))
        mgr.configure_category("learn", mode, steady_n=3)
        whole = packmule.Resources(2, 2000, 2000, 0)
        warmup = [PythonTask(hold, 100 + 20 * i, 0.1, category="learn") for i in range(4)]
        for t in warmup:
            mgr.submit(t).result(timeout=60)
        assert warmup[0].allocation == whole  # nothing known yet: a whole worker
        batch = [PythonTask(span_holding, 150, 0.5, category="learn") for _ in range(4)]
        spans = [f.result(timeout=60) for f in [mgr.submit(t) for t in batch]]
        learned = batch[-1].allocation
        assert learned is not None and learned.cores == 1 and learned.memory < 2000
        assert max_overlap(spans) == 2  # several per worker now
        big = PythonTask(hold, 900, 0.2, category="learn")
        assert mgr.submit(big).result(timeout=60) == 900
        # retried at the max (Work Queue's modes), or up the ladder a step at a time
        assert (big.attempts == 2 if mode != "ladder" else big.attempts >= 2)
        assert big.allocation is not None
        assert big.allocation.memory is not None and big.allocation.memory >= 900
        stats = mgr.category_stats()["learn"]
        assert stats["mode"] == mode
        def logged() -> bool:
            return any(e["event"] == "attempt_finished" and e["status"] == "exhausted"
                       and e["task"] == big.id for e in read_events(mgr.events_path))

        wait_until(logged)


def span_holding(mb: int, seconds: float) -> tuple[float, float]:
    start = time.time()
    hold(mb, seconds)
    return start, time.time()


def test_recorded_processes_are_killed_only_if_they_are_the_same_processes() -> None:
    """A recorded pid whose creation time no longer matches is another process now:
    it is left alone; the process recorded, and still there, is killed."""
    procs = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    try:
        created = {p.pid: psutil.Process(p.pid).create_time() for p in procs}
        reused = {procs[0].pid: created[procs[0].pid] - 10, procs[1].pid: created[procs[1].pid]}
        assert kill_recorded(reused) == 1
        assert procs[1].wait(timeout=5) == -9
        assert procs[0].poll() is None
        assert kill_recorded(created, keep=procs[0].pid) == 0  # kept; the other is gone
    finally:
        for p in procs:
            p.kill()
            p.wait()
