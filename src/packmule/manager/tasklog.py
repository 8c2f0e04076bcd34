"""The task log: one JSON object per finished attempt, in ``run_dir/tasks.jsonl``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("packmule.manager")

#: Records are buffered and written at most this many seconds late.
FLUSH_INTERVAL = 1.0


class TaskLog:
    """Buffered appends, flushed every :data:`FLUSH_INTERVAL` and at close. A log that
    cannot be written is said once and then skipped: it never stops the manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("a", buffering=1 << 16)
        self._failed = False
        self._flushed = time.monotonic()

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(record) + "\n")
        except (OSError, ValueError) as exc:
            self._fail(exc)

    def tick(self, now: float, idle: bool) -> None:
        """Flush when idle, or when the last flush is :data:`FLUSH_INTERVAL` old."""
        if idle or now - self._flushed > FLUSH_INTERVAL:
            self._flushed = now
            try:
                self._file.flush()
            except OSError as exc:
                self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        """Say the first failure to write; later ones are skipped quietly."""
        if not self._failed:
            log.error("cannot write the task log %s: %s (logged once)", self.path, exc)
        self._failed = True

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as exc:
            if not self._failed:
                log.error("cannot write the task log %s: %s", self.path, exc)
