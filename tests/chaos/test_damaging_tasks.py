"""Tasks that damage what their worker uses, each beside an innocent task on the same worker.

For each damaging behaviour (removing the sandbox, the monitoring directory
or the worker's whole work directory; links and FIFOs where the worker reads;
a removed working directory; closed standard streams; leaving the runner's
process group or session; garbage in the runner's channel; children left
running, in the group or escaped with ``setsid`` and a double fork), on a real
worker with two cores:

- the innocent task, running meanwhile, succeeds with its own value and output;
- the damaging task gets its own result or its own error;
- the worker keeps its session (no worker lost) and runs the next tasks, on
  both its runners, Python and shell;
- every process the damaging task left behind is gone when its result arrives
  (checked by pid and command line), and nothing the test started outlives
  the manager (by pid tree).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

import packmule
from packmule import Manager, PythonTask, Task

from . import damaging
from .conftest import ClusterFactory, PidTree, bounded, connected, wait_until


@dataclass(frozen=True)
class Case:
    """A damaging task (made from the side directory) and what it must get."""

    make: Callable[[str], Task]
    value: Any = None  # its result, when it succeeds
    error: type[BaseException] | None = None  # or the error it gets
    match: str = ""


def py(fn: Callable[..., Any], *args: Any, **kw: Any) -> Callable[[str], Task]:
    return lambda side: PythonTask(fn, side, *args, resources={"cores": 1}, **kw)


def sh(command: str, **kw: Any) -> Callable[[str], Task]:
    return lambda side: Task(command.replace("SIDE", side), resources={"cores": 1}, **kw)


DONE = "touch SIDE/damage-done"
CASES = {
    "remove-sandbox": Case(py(damaging.remove_sandbox), "removed"),
    "remove-radio-dir": Case(py(damaging.remove_radio), "removed"),
    "remove-work-dir": Case(py(damaging.remove_workdir), "removed"),
    "shell-removes-work-dir": Case(
        sh(f'rm -rf "$(dirname "$PACKMULE_SANDBOX")"; {DONE}; echo gone'),
        packmule.CommandResult(0, "gone\n", "")),
    "sandbox-becomes-link": Case(py(damaging.sandbox_to_symlink), "linked"),
    "fifo-in-radio-dir": Case(py(damaging.radio_fifo), "fifo"),
    "cwd-removed": Case(py(damaging.chdir_into_removed), "nowhere"),
    "closes-streams": Case(py(damaging.close_streams), "closed"),
    "shell-closes-streams": Case(sh(f"exec 0<&- 1>&- 2>&-; {DONE}"),
                                 packmule.CommandResult(0, "", "")),
    "leaves-session": Case(py(damaging.own_session), error=PermissionError),
    "garbles-channel": Case(py(damaging.garble_channel), error=packmule.TaskCrashed,
                            match="malformed reply"),
    "negative-frame-length": Case(py(damaging.misframe_channel, struct.pack("!i", -2)),
                                  error=packmule.TaskCrashed, match="malformed reply"),
    "huge-frame-length": Case(py(damaging.misframe_channel, struct.pack("!iQ", -1, 1 << 62)),
                              error=packmule.TaskCrashed, match="malformed reply"),
    "frame-promises-more": Case(py(damaging.misframe_channel, struct.pack("!i", 1 << 20)),
                                error=packmule.TaskCrashed, match="malformed reply"),
    "background-children": Case(py(damaging.background, "1"), "left running"),
    "shell-background-child": Case(
        sh(f'sleep 300.41 & echo "$! sleep 300.41" >> SIDE/pids; {DONE}'),
        packmule.CommandResult(0, "", "")),
    "setsid-double-fork": Case(py(damaging.escape, "5"), "escaped"),
    "shell-setsid-double-fork": Case(
        sh("(setsid sh -c 'sleep 300.61 & echo \"$! sleep 300.61\" >> SIDE/pids; wait' &); "
           f"while ! [ -s SIDE/pids ]; do sleep 0.01; done; {DONE}"),
        packmule.CommandResult(0, "", "")),
    "escapes-then-times-out": Case(py(damaging.escape_then_hang, "7", timeout=1.5),
                                   error=packmule.TaskTimeout),
}


def left_behind(side: Path) -> list[str]:
    """The processes the damaging task reported that still run (zombies are gone)."""
    pids = side / "pids"
    alive = []
    for line in pids.read_text().splitlines() if pids.exists() else []:
        pid, _, what = line.partition(" ")
        try:
            p = psutil.Process(int(pid))
            if p.status() != psutil.STATUS_ZOMBIE and " ".join(p.cmdline()) == what:
                alive.append(line)
        except psutil.Error:
            continue
    return alive


def check_worker_goes_on(mgr: Manager) -> None:
    """The worker still runs tasks, on both runners, Python and shell, in one session."""
    futs = [mgr.submit(PythonTask(damaging.quick, i, resources={"cores": 1})) for i in range(6)]
    assert [f.result(timeout=30) for f in futs] == [2 * i for i in range(6)]
    shell = mgr.submit(Task("echo still here; pwd", resources={"cores": 1})).result(timeout=30)
    assert shell.stdout.startswith("still here\n"), shell
    stats = mgr.stats()
    assert (stats.workers, stats.workers_joined, stats.workers_lost) == (1, 1, 0), stats


@pytest.mark.parametrize("name", list(CASES))
def test_a_damaging_task_fails_or_succeeds_alone(
    name: str, cluster: ClusterFactory, pid_tree: PidTree, tmp_path: Path,
) -> None:
    case = CASES[name]
    side = tmp_path / "side"
    (side / "victim").mkdir(parents=True)
    (side / "victim" / "keep.txt").write_text("the worker must not remove this")
    with bounded(20, name), cluster(1, cores=2) as mgr:
        wait_until(connected(mgr, 1))
        inn = PythonTask(damaging.innocent, str(side), 7, resources={"cores": 1})
        inn_fut = mgr.submit(inn)
        wait_until(lambda: (side / "innocent-7").exists())
        bad = mgr.submit(case.make(str(side)))
        if case.error is None:
            assert bad.result(timeout=30) == case.value
        else:
            with pytest.raises(case.error, match=case.match or None):
                bad.result(timeout=30)
        assert not left_behind(side), f"{name}: still running after the task ended"
        assert inn_fut.result(timeout=30) == 7
        assert inn.stdout == "innocent 7 here\n"
        check_worker_goes_on(mgr)
        assert (side / "victim" / "keep.txt").exists(), "the worker emptied a linked directory"
    pid_tree.assert_no_orphans()


@pytest.mark.parametrize("enforce", ["auto", "poll"])
def test_processes_left_behind_are_killed_between_tasks_of_one_runner(
    enforce: str, cluster: ClusterFactory, pid_tree: PidTree, tmp_path: Path,
) -> None:
    """On a one-core worker the same runner runs task after task; each task's leftovers
    (in the group and escaped) are gone when its result arrives, and the runner stays.
    ``poll``: without cgroups, as where the worker cannot make them (not root)."""
    side = tmp_path / "side"
    side.mkdir()
    args = ["--workdir", str(tmp_path / "work"), "--enforce", enforce]
    with bounded(20, "one runner"), cluster(1, cores=1, worker_args=args) as mgr:
        wait_until(connected(mgr, 1))
        runners = set()
        for tag in "12":
            assert mgr.submit(PythonTask(damaging.background, str(side), tag)).result(
                timeout=30) == "left running"
            assert mgr.submit(PythonTask(damaging.escape, str(side), tag)).result(
                timeout=30) == "escaped"
            assert not left_behind(side)
            runners.add(mgr.submit(PythonTask(os.getpid)).result(timeout=30))
        assert len(runners) == 1, "the runner was replaced, not kept warm"
    pid_tree.assert_no_orphans()
