"""``packmule status`` and ``packmule runs``: read a run's status file and run directories.

Both only read files: ``RUN_DIR/status.json`` (which the manager's loop rewrites
about once a second) and the first line of ``RUN_DIR/events.jsonl``. Nothing is
asked of the manager, so any node that shares the file system can look.

A view is built as a list of blocks (lines and tables of strings) and then drawn
either as plain aligned columns (not a terminal: pipes, log files, ``grep``) or
with rich (a terminal).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .._version import __version__
from .events import EVENTS_FILE, EventLogError
from .events import read_header as read_events_header
from .rundir import (
    LATEST,
    RUNS_ENV,
    RunDirError,
    latest_run_dir,
    list_run_dirs,
    runs_base,
)
from .rundir import RUNS_DIR as DEFAULT_RUNS_DIR
from .rundir import resolve as resolve_run_dir
from .rundir import started as run_started
from .status import FORMAT as STATUS_FORMAT
from .status import RUNNING_LIMIT, SENT_AHEAD, STATUS_FILE, WAITING_LIMIT, worker_command
from .status import VERSION as STATUS_VERSION
from .units import cores, duration, megabytes, resources, size

#: A running manager whose status file is older than this may be gone. The file is
#: rewritten about once a second while anything changes (a worker's heartbeat is a
#: change), so a live manager with connected workers is never this quiet.
STALE_AFTER = 60.0
#: Seconds between redraws of ``status --watch``.
DEFAULT_WATCH = 2.0
#: Worker ids are shortened to this many characters in tables.
ID_WIDTH = 12

_STATUS_EPILOG = (
    "RUN_DIR defaults to the latest run under $PACKMULE_RUNS_DIR, or ./packmule-runs: the "
    "one its 'latest' link points to, else the one that started last (packmule report picks "
    "the same). A directory that holds run directories (such as Parsl's runinfo/NNN/) means "
    "the latest of them. Given HOST:PORT, status reads the status.json of each run directory "
    "under $PACKMULE_RUNS_DIR (or ./packmule-runs) and under ./runinfo/*/*/ (where Parsl's "
    "executor puts its run directories) and shows the one whose manager has that address (a "
    "running one, else the newest); "
    "it does not contact the manager. status only reads RUN_DIR/status.json, which the "
    "manager rewrites about once a second, so any node that shares the file system can run "
    "it. "
    "Sizes are decimal (1GB = 1000MB), cores as Nc; worker ids are shortened to 12 "
    "characters (--json has them whole). ALLOCATION 'as requested': each task gets what it "
    "asks for (a whole worker if nothing). "
    "Exit codes: 0 done, 1 no such run or an unreadable or invalid status file, "
    "2 bad command line."
)
_RUNS_EPILOG = (
    "START comes from the first line of each run's events.jsonl (or its status.json); END, "
    "TASKS and FAILED from its status.json. END is 'running' while the manager runs, "
    "'running?' when the status file has not changed for a while (the manager may be gone), "
    "'crashed' when the manager died without stopping. "
    "Exit codes: 0 done, 1 BASE does not exist or is not a directory, 2 bad command line."
)


def _now() -> float:
    """The time now (a function, so that tests can fix it)."""
    return time.time()


class StatusError(Exception):
    """What went wrong reading a run, and what to do about it (exit code 1)."""


# ==================================================================== arguments
def _interval(text: str) -> float | str:
    """Seconds for ``--watch``; a word that is no number is kept: ``status --watch RUN_DIR``
    means the run directory (``--watch`` takes an optional value)."""
    try:
        v = float(text)
    except ValueError:
        return text
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return v


def add_parser(sub: Any) -> None:
    """Add ``status`` and ``runs`` to the ``packmule`` subcommands."""
    st = sub.add_parser(
        "status",
        help="what a run is doing now: categories, workers, tasks",
        description=(
            "Show what a packmule run is doing now, from its status file. By default: one "
            "line per category (tasks WAITING, RUNNING, DONE, FAILED; the ALLOCATION its next "
            "tasks get; the PEAK measured so far), a totals line, and the workers connected "
            "with their committed/total cores, memory, disk and GPUs. --workers, --tasks and "
            "--failed show those lists instead (several may be given). In a terminal the "
            "tables are drawn with rich; otherwise (a pipe, a log file) they are plain columns "
            "two spaces apart, one line per item, for grep and awk."
        ),
        epilog=_STATUS_EPILOG,
    )
    st.add_argument(
        "target", nargs="?", metavar="RUN_DIR | HOST:PORT",
        help="a run directory (or its status.json, or a directory holding run directories), "
             "or a manager's address, looked up in the status files of the run directories "
             "under $PACKMULE_RUNS_DIR (or ./packmule-runs) and ./runinfo/*/*/ "
             "(default: the latest run)")
    st.add_argument("--workers", action="store_true",
                    help="list workers: HOST, committed/total CORES, MEMORY, DISK and GPUS, "
                         "TASKS running there, LAST-HEARD")
    st.add_argument("--tasks", action="store_true",
                    help="list unfinished tasks, running ones first (at most "
                         f"{RUNNING_LIMIT + WAITING_LIMIT:,}): STATE, ATTEMPT, WORKER, REASON "
                         "(for waiting ones: no workers, no worker fits, waiting for room, "
                         "requeued after a lost worker; for running ones not started yet: "
                         f"waiting for a pack, or '{SENT_AHEAD}': sent to a busy worker, which "
                         "starts it when room frees there), SINCE when (queued or started)")
    st.add_argument("--failed", action="store_true",
                    help="list failed tasks (the last 1,000) with their error's type and "
                         "first line")
    st.add_argument("--json", action="store_true",
                    help="print JSON instead of a table: the whole status file, or with "
                         "--workers/--tasks/--failed its header fields and those lists "
                         "(fields as documented in docs/observability.md)")
    st.add_argument("--watch", nargs="?", const=DEFAULT_WATCH, default=None, type=_interval,
                    metavar="SECONDS",
                    help="redraw every SECONDS (default 2) until the run is no longer running, "
                         "then print the final view and exit (1 if the manager's process died "
                         "without recording its end); not in a terminal, print the view each "
                         "time it changes (with --json: one JSON object per line)")
    runs = sub.add_parser(
        "runs",
        help="list run directories",
        description=(
            "List the run directories under BASE, oldest first: RUN (its name; the 'latest' "
            "link is marked), START, END, TASKS submitted, FAILED, SIZE on disk. Reads only "
            "each run's status.json and the first line of its events.jsonl."
        ),
        epilog=_RUNS_EPILOG,
    )
    runs.add_argument("base", nargs="?", metavar="BASE",
                      help="the directory holding run directories "
                           "(default: $PACKMULE_RUNS_DIR, or ./packmule-runs)")
    runs.add_argument("--json", action="store_true", help="print the list as JSON")


# ==================================================================== reading
def read_status(run_dir: Path) -> dict[str, Any]:
    """The status file of ``run_dir``, checked; :class:`StatusError` says what is wrong."""
    path = run_dir / STATUS_FILE
    if not run_dir.exists():
        raise StatusError(f"no run directory {run_dir}: check the path, or list runs with "
                          f"'packmule runs'")
    if not run_dir.is_dir():
        raise StatusError(f"{run_dir} is not a directory: pass a run directory")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        extra = (" (it has an event log: its manager may have just started, or is a packmule "
                 "that writes none)" if (run_dir / EVENTS_FILE).exists() else "")
        raise StatusError(
            f"{run_dir} has no {STATUS_FILE}{extra}: is it a packmule run directory? "
            f"List runs with 'packmule runs'") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StatusError(f"cannot read {path}: {_why(exc)}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StatusError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): "
            f"the file is damaged; the manager rewrites it whole about once a second while "
            f"it runs, so try again, or read {run_dir / EVENTS_FILE}") from None
    check_status(data, path)
    return data  # type: ignore[no-any-return]


def check_status(data: Any, path: Path | str) -> None:
    """Raise :class:`StatusError` unless ``data`` is a status file this packmule reads."""
    if not isinstance(data, dict) or data.get("format") != STATUS_FORMAT:
        raise StatusError(f"{path} is not a packmule status file (its 'format' is not "
                          f"{STATUS_FORMAT!r})")
    version = data.get("version")
    if version != STATUS_VERSION:
        writer = data.get("packmule")
        by = f" (written by packmule {writer})" if isinstance(writer, str) else ""
        raise StatusError(
            f"{path} is status format version {version}{by}, but this packmule "
            f"({__version__}) reads version {STATUS_VERSION}: run the packmule that wrote "
            f"it, or upgrade this one")
    # A manager that stopped on an internal error may write only the first four.
    optional = data.get("state") != "running"
    for key, kind in _FIELDS.items():
        if key not in data and optional and key in _SNAPSHOT:
            continue
        if not isinstance(data.get(key), kind):
            what = "missing" if key not in data else f"a {type(data[key]).__name__}"
            raise StatusError(f"{path} is not a valid packmule status file: {key!r} is {what}"
                              f" (see docs/observability.md for the format)")
    for key in ("categories", "workers", "unfinished", "failed"):
        if not all(isinstance(item, dict) for item in data.get(key, [])):
            raise StatusError(f"{path} is not a valid packmule status file: {key!r} must be "
                              f"a list of objects")


#: The status file's fields and their types; a reader needs these.
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "address": str, "state": str, "started": (int, float), "updated": (int, float),
    "tasks": dict, "resources": dict, "categories": list, "workers": list,
    "unfinished": list, "failed": list,
}
#: Those of the snapshot proper, which a manager's final write after an internal error
#: may lack (its state is then ``crashed``).
_SNAPSHOT = ("tasks", "resources", "categories", "workers", "unfinished", "failed")


def read_header(run_dir: Path) -> dict[str, Any] | None:
    """The header of ``run_dir/events.jsonl`` (only its first line is read), or None."""
    try:
        return read_events_header(run_dir / EVENTS_FILE)
    except (OSError, EventLogError):
        return None


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _split_address(text: str) -> tuple[str, int] | None:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in host:
        return None
    return host.strip("[]").lower(), int(port)


def _same_address(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Same port, and the same host or the same short host name (node1 vs node1.cluster)."""
    short = a[0].split(".")[0] == b[0].split(".")[0]
    named = a[0][:1].isalpha() and b[0][:1].isalpha()  # not IP addresses
    return a[1] == b[1] and (a[0] == b[0] or (short and named))


