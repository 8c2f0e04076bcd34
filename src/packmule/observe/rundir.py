"""Run directories: ``./packmule-runs/NNN-YYYYMMDD-HHMMSS/``, one per Manager, with
a ``latest`` link to the newest; and the one way the tools find one
(:func:`resolve`).

``$PACKMULE_RUNS_DIR`` replaces ``./packmule-runs``. Numbers count up from
001 (three digits or more). Two managers starting at once get different
numbers without a lock: each makes its directory with ``mkdir`` (which only
one can win for a name), then looks for any other directory of the same
number (another second's name); if there is one, it removes its own and
tries the next number. Of two that took a number, the one that made its
directory later always sees the other, so at most one keeps it (both may
move on). The ``latest`` link is replaced atomically (a new link renamed
over it), once the manager has started.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import time
from pathlib import Path

from .events import EVENTS_FILE, EventLogError, read_header

#: The environment variable that replaces the base directory ``./packmule-runs``.
RUNS_ENV = "PACKMULE_RUNS_DIR"
#: The base directory's name (under the current directory) when the variable is unset.
RUNS_DIR = "packmule-runs"
#: The link to the newest run directory, in the base directory.
LATEST = "latest"

_NAME = re.compile(r"^(\d{3,})-\d{8}-\d{6}$")
#: The status file's name (as observe.status has it; not imported: that module is heavy).
_STATUS_FILE = "status.json"


class RunDirError(FileNotFoundError):
    """No run directory where one was looked for; the message says what to do."""


def runs_base() -> Path:
    """Where run directories are made: ``$PACKMULE_RUNS_DIR``, else ``./packmule-runs``."""
    return Path(os.environ.get(RUNS_ENV) or RUNS_DIR)


def run_number(path: str | Path) -> int | None:
    """The number of a run directory's name (``007-20260101-120000`` -> 7), or None."""
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a run directory: it holds a status file or an event log (or
    has a run directory's name: a manager that has just made it)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    return (run_number(path) is not None or (path / _STATUS_FILE).is_file()
            or (path / EVENTS_FILE).is_file())


def list_run_dirs(base: str | Path | None = None) -> list[Path]:
    """The run directories directly under ``base`` (default :func:`runs_base`; not the
    ``latest`` link): numbered ones by number, then any others by name."""
    base = Path(base) if base is not None else runs_base()
    try:
        entries = [Path(e.path) for e in os.scandir(base)]
    except OSError:
        return []
    found = [((n if (n := run_number(p)) is not None else math.inf), p.name, p)
             for p in entries if p.name != LATEST and is_run_dir(p)]
    return [p for *_, p in sorted(found)]


def started(run_dir: Path) -> float | None:
    """When a run started: its event log header's ``t``, else its status file's
    ``started``; None if neither can be read."""
    with contextlib.suppress(OSError, EventLogError):
        t = read_header(run_dir / EVENTS_FILE).get("t")
        if isinstance(t, int | float):
            return float(t)
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads((run_dir / _STATUS_FILE).read_text(encoding="utf-8"))
        t = doc.get("started") if isinstance(doc, dict) else None
        if isinstance(t, int | float):
            return float(t)
    return None


def latest_run_dir(base: str | Path | None = None) -> Path | None:
    """The run directory ``base/latest`` points to (by its own name), else the run under
    ``base`` that started last (by :func:`started`; then by number and name), or None."""
    base = Path(base) if base is not None else runs_base()
    link = base / LATEST
    if link.is_dir():
        if not link.is_symlink():
            return link
        with contextlib.suppress(OSError):
            target = Path(os.readlink(link))
            return target if target.is_absolute() else base / target
    found = list_run_dirs(base)
    if not found:
        return None
    # Sorted already by number and name: max() keeps the last of equal start times.
    return max(reversed(found), key=lambda p: started(p) or 0.0)


def resolve(target: str | Path | None) -> Path:
    """The run directory that ``packmule status`` and ``packmule report`` mean.

    None: the latest under :func:`runs_base` (:func:`latest_run_dir`). A run
    directory's ``status.json`` or ``events.jsonl``: its directory. A directory
    holding run directories (a runs base, or Parsl's ``runinfo/NNN/``): the
    latest of them. Anything else, as given (the caller says what is missing).
    :class:`RunDirError` when there is no run to default to."""
    if target is None:
        base = runs_base()
        if not base.is_dir():
            raise RunDirError(
                f"no run directory: {base} does not exist. A Manager makes its run directory "
                f"under ./{RUNS_DIR} of the directory its program ran in (or ${RUNS_ENV}); "
                f"pass that run directory, or set ${RUNS_ENV}")
        latest = latest_run_dir(base)
        if latest is None:
            raise RunDirError(f"no run directories under {base}: pass a run directory")
        return latest
    path = Path(target).expanduser()
    if path.name in (_STATUS_FILE, EVENTS_FILE) and path.is_file():
        return path.parent
    if path.is_dir() and not (path / _STATUS_FILE).is_file() \
            and not (path / EVENTS_FILE).is_file():
        inner = latest_run_dir(path)
        if inner is not None:
            return inner
    return path


def new_run_dir(base: str | Path | None = None) -> Path:
    """Make the next run directory under ``base`` (default :func:`runs_base`, made if
    missing). OSError if it cannot be made."""
    base = Path(base) if base is not None else runs_base()
    base.mkdir(parents=True, exist_ok=True)
    taken = [run_number(p) or 0 for p in list_run_dirs(base)]
    n = max(taken, default=0) + 1
    while True:
        name = f"{n:03d}-{time.strftime('%Y%m%d-%H%M%S')}"
        path = base / name
        try:
            path.mkdir()
        except FileExistsError:
            n += 1
            continue
        # Another manager may have made this number under another second's name: if any
        # directory of this number is there, give it up. Whoever made theirs later sees
        # the other one, so two never both keep a number.
        if any(p.name != name and run_number(p) == n for p in base.glob(f"{n:03d}-*")):
            with contextlib.suppress(OSError):
                path.rmdir()
            n += 1
            continue
        return path


def point_latest(run_dir: Path) -> None:
    """Point ``latest`` (next to ``run_dir``) at it, atomically; OSError if it cannot."""
    base = run_dir.parent
    temp = base / f".{LATEST}.{os.getpid()}.{time.monotonic_ns()}"
    os.symlink(run_dir.name, temp)
    try:
        os.replace(temp, base / LATEST)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def remove_run_dir(run_dir: Path, base_made: Path | None = None) -> None:
    """Remove a run directory a Manager made (its constructor failed), and the base
    directory ``base_made`` too when it made that and it is left empty."""
    shutil.rmtree(run_dir, ignore_errors=True)
    if base_made is not None:
        with contextlib.suppress(OSError):
            base_made.rmdir()
