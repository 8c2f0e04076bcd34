"""What a worker has: usable cores, memory, disk and GPUs.

* cores: CPUs in this process's affinity mask, lowered by a cgroup CPU quota and by
  what a Slurm job was given on this node;
* memory: physical memory, lowered by a cgroup memory limit (v2 or v1) and by what a
  Slurm job was given on this node;
* disk: free space of the work directory;
* gpus: ``CUDA_VISIBLE_DEVICES`` when set, else what ``nvidia-smi`` lists.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import psutil

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_paths() -> dict[str, str]:
    """Controller name (or "" for v2) -> this process's cgroup path."""
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    except (OSError, ValueError):
        pass
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _walk_up(base: Path, rel: str, filename: str) -> list[str]:
    """Values of ``filename`` from this cgroup up to the hierarchy's root."""
    values = []
    p = Path(rel.lstrip("/"))
    while True:
        v = _read(base / p / filename)
        if v is not None:
            values.append(v)
        if p == Path("") or p == Path("."):
            break
        p = p.parent
    return values


def cgroup_cpu_limit() -> float | None:
    """CPUs allowed by a CFS quota, if any."""
    paths = _cgroup_paths()
    limits: list[float] = []
    if "" in paths:
        for v in _walk_up(_CGROUP_ROOT, paths[""], "cpu.max"):
            quota, _, period = v.partition(" ")
            if quota != "max" and period:
                limits.append(int(quota) / int(period))
    for key in ("cpu", "cpu,cpuacct"):
        if key in paths:
            for base in (_CGROUP_ROOT / "cpu", _CGROUP_ROOT / "cpu,cpuacct"):
                quotas = _walk_up(base, paths[key], "cpu.cfs_quota_us")
                periods = _walk_up(base, paths[key], "cpu.cfs_period_us")
                for q, per in zip(quotas, periods, strict=False):
                    if int(q) > 0 and int(per) > 0:
                        limits.append(int(q) / int(per))
    return min(limits) if limits else None


def cgroup_memory_limit() -> int | None:
    """Bytes allowed by a cgroup memory limit, if any."""
    paths = _cgroup_paths()
    limits: list[int] = []
    if "" in paths:
        limits += [int(v) for v in _walk_up(_CGROUP_ROOT, paths[""], "memory.max") if v != "max"]
    if "memory" in paths:
        for v in _walk_up(_CGROUP_ROOT / "memory", paths["memory"], "memory.limit_in_bytes"):
            if int(v) < 1 << 60:  # "unlimited" is a huge number in v1
                limits.append(int(v))
    return min(limits) if limits else None


def _positive_int(environ: Mapping[str, str], name: str) -> int | None:
    try:
        value = int(environ.get(name, ""))
    except ValueError:
        return None
    return value if value > 0 else None


def slurm_cpu_limit(environ: Mapping[str, str] = os.environ) -> int | None:
    """CPUs the Slurm job (or step) has on this node: ``SLURM_CPUS_ON_NODE``, if set."""
    return _positive_int(environ, "SLURM_CPUS_ON_NODE")


def slurm_memory_limit(environ: Mapping[str, str] = os.environ) -> int | None:
    """MB of memory the Slurm job has on this node, if its environment says.

    ``SLURM_MEM_PER_NODE`` (``--mem``; 0 means all of the node's) or else
    ``SLURM_MEM_PER_CPU`` (``--mem-per-cpu``) times ``SLURM_CPUS_ON_NODE``. A job
    given memory by neither option (e.g. ``--exclusive`` alone) has no limit here.
    """
    per_node = _positive_int(environ, "SLURM_MEM_PER_NODE")
    if per_node is not None:
        return per_node
    per_cpu = _positive_int(environ, "SLURM_MEM_PER_CPU")
    cpus = slurm_cpu_limit(environ)
    return per_cpu * cpus if per_cpu is not None and cpus is not None else None


def detect_cores() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    slurm = slurm_cpu_limit()
    if slurm is not None:
        n = min(n, slurm)
    return max(1, n)


def detect_memory() -> int:
    """Memory in MB."""
    total = int(psutil.virtual_memory().total)
    limit = cgroup_memory_limit()
    if limit is not None:
        total = min(total, limit)
    mb = total // (1 << 20)
    slurm = slurm_memory_limit()
    return mb if slurm is None else min(mb, slurm)


def detect_disk(workdir: Path) -> int:
    """Free space of ``workdir`` in MB."""
    workdir.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(workdir).free // (1 << 20)


def detect_gpus() -> list[str]:
    """GPU ids a task may be given in CUDA_VISIBLE_DEVICES."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        # CUDA stops at the first invalid entry, e.g. "-1" hides every GPU.
        out = []
        for v in ids:
            if v.startswith("-"):
                break
            out.append(v)
        return out
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        res = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if res.returncode != 0:
        return []
    return [line.strip() for line in res.stdout.splitlines() if line.strip()]


def choose_gpus(requested: int | None, detected: list[str]) -> list[str]:
    """GPU ids to offer: the detected ones, or ``requested`` of them.

    A request above what was detected is taken at its word (ids 0..N-1):
    the site knows best, and it lets tests exercise GPU assignment anywhere.
    """
    if requested is None:
        return detected
    if requested <= len(detected):
        return detected[:requested]
    return [str(i) for i in range(requested)]
