"""Task bodies for the chaos suite, and the side channel they report through.

Stdlib only: runners import this module to run the tasks, so it stays light.
Each execution appends one line ``"<key> <pid>\\n"`` to a log file with
``O_APPEND`` (a single short ``write`` is atomic on a local filesystem), so a
test can count how often each task really ran, whatever happened to its
result.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path


def record(log: str, key: int) -> None:
    """Note one execution of task ``key`` in ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def chaos_task(log: str, key: int, seconds: float = 0.0) -> int:
    """Record this execution, take ``seconds``, return ``key``."""
    record(log, key)
    if seconds > 0:
        time.sleep(seconds)
    return key


def executions(log: str | os.PathLike[str]) -> Counter[int]:
    """How many times each key ran, from the log (complete lines only)."""
    path = Path(log)
    if not path.exists():
        return Counter()
    counts: Counter[int] = Counter()
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            counts[int(parts[0])] += 1
    return counts
