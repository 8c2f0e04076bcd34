"""Run directories: ``packmule-runs/NNN-YYYYMMDD-HHMMSS/``, the ``latest`` link,
``$PACKMULE_RUNS_DIR``, and a Manager whose constructor fails leaving nothing behind;
and the address a Manager listening on every interface gives its workers."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path

import pytest

import packmule
from packmule import PythonTask
from packmule.errors import ManagerStartError
from packmule.local import local_cluster
from packmule.observe import rundir
from packmule.observe.rundir import (
    LATEST,
    RUNS_ENV,
    RunDirError,
    latest_run_dir,
    list_run_dirs,
    new_run_dir,
    point_latest,
    resolve,
    run_number,
    runs_base,
)

from .conftest import FAST, connected, wait_until

NAME = re.compile(r"^\d{3,}-\d{8}-\d{6}$")


def double(x: int) -> int:
    return 2 * x


def test_numbers_count_up_and_latest_follows(tmp_path: Path) -> None:
    base = tmp_path / "runs"
    first = new_run_dir(base)
    second = new_run_dir(base)
    assert NAME.match(first.name) and first.name.startswith("001-")
    assert second.name.startswith("002-")
    (base / "junk").mkdir()
    (base / "0x-not-a-run").mkdir()
    (base / "998-20260101-000000").mkdir()
    assert new_run_dir(base).name.startswith("999-")
    assert new_run_dir(base).name.startswith("1000-")
    assert [run_number(p) for p in list_run_dirs(base)] == [1, 2, 998, 999, 1000]
    point_latest(first)
    point_latest(second)
    assert os.readlink(base / LATEST) == second.name
    assert latest_run_dir(base) == base / second.name
    assert not [p for p in base.iterdir() if p.name.startswith(".")]  # no temporary link left
    (base / LATEST).unlink()
    assert latest_run_dir(base) == list_run_dirs(base)[-1]
    assert latest_run_dir(tmp_path / "none") is None and list_run_dirs(tmp_path / "none") == []


def test_managers_starting_at_once_get_different_numbers(tmp_path: Path) -> None:
    base = tmp_path / "runs"
    made: list[Path] = []
    lock = threading.Lock()

    def make() -> None:
        for _ in range(5):
            path = new_run_dir(base)
            with lock:
                made.append(path)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    numbers = [run_number(p) for p in made]
    assert sorted(numbers) == list(range(1, 21))  # type: ignore[type-var]


def test_of_two_managers_taking_a_number_under_different_seconds_the_later_moves_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "runs"
    base.mkdir()
    # Another manager made 001 under an earlier second after this one looked.
    (base / "001-20000101-000000").mkdir()
    monkeypatch.setattr(rundir, "list_run_dirs", lambda base: [])
    got = new_run_dir(base)
    assert got.name.startswith("002-")
    assert sorted(p.name[:3] for p in base.iterdir()) == ["001", "002"]


def test_a_number_taken_under_any_other_name_is_given_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two directories of one number: the one made later gives it up, whichever name
    sorts first (clocks of two hosts sharing the file system may differ, so the one
    made first may have the later name)."""
    base = tmp_path / "runs"
    base.mkdir()
    (base / "001-29991231-235959").mkdir()  # made first, by a host whose clock is ahead
    monkeypatch.setattr(rundir, "list_run_dirs", lambda base: [])  # it listed before that
    got = new_run_dir(base)
    assert got.name.startswith("002-")
    assert sorted(p.name for p in base.iterdir()) == ["001-29991231-235959", got.name]


def _header(run_dir: Path, t: float) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "events.jsonl").write_text(json.dumps(
        {"format": "packmule-events", "version": 1, "t": t}) + "\n")


