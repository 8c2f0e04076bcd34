"""The worker's cache of input files that the manager sends once (``PutFile``).

Each file is written under the worker's work directory and linked into the
sandbox of every task that names it. Tasks run as the worker's user and can
remove that directory; so each cached file is also kept open, and a file
whose name is gone is written again from the open descriptor: a task that
deletes the cache, or the whole work directory, costs later tasks nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

#: Bytes copied at a time when a removed file is written again.
COPY_CHUNK = 1 << 20


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class FileCache:
    """Cached input files by name, kept open (see the module's docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fds: dict[str, int] = {}

    def _path(self, name: str) -> str:
        if not name or "/" in name or name in (".", ".."):
            raise OSError(errno.EINVAL, f"not a plain file name: {name[:80]!r}")
        return os.path.join(self.root, name)

    def put(self, name: str, data: bytes) -> None:
        """Store a file the manager sent (OSError if it cannot be written)."""
        path = self._path(name)
        self._write(path, data)
        old = self._fds.pop(name, None)
        if old is not None:
            os.close(old)
        with contextlib.suppress(OSError):  # no descriptor left: the file is only on disk
            self._fds[name] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def _write(self, path: str, data: bytes | int) -> None:
        """Write ``path`` anew (atomically) from bytes, or from an open descriptor."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            if isinstance(data, int):
                offset = 0
                while chunk := os.pread(data, COPY_CHUNK, offset):
                    _write_all(fd, chunk)
                    offset += len(chunk)
            else:
                _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def place(self, name: str, dest: str) -> None:
        """Put the cached file ``name`` at ``dest`` (a hard link where it can be, else a
        copy); OSError if the worker does not have it."""
        path = self._path(name)
        try:
            os.link(path, dest)
            return
        except FileNotFoundError:
            fd = self._fds.get(name)
            if fd is None:
                raise
            self._write(path, fd)  # a task removed it: it comes back
        except OSError:
            pass  # another file system, or no hard links there: a copy
        try:
            os.link(path, dest)
        except OSError:
            shutil.copyfile(path, dest)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