#: Where Parsl's executor puts its run directories: ``runinfo/NNN/<executor label>/``
#: under the directory the Parsl program ran in.
PARSL_RUNINFO = "runinfo"


def address_candidates(base: Path) -> list[Path]:
    """The run directories ``status HOST:PORT`` looks through: those under ``base`` (and
    the one its ``latest`` points to), and Parsl's ``./runinfo/*/*/``."""
    dirs = list_run_dirs(base)
    latest = latest_run_dir(base)  # it may point elsewhere
    with contextlib.suppress(OSError):  # one may be gone meanwhile
        if latest is not None and latest.is_dir() \
                and not any(os.path.samefile(latest, d) for d in dirs):
            dirs.append(latest)
    with contextlib.suppress(OSError):
        for parsl_run in sorted(Path(PARSL_RUNINFO).iterdir()):
            if parsl_run.is_dir():
                dirs.extend(list_run_dirs(parsl_run))
    return dirs


def find_by_address(base: Path, address: str) -> Path:
    """The newest run (running ones first) among :func:`address_candidates` whose
    manager has ``address``, from their status files."""
    want = _split_address(address)
    assert want is not None
    found: list[tuple[bool, float, str, Path]] = []
    for d in address_candidates(base):
        try:
            status = json.loads((d / STATUS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        got = _split_address(str(status.get("address", ""))) if isinstance(status, dict) \
            else None
        if got and _same_address(want, got):
            running = status.get("state") == "running"
            found.append((running, run_started(d) or 0.0, d.name, d))
    if not found:
        raise StatusError(
            f"no run under {base} or ./{PARSL_RUNINFO}/*/*/ has a manager at {address}. "
            f"packmule status reads RUN_DIR/{STATUS_FILE}, which any node sharing the file "
            f"system can read, and does not contact the manager: pass the run directory "
            f"(the manager logs it at start), or set ${RUNS_ENV} to the directory its runs "
            f"are under")
    return max(found)[3]


def resolve(target: str | None) -> Path:
    """The run directory that ``packmule status [target]`` means: as
    :func:`packmule.observe.rundir.resolve`, and a manager's ``HOST:PORT`` (that is no
    path) found by :func:`find_by_address`."""
    if target is not None and not Path(target).expanduser().exists() \
            and _split_address(target) is not None:
        return find_by_address(runs_base(), target)
    try:
        return resolve_run_dir(target)
    except RunDirError as exc:
        raise StatusError(str(exc)) from None


# ==================================================================== numbers
def used_of(committed: Any, total: Any, key: str) -> str:
    """``committed/total`` of one resource: ``2/4`` cores, ``1GB/4GB`` memory."""
    c = committed.get(key, 0) if isinstance(committed, dict) else 0
    t = total.get(key, 0) if isinstance(total, dict) else 0
    fmt = cores if key in ("cores", "gpus") else megabytes
    return f"{fmt(c)}/{fmt(t)}"


def short_id(worker: Any) -> str:
    """A worker's id in tables: its first :data:`ID_WIDTH` characters (as ``docker ps``
    shortens ids; ``--json`` has them whole)."""
    return str(worker)[:ID_WIDTH] if worker else "-"


def clock(t: float, since: float | None = None) -> str:
    """A local time: ``2025-12-03 10:15:02``, or only ``10:18:02`` on the day of ``since``."""
    lt = time.localtime(t)
    if since is not None and time.localtime(since)[:3] == lt[:3]:
        return time.strftime("%H:%M:%S", lt)
    return time.strftime("%Y-%m-%d %H:%M:%S", lt)


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _display_path(p: Path) -> str:
    try:
        rel = os.path.relpath(p)
    except ValueError:
        return str(p)
    return rel if not rel.startswith("..") else str(p.absolute())


# ==================================================================== views
@dataclass
class Line:
    text: str
    style: str = ""


@dataclass
class Table:
    """Columns (a trailing ``>`` right-aligns one), rows, an optional totals row."""

    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    total: list[str] | None = None
    #: For rich: a style per column (by name), e.g. {"REASON": "yellow"}.
    styles: dict[str, str] = field(default_factory=dict)


Block = Line | Table


def manager_alive(status: dict[str, Any], run_dir: Path) -> bool | None:
    """Whether the manager's process still runs: known only on the host it ran on."""
    header = read_header(run_dir)
    pid = status.get("pid", header.get("pid") if header else None)
    host = header.get("host") if header else None
    if not isinstance(pid, int) or pid <= 0 or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by someone else
    return True


def run_state(status: dict[str, Any], run_dir: Path, now: float) -> tuple[str, str | None]:
    """The state to show (``running``, ``stopped``, ``crashed``, or ``gone``: the file says
    running but the manager's process is dead) and a warning, if any."""
    state = str(status["state"])
    if state != "running":
        return state, None
    alive = manager_alive(status, run_dir)
    pid = status.get("pid")
    if alive is False:
        return "gone", (
            f"warning: the status file says running, but the manager's process ({pid}) is no "
            f"longer running on this host: it was killed before it could record its end. See "
            f"manager.log and manager.crash in the run directory")
    age = now - float(status["updated"])
    if alive is None and age > STALE_AFTER:  # on another host: its silence is all we know
        idle = "" if status.get("workers") else ", or idle with no worker connected"
        return state, (
            f"warning: the run is running, but its status file was last updated "
            f"{duration(age)} ago: the manager may be gone{idle} (it rewrites the file about "
            f"once a second while anything happens)")
    return state, None


def header_lines(status: dict[str, Any], run_dir: Path, now: float) -> list[Line]:
    state, warning = run_state(status, run_dir, now)
    started, updated = float(status["started"]), float(status["updated"])
    where = f"run {_display_path(run_dir)}, manager {status['address']}"
    if state == "running":
        text = (f"{where}: running for {duration(now - started)}, "
                f"updated {duration(now - updated)} ago")
    elif state == "gone":
        text = (f"{where}: gone (last updated {clock(updated)}, "
                f"{duration(now - updated)} ago, after {duration(updated - started)})")
    else:
        text = (f"{where}: {state} at {clock(updated)} ({duration(now - updated)} ago) "
                f"after {duration(updated - started)}")
    lines = [Line(text, "bold")]
    if warning:
        lines.append(Line(warning, "bold red"))
    return lines


def _ref(status: dict[str, Any], now: float) -> float:
    """The time to measure ages against: now while running, else when it ended."""
    return now if status["state"] == "running" else float(status["updated"])


def _count(d: Any, key: str) -> int:
    v = d.get(key, 0) if isinstance(d, dict) else 0
    return int(v) if isinstance(v, int | float) else 0


def summary_view(status: dict[str, Any], now: float) -> list[Block]:
    """Categories, a totals line, and one line about the workers."""
    if "categories" not in status:
        return [Line("the manager stopped on an internal error before it could record its "
                     "tasks and workers: see manager.log in the run directory", "yellow")]
    out: list[Block] = []
    cats = status.get("categories", [])
    tasks = status.get("tasks", {})
    if cats:
        t = Table(["CATEGORY", "WAITING>", "RUNNING>", "DONE>", "FAILED>", "ALLOCATION",
                   "PEAK"], styles={"FAILED>": "red", "RUNNING>": "green"})
        for c in cats:
            alloc = c.get("allocation")
            if not alloc:  # nothing drawn ahead: each task's own request (or a whole worker)
                alloc = "drawn per task" if "bucketing" in str(c.get("mode")) else "as requested"
            t.rows.append([str(c.get("name", "?")), *(str(_count(c, k)) for k in
                           ("waiting", "running", "done", "failed")),
                           resources(alloc) if isinstance(alloc, dict) else alloc,
                           resources(c.get("peak"))])
        t.total = ["TOTAL", *(str(_count(tasks, k)) for k in
                              ("waiting", "running", "done", "failed")), "", ""]
        out.append(t)
    else:
        out.append(Line("no tasks submitted yet"))
    cancelled = _count(tasks, "cancelled")
    if cancelled:
        out.append(Line(f"{cancelled} task{'s' * (cancelled != 1)} cancelled"))
    res = status.get("resources", {})
    com, tot = res.get("committed"), res.get("total")
    n = len(status.get("workers", []))
    out.append(Line(
        f"{n} worker{'s' * (n != 1)} connected, committed/total: "
        f"cores {used_of(com, tot, 'cores')}, memory {used_of(com, tot, 'memory')}, "
        f"disk {used_of(com, tot, 'disk')}, gpus {used_of(com, tot, 'gpus')}"))
    if not n and _count(tasks, "waiting") and status["state"] == "running":
        password = Path(str(status.get("run_dir", ""))) / "password"
        out.append(Line(
            "tasks are waiting and no worker is connected: start one on each node with "
            f"'{worker_command(status['address'], password if password.is_file() else 'FILE')}'",
            "yellow"))
    return out


def workers_view(status: dict[str, Any], now: float) -> list[Block]:
    workers = status.get("workers", [])
    if not workers:
        return [Line("no workers connected")]
    ref = _ref(status, now)
    t = Table(["WORKER", "HOST", "CORES>", "MEMORY>", "DISK>", "GPUS>", "TASKS>",
               "LAST-HEARD>"])
    for w in workers:
        com, tot = w.get("committed"), w.get("resources")
        heard = w.get("last_heard")
        t.rows.append([
            short_id(w.get("worker")), str(w.get("host", "?")),
            *(used_of(com, tot, k) for k in ("cores", "memory", "disk", "gpus")),
            str(_count(w, "tasks")),
            f"{duration(ref - heard)} ago" if isinstance(heard, int | float) else "-"])
    res = status.get("resources", {})
    com, tot = res.get("committed"), res.get("total")
    n = len(workers)
    t.total = ["TOTAL", f"{n} worker{'s' * (n != 1)}",
               *(used_of(com, tot, k) for k in ("cores", "memory", "disk", "gpus")),
               str(sum(_count(w, "tasks") for w in workers)), ""]
    return [t]


def tasks_view(status: dict[str, Any], now: float) -> list[Block]:
    unfinished = status.get("unfinished", [])
    omitted = _count(status, "unfinished_omitted")
    if not unfinished and not omitted:
        return [Line("no unfinished tasks")]
    ref = _ref(status, now)
    t = Table(["TASK>", "CATEGORY", "LABEL", "STATE", "ATTEMPT>", "WORKER", "REASON",
               "SINCE>"], styles={"REASON": "yellow", "STATE": "cyan"})
    for u in unfinished:
        since = u.get("since")
        t.rows.append([
            str(u.get("task", "?")), str(u.get("category", "?")),
            _shorten(str(u.get("label") or "-"), 40), str(u.get("state", "?")),
            str(u.get("attempt", "-")), short_id(u.get("worker")),
            str(u.get("reason") or "-"),
            duration(ref - since) if isinstance(since, int | float) else "-"])
    tasks = status.get("tasks", {})
    running, waiting = _count(tasks, "running"), _count(tasks, "waiting")
    ahead = sum(1 for u in unfinished if u.get("reason") == SENT_AHEAD)
    some = "of those listed " if omitted else ""
    sent = f" ({ahead} {some}sent ahead, not started yet)" if ahead else ""
    out: list[Block] = [t, Line(f"{running + waiting} unfinished: {running} running{sent}, "
                                f"{waiting} waiting")]
    if omitted:
        listed_running = sum(1 for u in unfinished if u.get("state") == "running")
        more_running = max(0, running - listed_running)
        more_waiting = max(0, waiting - (len(unfinished) - listed_running))
        out.append(Line(
            f"note: {omitted} more unfinished task{'s' * (omitted != 1)} not listed "
            f"({more_running} running, {more_waiting} waiting): the status file lists at most "
            f"{RUNNING_LIMIT:,} running and {WAITING_LIMIT:,} waiting tasks (either kind "
            f"using room the other leaves), running ones first; the event log events.jsonl "
            f"has every task", "yellow"))
    return out


def failed_view(status: dict[str, Any], now: float) -> list[Block]:
    failed = status.get("failed", [])
    omitted = _count(status, "failed_omitted")
    if not failed and not omitted:
        return [Line("no failed tasks")]
    t = Table(["TASK>", "CATEGORY", "LABEL", "ATTEMPTS>", "ERROR"], styles={"ERROR": "red"})
    for f in failed:
        message = str(f.get("message") or "").strip()
        message = message.splitlines()[0] if message else ""
        error = str(f.get("error") or "?") + (f": {message}" if message else "")
        t.rows.append([str(f.get("task", "?")), str(f.get("category", "?")),
                       _shorten(str(f.get("label") or "-"), 40), str(f.get("attempts", "-")),
                       _shorten(error, 200)])
    n = _count(status.get("tasks", {}), "failed")
    out: list[Block] = [t, Line(f"{n} failed task{'s' * (n != 1)}")]
    if omitted:
        out.append(Line(f"note: {omitted} earlier failure{'s' * (omitted != 1)} not listed "
                        f"(the status file keeps the last {len(failed)}); the event log "
                        f"events.jsonl has them all", "yellow"))
    return out


VIEWS = {"workers": workers_view, "tasks": tasks_view, "failed": failed_view}
#: The status file's fields that every view's JSON holds.
JSON_HEADER = ("format", "version", "packmule", "address", "run_dir", "pid", "started",
               "updated", "state", "tasks", "resources")
JSON_KEYS = {"workers": ("workers",), "tasks": ("unfinished", "unfinished_omitted"),
             "failed": ("failed", "failed_omitted")}


def chosen(args: argparse.Namespace) -> list[str]:
    return [v for v in VIEWS if getattr(args, v, False)]


def status_blocks(status: dict[str, Any], run_dir: Path, views: Sequence[str],
                  now: float) -> list[Block]:
    """The header, then each chosen view (the summary when none is), a blank line apart."""
    out: list[Block] = list(header_lines(status, run_dir, now))
    for fn in [VIEWS[v] for v in views] or [summary_view]:
        out.append(Line(""))
        out.extend(fn(status, now))
    return out


def status_json(status: dict[str, Any], views: Sequence[str]) -> dict[str, Any]:
    if not views:
        return status
    keys = [*JSON_HEADER, *(k for v in views for k in JSON_KEYS[v])]
    return {k: status[k] for k in keys if k in status}


# ==================================================================== drawing
def plain(blocks: Iterable[Block]) -> str:
    """Aligned columns two spaces apart; no colours, no box characters."""
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Line):
            lines.append(b.text)
            continue
        right = [c.endswith(">") for c in b.columns]
        head = [c.rstrip(">") for c in b.columns]
        body = [*b.rows, *([b.total] if b.total else [])]
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        for row in [head, *body]:
            cells = [cell.rjust(w) if r else cell.ljust(w)
                     for cell, w, r in zip(row, widths, right, strict=True)]
            lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def rich_renderable(blocks: Iterable[Block]) -> Any:
    """The same blocks for a terminal: rich tables with a rule above the totals."""
    from rich.box import Box
    from rich.console import Group
    from rich.table import Table as RichTable
    from rich.text import Text

    # Rules under the column names and above the totals; no other lines.
    rules = Box("    \n    \n ── \n    \n ── \n    \n    \n    \n")
    parts: list[Any] = []
    for b in blocks:
        if isinstance(b, Line):
            parts.append(Text(b.text, style=b.style))
            continue
        t = RichTable(box=rules, pad_edge=False, show_edge=False,
                      header_style="bold")
        for c in b.columns:
            name = c.rstrip(">")
            wrap = name in ("LABEL", "ERROR", "REASON")
            t.add_column(name, justify="right" if c.endswith(">") else "left",
                         style=b.styles.get(c, ""), no_wrap=not wrap,
                         overflow="fold" if wrap else "ellipsis")
        # Cells as Text: a label like "echo [x]" is not rich markup.
        for i, row in enumerate(b.rows):
            t.add_row(*map(Text, row), end_section=i == len(b.rows) - 1)
        if b.total:
            t.add_row(*map(Text, b.total), style="bold")
        parts.append(t)
    return Group(*parts)


def _console(stream: TextIO | None = None) -> Any:
    from rich.console import Console

    return Console(file=stream, highlight=False, soft_wrap=False)


def _emit(blocks: list[Block], tty: bool) -> None:
    if tty:
        _console().print(rich_renderable(blocks))
    else:
        sys.stdout.write(plain(blocks))


# ==================================================================== commands
def status_main(args: argparse.Namespace) -> int:
    if isinstance(args.watch, str):  # status --watch RUN_DIR
        if args.target is not None:
            print(f"packmule status: --watch takes seconds, got {args.watch!r}", file=sys.stderr)
            return 2
        args.target, args.watch = args.watch, DEFAULT_WATCH
    run_dir = resolve(args.target)
    views = chosen(args)
    status = read_status(run_dir)
    if args.watch is not None:
        return watch(run_dir, views, args.watch, args.json)
    if args.json:
        json.dump(status_json(status, views), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        _emit(status_blocks(status, run_dir, views, _now()), sys.stdout.isatty())
    return 0


def _reads(run_dir: Path, interval: float) -> Iterator[tuple[dict[str, Any], bool]]:
    """The status, again and again ``interval`` apart, with whether the run has ended
    (stopped or crashed, or its manager's process died); a read error ends it."""
    while True:
        status = read_status(run_dir)
        state, _ = run_state(status, run_dir, _now())
        yield status, state != "running"
        if state != "running":
            return
        time.sleep(interval)


def watch(run_dir: Path, views: Sequence[str], interval: float, as_json: bool) -> int:
    """Redraw until the run ends; then print the final view. 0 when it stopped or
    crashed, 1 when its manager's process died without saying so."""
    status: dict[str, Any] = {}
    tty = sys.stdout.isatty() and not as_json
    try:
        if tty:
            from rich.live import Live

            console = _console()
            with Live(console=console, auto_refresh=False, transient=True,
                      vertical_overflow="crop") as live:
                for status, _ended in _reads(run_dir, interval):
                    blocks = status_blocks(status, run_dir, views, _now())
                    live.update(rich_renderable(blocks), refresh=True)
            console.print(rich_renderable(status_blocks(status, run_dir, views, _now())))
        else:
            last = None
            for status, ended in _reads(run_dir, interval):
                if status["updated"] == last and not ended:
                    continue
                last = status["updated"]
                if as_json:
                    sys.stdout.write(json.dumps(status_json(status, views)) + "\n")
                else:
                    sys.stdout.write(plain(status_blocks(status, run_dir, views,
                                                         _now())) + "\n")
                sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    gone = run_state(status, run_dir, _now())[0] == "gone"
    return 1 if gone else 0


@dataclass
class RunInfo:
    run: str
    path: str
    latest: bool
    started: float | None
    ended: float | None
    state: str  # running, running?, stopped, crashed, or unknown (no readable status file)
    tasks: int | None
    failed: int | None
    size: int
    problem: str | None = None


def dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def run_info(d: Path, latest: Path | None, now: float) -> RunInfo:
    status: dict[str, Any] | None = None
    problem = None
    try:
        status = read_status(d)
    except StatusError as exc:
        problem = str(exc)
    started = run_started(d)
    ended = tasks = failed = None
    state = "unknown"
    if status is not None:
        state, warning = run_state(status, d, now)
        if state == "gone":
            state = "crashed"
        elif warning is not None:
            state = "running?"
        if state not in ("running", "running?"):
            ended = float(status["updated"])
        counts = status.get("tasks", {})
        tasks = sum(_count(counts, k) for k in
                    ("waiting", "running", "done", "failed", "cancelled"))
        failed = _count(counts, "failed")
    elif (d / EVENTS_FILE).exists() and read_header(d) is None:
        problem = problem or f"{d / EVENTS_FILE} has no readable header"
    is_latest = latest is not None and os.path.realpath(d) == os.path.realpath(latest)
    return RunInfo(d.name, str(d.absolute()), is_latest, started, ended, state, tasks,
                   failed, dir_size(d), problem)


def list_runs(base: Path, now: float) -> list[RunInfo]:
    """The runs under ``base``, oldest first (by start, then name)."""
    link = base / LATEST
    latest = link if link.is_symlink() or link.is_dir() else None
    infos = [run_info(d, latest, now) for d in list_run_dirs(base)]
    infos.sort(key=lambda r: (r.started if r.started is not None else float("inf"), r.run))
    return infos


def runs_blocks(base: Path, infos: list[RunInfo]) -> list[Block]:
    if not infos:
        return [Line(f"no run directories under {_display_path(base)}")]
    t = Table(["RUN", "START", "END", "TASKS>", "FAILED>", "SIZE>"],
              styles={"FAILED>": "red"})
    for r in infos:
        if r.state in ("running", "running?", "crashed", "unknown"):
            end = "-" if r.state == "unknown" else r.state
        else:
            end = clock(r.ended, r.started) if r.ended is not None else "-"
        t.rows.append([r.run + (" (latest)" if r.latest else ""),
                       clock(r.started) if r.started is not None else "-", end,
                       "-" if r.tasks is None else str(r.tasks),
                       "-" if r.failed is None else str(r.failed), size(r.size)])
    n = len(infos)
    t.total = [f"TOTAL {n} run{'s' * (n != 1)}", "", "",
               str(sum(r.tasks or 0 for r in infos)), str(sum(r.failed or 0 for r in infos)),
               size(sum(r.size for r in infos))]
    out: list[Block] = [Line(f"runs under {_display_path(base)}", "bold"), Line(""), t]
    for r in infos:
        if r.problem:
            out.append(Line(f"{r.run}: {r.problem}", "yellow"))
    if any(r.state == "running?" for r in infos):
        out.append(Line(f"running?: the status file has not changed for over "
                        f"{duration(STALE_AFTER)}; the manager may be gone", "yellow"))
    return out


def runs_main(args: argparse.Namespace) -> int:
    base = Path(args.base).expanduser() if args.base else runs_base()
    if not base.is_dir():
        what = "does not exist" if not base.exists() else "is not a directory"
        hint = (f"A Manager makes run directories under ./{DEFAULT_RUNS_DIR} of the directory "
                f"its program ran in, or under ${RUNS_ENV}: pass that directory as BASE")
        raise StatusError(f"{base} {what}. {hint}")
    # A run directory itself is listed alone.
    alone = (base / STATUS_FILE).is_file() or (base / EVENTS_FILE).is_file()
    infos = [run_info(base, None, _now())] if alone else list_runs(base, _now())
    if args.json:
        json.dump([r.__dict__ for r in infos], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        _emit(runs_blocks(base, infos), sys.stdout.isatty())
    return 0


def main(args: argparse.Namespace) -> int:
    """``packmule status`` or ``packmule runs``; errors are one line on standard error."""
    try:
        return status_main(args) if args.command == "status" else runs_main(args)
    except StatusError as exc:
        print(f"packmule {args.command}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. piped into head
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
