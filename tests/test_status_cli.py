"""``packmule status`` and ``packmule runs``: each view from status files written here by
hand (the format of docs/observability.md), the errors, and a live run."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from packmule.cli import main as cli
from packmule.observe import status_cli

from .conftest import wait_until

HOST = socket.gethostname()


def status_doc(now: float, **changes: Any) -> dict[str, Any]:
    """A status file of a run with two categories, two workers, unfinished and failed
    tasks; ``changes`` replace its top-level fields."""
    doc: dict[str, Any] = {
        "format": "packmule-status", "version": 1, "packmule": "0.test",
        "address": "node1:9123", "run_dir": "...", "pid": os.getpid(),
        "started": now - 200, "updated": now - 1, "state": "running",
        "tasks": {"waiting": 11, "running": 4, "done": 120, "failed": 2, "cancelled": 3},
        "resources": {"committed": {"cores": 4, "memory": 2000, "disk": 400, "gpus": 0},
                      "total": {"cores": 16, "memory": 32000, "disk": 16000, "gpus": 1}},
        "categories": [
            {"name": "simulate", "mode": "max_throughput", "waiting": 10, "running": 4,
             "done": 120, "failed": 1, "allocation": {"cores": 1, "memory": 500},
             "peak": {"cores": 0.97, "memory": 431, "disk": 3}},
            {"name": "shell", "mode": "fixed", "waiting": 0, "running": 0, "done": 0,
             "failed": 0, "allocation": None, "peak": None},
            {"name": "assemble", "mode": "fixed", "waiting": 1, "running": 0, "done": 0,
             "failed": 1, "allocation": {"cores": 64, "memory": 1500000, "disk": 2500},
             "peak": None},
        ],
        "workers": [
            {"worker": "ab12cd34ef56" + "0" * 20, "host": "node2", "pid": 777,
             "resources": {"cores": 8, "memory": 16000, "disk": 8000, "gpus": 1},
             "committed": {"cores": 4, "memory": 2000, "disk": 400, "gpus": 0}, "tasks": 4,
             "joined": now - 190, "last_heard": now - 2},
            {"worker": "0f0f0f0f0f0f", "host": "node3", "pid": 778,
             "resources": {"cores": 8, "memory": 16000, "disk": 8000, "gpus": 0},
             "committed": {"cores": 0, "memory": 0, "disk": 0, "gpus": 0}, "tasks": 0,
             "joined": now - 100, "last_heard": now - 125},
        ],
        "unfinished": [
            {"task": 130, "category": "simulate", "label": "simulate", "state": "running",
             "attempt": 1, "worker": "ab12cd34ef56" + "1" * 20, "reason": None, "since": now - 30},
            {"task": 17, "category": "assemble", "label": "assemble_genome", "state": "waiting",
             "attempt": 0, "worker": None, "reason": "no worker fits", "since": now - 198},
            {"task": 131, "category": "simulate", "label": "simulate", "state": "waiting",
             "attempt": 2, "worker": None, "reason": "requeued after a lost worker",
             "since": now - 5},
        ],
        "unfinished_omitted": 12,
        "failed": [
            {"task": 9, "category": "simulate", "label": "simulate", "attempts": 1,
             "error": "ValueError", "message": "bad input 42"},
            {"task": 12, "category": "assemble", "label": "assemble_genome", "attempts": 3,
             "error": "TaskTimeout", "message": "over 60 s\nsecond line"},
        ],
        "failed_omitted": 7,
    }
    doc.update(changes)
    return doc


def write_run(base: Path, name: str, status: dict[str, Any] | None, *,
              started: float | None = None, host: str = HOST, pid: int | None = None,
              latest: bool = False) -> Path:
    """A run directory: an event log header and (unless None) a status file."""
    d = base / name
    d.mkdir(parents=True)
    header = {"format": "packmule-events", "version": 1, "packmule": "0.test",
              "t": started if started is not None else (status or {}).get("started", 0.0),
              "address": (status or {}).get("address", "node1:9123"), "host": host,
              "pid": pid if pid is not None else os.getpid(), "run_dir": str(d)}
    (d / "events.jsonl").write_text(json.dumps(header) + "\n")
    if status is not None:
        (d / "status.json").write_text(json.dumps(status))
    if latest:
        link = base / "latest"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(name)
    return d


def status(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli(["status", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def rows(out: str) -> dict[str, list[str]]:
    """Table lines by their first cell, split on runs of two spaces or more."""
    return {cells[0]: cells for line in out.splitlines()
            if (cells := re.split(r"\s{2,}", line.strip())) and cells[0]}


@pytest.fixture(autouse=True)
def now(monkeypatch: pytest.MonkeyPatch) -> float:
    """The time now, fixed for the views (ages are measured to it)."""
    t = time.time()
    monkeypatch.setattr(status_cli, "_now", lambda: t)
    return t


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, now: float) -> Path:
    monkeypatch.setenv("PACKMULE_RUNS_DIR", str(tmp_path / "runs"))
    return write_run(tmp_path / "runs", "001-20260101-120000", status_doc(now),
                     latest=True)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ==================================================================== views
def test_default_view_categories_totals_and_workers(run: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = status(capsys=capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"run {run}, manager node1:9123: running for ")
    assert lines[0].endswith("updated 1s ago")
    assert "warning" not in out
    r = rows(out)
    assert r["CATEGORY"] == ["CATEGORY", "WAITING", "RUNNING", "DONE", "FAILED", "ALLOCATION",
                             "PEAK"]
    assert r["simulate"] == ["simulate", "10", "4", "120", "1", "1c 500MB", "0.97c 431MB disk:3MB"]
    assert r["assemble"] == ["assemble", "1", "0", "0", "1", "64c 1.5TB disk:2.5GB", "-"]
    assert r["shell"] == ["shell", "0", "0", "0", "0", "as requested", "-"]
    assert r["TOTAL"] == ["TOTAL", "11", "4", "120", "2"]
    assert "3 tasks cancelled" in lines
    assert ("2 workers connected, committed/total: cores 4/16, memory 2GB/32GB, "
            "disk 400MB/16GB, gpus 0/1") in lines
    # Plain: no colour codes, no box characters.
    assert "\x1b" not in out and "─" not in out


def test_workers_view(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = status(str(run), "--workers", capsys=capsys)
    assert rc == 0
    r = rows(out)
    assert r["WORKER"] == ["WORKER", "HOST", "CORES", "MEMORY", "DISK", "GPUS", "TASKS",
                           "LAST-HEARD"]
    assert r["ab12cd34ef56"] == ["ab12cd34ef56", "node2", "4/8", "2GB/16GB", "400MB/8GB",
                                 "0/1", "4", "2s ago"]
    assert r["0f0f0f0f0f0f"] == ["0f0f0f0f0f0f", "node3", "0/8", "0MB/16GB", "0MB/8GB",
                                 "0/0", "0", "2m05s ago"]
    assert r["TOTAL"] == ["TOTAL", "2 workers", "4/16", "2GB/32GB", "400MB/16GB", "0/1", "4"]
    assert "CATEGORY" not in out


def test_tasks_view_shows_reasons_and_what_is_left_out(run: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = status(str(run), "--tasks", capsys=capsys)
    assert rc == 0
    r = rows(out)
    assert r["TASK"] == ["TASK", "CATEGORY", "LABEL", "STATE", "ATTEMPT", "WORKER", "REASON",
                         "SINCE"]
    assert r["130"] == ["130", "simulate", "simulate", "running", "1", "ab12cd34ef56", "-",
                        "30s"]
    assert r["17"] == ["17", "assemble", "assemble_genome", "waiting", "0", "-",
                       "no worker fits", "3m18s"]
    assert r["131"][6:] == ["requeued after a lost worker", "5s"]
    assert "15 unfinished: 4 running, 11 waiting" in out
    # 1 running and 2 waiting listed, of 4 and 11
    assert ("12 more unfinished tasks not listed (3 running, 9 waiting): the status file "
            "lists at most 500 running and 500 waiting tasks") in out


def test_tasks_view_shows_tasks_sent_ahead(now: float, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A task sent ahead to a busy worker is running there in the status file, not
    started yet: its REASON says so, and the count line too."""
    doc = status_doc(now, tasks={"waiting": 0, "running": 2, "done": 0, "failed": 0,
                                 "cancelled": 0}, unfinished_omitted=0)
    doc["unfinished"] = [
        {"task": 1, "category": "quick", "label": "f", "state": "running", "attempt": 1,
         "worker": "ab12cd34ef56", "reason": None, "since": now - 3},
        {"task": 2, "category": "quick", "label": "f", "state": "running", "attempt": 1,
         "worker": "ab12cd34ef56", "reason": status_cli.SENT_AHEAD, "since": now - 1},
    ]
    d = write_run(tmp_path, "r", doc)
    rc, out, _ = status(str(d), "--tasks", capsys=capsys)
    assert rc == 0
    r = rows(out)
    assert r["1"][3:] == ["running", "1", "ab12cd34ef56", "-", "3s"]
    assert r["2"][3:] == ["running", "1", "ab12cd34ef56", "sent ahead, waits for room", "1s"]
    assert "2 unfinished: 2 running (1 sent ahead, not started yet), 0 waiting" in out
    assert "not listed" not in out


