"""``packmule.progress`` and ``Manager.progress``: plain lines for log files, bars in a
terminal (checked under tmux, as a person sees it)."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

import packmule
from packmule import PythonTask
from packmule.observe.progress import category_of, summary_line

from .conftest import ClusterFactory, wait_until


def wait_for_file(path: str, limit: float = 60.0) -> str:
    """A task that runs until ``path`` exists (the test's way to hold it)."""
    import os
    import time

    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.02)
    return path


def quick(x: int) -> int:
    if x == 1:
        raise ValueError("one is not allowed")
    return x


def lines_of(buf: io.StringIO) -> list[str]:
    return [line for line in buf.getvalue().splitlines() if line.startswith("packmule: ")]


def release_when(buf: io.StringIO, pattern: str, release: Path) -> threading.Thread:
    """Create ``release`` once a progress line matching ``pattern`` has been printed."""
    def run() -> None:
        wait_until(lambda: any(re.search(pattern, line) for line in lines_of(buf)), timeout=60)
        release.touch()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# ------------------------------------------------------------------ plain lines
def test_plain_lines_count_a_real_run_by_category_with_failures(
        cluster: ClusterFactory, tmp_path: Path) -> None:
    release = tmp_path / "release"
    with cluster(1, cores=4) as m:
        futs = [m.submit(PythonTask(quick, i, category="quick", resources={"cores": 1}))
                for i in range(3)]
        futs += [m.submit(PythonTask(wait_for_file, str(release), category="slow",
                                     resources={"cores": 1})) for _ in range(2)]
        buf = io.StringIO()
        # the slow ones are held until a line shows the quick ones all finished
        releaser = release_when(buf, r"quick 3/3 \(1 failed\)", release)
        packmule.progress(futs, file=buf, interval=0.2)
        releaser.join(timeout=10)
    lines = lines_of(buf)
    assert len(lines) >= 2, buf.getvalue()
    assert any(line.startswith("packmule: 3/5 done (1 failed), quick 3/3 (1 failed), slow 0/2; ")
               and "tasks/s, ETA " in line for line in lines[:-1]), lines
    assert re.fullmatch(r"packmule: 5/5 done \(1 failed\), quick 3/3 \(1 failed\), slow 2/2; "
                        r"[0-9.]+ tasks/s, took [0-9.]+s", lines[-1]), lines
    finished = [int(re.match(r"packmule: (\d+)/", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert finished == sorted(finished)


def test_futures_already_done_give_only_the_last_line() -> None:
    done: list[Future[Any]] = [Future() for _ in range(3)]
    for i, f in enumerate(done):
        f.category = "odd" if i % 2 else "even"  # type: ignore[attr-defined]
        f.set_result(i)
    cancelled: Future[Any] = Future()
    cancelled.cancel()
    buf = io.StringIO()
    packmule.progress([*done, cancelled, done[0]], file=buf)  # a future given twice counts once
    assert buf.getvalue().count("\n") == 1
    assert buf.getvalue().startswith(
        "packmule: 4/4 done (1 failed), even 2/2, odd 1/1, default 1/1 (1 failed); 0.0 tasks/s, "
        "took 0s")


def test_a_futures_category_is_its_tasks_or_its_parsl_apps() -> None:
    fut: Future[Any] = Future()
    assert category_of(fut) == "default"
    task = PythonTask(quick, 2, category="sims")
    task.future = fut  # what Manager.submit does
    assert category_of(fut) == "sims"
    fut.task_record = {"func_name": "my_app"}  # type: ignore[attr-defined]  # a Parsl AppFuture
    assert category_of(fut) == "my_app"


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="one future"):
        packmule.progress(Future())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got a int"):
        packmule.progress([1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="interval must be a positive"):
        packmule.progress([], interval=0)


def test_eta_and_rate_in_the_summary_line() -> None:
    counts = {"simulate": (100, 0, 400), "big": (20, 3, 100)}
    line = summary_line(counts, 0, 120 / 12.3, final=False)
    assert line == ("packmule: 120/500 done (3 failed), simulate 100/400, big 20/100 (3 failed); "
                    "12.3 tasks/s, ETA 30s")  # 380 left at 12.3 a second: 30.9 s
    line = summary_line(counts, 0, 120 / 0.05, final=False)
    assert line.endswith("0.05 tasks/s, ETA 2h06m")  # 380 tasks at 0.05 a second


def test_manager_progress_follows_its_status(cluster: ClusterFactory, tmp_path: Path) -> None:
    if not hasattr(packmule.Manager, "progress"):
        pytest.skip("Manager.progress is not there yet")
    release = tmp_path / "release"
    with cluster(1, cores=2) as m:
        for i in range(2):
            m.submit(PythonTask(quick, i, category="quick", resources={"cores": 1}))
        m.submit(PythonTask(wait_for_file, str(release), category="slow", resources={"cores": 1}))
        buf = io.StringIO()
        releaser = release_when(buf, r"quick 2/2 \(1 failed\)", release)
        m.progress(file=buf, interval=0.2)
        releaser.join(timeout=10)
    lines = lines_of(buf)
    assert any(line.startswith("packmule: 2/3 done (1 failed), ") for line in lines[:-1]), lines
    assert lines[-1].startswith("packmule: 3/3 done (1 failed), ")
    assert "quick 2/2 (1 failed)" in lines[-1] and "slow 1/1" in lines[-1]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_handlers_made_before_write_above_the_bars(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler made before progress() (as logging.basicConfig makes one) holds the
    sys.stderr of then: while the bars are drawn it writes through progress's proxy, so
    its line goes above the bars (the bars erased, the line, the bars again), not into
    them; afterwards it holds its stream again."""
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    handler = logging.StreamHandler()  # holds sys.stderr: the terminal
    assert handler.stream is term
    log = logging.getLogger("packmule.test.progress.handlers")
    log.addHandler(handler)
    monkeypatch.setattr(log, "propagate", False)
    fut: Future[Any] = Future()
    moved: list[bool] = []

    def meanwhile() -> None:
        wait_until(lambda: "━" in term.getvalue())  # once the bars are drawn
        moved.append(handler.stream is not term)
        log.warning("LOGGED-DURING-PROGRESS")
        fut.set_result(1)

    thread = threading.Thread(target=meanwhile, daemon=True)
    thread.start()
    try:
        packmule.progress([fut], file=term)
    finally:
        log.removeHandler(handler)
    thread.join(timeout=10)
    assert moved == [True] and handler.stream is term
    out = term.getvalue()
    before, after = out.split("LOGGED-DURING-PROGRESS\n")
    assert "━" in before and before.endswith("\x1b[2K"), repr(out)  # the bars erased first
    assert "━" in after and "1/1" in after  # and drawn again below it


# ------------------------------------------------------------------ bars, under tmux
TMUX_SCRIPT = """
import sys, time
import packmule
from packmule.local import local_cluster

def work(x):
    import time
    time.sleep(0.05)
    if x == 3:
        raise ValueError("unlucky")
    return x

def forever():
    import time
    time.sleep(120)

with local_cluster(1, cores=2, memory=2000, disk=2000, run_dir={run_dir!r},
                   worker_args=["--workdir", {work_dir!r}]) as m:
    deadline = time.monotonic() + 60  # its log lines come before the bars
    while m.stats().workers < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    futs = [m.submit(packmule.PythonTask(work, i, category="simulate", resources={{"cores": 1}}))
            for i in range(12)]
    futs += [m.submit(packmule.PythonTask(work, 100 + i, category="bigjob",
                                          resources={{"cores": 2}})) for i in range(3)]
    packmule.progress(futs)
    print("FIRST-DONE", flush=True)
    stuck = m.submit(packmule.PythonTask(forever, category="stuck", resources={{"cores": 1}}))
    try:
        packmule.progress([stuck])
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
    stuck.cancel()
"""


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_bars_in_a_terminal_and_ctrl_c(tmp_path: Path) -> None:
    script = tmp_path / "bars.py"
    script.write_text(textwrap.dedent(TMUX_SCRIPT).format(
        run_dir=str(tmp_path / "run"), work_dir=str(tmp_path / "work")))
    name = f"packmule-test-{os.getpid()}-{tmp_path.name}"
    tmux = ["tmux", "-L", name, "-f", "/dev/null"]
    sock = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / name

    def pane() -> str:
        out = subprocess.run([*tmux, "capture-pane", "-p", "-t", "bars"], capture_output=True,
                             text=True, timeout=10, check=True)
        return out.stdout

    def cursor_visible() -> bool:
        out = subprocess.run([*tmux, "display-message", "-p", "-t", "bars", "#{cursor_flag}"],
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip() == "1"

    env = {k: v for k, v in os.environ.items() if k != "TMUX"}  # not nested in the user's
    env["TERM"] = "xterm-256color"
    command = f"cd {tmp_path} && {sys.executable} {script}; echo EXIT=$?; sleep 300"
    subprocess.run([*tmux, "new-session", "-d", "-s", "bars", "-x", "120", "-y", "30", command],
                   check=True, timeout=10, env=env)
    try:
        screen = wait_until(lambda: "FIRST-DONE" in (s := pane()) and s, timeout=90)
        bars = screen.split("FIRST-DONE")[0]
        total = next(line for line in bars.splitlines() if line.startswith("total"))
        simulate = next(line for line in bars.splitlines() if line.startswith("simulate"))
        bigjob = next(line for line in bars.splitlines() if line.startswith("bigjob"))
        assert "100%" in total and "15/15" in total and "1 failed" in total, bars
        assert "100%" in simulate and "12/12" in simulate and "1 failed" in simulate, bars
        assert "100%" in bigjob and "3/3" in bigjob and "failed" not in bigjob, bars
        assert "━" in simulate  # the bar itself
        # the stuck task's bar is up; Ctrl-C ends progress() with KeyboardInterrupt
        wait_until(lambda: any(line.startswith("stuck") and "0/1" in line
                               for line in pane().splitlines()), timeout=30)
        subprocess.run([*tmux, "send-keys", "-t", "bars", "C-c"], check=True, timeout=10)
        screen = wait_until(lambda: "EXIT=" in (s := pane()) and s, timeout=60)
        assert "INTERRUPTED" in screen and "EXIT=0" in screen, screen
        assert cursor_visible()
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=10, check=False)
        sock.unlink(missing_ok=True)
