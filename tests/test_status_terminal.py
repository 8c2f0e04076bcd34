"""``packmule status --watch`` in a real terminal (tmux), as a person sees it: the table
redraws while a live run goes on, and when the run ends the watcher prints its final
view and exits 0."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import packmule

from .conftest import wait_until

pytestmark = pytest.mark.slow

TMUX = shutil.which("tmux")


def _sleepy(path: str) -> str:
    import time as t
    from pathlib import Path as P

    while not P(path).exists():
        t.sleep(0.02)
    return "done"


class Tmux:
    """A tmux server of our own (its own socket, no user config), one 120x40 window."""

    def __init__(self) -> None:
        assert TMUX is not None
        self.base = [TMUX, "-L", f"packmule-status-test-{os.getpid()}", "-f", os.devnull]
        self.env = {k: v for k, v in os.environ.items() if k != "TMUX"}  # tests run in tmux
        self.socket = ""

    def __call__(self, *args: str) -> str:
        res = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=30,
                             env=self.env, check=True)
        return res.stdout

    def start(self, command: str) -> None:
        """Run ``command`` in the window; when it exits, the shell says with what status
        and keeps the window (and its last screen) open."""
        self("new-session", "-d", "-s", "t", "-x", "120", "-y", "40", "sh", "-c",
             f"{command}; s=$?; echo; echo EXITED WITH $s; sleep 600")
        self.socket = self("display-message", "-p", "#{socket_path}").strip()

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "t")

    def exit_status(self) -> str | None:
        """The command's exit status once it has exited, else None."""
        found = re.search(r"^EXITED WITH (\d+)$", self.screen(), re.M)
        return found.group(1) if found else None

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=30,
                       env=self.env, check=False)
        if self.socket:  # the server leaves its socket behind
            Path(self.socket).unlink(missing_ok=True)


def row(screen: str, first: str) -> list[str]:
    """The cells of the line whose first cell is ``first`` (the table has no verticals)."""
    for line in screen.splitlines():
        cells = line.split()
        if cells and cells[0] == first:
            return cells
    return []


@pytest.mark.skipif(TMUX is None, reason="needs tmux (apt-get install tmux) to drive a terminal")
def test_watch_redraws_in_a_terminal_until_the_run_ends(cluster: Any, tmp_path: Path) -> None:
    go = tmp_path / "go"
    tmux = Tmux()
    try:
        with cluster(2, cores=2, memory=2000, disk=2000) as m:
            run_dir = Path(m.run_dir)
            futures = [m.submit(packmule.PythonTask(_sleepy, str(go), category="sleepy",
                                                    resources={"cores": 1, "memory": 100}))
                       for _ in range(5)]
            big = m.submit(packmule.PythonTask(_sleepy, str(go), category="huge",
                                               resources={"cores": 64, "memory": 100}))
            tmux.start(f"{sys.executable} -m packmule status --watch 0.5 {run_dir}")

            def drawn() -> str | None:
                s = tmux.screen()
                # CATEGORY WAITING RUNNING DONE FAILED ...
                ok = (row(s, "sleepy")[1:5] == ["1", "4", "0", "0"]
                      and row(s, "huge")[1:5] == ["1", "0", "0", "0"]
                      and "2 workers connected" in s)
                return s if ok else None

            screen = wait_until(drawn, timeout=60, interval=0.2)
            assert f"manager {m.address}: running for " in " ".join(screen.split())
            assert "─" in screen  # drawn by rich: rules under the column names
            assert row(screen, "TOTAL")[1:5] == ["2", "4", "0", "0"]
            assert tmux.exit_status() is None  # still watching
            go.touch()
            assert [f.result(timeout=60) for f in futures] == ["done"] * 5
            # The watcher redraws: the done tasks show up before the run ends.
            wait_until(lambda: row(tmux.screen(), "sleepy")[1:4] == ["0", "0", "5"],
                       timeout=30, interval=0.2)
            big.cancel()
        # The manager has stopped: the watcher prints the final view and exits 0.
        assert wait_until(tmux.exit_status, timeout=30, interval=0.2) == "0"
        final = tmux.screen()
        assert ": stopped at " in " ".join(final.split())  # (a long header line wraps)
        assert final.lstrip().startswith(f"run {run_dir}")  # all of it on the screen
        assert "running for" not in final  # the live view was replaced by the final one
        assert row(final, "sleepy")[1:5] == ["0", "0", "5", "0"]
        assert "1 task cancelled" in final
    finally:
        tmux.kill()
