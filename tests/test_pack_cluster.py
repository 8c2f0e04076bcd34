"""Environment packs end to end: a real manager, and workers that run from a
*worker pack* (packmule and its runtime only: no numpy, none of the test's
modules), so whatever a packed task imports can only come from its own pack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from packmule import Manager, PackError, PythonTask, WorkerLost
from packmule.core.scheduler import MAX_REQUEUES
from packmule.envpack import analyze, build_pack
from packmule.local import stop_worker
from packmule.protocol.security import PASSWORD_ENV

from .conftest import FAST, connected, wait_until

np = pytest.importorskip("numpy")


def apps() -> tuple[Callable[[], tuple[str, str]], Callable[[], str]]:
    """Two apps, made here so that they travel by value (as a script's functions
    do), not as references to this test module."""

    def numpy_version() -> tuple[str, str]:
        import sys

        import numpy

        return numpy.__version__, sys.prefix

    def plain_numpy_version() -> str:
        import numpy  # not packed: the worker's own environment lacks it

        return str(numpy.__version__)

    return numpy_version, plain_numpy_version


numpy_version, plain_numpy_version = apps()


@pytest.fixture(scope="module")
def worker_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A worker pack: no app, only packmule and its runtime, with the interpreter."""
    return build_pack(analyze([]), tmp_path_factory.mktemp("worker-pack")).path


@pytest.fixture(scope="module")
def worker_env(worker_pack: Path) -> Path:
    """The worker pack, unpacked: the whole Python a worker node has."""
    root = worker_pack.parent / "env"
    root.mkdir()
    subprocess.run(["tar", "-xf", str(worker_pack), "-C", str(root)], check=True)
    return root


