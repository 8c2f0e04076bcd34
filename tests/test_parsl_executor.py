"""packmule.WorkQueueExecutor through real Parsl, with workers started by LocalProvider."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import parsl
import pytest
from parsl import bash_app, python_app
from parsl.config import Config
from parsl.data_provider.files import File
from parsl.executors.errors import InvalidResourceSpecification
from parsl.providers import LocalProvider

from packmule import WorkQueueExecutor

from .conftest import wait_until
from .test_cluster import max_overlap

WORKER = "--cores 2 --memory 4000 --disk 4000"


@contextmanager
def loaded(tmp_path: Path, monitoring: Any = None, **executor: Any) -> Iterator[WorkQueueExecutor]:
    executor.setdefault("worker_options", WORKER)
    ex = WorkQueueExecutor(**executor)
    config = Config(executors=[ex], run_dir=str(tmp_path / "runinfo"), strategy_period=0.1,
                    monitoring=monitoring)
    with parsl.load(config):
        yield ex


# --- the spec's own examples (docs: "Heterogeneous Resources") ------------------------------
@python_app
def compute(x: int, parsl_resource_specification: dict[str, int] = {  # noqa: B006
        "cores": 1, "memory": 1000, "disk": 1000}) -> tuple[int, float, float]:
    import time

    start = time.time()
    time.sleep(0.4)
    return x * 2, start, time.time()


def test_spec_examples_pack_two_one_core_tasks_per_two_core_worker(tmp_path: Path) -> None:
    with loaded(tmp_path):
        futs = [compute(i) for i in range(4)]
        spec = {"cores": 1, "memory": 500, "disk": 500}
        futs += [compute(i, parsl_resource_specification=spec) for i in range(4, 6)]
        results = [f.result(timeout=60) for f in futs]
        assert [r[0] for r in results] == [i * 2 for i in range(6)]
        assert max_overlap([(s, e) for _, s, e in results]) == 2


def test_two_core_task_runs_alone(tmp_path: Path) -> None:
    with loaded(tmp_path):
        futs = [compute(1), compute(2, parsl_resource_specification={"cores": 2}), compute(3)]
        (_, s1, e1), (_, s2, e2), (_, s3, e3) = (f.result(timeout=60) for f in futs)
        for s, e in ((s1, e1), (s3, e3)):
            assert e <= s2 or s >= e2


def test_bad_spec_fails_only_that_task(tmp_path: Path) -> None:
    with loaded(tmp_path):
        bad = compute(1, parsl_resource_specification={"cpus": 1, "memory": 1})
        typed = compute(1, parsl_resource_specification={"cores": "two"})
        good = compute(2)
        with pytest.raises(InvalidResourceSpecification, match="cpus"):
            bad.result(timeout=60)
        with pytest.raises(InvalidResourceSpecification, match="cores"):
            typed.result(timeout=60)
        assert good.result(timeout=60)[0] == 4


@python_app
def fail(kind: str) -> None:
    if kind == "key":
        raise KeyError("missing thing")
    raise ValueError(kind)


def test_app_exceptions_keep_their_type(tmp_path: Path) -> None:
    with loaded(tmp_path):
        with pytest.raises(KeyError, match="missing thing"):
            fail("key").result(timeout=60)
        with pytest.raises(ValueError, match="other"):
            fail("other").result(timeout=60)


@python_app
def read_env(name: str) -> str | None:
    import os

    return os.environ.get(name)


def test_env_sets_task_environment_and_block_id(tmp_path: Path) -> None:
    with loaded(tmp_path, env={"MY_FLAG": "yes"}):
        assert read_env("MY_FLAG").result(timeout=60) == "yes"
        assert read_env("PARSL_WORKER_BLOCK_ID").result(timeout=60) == "0"


@bash_app
def shout(word: str, inputs: list[File] = (), outputs: list[File] = (),  # type: ignore[assignment]
          stdout: str | None = None) -> str:
    return f"tr a-z A-Z < {inputs[0]} > {outputs[0]}; echo {word}; pwd"


def test_files_and_stdout_are_staged_without_a_shared_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("in.txt").write_text("hello")
    with loaded(tmp_path):
        fut = shout("done", inputs=[File("in.txt")], outputs=[File("out.txt")],
                    stdout="shout.log")
        assert fut.result(timeout=60) == 0
        assert Path("out.txt").read_text() == "HELLO"
        log = Path("shout.log").read_text().split()
        assert log[0] == "done"
        assert log[1] != str(tmp_path)  # it ran in a sandbox, not here


def test_shared_fs_uses_files_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("in.txt").write_text("abc")
    with loaded(tmp_path, shared_fs=True):
        # in place: the relative paths resolve in the sandbox, where nothing was staged
        assert shout("x", inputs=[File("in.txt")], outputs=[File("o.txt")]).exception(60)
        absolute = [File(str(tmp_path / "in.txt"))], [File(str(tmp_path / "o.txt"))]
        assert shout("x", inputs=absolute[0], outputs=absolute[1]).result(timeout=60) == 0
        assert (tmp_path / "o.txt").read_text() == "ABC"


def test_constructor_fixes_the_originals_traps(tmp_path: Path) -> None:
    a, b = WorkQueueExecutor(), WorkQueueExecutor()
    assert a.provider is not b.provider
    assert WorkQueueExecutor(max_retries=None).max_retries is None
    # every Parsl parameter is accepted, and repr() works as Parsl's tests require
    WorkQueueExecutor(project_name="p", use_cache=True, source=True, coprocess=True,
                      full_debug=False, function_dir=str(tmp_path), extra_pkgs=["numpy"],
                      autolabel=True, autolabel_window=3, autocategory=False,
                      scaling_cores_per_worker=2, init_command="true", storage_access=[])
    assert "WorkQueueExecutor(" in repr(a)
    assert WorkQueueExecutor(pack=True, extra_pkgs=["numpy"]).pack  # see test_pack_cluster


def test_port_in_use_fails_at_load(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        ex = WorkQueueExecutor(port=port)
        with pytest.raises(Exception, match=f"cannot listen on .*:{port}"):
            parsl.load(Config(executors=[ex], run_dir=str(tmp_path / "r")))
        parsl.clear()


@python_app
def nap(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def test_a_crashed_manager_fails_the_apps_with_manager_crashed(tmp_path: Path) -> None:
    import signal

    from packmule import ManagerCrashed

    with loaded(tmp_path) as ex:
        assert nap(0).result(timeout=60) == 0  # a worker is up
        running = nap(60)
        assert ex.manager is not None
        manager = ex.manager
        wait_until(lambda: manager.stats().tasks["running"] >= 1, timeout=30)
        os.kill(manager.loop_pid, signal.SIGKILL)
        with pytest.raises(ManagerCrashed, match=r"killed by SIGKILL.*manager\.log"):
            running.result(timeout=10)
        with pytest.raises(ManagerCrashed, match="crashed"):
            nap(0).result(timeout=10)  # a new app fails at once, with the same cause


def test_worker_that_cannot_start_fails_the_block_with_its_stderr(tmp_path: Path) -> None:
    with loaded(tmp_path, worker_executable="/nonexistent/packmule-worker"):
        fut = compute(1)
        with pytest.raises(Exception, match="nonexistent") as info:
            fut.result(timeout=60)
        assert "BadStateException" in type(info.value).__name__ or "block" in str(info.value)


def test_outstanding_counts_cores_not_tasks(tmp_path: Path) -> None:
    with loaded(tmp_path, provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0)) as ex:
        for _ in range(10):
            compute(1)
        compute(1, parsl_resource_specification={"cores": 2})
        wait_until(lambda: ex.outstanding() >= 12, timeout=10)
        assert ex.outstanding() == 12
        # a 2-core local node: twelve cores of work is six blocks' worth, not eleven
        assert ex.workers_per_node == os.cpu_count()
        for fut in list(ex.tasks.values()):
            fut.cancel()


def test_monitoring_gets_rows_without_a_shared_filesystem(tmp_path: Path) -> None:
    from parsl.monitoring import MonitoringHub

    db = tmp_path / "monitoring.db"
    hub = MonitoringHub(logging_endpoint=f"sqlite:///{db}", resource_monitoring_interval=0.2)
    with loaded(tmp_path, monitoring=hub):
        assert [compute(i).result(timeout=60)[0] for i in range(3)] == [0, 2, 4]
    con = sqlite3.connect(db)
    try:
        tries = con.execute("select count(*) from try where task_try_time_running is not null")
        assert tries.fetchone()[0] == 3
        assert con.execute("select count(*) from block").fetchone()[0] >= 1
        assert con.execute("select count(*) from resource").fetchone()[0] >= 3
    finally:
        con.close()


@python_app
def allocate(mb: int) -> int:
    block = bytearray(mb << 20)
    block[::4096] = b"x" * len(block[::4096])
    return len(block) >> 20


def test_autolabel_learns_per_app_and_reports_measurements(tmp_path: Path) -> None:
    with loaded(tmp_path, autolabel=True) as ex:
        first = allocate(50)
        assert first.result(timeout=60) == 50
        exec_fu = first.task_record["exec_fu"]
        assert exec_fu.resources_allocated.memory == 1000  # nothing learned yet: the probe
        assert exec_fu.resources_measured["memory"] >= 45
        for _ in range(3):
            allocate(50).result(timeout=60)
        later = allocate(50)
        later.result(timeout=60)
        assert later.task_record["exec_fu"].resources_allocated.memory < 1000
        assert ex.manager is not None
        stats = ex.manager.category_stats()
        assert stats["allocate"]["mode"] == "auto"  # autocategory: the app's name


def test_autolabel_max_throughput_keeps_work_queue_behaviour(tmp_path: Path) -> None:
    with loaded(tmp_path, autolabel=True, autolabel_window=2,
                autolabel_algorithm="max_throughput") as ex:
        first = allocate(50)
        assert first.result(timeout=60) == 50
        # nothing learned yet: the whole worker, as Work Queue
        assert first.task_record["exec_fu"].resources_allocated.memory == 4000
        for _ in range(3):
            allocate(50).result(timeout=60)
        later = allocate(50)
        later.result(timeout=60)
        assert later.task_record["exec_fu"].resources_allocated.memory < 4000
        assert ex.manager is not None
        assert ex.manager.category_stats()["allocate"]["mode"] == "max_throughput"


def test_bad_autolabel_algorithm_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown allocation mode 'fastest'"):
        WorkQueueExecutor(autolabel=True, autolabel_algorithm="fastest")


def test_monitoring_node_table_has_a_row_per_worker(tmp_path: Path) -> None:
    import socket

    from parsl.monitoring import MonitoringHub

    db = tmp_path / "monitoring.db"
    hub = MonitoringHub(logging_endpoint=f"sqlite:///{db}", resource_monitoring_interval=0.2)
    provider = LocalProvider(init_blocks=2, min_blocks=0, max_blocks=2)
    with loaded(tmp_path, monitoring=hub, provider=provider,
                worker_options="--cores 1 --memory 1000 --disk 1000") as ex:
        assert ex.manager is not None
        manager = ex.manager
        wait_until(lambda: manager.stats().workers == 2, timeout=60)
        assert compute(1).result(timeout=60)[0] == 2
        run_id = ex.run_id
    con = sqlite3.connect(db)
    try:
        rows = con.execute("select run_id, hostname, uid, block_id, cpu_count, total_memory, "
                           "active, worker_count from node").fetchall()
    finally:
        con.close()
    assert len(rows) == 2, rows
    assert {r[0] for r in rows} == {run_id}
    assert {r[1] for r in rows} == {socket.gethostname()}
    assert len({r[2] for r in rows}) == 2  # one row per worker
    assert sorted(r[3] for r in rows) == ["0", "1"]  # LocalProvider: each worker's own block
    assert {(r[4], r[5], r[6], r[7]) for r in rows} == {(1, 1000 << 20, 1, 1)}


def test_progress_of_app_futures_by_app_name(tmp_path: Path) -> None:
    import io

    import packmule

    with loaded(tmp_path):
        futs = [compute(i) for i in range(3)] + [read_env("HOME"), unknown_app()]
        buf = io.StringIO()
        packmule.progress(futs, file=buf, interval=60)
    last = buf.getvalue().splitlines()[-1]
    assert last.startswith("packmule: 5/5 done (1 failed), compute 3/3, read_env 1/1, "
                           "unknown_app 1/1 (1 failed); "), last


@python_app
def unknown_app() -> None:
    raise KeyError("nope")


@python_app
def greedy(parsl_resource_specification: dict[str, int] = {"cores": 8}) -> None:  # noqa: B006
    pass


def test_a_task_too_big_for_every_worker_is_named_by_its_app_in_parsl_log(
        tmp_path: Path) -> None:
    import json
    import logging

    from packmule.parsl.executor import _ToParslLog

    with loaded(tmp_path) as ex:
        assert compute(1).result(timeout=60)[0] == 2  # a worker is up
        greedy()
        parsl_log = Path(ex.run_dir) / "parsl.log"
        warning = wait_until(lambda: [line for line in parsl_log.read_text().splitlines()
                                      if "(greedy) needs" in line], timeout=30)
        for fut in list(ex.tasks.values()):
            fut.cancel()
    events = (Path(ex.run_dir) / ex.label / "events.jsonl").read_text().splitlines()
    assert len(warning) == 1, warning  # once, though two handlers could have passed it on
    assert "WARNING" in warning[0] and "largest connected worker" in warning[0]
    submitted = [json.loads(e) for e in events if '"task_submitted"' in e]
    assert [e["label"] for e in submitted] == ["compute", "greedy"]
    assert not [h for h in logging.getLogger("packmule").handlers if isinstance(h, _ToParslLog)]
