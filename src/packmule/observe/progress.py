"""Progress in the program: ``packmule.progress(futures)`` and ``Manager.progress()``.

Blocks until everything it watches has finished. In a terminal it draws a
rich progress bar per category (finished/total, failures, rate, time left)
under a total bar; anywhere else (a batch job's log file) it prints one plain
line every 30 seconds and a last one at the end::

    packmule: 120/500 done (3 failed), simulate 100/400, big 20/100; 12.3 tasks/s, ETA 30s

"Done" counts every finished task, failed ones included. Nothing is printed
unless it is called.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, Protocol, TextIO, cast

from .units import duration

if TYPE_CHECKING:
    from ..manager import Manager

__all__ = ["PLAIN_INTERVAL", "progress"]

#: Seconds between two plain lines when the output is not a terminal.
PLAIN_INTERVAL = 30.0
#: Seconds between two looks at a Manager's status while bars are drawn.
POLL = 0.5
#: The category of a future that names none (neither packmule's nor Parsl's).
DEFAULT_CATEGORY = "default"

#: Per category: (finished, failed, total). Finished includes failed.
Counts = dict[str, tuple[int, int, int]]


def progress(what: Manager | Iterable[Future[Any]], *, file: IO[str] | None = None,
             interval: float | None = None) -> None:
    """Show progress until ``what`` has finished: a Manager (every task it was given),
    or futures (``Manager.submit``'s, or Parsl AppFutures).

    In a terminal (``file``, default standard error): a progress bar per
    category with finished/total, failures, rate and time left, and a total
    bar. Otherwise a plain summary line every ``interval`` seconds (default
    30) and a last one when everything has finished. A future's category is
    its task's category; a Parsl AppFuture's, its app's name. Ctrl-C stops
    it (KeyboardInterrupt) and leaves the terminal as it was.
    """
    if interval is not None and (isinstance(interval, bool)
                                 or not isinstance(interval, (int, float)) or not interval > 0):
        raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
    out = sys.stderr if file is None else file
    source = _source(what)
    if _is_terminal(out):
        _draw_bars(source, out)
    else:
        _print_lines(source, out, PLAIN_INTERVAL if interval is None else float(interval))


# ------------------------------------------------------------------ what is watched
class _Source(Protocol):
    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True once everything has finished."""

    def counts(self) -> Counts:
        """Right now, per category: finished, failed, total."""


def _source(what: object) -> _Source:
    from ..manager import Manager

    if isinstance(what, Manager):
        return _ManagerSource(what)
    if isinstance(what, Future):
        raise TypeError("progress() takes a Manager or an iterable of futures, "
                        "got one future: pass [future]")
    if not isinstance(what, Iterable) or isinstance(what, (str, bytes)):
        raise TypeError(f"progress() takes a Manager or an iterable of futures, "
                        f"got {type(what).__name__}")
    return _FutureSource(what)


def category_of(fut: Future[Any]) -> str:
    """A future's category: its packmule task's, or its Parsl app's name."""
    record = getattr(fut, "task_record", None)  # a Parsl AppFuture
    if isinstance(record, dict):
        name = record.get("func_name")
        if isinstance(name, str) and name:
            return name
    category = getattr(fut, "category", None)  # set when a packmule Task is submitted
    return category if isinstance(category, str) and category else DEFAULT_CATEGORY


class _FutureSource:
    """Counts kept up to date by a done-callback on each future (no polling)."""

    def __init__(self, futures: Iterable[Any]) -> None:
        futs = list(dict.fromkeys(futures))  # each future once, in order
        for f in futs:
            if not isinstance(f, Future):
                raise TypeError(f"progress() takes futures, got a {type(f).__name__}")
        self._cv = threading.Condition()
        self._tally: dict[str, list[int]] = {}
        for f in futs:
            self._tally.setdefault(category_of(f), [0, 0, 0])[2] += 1
        self._left = len(futs)
        for f in futs:  # runs at once for a future already done
            f.add_done_callback(self._finished)

    def _finished(self, fut: Future[Any]) -> None:
        failed = fut.cancelled() or fut.exception() is not None
        with self._cv:
            tally = self._tally[category_of(fut)]
            tally[0] += 1
            tally[1] += failed
            self._left -= 1
            if not self._left:
                self._cv.notify_all()

    def wait(self, timeout: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: not self._left, timeout)

    def counts(self) -> Counts:
        with self._cv:
            return {name: (t[0], t[1], t[2]) for name, t in self._tally.items()}


class _ManagerSource:
    """A Manager's counts (its brief status: no lists of workers or tasks), read when
    asked; finished when it has no unfinished task."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager

    def wait(self, timeout: float) -> bool:
        return self.manager.wait(timeout)

    def counts(self) -> Counts:
        out: Counts = {}
        for c in self.manager.status(brief=True)["categories"]:
            finished = int(c["done"]) + int(c["failed"])
            total = finished + int(c["waiting"]) + int(c["running"])
            if total:  # a category configured but never used is left out
                out[str(c["name"])] = (finished, int(c["failed"]), total)
        return out


# ------------------------------------------------------------------ plain lines
def _totals(counts: Counts) -> tuple[int, int, int]:
    return (sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values()),
            sum(c[2] for c in counts.values()))


def _rate(n: float) -> str:
    return f"{n:.1f}" if n >= 1 or n == 0 else f"{n:.2f}"


def summary_line(counts: Counts, finished_before: int, elapsed: float, *, final: bool) -> str:
    """One plain line: totals, each category, the rate since ``progress`` began and the
    time left (or, at the end, how long it took)."""
    finished, failed, total = _totals(counts)
    parts = [f"packmule: {finished}/{total} done" + (f" ({failed} failed)" if failed else "")]
    for name, (fin, fail, tot) in counts.items():
        parts.append(f"{name} {fin}/{tot}" + (f" ({fail} failed)" if fail else ""))
    rate = (finished - finished_before) / elapsed if elapsed > 0 else 0.0
    tail = f"{_rate(rate)} tasks/s"
    if final:
        tail += f", took {duration(elapsed)}"
    elif rate > 0:
        tail += f", ETA {duration((total - finished) / rate)}"
    return ", ".join(parts) + "; " + tail


def _print_lines(source: _Source, out: IO[str], interval: float) -> None:
    start = time.monotonic()
    finished_before = _totals(source.counts())[0]
    next_line = start + interval
    while not source.wait(max(0.0, next_line - time.monotonic())):
        now = time.monotonic()
        if now >= next_line:
            print(summary_line(source.counts(), finished_before, now - start, final=False),
                  file=out, flush=True)
            next_line = max(next_line + interval, now)
    print(summary_line(source.counts(), finished_before, time.monotonic() - start, final=True),
          file=out, flush=True)


# ------------------------------------------------------------------ bars in a terminal
def _is_terminal(out: IO[str]) -> bool:
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


def _draw_bars(source: _Source, out: IO[str]) -> None:
    from rich.console import Console
    from rich.file_proxy import FileProxy
    from rich.live import Live
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
    )

    # What the program prints meanwhile, from any thread (log records included), is
    # drawn above the bars. Every such write, and the display's start and stop, hold
    # one lock: a write that raced the display's start or stop would otherwise land
    # among its lines, or have the bars drawn a second time below it.
    gate = threading.RLock()

    class Proxy(FileProxy):
        def write(self, text: str) -> int:
            with gate:
                return super().write(text)

        def flush(self) -> None:
            with gate:
                super().flush()

    class GatedLive(Live):
        def start(self, refresh: bool = False) -> None:
            with gate:
                super().start(refresh)

        def stop(self) -> None:
            with gate:
                super().stop()

    bars = Progress(
        TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
        MofNCompleteColumn(), TextColumn("[red]{task.fields[failed]}"),
        TextColumn("[progress.data.speed]{task.fields[rate]}"),
        TextColumn("[progress.remaining]{task.fields[left]}"),
        auto_refresh=False,  # drawn by the live display below, not one of its own
    )
    ids: dict[str, Any] = {}
    start = time.monotonic()
    before: dict[str, int] = {}  # finished when progress began, per bar
    took: dict[str, float] = {}  # when each full bar became full

    def update(final: bool = False) -> None:
        counts = source.counts()
        now = time.monotonic() - start
        rows = [("\0total", _totals(counts)), *counts.items()]  # a category may be "total"
        for key, (finished, failed, total) in rows:
            first = before.setdefault(key, finished)
            if finished >= total or final:
                elapsed = took.setdefault(key, now)
            else:
                took.pop(key, None)  # more tasks came (a Manager's)
                elapsed = now
            rate = (finished - first) / elapsed if elapsed > 0 else 0.0
            if key in took:
                left = duration(elapsed)
            elif rate > 0:
                left = "ETA " + duration((total - finished) / rate)
            else:
                left = "ETA -"
            fields: dict[str, Any] = {
                "failed": f"{failed} failed" if failed else "",
                "rate": f"{_rate(rate)} tasks/s" if rate else "", "left": left}
            if key not in ids:
                ids[key] = bars.add_task("[bold]total" if key == "\0total" else escape(key),
                                         total=total, completed=finished, **fields)
            else:
                bars.update(ids[key], total=total, completed=finished, **fields)

    update()  # every bar there before the first drawing
    console = Console(file=out)
    live = GatedLive(console=console, refresh_per_second=4, get_renderable=bars.get_renderable,
                     redirect_stdout=False, redirect_stderr=False)  # redirected here instead
    saved = sys.stdout, sys.stderr
    ours = cast(TextIO, Proxy(console, saved[0])), cast(TextIO, Proxy(console, saved[1]))
    sys.stdout, sys.stderr = ours
    try:
        # Log handlers made before (logging.basicConfig's holds the sys.stderr of then)
        # would write past the redirection, over the bars: they write to it too.
        with _handlers_to([(saved[0], ours[0]), (sys.__stdout__, ours[0]),
                           (saved[1], ours[1]), (sys.__stderr__, ours[1])]), \
                live:  # on any exception (Ctrl-C) the display stops and the cursor comes back
            while not source.wait(POLL):
                update()
            update(final=True)
    finally:
        if (sys.stdout, sys.stderr) == ours:
            sys.stdout, sys.stderr = saved
        for proxy in ours:
            proxy.flush()  # a last line without its newline


def _stream_handlers() -> list[logging.StreamHandler[Any]]:
    """Every StreamHandler of every logger (the root's included), each once."""
    loggers: list[Any] = [logging.getLogger(),
                          *list(logging.Logger.manager.loggerDict.values())]
    found: dict[int, logging.StreamHandler[Any]] = {}
    for lg in loggers:
        for h in getattr(lg, "handlers", ()):  # a PlaceHolder has none
            if isinstance(h, logging.StreamHandler):
                found.setdefault(id(h), h)
    return list(found.values())


@contextmanager
def _handlers_to(streams: list[tuple[Any, TextIO]]) -> Iterator[None]:
    """Point the stream handlers that write to one of ``streams`` (from, to) at its
    ``to``, and back afterwards (those still pointed there)."""
    moved: list[tuple[logging.StreamHandler[Any], Any, TextIO]] = []
    for h in _stream_handlers():
        # by identity: a stream may compare equal to another, or not be hashable
        to = next((t for f, t in streams if f is not None and h.stream is f), None)
        if to is not None:
            moved.append((h, h.stream, to))
            h.setStream(to)
    try:
        yield
    finally:
        for h, old, to in moved:
            if h.stream is to:
                h.setStream(old)
