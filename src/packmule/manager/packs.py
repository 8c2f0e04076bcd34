"""Environment packs on the manager side: analysed and built in the background,
so that ``submit()`` never waits for them; each task is queued once its pack
is ready, or failed with the build's error."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..envpack import Pack, analyze, build_pack
from ..envpack.analysis import unwrap
from ..errors import PackError, TaskCancelled
from ..task import Task

log = logging.getLogger("packmule.manager")

Ready = Callable[[Task, bytes, Pack], None]
Failed = Callable[[Task, BaseException], None]
#: Told of each pack this builder found or built, with the seconds that took.
Built = Callable[[Pack, float], None]


def _key(funcs: Sequence[Callable[..., Any]], extra: Sequence[str]) -> tuple[object, ...]:
    """One function definition (its code object: two lambdas differ, and so does a
    function defined again in a notebook) with these extra distributions."""
    code = tuple(getattr(unwrap(f), "__code__", f) for f in funcs)
    return code, tuple(sorted(extra))


class PackBuilder:
    """One background thread: finds each task's pack (analysis cached per
    function, packs cached on disk by digest) and hands the task on."""

    def __init__(self, cache_dir: Path | None, ready: Ready, failed: Failed,
                 built: Built | None = None) -> None:
        self.cache_dir = cache_dir
        self._ready, self._failed, self._built = ready, failed, built
        self._inbox: queue.SimpleQueue[tuple[Task, bytes] | None] = queue.SimpleQueue()
        #: (functions, extra_pkgs) -> the pack, or the error building it gave.
        self._packs: dict[tuple[object, ...], Pack | PackError] = {}
        #: Digests of the packs already told to ``built``.
        self._announced: set[str] = set()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="packmule-packs", daemon=True)
        self._thread.start()

    def submit(self, task: Task, payload: bytes) -> None:
        self._inbox.put((task, payload))

    def close(self, wait: bool = True) -> None:
        """Stop: the build under way finishes; tasks still waiting for theirs are cancelled."""
        self._closing = True
        self._inbox.put(None)
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        while (item := self._inbox.get()) is not None:
            task, payload = item
            if self._closing:
                self._failed(task, TaskCancelled(
                    f"task {task.id} was waiting for its environment pack when the manager "
                    "shut down", task.id))
                continue
            try:
                pack = self.pack_for(task.pack_functions, task.extra_pkgs)
            except Exception as exc:
                self._failed(task, exc)
            else:
                self._ready(task, payload, pack)

    def pack_for(self, funcs: Sequence[Callable[..., Any]], extra: Sequence[str]) -> Pack:
        """The pack these functions need (analysed once per function in this manager)."""
        key = _key(funcs, extra)
        got = self._packs.get(key)
        if got is None:
            try:
                start = time.monotonic()
                spec = analyze(funcs, extra)
                got = build_pack(spec, self.cache_dir)
                # (a build says so at INFO, with the cache's path: envpack.build)
                log.debug("environment pack %s ready: %s (%.0f MB)", got.digest[:12],
                         ", ".join(f"{n} {v}" for n, v in spec.distributions.items()),
                         got.size / 1e6)
                if self._built is not None and got.digest not in self._announced:
                    self._announced.add(got.digest)
                    self._built(got, time.monotonic() - start)
            except PackError as exc:
                got = exc
            except OSError as exc:  # perhaps passing (a full disk): not remembered
                raise PackError(f"cannot build the environment pack: {exc}") from None
            self._packs[key] = got
        if isinstance(got, PackError):
            raise type(got)(str(got))  # a fresh exception for each task's future
        return got
