"""What the manager sends workers besides tasks: environment packs, in paced
pieces, and input files, cached per worker when the task says so."""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import FileTransferError
from ..protocol import messages as m
from ..protocol.pieces import MAX_TASK_DATA, too_large_to_send
from ..task import File

if TYPE_CHECKING:
    from ..envpack.build import Pack

log = logging.getLogger("packmule.manager")

#: Environment packs travel in pieces of PACK_CHUNK bytes, at most PACK_WINDOW
#: of them unacknowledged per transfer: a piece takes ~20 ms on loopback with
#: CURVE, so heartbeats and tasks are never queued behind a whole pack (a
#: 1 GB message would hold the connection for seconds), and a window of
#: 16 MiB keeps a 1 Gbit/s link with 100 ms round trips busy.
PACK_CHUNK = 4 << 20
PACK_WINDOW = 16 << 20

#: Sends frames to a worker's connection; False when it is gone.
SendFrames = Callable[[list[bytes | memoryview]], bool]


def cache_name(local_path: str) -> str:
    """A name that changes when the file's path, size or modification time changes."""
    st = os.stat(local_path)
    ident = f"{os.path.abspath(local_path)}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    digest = hashlib.sha256(ident).hexdigest()[:24]
    return f"file-{digest}-{os.path.basename(local_path)}"


@dataclass
class _Sending:
    """A pack being sent to one worker."""

    id: int
    pack: Pack
    data: memoryview
    sent: int = 0


@dataclass
class _Worker:
    """What one worker has, or is being sent."""

    #: Cache names of the input files it holds.
    files: set[str] = field(default_factory=set)
    #: Digests of the environment packs it has (or is being sent, or cannot use).
    packs: set[str] = field(default_factory=set)
    #: Of those, the ones it has said are ready (or unusable): not still on their way.
    settled: set[str] = field(default_factory=set)
    sending: dict[str, _Sending] = field(default_factory=dict)


class Transfers:
    """Packs and files per worker. A worker's state goes with :meth:`forget`."""

    def __init__(self) -> None:
        self._workers: dict[str, _Worker] = {}
        self._ids = itertools.count(1)
        self.counts: collections.Counter[str] = collections.Counter()

    def joined(self, wid: str, packs: list[str]) -> None:
        """A worker connected, with these packs in its cache."""
        self._workers[wid] = _Worker(packs=set(packs), settled=set(packs))

    def forget(self, wid: str) -> None:
        self._workers.pop(wid, None)

    # ---------------------------------------------------------------- packs
    def needs_pack(self, wid: str, pack: Pack) -> bool:
        return pack.digest not in self._workers[wid].packs

    def pack_pending(self, wid: str, digest: str) -> bool:
        """Whether the worker is still being sent (or unpacking) this pack."""
        w = self._workers.get(wid)
        return w is not None and digest in w.packs and digest not in w.settled

    def send_pack(self, wid: str, pack: Pack, send: SendFrames) -> bool:
        """Start sending a pack to a worker (once), mapped from its file so that no copy
        is held; the worker's progress reports pace the rest. False: the worker is gone.
        OSError: the pack's file cannot be read as it was built."""
        with open(pack.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != pack.size or not size:
                raise OSError(f"it has {size} bytes, {pack.size} were built")
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        w = self._workers[wid]
        sending = _Sending(next(self._ids), pack, memoryview(data))
        w.sending[pack.digest] = sending
        w.packs.add(pack.digest)
        w.settled.discard(pack.digest)
        self.counts["packs_sent"] += 1
        return self.progress(wid, m.PackProgress(pack.digest, sending.id, 0), send)

    def progress(self, wid: str, msg: m.PackProgress, send: SendFrames) -> bool:
        """The worker has ``msg.received`` bytes: send the next pieces, keeping at most
        :data:`PACK_WINDOW` in flight. False: the worker is gone."""
        w = self._workers.get(wid)
        t = None if w is None else w.sending.get(msg.digest)
        if w is None or t is None or t.id != msg.transfer:
            return True  # an answer about an earlier sending
        p = t.pack
        while t.sent < p.size and t.sent - msg.received < PACK_WINDOW:
            chunk = t.data[t.sent:t.sent + PACK_CHUNK]
            header = m.encode(m.PutPack(p.digest, p.sha256, p.size, t.sent, t.id))
            if not send([header, chunk]):
                return False
            t.sent += len(chunk)
        if msg.received >= p.size:
            del w.sending[msg.digest]
        return True

    def pack_state(self, wid: str, hostname: str, msg: m.PackState) -> None:
        """The worker has a pack ready, or cannot use it (``resend``: send it again with
        its next task)."""
        w = self._workers.get(wid)
        if w is None:
            return
        sending = w.sending.get(msg.digest)
        if sending is not None and sending.id != msg.transfer:
            return  # about an earlier sending, or from before this one began
        w.sending.pop(msg.digest, None)
        if msg.ok or not msg.resend:  # a pack it cannot use: its tasks fail there
            w.packs.add(msg.digest)
            w.settled.add(msg.digest)
        else:
            w.packs.discard(msg.digest)
            w.settled.discard(msg.digest)
        if not msg.ok:
            log.warning("worker %s (%s) cannot use pack %s: %s", wid, hostname,
                        msg.digest[:12], msg.message)

    # ---------------------------------------------------------------- files
    def inputs(self, wid: str, files: tuple[File, ...], send: Callable[[m.Message], bool]
               ) -> list[m.InputFile] | None:
        """The task's input files for this worker: cacheable ones are sent once (as
        :class:`~m.PutFile`, in order with the task) and named; the others travel with the
        task. None: the worker is gone. OSError: a file cannot be read.
        FileTransferError: a cacheable one is too large to send."""
        w = self._workers[wid]
        out = []
        for f in files:
            if f.cache:
                name = cache_name(f.local_path)
                if name not in w.files:
                    data = Path(f.local_path).read_bytes()
                    if len(data) > MAX_TASK_DATA:
                        raise FileTransferError(too_large_to_send(
                            f"its input file {f.local_path} is", len(data)))
                    if not send(m.PutFile(name, data)):
                        return None
                    self.counts["files_sent"] += 1
                    w.files.add(name)
                out.append(m.InputFile(f.sandbox_name, name, b""))
            else:
                out.append(m.InputFile(f.sandbox_name, "", Path(f.local_path).read_bytes()))
                self.counts["files_sent"] += 1
        return out
