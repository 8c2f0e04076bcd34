"""The pack caches on disk: which packs are in use, when each was last used, what
each holds, and removing the ones no longer wanted (``packmule pack list|clean``).

Two kinds of cache, told apart by what they hold (one directory may hold both):

- the manager's (:func:`~.build.default_cache_dir`): ``<digest>.tar`` and its
  ``<digest>.json`` sidecar;
- a worker's (:func:`~.unpack.default_cache_root`): ``<digest>/``, an unpacked
  pack with its completion marker.

**In use.** A process that may still read a pack holds a shared
:func:`fcntl.flock` on it: a manager (or anything that called
:func:`~.build.build_pack`) on the tar, for as long as it keeps the
:class:`~.build.Pack`; a worker on the unpacked pack's completion marker, for
as long as it counts the pack as ready. A cleaner removes a pack only after
taking that lock exclusively, without waiting, so it never removes one in use,
and looks again, under the lock, at when the pack was last used (a process may
have used it and let it go since the cleaner listed it); a process that finds a
pack locked exclusively treats it as gone. Locks end
with their process, so a killed manager or worker holds nothing. Besides, a
pack used in the last minute (:data:`RECENT`) is never removed.

**Last used.** The newest modification time of the pack's files: a manager's
cache hit touches the sidecar, a worker touches the pack's directory whenever
it starts an interpreter from it (and :func:`~.unpack.unpack` on a hit).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PackError
from ..observe import units
from .layout import MANIFEST

#: A pack used this recently (seconds) is never removed, whatever the locks say.
RECENT = 60.0
#: Hidden leftovers (a build or an unpack that was killed) older than this are removed.
LEFTOVER_AGE = 24 * 3600.0
_DIGEST = re.compile(r"[0-9a-f]{16,128}")
#: What builds, unpacks and transfers write before renaming into place (and what
#: :func:`remove` moves a worker's pack to): nothing else is taken for a leftover.
_LEFTOVER = re.compile(r"\.(?:[0-9a-f]{16,128}\..+|incoming-.+\.tar)")


# -- marking use ---------------------------------------------------------------------


def hold(path: Path) -> int | None:
    """Mark ``path`` (a manager's tar, a worker's completion marker) as in use: a shared
    lock, held by the returned descriptor until it is closed (or the process ends).

    None: the file is gone, or a cleaner is removing it (treat the pack as absent).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        pass  # no locks on this file system: cleaners go by the time of last use alone
    try:
        same = os.path.samestat(os.stat(path), os.fstat(fd))
    except OSError:
        same = False
    if not same:  # removed or replaced while we opened it
        os.close(fd)
        return None
    return fd


