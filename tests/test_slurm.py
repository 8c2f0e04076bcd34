"""packmule.WorkQueueExecutor with Parsl's SlurmProvider, on a real single-node Slurm.

The module starts a private Slurm (munged, slurmctld, slurmd; state in a fresh
/tmp/packmule-slurm-* dir, or ``$PACKMULE_SLURM_DIR``) with tests/slurm/start-slurm.sh,
which installs slurm-wlm and munge with apt-get when they are missing, and stops it with
stop-slurm.sh. It needs root; without root, or when Slurm does not come up, the module
is skipped with the reason. Select or deselect with ``-m slurm`` / ``-m "not slurm"``.

The block's job runs on this machine as the submitting user, so the worker uses this
interpreter (the executor's default worker command is ``sys.executable -m packmule
worker``) and reads the password file from the run directory directly.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import parsl
import pytest
from parsl import python_app
from parsl.config import Config
from parsl.launchers import SingleNodeLauncher, SrunLauncher
from parsl.launchers.base import Launcher
from parsl.providers import SlurmProvider

from packmule import WorkQueueExecutor

from .conftest import wait_until
from .test_cluster import max_overlap

pytestmark = pytest.mark.slurm

SCRIPTS = Path(__file__).parent / "slurm"
PARTITION = "packmule"
REPO_ROOT = Path(__file__).resolve().parents[1]  # holds the ``tests`` package


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _free_ports(n: int) -> list[int]:
    """``n`` ports free now, below Linux's ephemeral range (no clash with outgoing connections)."""
    rng = random.Random()
    found: list[int] = []
    while len(found) < n:
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        if port not in found:
            found.append(port)
    return found


