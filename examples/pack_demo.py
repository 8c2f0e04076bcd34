"""Environment packs: run a task on a worker whose Python lacks what it imports.

Run it with::

    python examples/pack_demo.py

It builds a *worker pack* (the interpreter, its standard library, packmule
and its runtime: nothing else), unpacks it into a temporary "node", and
starts ``packmule worker`` from it, with no ``PYTHONPATH``: that worker
cannot see this directory or this virtual environment. Then it submits:

1. a plain task calling :func:`pack_helper.where_am_i` (a local module next
   to this script): it fails on the worker, with a message saying why;
2. the same call with ``pack=True``: packmule finds that the function needs
   ``pack_helper``, builds an environment pack in the background, sends it to
   the worker once, and the task runs inside it;
3. ten more packed tasks: the pack is neither built nor sent again.

The worker logs to a file in the manager's run directory, printed only when
the demo fails (everything is in a temporary directory, removed at the end).

Exit status: 0 when the packed tasks ran inside the pack, 1 otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pack_helper

import packmule
from packmule.envpack import analyze, build_pack
from packmule.local import stop_worker, worker_log_dir
from packmule.protocol.security import PASSWORD_ENV


def app() -> str:
    """Runs on the worker: needs the local module ``pack_helper``."""
    return pack_helper.where_am_i()


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="packmule-pack-demo-"))
    try:
        return demo(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def demo(tmp: Path) -> int:
    print("building a worker pack (packmule alone, with its interpreter) ...")
    worker_pack = build_pack(analyze([]), tmp / "cache")
    node = tmp / "node"
    node.mkdir()
    subprocess.run(["tar", "-xf", str(worker_pack.path), "-C", str(node)], check=True)
    print(f"  {worker_pack.size / 1e6:.0f} MB, unpacked into {node}")

    with packmule.Manager(run_dir=tmp / "run", pack_cache=tmp / "cache") as mgr:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env[PASSWORD_ENV] = mgr._secret.decode()
        log = worker_log_dir(mgr) / "worker-1.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as log_file:  # its lines would break into this demo's output
            worker = subprocess.Popen(
                [str(node / "bin" / "python"), "-m", "packmule", "worker", mgr.address,
                 "--cores", "2", "--memory", "2000", "--disk", "4000", "--workdir", str(tmp),
                 "--pack-cache", str(tmp / "node-packs")],
                env=env, cwd=tmp, stderr=log_file)
        ok = False
        try:
            print("\n1. a plain task: the worker's Python has no pack_helper")
            try:
                mgr.submit(packmule.PythonTask(app)).result(timeout=60)
                print("   unexpectedly ran")
            except Exception as exc:
                print(f"   {type(exc).__name__}: {str(exc)[:150]}...")

            print("\n2. the same task with pack=True")
            start = time.perf_counter()
            task = packmule.PythonTask(app, pack=True)
            where = mgr.submit(task).result(timeout=300)
            assert task.pack is not None
            print(f"   ran {where}")
            print(f"   pack {task.pack.digest[:16]} ({task.pack.size / 1e6:.0f} MB): built, "
                  f"sent and unpacked, first result in {time.perf_counter() - start:.2f} s")

            print("\n3. ten more packed tasks")
            start = time.perf_counter()
            more = [mgr.submit(packmule.PythonTask(app, pack=True)) for _ in range(10)]
            same = {f.result(timeout=60) for f in more} == {where}
            stats = mgr.stats()
            print(f"   all ran in the same pack: {same}, in {time.perf_counter() - start:.2f} s; "
                  f"packs sent to the worker: {stats.packs_sent}")
            inside = str(tmp / "node-packs" / task.pack.digest) in where
            ok = inside and same and stats.packs_sent == 1
            return 0 if ok else 1
        finally:
            mgr.shutdown()
            stop_worker(worker)
            if not ok:
                print(f"\nthe worker's log ({log}):\n{log.read_text(errors='replace')}",
                      file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
