"""Human-readable numbers, one style everywhere (short, as ``squeue`` and ``docker ps``
print them): sizes ``812B``, ``17KB``, ``1.2GB``; durations ``45s``, ``3m04s``,
``2h45m``, ``3d04h``; resources ``4c 1.5GB disk:2GB gpus:1``.

Sizes are decimal (1KB = 1000 bytes; 1GB = 1000MB), as packmule's resources are. A
number below 10 of its unit keeps one decimal, a larger one none.

Kept free of imports beyond the standard library: the pack cache uses it too.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ago", "cores", "duration", "megabytes", "number", "resources", "size"]


def number(x: float, digits: int = 1) -> str:
    """``x`` with at most ``digits`` decimals and no trailing zeros: 3, 1.5, 0.25."""
    text = f"{x:.{digits}f}"
    text = text.rstrip("0").rstrip(".") if "." in text else text
    return "0" if text == "-0" else text


def _scaled(x: float, unit: str) -> str:
    return f"{number(x) if abs(x) < 10 else f'{x:.0f}'}{unit}"


def megabytes(mb: Any) -> str:
    """Megabytes (packmule's unit of memory and disk): 500MB, 1.5GB, 16GB, 2TB; ``-``
    when not a number."""
    if not isinstance(mb, int | float) or isinstance(mb, bool):
        return "-"
    return "0MB" if mb == 0 else size(mb * 1e6)


def size(n: float) -> str:
    """Bytes: 812B, 17KB, 3.4MB, 1.2GB, 2TB."""
    if abs(n) < 999.5:  # so that 999.7 reads 1KB, not 1000B
        return f"{n:.0f}B"
    for unit, scale in (("KB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if abs(n) < scale * 999.5:
            return _scaled(n / scale, unit)
    return _scaled(n / 1e12, "TB")


def cores(v: Any) -> str:
    """Cores (or GPUs): 4, 1.5, and a small mean as 0.04; ``-`` when not a number."""
    if not isinstance(v, int | float) or isinstance(v, bool):
        return "-"
    return number(v, 2) if abs(v) < 1 else number(v)


def duration(seconds: float) -> str:
    """Seconds as 45s, 3m04s, 2h45m, 3d04h (rounded down); below 10 s one decimal
    (2.5s) so that short tasks do not all read 0s."""
    s = max(0.0, float(seconds))
    if s < 10:
        return f"{number(int(s * 10) / 10)}s"
    n = int(s)
    if n < 60:
        return f"{n}s"
    if n < 3600:
        return f"{n // 60}m{n % 60:02d}s"
    if n < 86400:
        return f"{n // 3600}h{n % 3600 // 60:02d}m"
    return f"{n // 86400}d{n % 86400 // 3600:02d}h"


def ago(seconds: float) -> str:
    """How long ago: ``just now`` under a minute, else ``5m ago``, ``2h45m ago``,
    ``3d04h ago``."""
    if seconds < 60:
        return "just now"
    n = int(seconds)
    if n < 3600:
        return f"{n // 60}m ago"
    return f"{duration(n)} ago"


def resources(r: Any) -> str:
    """A resource dict as ``1c 500MB disk:2GB gpus:1`` (cores, memory, disk, GPUs; other
    keys left out); ``-`` when empty or not a dict."""
    if not isinstance(r, dict):
        return "-"
    parts = []
    if isinstance(r.get("cores"), int | float):
        parts.append(f"{cores(r['cores'])}c")
    if isinstance(r.get("memory"), int | float):
        parts.append(megabytes(r["memory"]))
    if isinstance(r.get("disk"), int | float):
        parts.append(f"disk:{megabytes(r['disk'])}")
    if isinstance(r.get("gpus"), int | float) and r["gpus"]:
        parts.append(f"gpus:{cores(r['gpus'])}")
    return " ".join(parts) or "-"
