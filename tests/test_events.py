"""The event log, ``events.jsonl``: its writer and reader, and the events of a real run
with a killed worker, a task retried bigger and a cancel."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

import packmule
from packmule import PythonTask
from packmule.envpack import Pack
from packmule.manager.loop import Loop
from packmule.observe.events import (
    EventLog,
    EventLogError,
    read_events,
    read_header,
)
from packmule.resources import Resources

from .conftest import ClusterFactory, connected, wait_until
from .test_measure import hold


def first_run_waits(marker: str) -> str:
    """The first attempt marks that it started, then waits (to be lost with its worker);
    the next returns at once."""
    path = Path(marker)
    if not path.exists():
        path.write_text("started")
        time.sleep(60)
    return "done"


def nap(seconds: float) -> None:
    time.sleep(seconds)


def quick(x: int) -> int:
    return x


def _of(events: list[dict[str, Any]], task: int) -> list[tuple[Any, ...]]:
    """A task's events, each as (name, attempt, worker, and what matters for it)."""
    out: list[tuple[Any, ...]] = []
    for e in events:
        if e.get("task") != task:
            continue
        name = e["event"]
        if name == "task_submitted":
            out.append((name, e["category"], e["request"]))
        elif name == "attempt_dispatched":
            out.append((name, e["attempt"], e["worker"], e["prefetched"]))
        elif name == "attempt_finished":
            out.append((name, e["attempt"], e["worker"], e["status"], e["exceeded"]))
        elif name in ("task_lost", "task_retried"):
            out.append((name, e["attempt"], e.get("worker"), e["why"] if name ==
                        "task_retried" else None, e.get("exceeded")))
        elif name == "task_cancelled":
            out.append((name, e["why"]))
        elif name == "task_done":
            out.append((name, e["ok"], e["attempts"]))
        else:
            out.append((name,))
    return out


def _running_on(mgr: packmule.Manager, task: int) -> str | None:
    for t in mgr.status()["unfinished"]:
        if t["task"] == task and t["state"] == "running":
            return str(t["worker"])
    return None


def test_a_run_with_a_killed_worker_a_retry_bigger_and_a_cancel(
        cluster: ClusterFactory, tmp_path: Path) -> None:
    joined: list[dict[str, Any]] = []
    marker = tmp_path / "started"
    with cluster(2, cores=2, memory=600, on_worker_joined=joined.append) as mgr:
        wait_until(connected(mgr, 2))
        # 1. A worker killed while it runs a task: the task runs again elsewhere.
        lost = PythonTask(first_run_waits, str(marker), resources={"cores": 1})
        lost_future = mgr.submit(lost)
        wait_until(marker.exists)
        first = wait_until(lambda: _running_on(mgr, lost.id or 0))
        pid = next(w["pid"] for w in mgr.status()["workers"] if w["worker"] == first)
        os.kill(pid, signal.SIGKILL)
        assert lost_future.result(timeout=60) == "done"
        second = lost.worker
        assert second != first
        # 2. A task over its filled-in memory (300 MB of a 600 MB worker): retried bigger.
        big = PythonTask(hold, 400, 1.5, resources={"cores": 1})
        assert mgr.submit(big).result(timeout=60) == 400
        # 3. A running task cancelled.
        napping = PythonTask(nap, 60, resources={"cores": 1})
        napping_future = mgr.submit(napping)
        wait_until(lambda: _running_on(mgr, napping.id or 0))
        assert napping_future.cancel()
        wait_until(lambda: any(e["event"] == "task_cancelled"
                               for e in read_events(mgr.events_path)))
        assert mgr.stats().tasks_cancelled == 1
    events = list(read_events(mgr.events_path))
    header = read_header(mgr.events_path)
    assert header["address"] == mgr.address and header["run_dir"] == str(mgr.run_dir.resolve())
    assert header["packmule"] == packmule.__version__ and header["version"] == 1

    one_core = {"cores": 1}
    assert _of(events, lost.id or 0) == [
        ("task_submitted", "default", one_core),
        ("attempt_dispatched", 1, first, False),
        ("task_lost", 1, first, None, None),
        ("attempt_dispatched", 2, second, False),
        ("attempt_finished", 2, second, "success", []),
        ("task_done", True, 2),
    ]
    assert _of(events, big.id or 0) == [
        ("task_submitted", "default", one_core),
        ("attempt_dispatched", 1, second, False),
        ("attempt_finished", 1, second, "exhausted", ["memory"]),
        ("task_retried", 2, None, "exhausted", ["memory"]),
        ("attempt_dispatched", 2, second, False),
        ("attempt_finished", 2, second, "success", []),
        ("task_done", True, 2),
    ]
    assert _of(events, napping.id or 0) == [
        ("task_submitted", "default", one_core),
        ("attempt_dispatched", 1, second, False),
        ("task_cancelled", "user"),
    ]
    allocations = [e["allocation"] for e in events
                   if e["event"] == "attempt_dispatched" and e["task"] == big.id]
    assert [(a["cores"], a["memory"]) for a in allocations] == [(1, 300), (1, 600)]
    finished = [e for e in events if e["event"] == "attempt_finished" and e["task"] == big.id]
    assert finished[0]["measured"]["memory"] >= 300
    assert all(e["started"] <= e["t"] and e["wall_time"] >= 0 for e in finished)
    assert finished[1]["wall_time"] >= 1.5

    # The workers: two joined, the killed one left with its task requeued.
    workers = [(e["event"], e["worker"]) + ((e["requeued"], e["lost"]) if "requeued" in e
                                            else ())
               for e in events if e["event"].startswith("worker_")]
    assert workers[:2] == [("worker_joined", first), ("worker_joined", second)] or \
        workers[:2] == [("worker_joined", second), ("worker_joined", first)]
    assert workers[2] == ("worker_left", first, 1, True)
    assert workers[3:] == [("worker_left", second, 0, False)]  # told to exit at shutdown
    left = [e for e in events if e["event"] == "worker_left"]
    assert not left[0]["why"].startswith("worker left")  # closed, or silent past its lease
    assert left[1]["why"].startswith("worker left: manager said exit") or \
        left[1]["why"] == "manager stopped"  # (its goodbye came too late)
    joins = [e for e in events if e["event"] == "worker_joined"]
    assert all(e["resources"] == {"cores": 2, "memory": 600, "disk": 2000, "gpus": 0}
               and e["pid"] > 0 and e["host"] for e in joins)
    assert sorted(j["worker"] for j in joined) == sorted(e["worker"] for e in joins)
    assert events[-1]["event"] == "manager_stopped"
    assert (events[-1]["why"], events[-1]["tasks"], events[-1]["failed"]) == ("shutdown", 3, 0)
    times = [e["t"] for e in events]
    assert all(b >= a - 0.01 for a, b in itertools.pairwise(times))


