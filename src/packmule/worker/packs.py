"""The worker's environment packs: received once, unpacked in the background,
cached on the node by digest (surviving worker restarts), and run by warm
runners started with the pack's own interpreter."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import re
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zmq

from ..envpack.cache import hold, touch
from ..envpack.unpack import COMPLETE, pack_python, unpack
from ..errors import PackCorrupted, PackError
from ..protocol import messages as m

_DIGEST = re.compile(r"[0-9a-f]{16,128}")

#: Variables of the worker's own Python that must not leak into a pack's interpreter.
_FOREIGN_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV")


@dataclass(frozen=True)
class Unpacked:
    """How one background unpack ended."""

    digest: str
    transfer: int  # the manager's number for the sending it came from
    root: Path | None  # None: it failed
    error: str = ""
    #: Worth sending again: the transfer was damaged, or a cleaner removed the pack.
    corrupted: bool = False


@dataclass
class _Incoming:
    """A pack arriving piece by piece into a file next to the cache."""

    msg: m.PutPack
    path: Path
    file: BinaryIO
    received: int = 0


#: Leftovers of a worker killed while receiving or unpacking (``.incoming-*``
#: files, ``.<digest>.*`` directories) are removed when older than this.
STALE_AFTER = 24 * 3600.0


class PackCache:
    """Packs on this node under ``root/<digest>/``, and unpacks in progress."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ready: dict[str, Path] = {}
        #: Digests arriving or being unpacked: tasks that need one wait for it (the
        #: worker's :class:`~packmule.core.slots.Slots` keeps them, by digest).
        self.pending: set[str] = set()
        self._incoming: dict[str, _Incoming] = {}
        self._unpacking: set[str] = set()
        #: The manager's number of the latest sending of each pack, to answer it.
        self._transfer: dict[str, int] = {}
        #: Packs that cannot be used here, with why (until one is sent again).
        self.failed: dict[str, str] = {}
        self._done: queue.SimpleQueue[Unpacked] = queue.SimpleQueue()
        #: Locks marking ready packs in use, so ``packmule pack clean`` leaves them alone.
        self._held: dict[str, int] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)

    def fileno(self) -> int:
        """Readable when an unpack has ended (register it with the poller)."""
        return self._wake_r.fileno()

    def scan(self) -> list[str]:
        """Digests of the packs already complete on this node (from earlier runs too);
        removes what killed workers left behind long ago."""
        with contextlib.suppress(OSError):
            for d in self.root.iterdir():
                if (d / COMPLETE).exists():
                    if self._hold(d.name, d):
                        self.ready[d.name] = d
                elif d.name.startswith(".") and _age(d) > STALE_AFTER:
                    if d.is_dir():
                        shutil.rmtree(d, ignore_errors=True)
                    else:
                        d.unlink(missing_ok=True)
        return sorted(self.ready)

    def receive(self, msg: m.PutPack, data: zmq.Frame | bytes) -> int | Unpacked | None:
        """Store a piece of a pack. Returns the bytes received so far, or how the
        pack failed at once (it does not fit on disk), or None (nothing to say)."""
        digest = msg.digest
        if not _DIGEST.fullmatch(digest) or msg.size <= 0 or msg.offset < 0:
            return self._fail(msg, f"the manager sent a malformed pack piece ({digest[:80]!r}, "
                                   f"{msg.size} bytes at {msg.offset})")
        if digest in self.ready:
            return None
        if msg.offset == 0:
            self._transfer[digest] = msg.transfer
        if digest in self._unpacking:  # a resend after a reconnection: the unpack goes on
            self.pending.add(digest)
            return None
        inc = self._incoming.get(digest)
        if msg.offset == 0:  # a new sending (a resend restarts)
            if inc is not None:
                self._discard(inc)
            self.failed.pop(digest, None)
            try:
                inc = self._start(msg)
            except (PackError, OSError) as exc:
                return self._fail(msg, str(exc))
        if inc is None or inc.msg.transfer != msg.transfer or msg.offset != inc.received:
            return None  # the rest of a sending that failed or was replaced
        buf = data.buffer if isinstance(data, zmq.Frame) else data
        try:
            inc.file.write(buf)
        except OSError as exc:
            return self._fail(msg, f"cannot store pack {digest[:12]} in {self.root}: {exc}")
        inc.received += len(buf)
        if inc.received >= msg.size:
            inc.file.close()
            del self._incoming[digest]
            self._unpacking.add(digest)
            threading.Thread(target=self._unpack, args=(inc,), daemon=True,
                             name=f"packmule-unpack-{digest[:12]}").start()
        return inc.received

    def _start(self, msg: m.PutPack) -> _Incoming:
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if 2 * msg.size > free:  # the tar, then what it unpacks to
            raise PackError(
                f"pack {msg.digest[:12]} needs about {2 * msg.size / 1e6:.0f} MB of disk to "
                f"arrive and unpack, but {self.root} has {free / 1e6:.0f} MB free: free some "
                "space, or give the worker --pack-cache on a larger disk")
        fd, name = tempfile.mkstemp(dir=self.root, prefix=".incoming-", suffix=".tar")
        inc = _Incoming(msg, Path(name), os.fdopen(fd, "wb"))
        self._incoming[msg.digest] = inc
        self.pending.add(msg.digest)
        return inc

    def _discard(self, inc: _Incoming) -> None:
        self._incoming.pop(inc.msg.digest, None)
        inc.file.close()
        with contextlib.suppress(OSError):
            inc.path.unlink()

    def _fail(self, msg: m.PutPack, error: str) -> Unpacked:
        inc = self._incoming.get(msg.digest)
        if inc is not None:
            self._discard(inc)
        self.pending.discard(msg.digest)
        self.failed[msg.digest] = error
        return Unpacked(msg.digest, msg.transfer, None, error)

    def _unpack(self, inc: _Incoming) -> None:
        msg = inc.msg
        try:
            done = Unpacked(msg.digest, msg.transfer,
                            unpack(inc.path, msg.digest, msg.sha256, self.root))
        except PackCorrupted as exc:
            done = Unpacked(msg.digest, msg.transfer, None, str(exc), corrupted=True)
        except PackError as exc:
            done = Unpacked(msg.digest, msg.transfer, None, str(exc))
        except OSError as exc:
            done = Unpacked(msg.digest, msg.transfer, None,
                            f"cannot unpack pack {msg.digest[:12]} in {self.root}: {exc}")
        finally:
            with contextlib.suppress(OSError):
                inc.path.unlink()
        self._done.put(done)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def finished(self) -> list[Unpacked]:
        """Unpacks that ended since the last call (the tasks waiting for them may go on)."""
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        out: list[Unpacked] = []
        while True:
            try:
                done = self._done.get_nowait()
            except queue.Empty:
                return out
            self._unpacking.discard(done.digest)
            done = dataclasses.replace(done, transfer=self._transfer.pop(done.digest,
                                                                         done.transfer))
            if done.root is not None and not self._hold(done.digest, done.root):
                # ``packmule pack clean`` is removing it: absent, as if it had never
                # come; the manager sends it again (with its next task for here)
                done = dataclasses.replace(
                    done, root=None, corrupted=True,
                    error=f"pack {done.digest[:12]} was removed from {self.root} "
                          "(packmule pack clean) as it was unpacked")
            if done.root is not None:
                self.ready[done.digest] = done.root
            elif not done.corrupted:
                self.failed[done.digest] = done.error
            self.pending.discard(done.digest)
            out.append(done)

    def forget_waiting(self) -> None:
        """A session ended: the manager requeues the tasks that waited for packs,
        and sends again what had not fully arrived."""
        for inc in list(self._incoming.values()):
            self._discard(inc)
            self.pending.discard(inc.msg.digest)
        self.failed.clear()

    def _hold(self, digest: str, root: Path) -> bool:
        """Mark a ready pack in use (False: a cleaner is removing it)."""
        if digest not in self._held:
            fd = hold(root / COMPLETE)
            if fd is None:
                return False
            self._held[digest] = fd
        return True

    def interpreter(self, digest: str) -> str:
        root = self.ready[digest]
        touch(root)  # its last use, for packmule pack list|clean
        return str(pack_python(root))

    @staticmethod
    def environment() -> dict[str, str]:
        """The worker's environment without what points at its own Python."""
        return {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}

    def close(self) -> None:
        self.forget_waiting()
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()
        self._wake_r.close()
        self._wake_w.close()


def _age(path: Path) -> float:
    try:
        return time.time() - path.lstat().st_mtime
    except OSError:
        return 0.0