@contextmanager
def private_slurm(partition: str, nodes: str | None = None) -> Iterator[Path]:
    """Run a private Slurm; yield its slurm.conf (also exported as SLURM_CONF).

    ``nodes`` ("NAME:CPUS:MEMORY_MB ..."): a multi-node cluster, each node in its own
    network and UTS namespace (``PACKMULE_SLURM_NODES`` of start-slurm.sh). Skips the
    calling tests, with the reason, without root or when the cluster does not come up.

    Each call gets its own cluster (state dir under /tmp, random ports), so that
    concurrent runs on one machine do not share, or stop, each other's Slurm. With
    ``PACKMULE_SLURM_DIR`` set, a single-node cluster there is used (and left running if
    it already was).
    """
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("Slurm tests need root on Linux: tests/slurm/start-slurm.sh installs "
                    "slurm-wlm/munge and runs munged, slurmctld and slurmd"
                    + (", and makes network namespaces" if nodes else ""))
    env = dict(os.environ, PACKMULE_SLURM_PARTITION=partition)
    if nodes:
        env["PACKMULE_SLURM_NODES"] = nodes
        env["PACKMULE_SLURM_NET_WAIT"] = "60"  # for another run's multi-node cluster
    if os.environ.get("PACKMULE_SLURM_DIR") and not nodes:
        state, own_dir = Path(os.environ["PACKMULE_SLURM_DIR"]), False
    else:
        # Not under pytest's 0700 basetemp: munged runs as the munge user and must reach it.
        state, own_dir = Path(tempfile.mkdtemp(prefix="packmule-slurm-", dir="/tmp")), True
        env["PACKMULE_SLURM_PORTS"] = " ".join(map(str, _free_ports(2)))

    def stop() -> None:
        subprocess.run([str(SCRIPTS / "stop-slurm.sh"), str(state),
                        *(["--purge"] if own_dir else [])],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60, check=False)

    try:
        proc = subprocess.run([str(SCRIPTS / "start-slurm.sh"), str(state)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=300)
    except subprocess.TimeoutExpired as exc:
        stop()
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        pytest.skip(f"Slurm did not start: start-slurm.sh timed out after 300 s:\n{_tail(out)}")
    if proc.returncode != 0:
        stop()  # whatever part of it did start
        pytest.skip(f"Slurm did not start: start-slurm.sh exited {proc.returncode}:\n"
                    f"{_tail(proc.stdout)}")
    # A cluster that was already up before this module (someone's own) is left running.
    started_here = "already running" not in proc.stdout
    conf = state / "slurm.conf"
    mp = pytest.MonkeyPatch()
    mp.setenv("SLURM_CONF", str(conf))  # for sbatch/squeue/scancel, here and in the job
    try:
        yield conf
    finally:
        mp.undo()
        if started_here:
            stop()


@pytest.fixture(scope="module")
def slurm() -> Iterator[Path]:
    """A running private single-node Slurm; yields its slurm.conf."""
    with private_slurm(PARTITION) as conf:
        yield conf


def squeue() -> dict[str, tuple[str, str, str]]:
    """The cluster's current (not finished) jobs: job id -> (state, job name, nodes)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %t %j %N"], check=True, text=True,
                         stdout=subprocess.PIPE, timeout=10).stdout
    return {jid: (state, name, nodes)
            for jid, state, name, nodes in (ln.split() for ln in out.splitlines())}


@contextmanager
def slurm_workflow(tmp_path: Path, launcher: Launcher) -> Iterator[WorkQueueExecutor]:
    provider = SlurmProvider(
        partition=PARTITION, nodes_per_block=1, init_blocks=1, min_blocks=0, max_blocks=1,
        walltime="00:05:00", launcher=launcher, cmd_timeout=30,
        # The apps live in this module: make ``tests.test_slurm`` importable on the worker.
        worker_init=f"export PYTHONPATH={REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}",
    )
    ex = WorkQueueExecutor(label="slurm", provider=provider,
                           worker_options="--cores 2 --memory 2000 --disk 2000")
    config = Config(executors=[ex], run_dir=str(tmp_path / "runinfo"), strategy_period=0.5)
    with parsl.load(config):
        yield ex


def job_id_of(ex: WorkQueueExecutor) -> str:
    """The Slurm job id of the executor's one block."""
    ids = wait_until(lambda: list(ex.blocks_to_job_id.values()), timeout=30)
    assert len(ids) == 1, ids
    return str(ids[0])


@python_app
def where(seconds: float, parsl_resource_specification: dict[str, int] = {  # noqa: B006
        "cores": 1, "memory": 500, "disk": 100}) -> dict[str, Any]:
    """Sleep; say when, where, with what and in which Slurm job and step this ran."""
    import os
    import socket
    import time

    import psutil

    start = time.time()
    time.sleep(seconds)
    worker = next((p.pid for p in psutil.Process().parents()
                   if p.cmdline()[1:4] == ["-m", "packmule", "worker"]), None)
    return {"start": start, "end": time.time(), "host": socket.gethostname().split(".")[0],
            "pid": os.getpid(), "worker": worker, "uid": os.getuid(),
            "job": os.environ.get("SLURM_JOB_ID"), "step": os.environ.get("SLURM_STEP_ID"),
            "block": os.environ.get("PARSL_WORKER_BLOCK_ID"),
            "cores": int(os.environ["CORES"]), "memory": int(os.environ["MEMORY"])}


def test_heterogeneous_apps_run_packed_inside_the_slurm_job(
    slurm: Path, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    with slurm_workflow(tmp_path, SrunLauncher()) as ex:
        ones = [where(1.0) for _ in range(4)]
        two = where(1.0, parsl_resource_specification={"cores": 2, "memory": 1000, "disk": 100})
        results = [f.result(timeout=60) for f in [*ones, two]]
        job = job_id_of(ex)
        password = Path(ex.run_dir) / "slurm" / "password"
    elapsed = time.monotonic() - t0

    # Every task ran inside the block's Slurm job, in the srun step, as the submitting user
    # (so the run directory's 0600 password file was readable by the job).
    assert {r["job"] for r in results} == {job}
    assert {r["step"] for r in results} == {"0"}
    assert {r["block"] for r in results} == {"0"}
    assert {r["uid"] for r in results} == {os.getuid()}
    assert password.stat().st_uid == os.getuid()
    # One-core tasks ran two at a time on the 2-core worker; the 2-core task ran alone.
    one_spans = [(r["start"], r["end"]) for r in results[:4]]
    assert max_overlap(one_spans) == 2
    s2, e2 = results[4]["start"], results[4]["end"]
    assert all(e <= s2 or s >= e2 for s, e in one_spans)
    print(f"workflow on Slurm job {job}: {elapsed:.1f} s")


def test_block_is_a_slurm_job_and_is_cancelled_at_cleanup(slurm: Path, tmp_path: Path) -> None:
    with slurm_workflow(tmp_path, SingleNodeLauncher()) as ex:
        job = job_id_of(ex)
        r = where(0.1).result(timeout=60)
        assert r["job"] == job
        assert r["step"] is None  # no srun: the batch step itself
        assert r["worker"] is not None  # the task's ancestor ``packmule worker`` process
        state, name, nodes = squeue()[job]
        assert (state, nodes) == ("R", r["host"]) and name.startswith("parsl.slurm"), (
            state, name, nodes)
    # Parsl's cleanup scancels the block: the job leaves squeue, and the worker and its task
    # runner are gone (killed by Slurm or ended by packmule's SIGTERM / manager-exit handling).
    t0 = time.monotonic()
    wait_until(lambda: job not in squeue(), timeout=20, interval=0.1)
    t1 = time.monotonic()
    for pid in (r["pid"], r["worker"]):
        wait_until(lambda pid=pid: not _running(pid), timeout=10, interval=0.1)
    print(f"job {job} left squeue {t1 - t0:.1f} s after cleanup, "
          f"its processes {time.monotonic() - t0:.1f} s")


def _running(pid: int) -> bool:
    """A live process (zombies, waiting for a slow-reaping init, do not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