def test_a_learning_category_logs_its_allocation_changing(cluster: ClusterFactory) -> None:
    with cluster(1, cores=2, memory=2000) as mgr:
        mgr.configure_category("learn", "max_throughput", steady_n=2)
        for i in range(4):
            assert mgr.submit(PythonTask(quick, i, category="learn")).result(timeout=60) == i
        mgr.submit(PythonTask(quick, 9, category="other")).result(timeout=60)
    events = list(read_events(mgr.events_path))
    changed = [e for e in events if e["event"] == "category_changed"]
    assert changed and {e["category"] for e in changed} == {"learn"}  # not FIXED "other"
    assert changed[0]["old"] is None and changed[0]["why"] == "learned from 3 tasks"
    assert 1 <= changed[0]["new"]["cores"] <= 2 and changed[0]["new"]["memory"] < 2000
    # it follows the third task's result (steady after two, learned from on the third)
    third = [e for e in events if e["event"] == "attempt_finished"][2]
    assert events.index(changed[0]) == events.index(third) + 1
    done = [e for e in events if e["event"] == "task_done"]
    assert len(done) == 5 and all(e["ok"] for e in done)


def test_failures_name_the_error_and_its_first_line(cluster: ClusterFactory) -> None:
    def fails() -> None:
        raise ValueError("no such thing\nand more")

    with cluster(1) as mgr:
        future = mgr.submit(PythonTask(fails))
        with pytest.raises(ValueError):
            future.result(timeout=60)
        slow = mgr.submit(packmule.Task("sleep 5", timeout=0.2))
        with pytest.raises(packmule.TaskTimeout):
            slow.result(timeout=60)
        failed = mgr.status()["failed"]
        mgr._pack_built(Pack("d" * 64, Path("/p/pack.tar"), "s" * 64, 1234), 2.5)
    events = list(read_events(mgr.events_path))
    done = [e for e in events if e["event"] == "task_done"]
    assert [(e["ok"], e["error"]) for e in done] == [(False, "ValueError"),
                                                      (False, "TaskTimeout")]
    assert done[0]["message"] == "no such thing"
    assert done[1]["message"].startswith("task 2 ran past its 0.2 s limit")
    assert [(f["error"], f["message"]) for f in failed] == [
        ("ValueError", "no such thing"), ("TaskTimeout", done[1]["message"])]
    built = [e for e in events if e["event"] == "pack_built"]
    assert built == [{"t": built[0]["t"], "event": "pack_built", "pack": "d" * 64,
                      "path": "/p/pack.tar", "size": 1234, "seconds": 2.5}]
    assert events[-1]["failed"] == 2