def test_failed_view_shows_the_first_line_of_each_error(run: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = status(str(run), "--failed", capsys=capsys)
    assert rc == 0
    r = rows(out)
    assert r["TASK"] == ["TASK", "CATEGORY", "LABEL", "ATTEMPTS", "ERROR"]
    assert r["9"] == ["9", "simulate", "simulate", "1", "ValueError: bad input 42"]
    assert r["12"] == ["12", "assemble", "assemble_genome", "3", "TaskTimeout: over 60 s"]
    assert "second line" not in out
    assert "2 failed tasks" in out
    assert "7 earlier failures not listed" in out


def test_a_terminal_gets_rich_tables_and_labels_are_not_markup(now: float,
                                                               tmp_path: Path) -> None:
    import io

    from rich.console import Console

    doc = status_doc(now)
    doc["unfinished"][0]["label"] = "echo [bold] [/] done"
    blocks = status_cli.status_blocks(doc, tmp_path, ["tasks"], now)
    out = io.StringIO()
    Console(file=out, width=150, force_terminal=True).print(status_cli.rich_renderable(blocks))
    text = out.getvalue()
    assert "echo [bold] [/] done" in text
    assert "─" in text and "\x1b[" in text  # rules and colours


def test_views_combine_in_the_order_given_by_the_docs(run: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = status(str(run), "--failed", "--workers", capsys=capsys)
    assert out.index("WORKER") < out.index("ATTEMPTS")


def test_json_is_the_status_file_or_the_chosen_lists(run: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    whole = json.loads((run / "status.json").read_text())
    rc, out, _ = status(str(run), "--json", capsys=capsys)
    assert rc == 0 and json.loads(out) == whole
    _, out, _ = status(str(run), "--json", "--tasks", capsys=capsys)
    doc = json.loads(out)
    assert doc["unfinished"] == whole["unfinished"] and doc["unfinished_omitted"] == 12
    assert doc["address"] == "node1:9123" and doc["tasks"] == whole["tasks"]
    assert "workers" not in doc and "categories" not in doc and "failed" not in doc
    _, out, _ = status(str(run), "--json", "--workers", "--failed", capsys=capsys)
    assert set(json.loads(out)) >= {"workers", "failed", "failed_omitted", "state"}


def test_status_json_file_and_empty_lists(now: float, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    d = write_run(tmp_path, "r", status_doc(
        now, categories=[], workers=[], unfinished=[], unfinished_omitted=0, failed=[],
        failed_omitted=0, tasks={"waiting": 0, "running": 0, "done": 0, "failed": 0,
                                 "cancelled": 0}))
    rc, out, _ = status(str(d / "status.json"), "--workers", "--tasks", "--failed",
                        capsys=capsys)
    assert rc == 0
    for line in ("no workers connected", "no unfinished tasks", "no failed tasks"):
        assert line in out.splitlines()
    _, out, _ = status(str(d), capsys=capsys)
    assert "no tasks submitted yet" in out and "0 workers connected" in out


def test_a_stopped_run_says_when(now: float, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    d = write_run(tmp_path, "r", status_doc(now - 399, state="stopped", started=now - 4000))
    _, out, _ = status(str(d), "--tasks", capsys=capsys)
    head = out.splitlines()[0]
    assert ": stopped at " in head and "(6m40s ago) after 1h00m" in head
    assert "warning" not in out
    # Ages are measured to the end of the run, not to now.
    assert rows(out)["130"][-1] == "29s"


def test_a_silent_running_manager_may_be_gone(now: float, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    d = write_run(tmp_path, "r", status_doc(now, updated=now - 600), host="elsewhere")
    rc, out, _ = status(str(d), capsys=capsys)
    assert rc == 0
    assert "last updated 10m00s ago: the manager may be gone" in out


def test_a_dead_manager_on_this_host_is_named(now: float, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    pid = dead_pid()
    d = write_run(tmp_path, "r", status_doc(now, pid=pid), pid=pid)
    rc, out, _ = status(str(d), capsys=capsys)
    assert rc == 0
    assert ": gone (last updated" in out
    assert f"manager's process ({pid}) is no longer running on this host" in out


def test_a_crash_snapshot_without_tasks_is_shown(now: float, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """After an internal error the manager may write only its header fields."""
    doc = {k: v for k, v in status_doc(now, state="crashed").items()
           if k in ("format", "version", "packmule", "address", "run_dir", "pid", "started",
                    "updated", "state")}
    d = write_run(tmp_path, "r", doc)
    rc, out, _ = status(str(d), "--workers", "--tasks", "--failed", capsys=capsys)
    assert rc == 0 and ": crashed at " in out and "no workers connected" in out
    rc, out, _ = status(str(d), capsys=capsys)
    assert rc == 0 and "stopped on an internal error" in out and "manager.log" in out


# ==================================================================== finding the run
def test_without_latest_the_newest_run_is_shown(now: float, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PACKMULE_RUNS_DIR", str(tmp_path))
    write_run(tmp_path, "001-20260101-120000", status_doc(now, address="a:1", started=now - 99))
    write_run(tmp_path, "002-20260101-130000", status_doc(now, address="b:2", started=now - 9))
    _, out, _ = status(capsys=capsys)
    assert "manager b:2" in out.splitlines()[0]


def test_host_port_finds_its_run(now: float, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PACKMULE_RUNS_DIR", str(tmp_path))
    write_run(tmp_path, "001-20260101-120000", status_doc(now, address="node1.cluster:9123",
                                                         state="stopped", started=now - 99))
    write_run(tmp_path, "002-20260101-130000", status_doc(now, address="node7:9000",
                                                          started=now - 9), latest=True)
    rc, out, _ = status("node1:9123", capsys=capsys)
    assert rc == 0 and "001-20260101-120000, manager node1.cluster:9123" in out
    rc, out, _ = status("node7:9000", "--json", capsys=capsys)
    assert rc == 0 and json.loads(out)["address"] == "node7:9000"
    rc, out, err = status("node1:9999", capsys=capsys)
    assert rc == 1 and out == ""
    assert f"no run under {tmp_path} or ./runinfo/*/*/ has a manager at node1:9999" in err
    assert "reads RUN_DIR/status.json, which any node sharing the file system can read" in err
    assert "does not contact the manager" in err and "pass the run directory" in err


def test_host_port_also_looks_in_parsl_run_directories(now: float, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """Parsl's executor puts its run directory at runinfo/NNN/<executor label>/ under the
    directory the program ran in: status HOST:PORT run there finds it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PACKMULE_RUNS_DIR", str(tmp_path / "runs"))
    write_run(tmp_path / "runs", "001-20260101-120000", status_doc(now, address="node1:1"))
    write_run(tmp_path / "runinfo" / "000", "WorkQueueExecutor",
              status_doc(now, address="node5:7000", state="stopped", started=now - 500))
    newer = write_run(tmp_path / "runinfo" / "001", "WorkQueueExecutor",
                      status_doc(now, address="node5:7000", started=now - 50))
    (tmp_path / "runinfo" / "001" / "parsl.log").write_text("")
    rc, out, _ = status("node5:7000", capsys=capsys)
    assert rc == 0
    assert f"run {os.path.relpath(newer)}, manager node5:7000: running" in out.splitlines()[0]
    # The directory holding it (Parsl's run directory) means it too.
    rc, out, _ = status("runinfo/001", capsys=capsys)
    assert rc == 0 and "manager node5:7000: running" in out


# ==================================================================== errors
@pytest.mark.parametrize(
    ("content", "needles"),
    [
        (None, ["has no status.json", "packmule runs"]),
        ("{\"format\": \"packmule-status\", ", ["status.json is not valid JSON", "line 1",
                                                "try again"]),
        (json.dumps(status_doc(0.0, version=2, packmule="9.9")),
         ["status format version 2 (written by packmule 9.9)", "reads version 1"]),
        (json.dumps({"format": "something-else"}), ["is not a packmule status file"]),
        (json.dumps({k: v for k, v in status_doc(0.0).items() if k != "workers"}),
         ["not a valid packmule status file: 'workers' is missing"]),
        (json.dumps(status_doc(0.0, tasks=[1])),
         ["not a valid packmule status file: 'tasks' is a list"]),
    ],
)
def test_bad_status_files_are_explained(tmp_path: Path, content: str | None,
                                        needles: list[str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    d = write_run(tmp_path, "r", None)
    if content is not None:
        (d / "status.json").write_text(content)
    rc, out, err = status(str(d), capsys=capsys)
    assert rc == 1 and out == ""
    assert err.startswith(f"packmule status: {d}")
    for needle in needles:
        assert needle in err


def test_missing_run_directories_are_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = status(str(tmp_path / "nope"), capsys=capsys)
    assert rc == 1 and "no run directory" in err and "packmule runs" in err
    monkeypatch.setenv("PACKMULE_RUNS_DIR", str(tmp_path / "none"))
    rc, _, err = status(capsys=capsys)
    assert rc == 1 and "does not exist" in err and "PACKMULE_RUNS_DIR" in err
    (tmp_path / "none").mkdir()
    rc, _, err = status(capsys=capsys)
    assert rc == 1 and "no run directories under" in err


@pytest.mark.parametrize("argv", [["status", "--watch", "0"], ["status", "--watch", "-1"],
                                  ["status", "a", "b"], ["runs", "--bogus"]])
def test_bad_command_lines_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli(argv)
    assert info.value.code == 2
    assert "usage: packmule" in capsys.readouterr().err


def test_watch_takes_an_optional_interval(run: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``--watch RUN_DIR`` is the run directory, not a bad interval."""
    seen: list[tuple[Path, float]] = []

    def watch(d: Path, views: list[str], every: float, as_json: bool) -> int:
        seen.append((d, every))
        return 0

    monkeypatch.setattr(status_cli, "watch", watch)
    assert cli(["status", "--watch", str(run)]) == 0
    assert cli(["status", str(run), "--watch", "0.5"]) == 0
    assert cli(["status", "--watch"]) == 0
    assert seen == [(run, 2.0), (run, 0.5), (run, 2.0)]
    assert cli(["status", "--watch", "soon", str(run)]) == 2
    assert "--watch takes seconds, got 'soon'" in capsys.readouterr().err


def test_help_texts_document_the_views() -> None:
    out = subprocess.run([sys.executable, "-m", "packmule", "status", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for needle in ("RUN_DIR | HOST:PORT", "--workers", "--tasks", "--failed", "--json",
                   "--watch", "no worker fits", "Exit codes", "PACKMULE_RUNS_DIR",
                   "./runinfo/*/*/", "does not contact the manager", "sent ahead"):
        assert needle in " ".join(out.split()), needle  # lines wrapped at any width
    out = subprocess.run([sys.executable, "-m", "packmule", "runs", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for needle in ("BASE", "START", "END", "crashed", "--json", "Exit codes"):
        assert needle in out, needle


# ==================================================================== --watch
def test_watch_without_a_terminal_prints_each_change_until_the_run_ends(
        now: float, tmp_path: Path) -> None:
    d = write_run(tmp_path, "r", status_doc(now))
    out_file = tmp_path / "out"
    with out_file.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "packmule", "status", "--watch", "0.05",
                                 str(d)], stdout=out, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: "simulate" in out_file.read_text())
        assert proc.poll() is None
        status_file = d / "status.json"
        (d / "status.new").write_text(json.dumps(status_doc(now, state="stopped",
                                                            updated=time.time())))
        os.replace(d / "status.new", status_file)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out_file.read_text()
    assert text.count("CATEGORY") == 2  # the running view once (it did not change), the end
    heads = [line for line in text.splitlines() if line.startswith(f"run {d}, ")]
    assert len(heads) == 2
    assert ": running for " in heads[0] and ": stopped at " in heads[1]


def test_watch_ends_with_1_when_the_manager_died(tmp_path: Path) -> None:
    pid = dead_pid()
    d = write_run(tmp_path, "r", status_doc(time.time(), pid=pid), pid=pid)
    res = subprocess.run([sys.executable, "-m", "packmule", "status", "--watch", "0.05",
                          "--json", str(d)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 1
    assert json.loads(res.stdout)["state"] == "running"


# ==================================================================== runs
@pytest.fixture
def runs_base(now: float, tmp_path: Path) -> Iterator[Path]:
    """Four runs: stopped with failures, crashed, one that died, and one still running
    (the latest); a directory that is no run; a run without a status file."""
    base = tmp_path / "runs"
    t0 = now - 86400
    write_run(base, "001-a", status_doc(t0, state="stopped", started=t0, updated=t0 + 60,
                                        tasks={"waiting": 0, "running": 0, "done": 10,
                                               "failed": 2, "cancelled": 1}))
    write_run(base, "002-b", status_doc(t0, state="crashed", started=t0 + 100,
                                        updated=t0 + 160))
    pid = dead_pid()
    write_run(base, "003-c", status_doc(t0, started=t0 + 200, pid=pid), pid=pid)
    write_run(base, "010-d", status_doc(now), latest=True)  # sorts by start, not name
    (base / "not-a-run").mkdir()
    write_run(base, "000-e", None, started=t0 - 100)
    # A large event log: only its first line is read.
    with (base / "001-a" / "events.jsonl").open("r+") as f:
        f.truncate(200_000_000)
    yield base


def test_runs_lists_oldest_first_and_marks_latest(runs_base: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli(["runs", str(runs_base)])
    out = capsys.readouterr().out
    assert rc == 0
    r = rows(out)
    assert r["RUN"] == ["RUN", "START", "END", "TASKS", "FAILED", "SIZE"]
    table = out.split("TOTAL")[0]
    names = [line.split()[0] for line in table.splitlines() if re.match(r"\d{3}-", line)]
    assert names == ["000-e", "001-a", "002-b", "003-c", "010-d"]
    assert r["000-e"][2:5] == ["-", "-", "-"]
    assert r["001-a"][2:5] == [time.strftime("%H:%M:%S", time.localtime(
        json.loads((runs_base / "001-a" / "status.json").read_text())["updated"])), "13", "2"]
    assert r["001-a"][5] == "200MB"
    assert r["002-b"][2] == "crashed"
    assert r["003-c"][2] == "crashed"  # its manager died without a word
    assert r["010-d (latest)"][2:5] == ["running", "140", "2"]
    assert r["TOTAL 5 runs"][1:3] == [str(13 + 3 * 140), str(2 + 3 * 2)]
    assert "not-a-run" not in out
    assert "000-e: " in out and "has no status.json" in out


def test_runs_json(runs_base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["runs", "--json", str(runs_base)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in doc] == ["000-e", "001-a", "002-b", "003-c", "010-d"]
    last = doc[-1]
    assert last["latest"] and last["state"] == "running" and last["ended"] is None
    assert last["tasks"] == 140 and last["failed"] == 2 and last["size"] > 0
    assert doc[1]["state"] == "stopped" and doc[1]["ended"] > doc[1]["started"]


def test_runs_defaults_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PACKMULE_RUNS_DIR", raising=False)
    assert cli(["runs"]) == 1
    assert "packmule-runs does not exist" in capsys.readouterr().err
    write_run(tmp_path / "packmule-runs", "001-x", status_doc(time.time()))
    assert cli(["runs"]) == 0
    assert "001-x" in capsys.readouterr().out


# ==================================================================== a live run
def _status_json(*args: str) -> dict[str, Any]:
    res = subprocess.run([sys.executable, "-m", "packmule", "status", "--json", *args],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def _sleepy(path: str) -> str:
    import time as t
    from pathlib import Path as P

    while not P(path).exists():
        t.sleep(0.02)
    return "done"


@pytest.mark.slow
def test_live_status_shows_workers_categories_and_reasons(cluster: Any, tmp_path: Path) -> None:
    import packmule

    go = tmp_path / "go"
    with cluster(2, cores=2, memory=2000, disk=2000) as m:
        run_dir = Path(m.run_dir)
        futures = [m.submit(packmule.PythonTask(_sleepy, str(go), category="sleepy",
                                                resources={"cores": 1, "memory": 100}))
                   for _ in range(5)]
        big = packmule.PythonTask(_sleepy, str(go), category="huge",
                                  resources={"cores": 64, "memory": 100})
        m.submit(big)

        def settled() -> dict[str, Any] | None:
            doc = _status_json(str(run_dir))
            cats = {c["name"]: c for c in doc["categories"]}
            if (len(doc["workers"]) == 2 and cats.get("sleepy", {}).get("running") == 4
                    and "huge" in cats):
                return doc
            return None

        doc = wait_until(settled, timeout=60, interval=0.2)
        assert doc["state"] == "running"
        assert {w["resources"]["cores"] for w in doc["workers"]} == {2}
        assert sum(w["tasks"] for w in doc["workers"]) == 4
        assert doc["resources"]["committed"]["cores"] == 4
        assert doc["resources"]["total"]["cores"] == 4
        cats = {c["name"]: c for c in doc["categories"]}
        assert cats["sleepy"]["waiting"] == 1 and cats["huge"]["waiting"] == 1
        tasks = _status_json(str(run_dir), "--tasks")
        assert "workers" not in tasks
        why = {u["task"]: u for u in tasks["unfinished"]}
        assert why[big.id]["reason"] == "no worker fits"
        assert why[big.id]["state"] == "waiting"
        assert sorted(u["reason"] for u in tasks["unfinished"] if u["state"] == "waiting") \
            == ["no worker fits", "waiting for room"]
        # The same seen as a person does, by address, from another directory.
        res = subprocess.run([sys.executable, "-m", "packmule", "status", "--tasks", m.address],
                             capture_output=True, text=True, timeout=60, check=False,
                             cwd=tmp_path, env={**os.environ,
                                                "PACKMULE_RUNS_DIR": str(run_dir.parent)})
        assert res.returncode == 0, res.stderr
        assert "no worker fits" in res.stdout and "waiting for room" in res.stdout
        go.touch()
        assert [f.result(timeout=60) for f in futures] == ["done"] * 5
        m.cancel(big)
    final = wait_until(lambda: (d := _status_json(str(run_dir)))["state"] != "running" and d,
                       timeout=30, interval=0.1)
    assert final["state"] == "stopped"
    assert final["tasks"]["done"] == 5