def touch(path: Path) -> None:
    """Record a use of the pack at ``path`` (best effort: a read-only cache stays as it is)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def _claim(path: Path) -> int | None:
    """An exclusive lock on ``path`` for removing it; None: in use."""
    try:
        fd = os.open(path, os.O_RDWR)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        pass  # no locks here: only the time of last use protects packs
    return fd


def _lockers() -> dict[int, list[int]] | None:
    """The processes holding flock locks, by inode number; None when the kernel does
    not say (no ``/proc/locks``). By inode alone: ``/proc/locks`` names the device the
    kernel sees, which differs from ``stat``'s on overlay and btrfs file systems (a
    rare false match only keeps a pack)."""
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    out: dict[int, list[int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK":  # waiters ("->") and POSIX locks
            continue
        try:
            out.setdefault(int(parts[5].rsplit(":", 1)[1]), []).append(int(parts[4]))
        except (ValueError, IndexError):
            continue
    return out


# -- what is in a cache ---------------------------------------------------------------


@dataclass
class Entry:
    """One pack in a cache (or a leftover of a killed build or unpack)."""

    name: str  # the digest, or the leftover's file name
    kind: str  # "manager", "worker" or "leftover"
    paths: list[Path]
    size: int
    last_used: float  # seconds since the epoch
    #: The file whose lock says the pack is in use (None for leftovers).
    lock: Path | None = None
    #: Processes holding it (empty: not in use; None: cannot tell).
    users: list[int] | None = field(default_factory=list)
    complete: bool = True

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.last_used)


def _size(path: Path) -> int:
    """Bytes under ``path``, each file once (hard links too)."""
    try:
        st = path.lstat()
    except OSError:
        return 0
    if not path.is_dir() or path.is_symlink():
        return st.st_size
    seen: set[tuple[int, int]] = set()
    total = 0
    for top, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            try:
                s = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if (s.st_dev, s.st_ino) not in seen:
                seen.add((s.st_dev, s.st_ino))
                total += s.st_size
    return total


def _mtime(paths: Iterable[Path]) -> float:
    times = []
    for p in paths:
        with contextlib.suppress(OSError):
            times.append(p.lstat().st_mtime)
    return max(times, default=0.0)


def entries(cache: Path) -> list[Entry]:
    """Every pack and leftover in ``cache``, most recently used first."""
    from .unpack import COMPLETE  # .unpack imports this module

    try:
        names = sorted(os.listdir(cache))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise PackError(f"cannot read the pack cache {cache}: {exc}") from None
    out: list[Entry] = []
    tars: dict[str, list[Path]] = {}
    for name in names:
        path = cache / name
        stem, dot, ext = name.rpartition(".")
        if _LEFTOVER.fullmatch(name):
            out.append(Entry(name, "leftover", [path], _size(path), _mtime([path]), None))
        elif dot and ext in ("tar", "json") and _DIGEST.fullmatch(stem):
            tars.setdefault(stem, []).append(path)
        elif _DIGEST.fullmatch(name) and path.is_dir():
            marker = path / COMPLETE
            out.append(Entry(name, "worker", [path], _size(path), _mtime([path, marker]),
                             marker, complete=marker.exists()))
    for digest, paths in tars.items():
        tar = cache / f"{digest}.tar"
        out.append(Entry(digest, "manager", paths, sum(_size(p) for p in paths), _mtime(paths),
                         tar, complete=len(paths) == 2))
    lockers = _lockers()
    for e in out:
        if e.lock is None:
            e.users = []
        elif lockers is None:
            e.users = None
        else:
            try:
                e.users = sorted(set(lockers.get(e.lock.stat().st_ino, [])))
            except OSError:
                e.users = []
    out.sort(key=lambda e: (e.kind == "leftover", -e.last_used, e.name))
    return out


def manifest(entry: Entry) -> dict[str, Any] | None:
    """What the pack says it holds (its ``manifest.json``), if it can be read."""
    from .unpack import read_manifest

    try:
        if entry.kind == "manager":
            return read_manifest(entry.paths[0].parent / f"{entry.name}.tar")
        if entry.kind == "worker":
            got = json.loads((entry.paths[0] / MANIFEST).read_text("utf-8"))
            return got if isinstance(got, dict) else None
    except (PackError, OSError, ValueError):
        pass
    return None


_APP = re.compile(r"\bapp ([^\s(;,]+)")
_NEEDED_BY = re.compile(r"(?:required by|editable install of) (\S+)$")


def _needed_by(reason: str) -> str | None:
    """The distribution a reason says the item is there for, if it names one."""
    m = _NEEDED_BY.match(reason)
    return m.group(1) if m else None


def holds(man: dict[str, Any]) -> str:
    """One line for what a pack holds beyond packmule's runtime: the apps it was built
    for, the distributions they need, and the user's own modules."""
    from .analysis import RUNTIME_REASON

    dists: dict[str, str] = dict(man.get("distributions") or {})
    local = list(man.get("local_modules") or {})
    reasons: dict[str, list[str]] = dict(man.get("reasons") or {})
    apps = sorted({m.group(1) for rs in reasons.values() for r in rs for m in _APP.finditer(r)})
    # packmule's runtime, and what only it needs (transitively)
    runtime = {n for n, rs in reasons.items() if RUNTIME_REASON in rs}
    grew = True
    while grew:
        grew = False
        for name in [*dists, *local]:
            rs = reasons.get(name, [])
            if name not in runtime and rs and all(_needed_by(r) in runtime for r in rs):
                runtime.add(name)
                grew = True
    parts = []
    if apps:
        parts.append("for " + ", ".join(apps))
    mine = [f"{n} {v}" for n, v in dists.items() if n not in runtime]
    if mine:
        parts.append(", ".join(mine))
    own = [n for n in local if n not in runtime]
    if own:
        parts.append("modules " + ", ".join(own))
    return "; ".join(parts) if parts else "packmule only (a worker pack)"


# -- removing -------------------------------------------------------------------------


def remove(entry: Entry, older_than: float = 0.0) -> str | None:
    """Remove a pack, or a leftover, unless it must stay: None when it is gone, else why
    it stays (it is in use, or was used since :func:`entries` listed it: younger than
    ``older_than`` seconds, or than :data:`RECENT`). OSError: it cannot be removed
    (another user's cache, a read-only file system); what could go is gone."""
    if entry.kind == "leftover" or entry.lock is None:
        for p in entry.paths:
            _rm(p)
        return None
    try:
        fd = _claim(entry.lock)
    except FileNotFoundError:  # incomplete (or removed meanwhile): nothing can hold it
        fd = -1
    if fd is None:
        return "in use"
    try:
        # Used between the listing and the lock (a worker that took the pack and let
        # it go, a manager's cache hit): what the listing said no longer holds.
        entry.last_used = max(entry.last_used, _mtime(_stamps(entry)))
        entry.users = []  # the lock is ours: nobody holds it now
        why = _too_recent(entry, older_than)
        if why is not None:
            return why
        if entry.kind == "manager":
            # the sidecar first: a builder that finds no sidecar builds afresh
            for p in sorted(entry.paths, key=lambda p: p.suffix != ".json"):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            return None
        # out of the way at once: a worker sees the pack gone, never half there
        root = entry.paths[0]
        away = root.parent / f".{entry.name[:16]}.removing-{os.getpid()}"
        try:
            os.rename(root, away)
        except FileNotFoundError:
            return None
    finally:
        if fd >= 0:
            os.close(fd)
    _rm(away)
    return None


def _stamps(entry: Entry) -> list[Path]:
    """The files whose modification times say when ``entry`` was last used."""
    if entry.kind == "worker" and entry.lock is not None:
        return [entry.paths[0], entry.lock]
    return list(entry.paths)


def _rm(path: Path) -> None:
    """Remove a file or a directory tree; OSError: (part of) it cannot be removed."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def _too_recent(entry: Entry, older_than: float) -> str | None:
    if entry.age < RECENT:
        return "used in the last minute"
    if entry.age < older_than:
        return f"used {units.ago(entry.age)}"
    return None


def removable(entry: Entry, older_than: float) -> str | None:
    """Why ``entry`` must stay (None: it may go) when removing what was not used for
    ``older_than`` seconds."""
    if entry.kind == "leftover":
        return None if entry.age > LEFTOVER_AGE else "may belong to a build or unpack under way"
    if entry.users:
        return "in use by process " + ", ".join(map(str, entry.users))
    return _too_recent(entry, older_than)