# ---------------------------------------------------------------- the writer and reader
def _log(path: Path) -> EventLog:
    return EventLog(path, {"packmule": "0", "t": 1.0, "address": "h:1", "host": "h", "pid": 1,
                           "run_dir": str(path.parent)})


def test_every_kind_of_event_written_reads_back_as_json(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    ev = _log(path)
    r = Resources(cores=1, memory=500)
    ev.task_submitted(1, 'a "quoted"\ncategory', "f\\x", r, 2.5)
    ev.attempt_dispatched(1, 1, "w1", Resources(1, 500, 10, 0), True)
    ev.attempt_finished(1, 1, "w1", "exhausted", 0.25, {"memory": 600.5, "odd\"key": 1e30,
                                                         "nan": float("nan")}, ["memory"], -9)
    ev.task_done(1, True, 1)
    ev.task_done(2, False, 3, "ValueError", "bad \"thing\"")
    ev.write("worker_left", worker="w1", host="h", why="gone", requeued=0)
    ev.close()
    lines = path.read_text().splitlines()
    assert all(json.loads(line) for line in lines)
    events = list(read_events(path))
    assert [e["event"] for e in events] == ["task_submitted", "attempt_dispatched",
                                             "attempt_finished", "task_done", "task_done",
                                             "worker_left"]
    assert events[0]["category"] == 'a "quoted"\ncategory' and events[0]["label"] == "f\\x"
    assert events[0]["request"] == {"cores": 1, "memory": 500} and events[0]["priority"] == 2.5
    assert events[1]["prefetched"] is True
    assert events[1]["allocation"] == {"cores": 1, "memory": 500, "disk": 10, "gpus": 0}
    f = events[2]
    assert f["measured"] == {"memory": 600.5, "odd\"key": 1e30, "nan": None}
    assert f["exceeded"] == ["memory"] and f["exit_code"] == -9
    assert f["started"] == pytest.approx(f["t"] - 0.25, abs=1e-5)
    assert events[4] == {"t": events[4]["t"], "event": "task_done", "task": 2, "ok": False,
                         "attempts": 3, "error": "ValueError", "message": 'bad "thing"'}


def test_the_reader_skips_a_last_line_still_being_written(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    ev = _log(path)
    ev.task_done(1, True, 1)
    ev.close()
    with path.open("a") as f:
        f.write('{"t": 1.0, "event": "task_do')
    assert [e["task"] for e in read_events(path)] == [1]
    with path.open("a") as f:
        f.write('ne", "task": 2}\n')
    assert [e["task"] for e in read_events(path)] == [1, 2]
    with path.open("a") as f:
        f.write('garbage\n{"t": 3.0, "event": "task_done", "task": 3}\n')
    with pytest.raises(EventLogError, match="line 4"):
        list(read_events(path))


def test_the_reader_checks_the_header(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"task": 1}\n')
    with pytest.raises(EventLogError, match="not a packmule event log"):
        list(read_events(path))
    path.write_text("not json\n")
    with pytest.raises(EventLogError, match="not JSON"):
        read_header(path)
    path.write_text('{"format": "packmule-events", "version": 99, "packmule": "9.0"}\n')
    with pytest.raises(EventLogError, match=r"version 99.*reads version 1.*9\.0"):
        list(read_events(path))
    with pytest.raises(EventLogError):
        read_header(path)


def test_a_log_that_cannot_be_written_is_said_once_and_never_raises(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ev = _log(tmp_path / "missing" / "events.jsonl")
    for i in range(3):
        ev.task_done(i, True, 1)
        ev.write("worker_left", worker="w")
    ev.flush()
    ev.close()
    said = [r for r in caplog.records if "cannot write the event log" in r.getMessage()]
    assert len(said) == 1


def test_after_a_write_fails_the_loop_stops_making_events(tmp_path: Path) -> None:
    ev = _log(tmp_path / "events.jsonl")
    assert ev._file is not None
    loop = cast(Loop, SimpleNamespace(events=ev))
    Loop._events_failed(loop)
    assert loop.events is ev  # it writes
    ev._file.close()  # (the next write fails)
    ev.task_done(1, True, 1)
    ev.flush()
    Loop._events_failed(loop)
    assert loop.events is None


def test_a_manager_without_records_writes_no_event_log_nor_status_file(
        cluster: ClusterFactory) -> None:
    with cluster(1, observe=False) as mgr:
        assert mgr.submit(PythonTask(quick, 1)).result(timeout=60) == 1
        assert mgr.status()["tasks"]["done"] == 1
    assert not mgr.events_path.exists() and not mgr.status_path.exists()
