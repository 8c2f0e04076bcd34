"""The status file, ``status.json``, and ``Manager.status()``: a live run's workers,
categories and waiting reasons; atomic rewrites; the snapshot's cost at scale."""

from __future__ import annotations

import collections
import json
import logging
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

import packmule
from packmule import PythonTask
from packmule.core.scheduler import ManagerState
from packmule.core.states import Outcome
from packmule.envpack import Pack
from packmule.manager import ipc
from packmule.manager.connections import WorkerConn
from packmule.manager.loop import Loop
from packmule.manager.transfers import Transfers
from packmule.observe.events import read_events
from packmule.observe.status import (
    RUNNING_LIMIT,
    UNFINISHED_LIMIT,
    WAITING_LIMIT,
    StatusFile,
    snapshot,
    worker_command,
)
from packmule.protocol import messages as m
from packmule.resources import Resources

from .conftest import FAST, ClusterFactory, connected, wait_until


def nap(seconds: float) -> None:
    time.sleep(seconds)


def fails() -> None:
    raise ValueError("it went wrong\nin detail")


def quick() -> int:
    return 1


class Reader:
    """Reads the status file over and over in a thread; every read must be whole JSON."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reads = 0
        self.bad: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                continue
            try:
                json.loads(text)
            except ValueError:
                self.bad.append(text[:200])
            self.reads += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def test_a_live_run_shows_its_workers_categories_and_why_tasks_wait(
        cluster: ClusterFactory) -> None:
    with cluster(2, cores=2, memory=2000, disk=2000) as mgr:
        reader = Reader(mgr.status_path)
        try:
            wait_until(connected(mgr, 2))
            assert mgr.submit(PythonTask(quick, category="b")).result(timeout=60) == 1
            with pytest.raises(ValueError):
                mgr.submit(PythonTask(fails, category="b")).result(timeout=60)
            naps = [mgr.submit(PythonTask(nap, 60, resources={"cores": 1}, category="a"))
                    for _ in range(6)]
            huge = PythonTask(nap, 1, resources={"cores": 8}, category="a")
            mgr.submit(huge)
            wait_until(lambda: mgr.status()["tasks"]["running"] == 4)
            status = mgr.status()
            assert status["state"] == "running" and status["format"] == "packmule-status"
            assert status["address"] == mgr.address
            assert status["tasks"] == {"waiting": 3, "running": 4, "done": 1, "failed": 1,
                                       "cancelled": 0}
            size = {"cores": 2, "memory": 2000, "disk": 2000, "gpus": 0}
            assert status["resources"]["total"] == {"cores": 4, "memory": 4000, "disk": 4000,
                                                    "gpus": 0}
            assert status["resources"]["committed"]["cores"] == 4
            workers = status["workers"]
            assert len(workers) == 2
            assert {w["host"] for w in workers} == {socket.gethostname()}
            assert all(w["resources"] == size and w["tasks"] == 2 for w in workers)
            assert all(w["committed"]["cores"] == 2 for w in workers)
            assert all(w["joined"] <= w["last_heard"] <= time.time() + 1 for w in workers)
            assert {w["pid"] for w in workers} == {
                p.pid for p in mgr.worker_processes}  # type: ignore[attr-defined]
            cats = {c["name"]: c for c in status["categories"]}
            a, b = cats["a"], cats["b"]
            assert (a["waiting"], a["running"], a["done"], a["failed"]) == (3, 4, 0, 0)
            assert (b["waiting"], b["running"], b["done"], b["failed"]) == (0, 0, 1, 1)
            assert a["mode"] == "fixed" and a["allocation"] is None and a["peak"] is None
            assert b["peak"] is not None and b["peak"]["memory"] >= 0
            unfinished = status["unfinished"]
            assert [t["state"] for t in unfinished] == ["running"] * 4 + ["waiting"] * 3
            assert all(t["worker"] in {w["worker"] for w in workers} and t["reason"] is None
                       and t["attempt"] == 1 for t in unfinished[:4])
            reasons = {t["task"]: t["reason"] for t in unfinished[4:]}
            assert reasons.pop(huge.id) == "no worker fits"
            assert list(reasons.values()) == ["waiting for room"] * 2
            assert status["waiting_reasons"] == {
                "no workers": 0, "no worker fits": 1, "requeued after a lost worker": 0,
                "waiting for room": 2}
            assert all(t["label"] == "nap" and t["category"] == "a" for t in unfinished)
            assert status["unfinished_omitted"] == 0
            assert [(f["category"], f["error"], f["message"], f["attempts"])
                    for f in status["failed"]] == [("b", "ValueError", "it went wrong", 1)]
            # The file follows within about a second.
            wait_until(lambda: json.loads(mgr.status_path.read_text())["tasks"]
                       == status["tasks"], timeout=10)
            assert not any(f.done() for f in naps)
        finally:
            reader.stop()
    assert reader.reads > 10 and reader.bad == []
    final = json.loads(mgr.status_path.read_text())
    assert final["state"] == "stopped"
    assert final["tasks"] == {"waiting": 0, "running": 0, "done": 1, "failed": 1,
                              "cancelled": 7}
    assert final["workers"] == [] and final["unfinished"] == []
    zero = {"cores": 0, "memory": 0, "disk": 0, "gpus": 0}
    assert final["resources"] == {"committed": zero, "total": zero}


def test_workers_left_running_at_shutdown_are_not_listed_as_connected(
        cluster: ClusterFactory) -> None:
    with cluster(1, shutdown_workers=False) as mgr:
        wait_until(connected(mgr, 1))
        assert mgr.submit(PythonTask(quick)).result(timeout=60) == 1
        assert len(mgr.status()["workers"]) == 1
    final = json.loads(mgr.status_path.read_text())
    assert final["state"] == "stopped" and final["workers"] == []
    assert final["resources"]["total"] == {"cores": 0, "memory": 0, "disk": 0, "gpus": 0}
    left = [e for e in read_events(mgr.events_path) if e["event"] == "worker_left"]
    assert [(e["why"], e["lost"], e["requeued"]) for e in left] == [
        ("manager stopped", False, 0)]


def test_a_manager_without_workers_says_so_in_its_status_and_its_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="packmule")
    with packmule.Manager(run_dir=tmp_path / "run", **FAST) as mgr:
        mgr.submit(PythonTask(quick))
        status = wait_until(lambda: mgr.status())
        assert [t["reason"] for t in status["unfinished"]] == ["no workers"]
        assert status["workers"] == [] and status["tasks"]["waiting"] == 1
        assert status["waiting_reasons"]["no workers"] == 1
        brief = mgr.status(brief=True)
        assert set(brief) == {"format", "version", "packmule", "address", "run_dir", "pid",
                              "started", "updated", "state", "tasks", "resources",
                              "categories"}
        assert brief["tasks"] == status["tasks"]
        assert brief["categories"] == status["categories"]
        said = wait_until(lambda: [r.getMessage() for r in caplog.records
                                   if "no worker has connected" in r.getMessage()], timeout=20)
    assert len(said) == 1
    assert mgr.address in said[0] and str(mgr.password_file) in said[0]
    assert worker_command(mgr.address, mgr.password_file) in said[0]
    assert worker_command(mgr.address, mgr.password_file) == \
        f"packmule worker {mgr.address} --password-file {mgr.password_file}"
    assert worker_command("h:1", None) == "PACKMULE_PASSWORD=<the secret> packmule worker h:1"


# ---------------------------------------------------------------- the snapshot, without I/O
def _loop(core: ManagerState, tmp_path: Path, jobs: dict[int, ipc.Submit] | None = None,
          transfers: Transfers | None = None) -> Loop:
    conns = {wid: WorkerConn(b"x", f"host-{wid}", 1, w.total, joined=time.time())
             for wid, w in core.workers.items()}
    if jobs is None:
        jobs = {t: _job(t) for t in core.tasks}
    fake = SimpleNamespace(
        core=core, net=SimpleNamespace(workers=conns), transfers=transfers or Transfers(),
        jobs=jobs, counters=collections.Counter(), failures=collections.deque(),
        address="h:1", cfg=SimpleNamespace(run_dir=tmp_path), started=time.time())
    return cast(Loop, fake)


def _job(tid: int, pack: Pack | None = None) -> ipc.Submit:
    return ipc.Submit(tid, "python", b"", "", Resources(), "default", 0.0, 0, None, (), (),
                      0.0, pack, f"job{tid}")


def _reasons(loop: Loop) -> dict[int, Any]:
    return {t["task"]: t["reason"] for t in snapshot(loop)["unfinished"]}


def test_waiting_reasons(tmp_path: Path) -> None:
    core = ManagerState(validate=True)
    two = Resources(2, 2000, 2000, 0)
    for tid in (1, 2, 3):
        core.submit(tid, Resources(cores=2), 0.0)
    core.submit(4, Resources(cores=4), 0.0)
    assert set(_reasons(_loop(core, tmp_path)).values()) == {"no workers"}
    core.add_worker("w1", two, 0.0)
    core.add_worker("w2", two, 0.0)
    assert _reasons(_loop(core, tmp_path))[4] == "no worker fits"  # (before a pass, too)
    placed = {a.task_id: a.worker for a in core.schedule(1.0)}
    assert sorted(placed) == [1, 2]
    core.remove_worker(placed[1], 2.0, "killed")
    core.schedule(3.0)
    reasons = _reasons(_loop(core, tmp_path))
    assert reasons == {2: None, 1: "requeued after a lost worker", 3: "waiting for room",
                       4: "no worker fits"}
    core.add_worker("w3", Resources(4, 4000, 4000, 0), 4.0)
    core.schedule(5.0)
    assert 4 not in _reasons(_loop(core, tmp_path)) or \
        _reasons(_loop(core, tmp_path))[4] in (None, "waiting for room")


def test_a_task_whose_worker_is_still_receiving_its_pack_says_so(tmp_path: Path) -> None:
    core = ManagerState(validate=True)
    core.add_worker("w1", Resources(2, 2000, 2000, 0), 0.0)
    tar = tmp_path / "pack.tar"
    tar.write_bytes(b"x" * 1000)
    pack = Pack("d" * 64, tar, "s" * 64, 1000)
    transfers = Transfers()
    transfers.joined("w1", [])
    core.submit(1, Resources(cores=1), 0.0)
    core.submit(2, Resources(cores=1), 0.0)
    core.schedule(1.0)
    jobs = {1: _job(1, pack), 2: _job(2)}
    assert transfers.send_pack("w1", pack, lambda frames: True)
    loop = _loop(core, tmp_path, jobs, transfers)
    assert _reasons(loop) == {1: "waiting for a pack", 2: None}
    transfers.pack_state("w1", "h", m.PackState(pack.digest, True, "", False, 1))
    assert _reasons(loop) == {1: None, 2: None}


def test_the_snapshot_of_a_large_manager_is_bounded_and_quick(tmp_path: Path) -> None:
    core = ManagerState()
    size = Resources(16, 64000, 64000, 0)
    for i in range(10_000):
        core.add_worker(f"w{i}", size, 0.0)
    n = 30_000
    for tid in range(1, n + 1):
        core.submit(tid, Resources(cores=1), 0.0, category="c" if tid % 2 else "d")
    placed = core.schedule(1.0, limit=5000)
    jobs = {tid: _job(tid) for tid in range(1, n + 1)}
    loop = _loop(core, tmp_path, jobs)
    start = time.perf_counter()
    snap = snapshot(loop)
    took = time.perf_counter() - start
    data = json.dumps(snap)
    assert len(snap["workers"]) == 10_000
    assert len(snap["unfinished"]) == UNFINISHED_LIMIT
    assert snap["unfinished_omitted"] == n - UNFINISHED_LIMIT
    assert snap["unfinished"][0]["state"] == "running"
    assert snap["tasks"]["running"] == len(placed) == 5000
    cats = {c["name"]: c for c in snap["categories"]}
    assert cats["c"]["waiting"] + cats["d"]["waiting"] == n - 5000
    assert cats["c"]["running"] + cats["d"]["running"] == 5000
    assert took < 2.0, took  # (about 0.1 s on a quiet core)
    assert len(data) < 5_000_000


def test_with_many_running_every_waiting_reason_still_shows(tmp_path: Path) -> None:
    core = ManagerState()
    size = Resources(200, 200_000, 200_000, 0)
    for i in range(6):
        core.add_worker(f"w{i}", size, 0.0)
    one = Resources(cores=1)
    for tid in range(1, 1201):
        core.submit(tid, one, 0.0)
    assert len(core.schedule(1.0)) == 1200
    for tid in range(1201, 4201):
        core.submit(tid, one, 2.0)
    core.submit(5000, Resources(cores=500), 2.0)
    core.submit(5001, Resources(cores=500), 2.0)
    requeued = core.remove_worker("w0", 3.0, "killed")
    assert len(requeued) == 200
    core.schedule(4.0)
    snap = snapshot(_loop(core, tmp_path))
    assert snap["tasks"] == {"waiting": 3202, "running": 1000, "done": 0, "failed": 0,
                             "cancelled": 0}
    assert snap["waiting_reasons"] == {"no workers": 0, "no worker fits": 2,
                                       "requeued after a lost worker": 200,
                                       "waiting for room": 3000}
    unfinished = snap["unfinished"]
    states = collections.Counter(t["state"] for t in unfinished)
    assert states == {"running": RUNNING_LIMIT, "waiting": WAITING_LIMIT}
    assert snap["unfinished_omitted"] == 4202 - UNFINISHED_LIMIT
    waiting = [t for t in unfinished if t["state"] == "waiting"]
    # The rarest reasons first, each its fair share of what is left:
    assert collections.Counter(t["reason"] for t in waiting) == {
        "no worker fits": 2, "requeued after a lost worker": 200, "waiting for room": 298}
    assert {t["task"] for t in waiting if t["reason"] == "no worker fits"} == {5000, 5001}
    assert {t["task"] for t in waiting if t["reason"] == "requeued after a lost worker"} \
        == {tid for tid, _ in requeued}
    assert [t["task"] for t in waiting] == sorted(t["task"] for t in waiting)
    # Without the lists: the counts only.
    brief = snapshot(_loop(core, tmp_path), brief=True)
    assert "unfinished" not in brief and "workers" not in brief and "failed" not in brief
    assert brief["tasks"] == snap["tasks"]


def test_tasks_sent_ahead_say_they_wait_for_room(tmp_path: Path) -> None:
    core = ManagerState(validate=True)
    core.add_worker("w1", Resources(2, 2000, 2000, 0), 0.0)
    one = Resources(cores=1)
    done = 0
    for tid in range(1, 6):  # five short tasks: the category's tasks are short
        core.submit(tid, one, 0.0, category="s")
    while done < 5:
        for a in core.schedule(1.0):
            core.result(a.task_id, a.attempt, Outcome.SUCCEEDED, 1.0, a.worker,
                        measured=Resources(1, 10, 0, 0), wall_time=0.01)
            done += 1
    for tid in range(6, 11):
        core.submit(tid, one, 2.0, category="s")
    placed = core.schedule(3.0)
    assert [a.prefetched for a in placed] == [False, False, True, True]
    jobs = {tid: _job(tid) for tid in range(6, 11)}
    assert _reasons(_loop(core, tmp_path, jobs)) == {
        6: None, 7: None, 8: "sent ahead, waits for room", 9: "sent ahead, waits for room",
        10: "waiting for room"}


def test_a_snapshot_that_fails_never_stops_the_manager(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise RuntimeError("a bug")

    loop = _loop(ManagerState(), tmp_path)
    fake = cast(Any, loop)
    fake.core = SimpleNamespace(counts=broken)
    fake.status_file = StatusFile(tmp_path / "status.json")
    fake._snapshot_failed, fake._status_dirty, fake._status_at = False, True, 0.0
    Loop._write_status(loop, 0.0)
    Loop._write_status(loop, 5.0)
    said = [r for r in caplog.records if "cannot make the status file's snapshot" in
            r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is not None  # once, with the traceback
    assert not (tmp_path / "status.json").exists()  # not rewritten while it runs
    Loop._write_status(loop, 10.0, "stopped")
    final = json.loads((tmp_path / "status.json").read_text())
    assert final["state"] == "stopped" and final["address"] == "h:1"
    assert set(final) == {"format", "version", "packmule", "address", "run_dir", "pid",
                          "started", "updated", "state"}