class Node:
    """A manager (pack cache in tmp) and workers started from the worker pack."""

    def __init__(self, tmp: Path, worker_env: Path) -> None:
        self.tmp, self.worker_env = tmp, worker_env
        self.manager = Manager(run_dir=tmp / "run", pack_cache=tmp / "manager-packs",
                               validate=True, **FAST)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start_worker(self, *wrap: str) -> subprocess.Popen[bytes]:
        cmd = [*wrap, str(self.worker_env / "bin" / "python"), "-m", "packmule", "worker",
               self.manager.address, "--cores", "2", "--memory", "2000", "--disk", "4000",
               "--workdir", str(self.tmp / "work"), "--pack-cache", str(self.tmp / "node-packs")]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env[PASSWORD_ENV] = self.manager._secret.decode()
        proc = subprocess.Popen(cmd, env=env, cwd=self.tmp, stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        self.manager.shutdown()
        for p in self.procs:
            stop_worker(p)


@pytest.fixture
def node(tmp_path: Path, worker_env: Path) -> Iterator[Node]:
    n = Node(tmp_path, worker_env)
    try:
        yield n
    finally:
        n.close()


def test_packed_task_imports_what_the_worker_lacks(node: Node) -> None:
    node.start_worker()
    mgr = node.manager
    wait_until(connected(mgr, 1))
    with pytest.raises(ModuleNotFoundError, match="numpy"):  # the worker has no numpy
        mgr.submit(PythonTask(plain_numpy_version)).result(timeout=60)
    task = PythonTask(numpy_version, pack=True)
    version, prefix = mgr.submit(task).result(timeout=120)
    assert version == np.__version__
    assert task.pack is not None and Path(prefix).name == task.pack.digest  # ran in the pack
    assert Path(prefix).parent == node.tmp / "node-packs"
    # more tasks of the same app reuse the pack: built once, sent once
    futs = [mgr.submit(PythonTask(numpy_version, pack=True)) for _ in range(6)]
    assert {f.result(timeout=60)[1] for f in futs} == {prefix}
    assert mgr.stats().packs_sent == 1


def test_a_restarted_worker_keeps_its_packs(node: Node) -> None:
    mgr = node.manager
    first = node.start_worker()
    wait_until(connected(mgr, 1))
    mgr.submit(PythonTask(numpy_version, pack=True)).result(timeout=120)
    stop_worker(first)
    wait_until(lambda: mgr.stats().workers == 0)
    node.start_worker()
    wait_until(connected(mgr, 1))
    assert mgr.submit(PythonTask(numpy_version, pack=True)).result(timeout=60)[0] \
        == np.__version__
    assert mgr.stats().packs_sent == 1  # the new worker said it had it


def test_local_helper_module_next_to_the_script(node: Node, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "pm_helper_mod.py").write_text(textwrap.dedent("""
        import numpy

        def norm(values):
            return float(numpy.linalg.norm(values))
    """))
    monkeypatch.syspath_prepend(str(src))
    import pm_helper_mod  # type: ignore[import-not-found]

    def app(values: list[float]) -> float:
        return float(pm_helper_mod.norm(values))

    node.start_worker()
    wait_until(connected(node.manager, 1))
    assert node.manager.submit(PythonTask(app, [3.0, 4.0], pack=True)).result(timeout=120) \
        == 5.0


def test_a_pack_that_cannot_be_built_fails_only_its_tasks(node: Node) -> None:
    def broken() -> None:
        import pm_no_such_module  # type: ignore[import-not-found]  # noqa: F401

    node.start_worker()
    mgr = node.manager
    wait_until(connected(mgr, 1))
    bad = mgr.submit(PythonTask(broken, pack=True))
    good = mgr.submit(PythonTask(numpy_version, pack=True))
    with pytest.raises(PackError, match="pm_no_such_module"):
        bad.result(timeout=60)
    assert good.result(timeout=120)[0] == np.__version__


def test_a_corrupted_transfer_is_detected_sent_again_and_explained(node: Node) -> None:
    def nothing() -> int:
        return 1

    # Damage the manager's cached copy after its checksum was recorded: every
    # transfer then arrives corrupted (a damaged network would do it once).
    pack = build_pack(analyze([nothing]), node.tmp / "manager-packs")
    with open(pack.path, "r+b") as f:
        f.seek(pack.size // 2)
        byte = f.read(1)
        f.seek(pack.size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    node.start_worker()
    mgr = node.manager
    wait_until(connected(mgr, 1))
    with pytest.raises(WorkerLost, match="arrived corrupted"):
        mgr.submit(PythonTask(nothing, pack=True)).result(timeout=120)
    assert mgr.stats().packs_sent == MAX_REQUEUES + 1  # sent again after each failure
    assert not list((node.tmp / "node-packs").glob(f"{pack.digest}*"))  # nothing half-unpacked
    assert mgr.submit(PythonTask(len, "abc")).result(timeout=30) == 3  # the worker goes on


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="hiding the system's Python needs root and unshare (util-linux)")
def test_a_node_without_python_runs_packed_tasks(node: Node) -> None:
    """The worker runs in a mount namespace where every Python outside the
    worker pack is hidden (tmpfs over each); a packed task still runs."""
    dirs = {sys.base_prefix, sys.prefix, *map(str, Path("/usr/lib").glob("python3*")),
            *map(str, Path("/usr/local/lib").glob("python3*"))}
    path_dirs = {*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/local/bin"}
    files = {str(f) for d in path_dirs if d and os.path.isdir(d) for f in Path(d).glob("python*")
             if not str(f).startswith((sys.base_prefix, sys.prefix))}
    script = "".join(f"mount -t tmpfs none {d} && " for d in sorted(dirs) if os.path.isdir(d))
    script += "".join(f"mount --bind /dev/null {f} && " for f in sorted(files))
    # Prove it: no interpreter is left outside the pack, then become the worker.
    script += (f"! test -e {sys.executable} && ! test -x /usr/bin/python3 && "
               "! command -v python3 && ! command -v python && exec \"$@\"")
    proc = node.start_worker("unshare", "--mount", "--propagation", "private", "sh", "-c",
                             script, "sh")
    mgr = node.manager
    wait_until(lambda: mgr.stats().workers >= 1 or proc.poll() is not None, timeout=30)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    version, prefix = mgr.submit(PythonTask(numpy_version, pack=True)).result(timeout=120)
    assert version == np.__version__ and Path(prefix).parent == node.tmp / "node-packs"


def test_parsl_pack_true_runs_the_spec_examples(tmp_path: Path, worker_pack: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """As docs/packs.md tells: each block unpacks the worker pack, then starts
    the worker with its interpreter; the apps' packs follow."""
    parsl = pytest.importorskip("parsl")
    from parsl.config import Config

    from packmule import WorkQueueExecutor

    from .test_cluster import max_overlap

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the manager's packs

    @parsl.python_app
    def compute(x: int, parsl_resource_specification: dict[str, int] = {  # noqa: B006
            "cores": 1, "memory": 1000, "disk": 1000}) -> tuple[int, float, float, str]:
        import time

        import numpy

        start = time.time()
        time.sleep(0.5)
        return int(numpy.int64(x) * 2), start, time.time(), numpy.__version__

    node = tmp_path / "node"
    ex = WorkQueueExecutor(
        pack=True, init_command=f"mkdir -p {node} && tar -xf {worker_pack} -C {node}",
        worker_executable=f"{node / 'bin' / 'python'} -m packmule worker",
        worker_options=f"--cores 2 --memory 4000 --disk 4000 --pack-cache {tmp_path / 'node'}",
    )
    config = Config(executors=[ex], run_dir=str(tmp_path / "runinfo"), strategy_period=0.1)
    with parsl.load(config):
        futs = [compute(i) for i in range(4)]
        futs += [compute(i, parsl_resource_specification={"cores": 1, "memory": 500,
                                                          "disk": 500}) for i in range(4, 6)]
        results = [f.result(timeout=180) for f in futs]
        assert ex.manager is not None and ex.manager.stats().packs_sent == 1
    assert [r[0] for r in results] == [i * 2 for i in range(6)]
    assert {r[3] for r in results} == {np.__version__}  # numpy from the pack
    assert max_overlap([(s, e) for _, s, e, _ in results]) == 2


def test_cancelled_while_its_pack_builds_never_runs(node: Node) -> None:
    def never() -> None:
        raise AssertionError("a cancelled task ran")

    mgr = node.manager
    fut = mgr.submit(PythonTask(never, pack=True))
    assert fut.cancel()  # its pack is still being built: no worker is even connected
    assert mgr.wait(timeout=120)
    stats = mgr.stats()
    assert fut.cancelled() and stats.tasks_submitted == 0 and stats.packs_sent == 0


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="a small pack cache needs a tmpfs in a mount namespace (root)")
def test_a_worker_that_cannot_hold_the_pack_leaves_it_to_others(node: Node) -> None:
    cache = node.tmp / "node-packs"
    cache.mkdir()
    # This worker's pack cache is an 8 MB tmpfs: the pack cannot arrive there.
    mount = f"mount -t tmpfs -o size=8m none {cache} && exec \"$@\""
    mgr = node.manager
    node.start_worker("unshare", "--mount", "sh", "-c", mount, "sh")
    wait_until(connected(mgr, 1))
    with pytest.raises(PackError, match="MB of disk"):
        mgr.submit(PythonTask(numpy_version, pack=True)).result(timeout=120)
    node.start_worker()  # a worker with room
    wait_until(connected(mgr, 2))
    futs = [mgr.submit(PythonTask(numpy_version, pack=True)) for _ in range(4)]
    assert {f.result(timeout=120)[0] for f in futs} == {np.__version__}
