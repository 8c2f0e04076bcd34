"""The event log, ``events.jsonl`` in the run directory: its writer (the manager's
loop is the one writer) and its reader.

The format is in docs/observability.md: a header line (``format``,
``version``, ``packmule``, ``t``, ``address``, ``host``, ``pid``,
``run_dir``), then one JSON object per event, each with ``t`` (Unix time)
and ``event`` (its name). A reader skips events it does not know, so a new
event is not a new format version; a changed field is.

Writing is cheap because the loop writes four events per task at thousands
of tasks a second: appends go to a 64 KiB buffer (:data:`BUFFER`), flushed at
least every :data:`FLUSH_INTERVAL` and at close; the events written per task
are formatted directly (fragments for resources and names are cached), the
rarer ones with :func:`json.dumps`. A log that cannot be written is said once
and then skipped: it never stops the manager.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from ..resources import Resources

log = logging.getLogger("packmule.manager")

#: The event log's file name in the run directory.
EVENTS_FILE = "events.jsonl"
#: The header's ``format``.
FORMAT = "packmule-events"
#: The format version: a reader refuses another. Adding an event does not change it;
#: changing a field does.
VERSION = 1
#: Events are buffered and written at most this many seconds late (and at close).
FLUSH_INTERVAL = 1.0
#: The write buffer (bytes): the log costs a system call per this much, not per event.
BUFFER = 1 << 16
#: The event log is read this many bytes at a time (whole lines).
_CHUNK = 1 << 22
#: JSON fragments cached (resources, names) before the caches start afresh.
_CACHE_MAX = 10_000

_dumps = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


class EventLogError(ValueError):
    """A file that is not a packmule event log of a version this packmule reads."""


def resources(r: Resources | None) -> dict[str, int] | None:
    """A resource object as the event log and the status file write it: the resources
    given, those not given left out (None stays None)."""
    if r is None:
        return None
    return {k: v for k, v in r.as_dict().items() if v is not None}


def _number(x: float) -> str:
    """A float as JSON (``null`` for what JSON cannot hold)."""
    return repr(x) if math.isfinite(x) else "null"


def _measure(x: float) -> str:
    """A measurement as JSON, to six significant digits (``null`` if not finite)."""
    return f"{x:.6g}" if x - x == 0 else "null"


class EventLog:
    """Buffered appends to ``events.jsonl``, one writer. :meth:`tick` flushes when the
    last flush is :data:`FLUSH_INTERVAL` old (or when idle); :meth:`close` flushes."""

    def __init__(self, path: Path, header: Mapping[str, Any]) -> None:
        self.path = path
        self._failed = False
        self._flushed = time.monotonic()
        self._res: dict[Resources, str] = {}
        self._names: dict[str, str] = {}
        #: ``"name":`` for each measurement's name.
        self._keys: dict[str, str] = {}
        #: Lines not yet written, and their length: written once it reaches BUFFER.
        self._lines: list[str] = []
        self._pending = 0
        self._file: IO[bytes] | None = None
        try:
            self._file = path.open("ab", buffering=0)
            self._put(_dumps({"format": FORMAT, "version": VERSION, **header}) + "\n")
            self._drain()  # a reader finds the header at once
        except (OSError, ValueError) as exc:
            self._fail(exc)

    # ---------------------------------------------------------------- fragments
    def _r(self, r: Resources | None) -> str:
        """A resource object as JSON (cached: requests and allocations repeat)."""
        if r is None:
            return "null"
        text = self._res.get(r)
        if text is None:
            if len(self._res) > _CACHE_MAX:
                self._res.clear()
            text = self._res[r] = _dumps(resources(r))
        return text

    def _s(self, s: str) -> str:
        """A name (category, label, worker id) as JSON (cached)."""
        text = self._names.get(s)
        if text is None:
            if len(self._names) > _CACHE_MAX:
                self._names.clear()
            text = self._names[s] = _dumps(s)
        return text

    def _key(self, k: str) -> str:
        text = self._keys.get(k)
        if text is None:
            if len(self._keys) > _CACHE_MAX:
                self._keys.clear()
            text = self._keys[k] = _dumps(k) + ":"
        return text

    def _put(self, line: str) -> None:
        self._lines.append(line)
        self._pending += len(line)
        if self._pending >= BUFFER:
            self._drain()

    def _drain(self) -> None:
        """Write what is buffered (one system call)."""
        lines, self._lines, self._pending = self._lines, [], 0
        if self._file is None or not lines:
            return
        try:
            self._file.write("".join(lines).encode("utf-8", "replace"))
        except (OSError, ValueError) as exc:
            self._fail(exc)

    # ---------------------------------------------------------------- events
    def write(self, event: str, **fields: Any) -> None:
        """Any event: ``t`` is now; ``fields`` are written as JSON."""
        self.record({"t": time.time(), "event": event, **fields})

    def record(self, event: Mapping[str, Any]) -> None:
        """An event made already (with its ``t`` and ``event``)."""
        try:
            line = _dumps(event) + "\n"
        except (TypeError, ValueError) as exc:  # a bug: say it, never stop the manager
            log.error("cannot write event %r: %s", event.get("event"), exc)
            return
        self._put(line)

    def task_submitted(self, task: int, category: str, label: str, request: Resources,
                       priority: float) -> None:
        self._put(f'{{"t":{time.time():.6f},"event":"task_submitted","task":{task},'
                  f'"category":{self._s(category)},"label":{self._s(label)},'
                  f'"request":{self._r(request)},"priority":{_number(priority)}}}\n')

    def attempt_dispatched(self, task: int, attempt: int, worker: str, allocation: Resources,
                           prefetched: bool) -> None:
        self._put(f'{{"t":{time.time():.6f},"event":"attempt_dispatched","task":{task},'
                  f'"attempt":{attempt},"worker":{self._s(worker)},'
                  f'"allocation":{self._r(allocation)},'
                  f'"prefetched":{"true" if prefetched else "false"}}}\n')

    def attempt_finished(self, task: int, attempt: int, worker: str, status: str,
                         wall_time: float, measured: Mapping[str, float],
                         exceeded: list[str], exit_code: int) -> None:
        now = time.time()
        keys = self._keys
        # (v - v == 0: finite; JSON has no infinity or NaN)
        got = ",".join([f"{keys.get(k) or self._key(k)}{v:.6g}" if v - v == 0 else
                        f"{keys.get(k) or self._key(k)}null" for k, v in measured.items()])
        gone = ",".join([self._s(r) for r in exceeded])
        self._put(f'{{"t":{now:.6f},"event":"attempt_finished","task":{task},'
                  f'"attempt":{attempt},"worker":{self._s(worker)},"status":"{status}",'
                  f'"started":{now - wall_time:.6f},"wall_time":{_measure(wall_time)},'
                  f'"measured":{{{got}}},"exceeded":[{gone}],"exit_code":{exit_code}}}\n')

    def task_done(self, task: int, ok: bool, attempts: int, error: str | None = None,
                  message: str | None = None) -> None:
        if ok:
            self._put(f'{{"t":{time.time():.6f},"event":"task_done","task":{task},'
                      f'"ok":true,"attempts":{attempts}}}\n')
        else:
            self.write("task_done", task=task, ok=False, attempts=attempts, error=error,
                       message=message)

    # ---------------------------------------------------------------- upkeep
    def tick(self, now: float, idle: bool) -> None:
        """Flush when idle, or when the last flush is :data:`FLUSH_INTERVAL` old."""
        if self._lines and (idle or now - self._flushed >= FLUSH_INTERVAL):
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        self._flushed = time.monotonic() if now is None else now
        self._drain()

    def _fail(self, exc: BaseException) -> None:
        """Say the first failure to write; later events are skipped quietly."""
        if not self._failed:
            log.error("cannot write the event log %s: %s; the manager goes on without it "
                      "(said once)", self.path, exc)
        self._failed = True
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError, ValueError):
                file.close()

    def close(self) -> None:
        self._drain()
        file, self._file = self._file, None
        if file is None:
            return
        try:
            file.close()
        except (OSError, ValueError) as exc:
            self._fail(exc)


# ---------------------------------------------------------------- reading
def _check_header(header: object, path: Path) -> dict[str, Any]:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise EventLogError(f"{path} is not a packmule event log (its first line is not a "
                            f"{FORMAT!r} header)")
    version = header.get("version")
    if version != VERSION:
        raise EventLogError(
            f"{path} is a packmule event log of format version {version}, and this packmule "
            f"reads version {VERSION}; read it with the packmule version that wrote it "
            f"({header.get('packmule', 'unknown')})")
    return header


def read_header(path: str | Path) -> dict[str, Any]:
    """The event log's header (format checked): ``packmule``, ``t``, ``address``, ``host``,
    ``pid``, ``run_dir``. :class:`EventLogError` if it is not one this packmule reads."""
    path = Path(path)
    with path.open(encoding="utf-8", errors="replace") as f:
        first = f.readline()
    try:
        header = json.loads(first)
    except ValueError:
        raise EventLogError(f"{path} is not a packmule event log (its first line is not "
                            "JSON)") from None
    return _check_header(header, path)


def read_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """The events of an event log, oldest first (not the header, which is checked: see
    :func:`read_header`). A log being written may end in part of a line: that part is
    skipped. A line that is not JSON before the last is an :class:`EventLogError` naming
    its number. Events of names a reader does not know should be skipped by it.

    Lines are parsed a few MB at a time, joined into one JSON array: 10-20% less CPU
    than a :func:`json.loads` per line on a large log. A chunk that does not parse as
    one event per line is read again line by line, to name the bad line."""
    path = Path(path)
    loads = json.loads
    with path.open("rb") as f:
        try:
            header = loads(f.readline())
        except ValueError:
            raise EventLogError(f"{path} is not a packmule event log (its first line is not "
                                "JSON)") from None
        _check_header(header, path)
        number = 1  # lines read so far
        while True:
            lines = f.readlines(_CHUNK)
            if not lines:
                return
            torn = not lines[-1].endswith(b"\n")
            if torn:
                lines.pop()  # the last line, still being written
            try:
                chunk = loads(b"[" + b",".join(lines) + b"]")
            except ValueError:
                chunk = None
            if chunk is None or len(chunk) != len(lines):  # one line held ",": not one event
                chunk = [_line(line, path, number + i + 1) for i, line in enumerate(lines)]
            number += len(lines)
            yield from (e for e in chunk if type(e) is dict)
            if torn:
                return


def _line(line: bytes, path: Path, number: int) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        raise EventLogError(f"{path}, line {number}: not a JSON object") from None
