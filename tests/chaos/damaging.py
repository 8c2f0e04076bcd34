"""Task bodies that damage what the worker uses, and the innocent task that runs beside them.

Stdlib only: runners import this module to run the tasks, so it stays light.
Tasks talk to the test through files in a *side* directory (outside the
worker's work directory): ``mark`` files, and ``pids``, one line per process
a task left behind (``pid argv0-and-args``), which the test checks are gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
import sys
import time

#: How long an innocent task waits for the damage to be done (seconds).
PATIENCE = 30.0


def mark(side: str, name: str) -> None:
    with open(os.path.join(side, name), "w") as f:
        f.write(str(os.getpid()))


def _note_pid(side: str, pid: int, what: str) -> None:
    fd = os.open(os.path.join(side, "pids"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{pid} {what}\n".encode())
    finally:
        os.close(fd)


def innocent(side: str, key: int) -> int:
    """Runs beside a damaging task on the same worker: starts, waits until the damage
    is done, writes to stdout and returns its key."""
    mark(side, f"innocent-{key}")
    deadline = time.monotonic() + PATIENCE
    while not os.path.exists(os.path.join(side, "damage-done")):
        if time.monotonic() > deadline:
            raise TimeoutError("the damaging task never said it was done")
        time.sleep(0.01)
    print(f"innocent {key} here")
    return key


def quick(x: int) -> int:
    return x * 2


# ---------------------------------------------------------------- directories


def remove_sandbox(side: str) -> str:
    shutil.rmtree(os.environ["PACKMULE_SANDBOX"])
    mark(side, "damage-done")
    return "removed"


def remove_radio(side: str) -> str:
    shutil.rmtree(os.environ["PACKMULE_RADIO_DIR"])
    mark(side, "damage-done")
    return "removed"


def remove_workdir(side: str) -> str:
    """The worker's work directory: every sandbox, the file cache, the runners' files."""
    shutil.rmtree(os.path.dirname(os.environ["PACKMULE_SANDBOX"]))
    mark(side, "damage-done")
    return "removed"


def sandbox_to_symlink(side: str) -> str:
    """Replace the sandbox by a link to a directory of the test's: the worker must not
    empty that directory when it clears the sandbox."""
    sandbox = os.environ["PACKMULE_SANDBOX"]
    os.chdir("/")
    shutil.rmtree(sandbox)
    os.symlink(os.path.join(side, "victim"), sandbox)
    mark(side, "damage-done")
    return "linked"


def radio_fifo(side: str) -> str:
    """A FIFO where the worker reads monitoring messages: reading it would block."""
    os.mkfifo(os.path.join(os.environ["PACKMULE_RADIO_DIR"], "stuck.msg"))
    mark(side, "damage-done")
    return "fifo"


def chdir_into_removed(side: str) -> str:
    here = os.path.join(os.environ["PACKMULE_SANDBOX"], "deep")
    os.mkdir(here)
    os.chdir(here)
    os.rmdir(here)
    mark(side, "damage-done")
    return "nowhere"


# ---------------------------------------------------------------- streams, groups


def close_streams(side: str) -> str:
    sys.stdout.close()
    sys.stderr.close()
    sys.stdin.close()
    for fd in (0, 1, 2):
        os.close(fd)
    mark(side, "damage-done")
    return "closed"


def own_session(side: str) -> str:
    """Try to leave the runner's process group and session (the runner leads both)."""
    mark(side, "damage-done")
    with contextlib.suppress(PermissionError):
        os.setpgid(0, 0)
    os.setsid()
    return "left"


def garble_channel(side: str) -> str:
    """Write a well-framed but malformed reply into the runner's channel to its worker."""
    channel = int(sys.argv[1])  # python -m packmule.worker.runner CHANNEL BOARD OUT ERR
    junk = b"\x93\xa4Done\x01\x02"
    mark(side, "damage-done")  # first: the worker may kill this runner at once
    os.write(channel, struct.pack("!i", len(junk)) + junk)
    return "garbled"


def misframe_channel(side: str, header: bytes) -> str:
    """Write a broken frame header into the runner's channel (a negative or huge length,
    or one that promises more than follows); the runner's own reply comes after it."""
    channel = int(sys.argv[1])
    mark(side, "damage-done")
    os.write(channel, header)
    return "misframed"


# ---------------------------------------------------------------- processes left behind


def background(side: str, tag: str) -> str:
    """Leave children running: one from subprocess, one forked."""
    proc = subprocess.Popen(["sleep", f"300.{tag}1"])
    _note_pid(side, proc.pid, f"sleep 300.{tag}1")
    pid = os.fork()
    if pid == 0:
        os.execvp("sleep", ["sleep", f"300.{tag}2"])
    _note_pid(side, pid, f"sleep 300.{tag}2")
    mark(side, "damage-done")
    return "left running"


def _escape(side: str, tag: str) -> None:
    """A grandchild in a session of its own whose parent has exited (a daemon)."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        os.setsid()
        grandchild = os.fork()
        if grandchild == 0:
            os.execvp("sleep", ["sleep", f"300.{tag}3"])
        os.write(w, str(grandchild).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(child, 0)
    with os.fdopen(r) as f:
        _note_pid(side, int(f.read()), f"sleep 300.{tag}3")


def escape(side: str, tag: str) -> str:
    _escape(side, tag)
    mark(side, "damage-done")
    return "escaped"


def escape_then_hang(side: str, tag: str) -> str:
    """Escape, then run past the task's time limit: killed with its runner."""
    _escape(side, tag)
    mark(side, "damage-done")
    time.sleep(PATIENCE)
    return "not killed"