def test_one_way_to_find_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """resolve() is what status and report both use: the latest (the link, else the run
    that started last), a run's file, a directory holding runs, or the path given."""
    base = tmp_path / "runs"
    monkeypatch.setenv(RUNS_ENV, str(base))
    with pytest.raises(RunDirError, match="does not exist"):
        resolve(None)
    base.mkdir()
    (base / "junk").mkdir()
    with pytest.raises(RunDirError, match="no run directories under"):
        resolve(None)
    _header(base / "001-20260101-120000", 2000.0)  # started last, though numbered first
    _header(base / "002-20260101-110000", 1000.0)
    _header(base / "named-by-hand", 1500.0)
    assert [p.name for p in list_run_dirs(base)] == [
        "001-20260101-120000", "002-20260101-110000", "named-by-hand"]
    assert resolve(None) == base / "001-20260101-120000"
    point_latest(base / "002-20260101-110000")
    assert resolve(None) == base / "002-20260101-110000"
    assert resolve(str(base)) == base / "002-20260101-110000"
    assert resolve(str(base / "named-by-hand" / "events.jsonl")) == base / "named-by-hand"
    assert resolve(str(base / "named-by-hand")) == base / "named-by-hand"
    # Parsl's run directory holds the executor's: runinfo/000/<label>/
    _header(tmp_path / "runinfo" / "000" / "WorkQueueExecutor", 3000.0)
    (tmp_path / "runinfo" / "000" / "submit_scripts").mkdir()
    assert resolve(str(tmp_path / "runinfo" / "000")) == (
        tmp_path / "runinfo" / "000" / "WorkQueueExecutor")
    for given in (tmp_path / "nowhere", base / "junk"):  # the caller says what is missing
        assert resolve(str(given)) == given


def test_the_environment_variable_chooses_the_base(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RUNS_ENV, str(tmp_path / "elsewhere"))
    assert runs_base() == tmp_path / "elsewhere"
    monkeypatch.delenv(RUNS_ENV)
    assert runs_base() == Path("packmule-runs")


def test_a_manager_makes_its_run_directory_and_says_where(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    base = tmp_path / "runs"
    monkeypatch.setenv(RUNS_ENV, str(base))
    caplog.set_level(logging.INFO, logger="packmule.manager")
    with packmule.Manager(**FAST) as first:
        assert first.run_dir.parent == base and NAME.match(first.run_dir.name)
        assert os.readlink(base / LATEST) == first.run_dir.name
        assert first.password_file == first.run_dir / "password"
        assert first.events_path == first.run_dir / "events.jsonl"
        assert first.status_path == first.run_dir / "status.json"
    with packmule.Manager(**FAST) as second:
        assert run_number(second.run_dir) == 2
        assert os.readlink(base / LATEST) == second.run_dir.name
    said = [r.getMessage() for r in caplog.records if "run dir" in r.getMessage()]
    assert said == [f"manager listening on {m.address} (run dir {m.run_dir})"
                    for m in (first, second)]
    assert {p.name for p in first.run_dir.iterdir()} >= {
        "password", "events.jsonl", "status.json", "manager.log"}


def test_a_manager_whose_constructor_fails_leaves_nothing_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "runs"
    monkeypatch.setenv(RUNS_ENV, str(base))
    # a password file that cannot be read: the base it made is gone too
    with pytest.raises(packmule.AuthenticationError):
        packmule.Manager(password_file=tmp_path / "missing")
    assert not base.exists()
    with packmule.Manager(**FAST) as first:
        # a port in use: its own directory goes, the other manager's stays
        with pytest.raises(ManagerStartError):
            packmule.Manager(port=first.port)
        assert list_run_dirs(base) == [first.run_dir]
        assert os.readlink(base / LATEST) == first.run_dir.name
        # a run_dir= it made goes; one that was there stays, with what it held
        with pytest.raises(ManagerStartError):
            packmule.Manager(port=first.port, run_dir=tmp_path / "new" / "run")
        assert not (tmp_path / "new" / "run").exists()
        kept = tmp_path / "kept"
        kept.mkdir()
        (kept / "mine").write_text("x")
        with pytest.raises(ManagerStartError):
            packmule.Manager(port=first.port, run_dir=kept)
        assert [p.name for p in kept.iterdir()] == ["mine"]


def test_listening_on_every_interface_gives_an_address_other_nodes_can_use(
        tmp_path: Path) -> None:
    with local_cluster(1, host="0.0.0.0", cores=1, memory=500, disk=500,
                       run_dir=tmp_path / "run", **FAST) as mgr:
        host = mgr.address.rsplit(":", 1)[0]
        assert host and not host.startswith("127.") and host not in ("0.0.0.0", "localhost")
        wait_until(connected(mgr, 1))  # the local worker used that address
        assert mgr.submit(PythonTask(double, 21)).result(timeout=60) == 42
        assert mgr.status()["address"] == mgr.address
