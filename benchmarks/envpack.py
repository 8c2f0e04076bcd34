"""How fast environment packs are built, found in the cache, and unpacked.

Run it with::

    python benchmarks/envpack.py                       # temporary folders in $TMPDIR
    python benchmarks/envpack.py --tmpdir /dev/shm     # in memory: CPU overhead only

(``pip install -e '.[bench]'`` installs numpy and scipy.) It prints one JSON
object on stdout:

``build``
    A numpy + scipy pack (plus the interpreter, its stdlib and packmule's
    runtime) built cold into an empty cache: ``analyze`` + ``build_pack``,
    against a plain ``tar -cf`` of exactly the same files (the same file list
    and renames, written to a file). Target: ratio <= 1.5.
``cache_hit``
    ``analyze`` + ``build_pack`` when the cache already holds the pack, in ms.
    Target: <= 100 ms.
``unpack``
    ``unpack`` (member checks, extraction, sha256, atomic rename) into an
    empty cache, against a plain ``tar -xf`` of the same tar. Target: ratio
    <= 1.2.

Repeats (``--repeats``, default 3) are interleaved, alternating which side
goes first, and medians are reported; ``os.sync()`` runs before each timed
step so that one step's write-back does not slow the next.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from packmule.envpack import analyze, build_pack, unpack
from packmule.envpack import build as build_mod

TARGET_BUILD_RATIO = 1.5
TARGET_CACHE_HIT_MS = 100.0
TARGET_UNPACK_RATIO = 1.2


def app(n: int) -> float:
    """The benchmarked app: numpy and scipy, imported inside the body as Parsl apps do."""
    import numpy as np
    import scipy.linalg

    a = np.eye(n) * 2.0
    return float(scipy.linalg.det(a))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    os.sync()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def plain_tar(spec: Any, digest: str, work: Path) -> float:
    """Seconds for GNU tar to write the pack's exact file list to a file."""
    stage = work / "stage"
    stage.mkdir()
    listing = build_mod._collect(spec, digest, stage)
    list_file = work / "files"
    build_mod._write_list(listing, list_file)
    cmd = build_mod.tar_command(listing, list_file, str(work / "plain.tar"))
    seconds, _ = timed(lambda: subprocess.run(cmd, check=True))
    return seconds


def one_round(i: int, tmp: Path, out: dict[str, list[float]]) -> dict[str, Any]:
    """One interleaved round; odd rounds time the plain tar first."""
    work = Path(tempfile.mkdtemp(dir=tmp, prefix="envpack-bench."))
    order = ("pack", "tar") if i % 2 == 0 else ("tar", "pack")
    try:
        def build() -> Any:
            return build_pack(analyze([app]), work / "cache")

        for side in order:
            if side == "pack":
                seconds, pack = timed(build)
                out["build_pack_s"].append(seconds)
            else:
                spec = analyze([app])
                out["build_tar_s"].append(plain_tar(spec, spec.digest, work))
        hit, again = timed(build)
        assert again == pack
        out["cache_hit_ms"].append(hit * 1000)
        (work / "x").mkdir()
        untar = ["tar", "-xf", str(pack.path), "-C", str(work / "x")]
        for side in order:
            if side == "pack":
                seconds, _ = timed(lambda: unpack(pack.path, pack.digest, pack.sha256,
                                                  work / "worker"))
                out["unpack_pack_s"].append(seconds)
            else:
                seconds, _ = timed(lambda: subprocess.run(untar, check=True))
                out["unpack_tar_s"].append(seconds)
        sidecar = json.loads(pack.path.with_suffix(".json").read_text())
        return {"size_mb": round(pack.size / 1e6, 1), "files": sidecar["files"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ratio(num: list[float], den: list[float]) -> float:
    return round(statistics.median(num) / statistics.median(den), 3)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tmpdir", default=tempfile.gettempdir(),
                   help="where caches and unpacked copies go (default: $TMPDIR)")
    args = p.parse_args()
    if build_mod.gnu_tar() is None:
        print("GNU tar is needed for the baseline", file=sys.stderr)
        return 1
    cold, spec = timed(lambda: analyze([app]))
    warm, _ = timed(lambda: analyze([app]))
    samples: dict[str, list[float]] = {k: [] for k in (
        "build_pack_s", "build_tar_s", "cache_hit_ms", "unpack_pack_s", "unpack_tar_s")}
    sizes: dict[str, Any] = {}
    for i in range(args.repeats):
        sizes = one_round(i, Path(args.tmpdir), samples)
        print(f"round {i + 1}: " + ", ".join(f"{k}={v[-1]:.3f}" for k, v in samples.items()),
              file=sys.stderr)
    med = {k: round(statistics.median(v), 3) for k, v in samples.items()}
    build_ratio = ratio(samples["build_pack_s"], samples["build_tar_s"])
    unpack_ratio = ratio(samples["unpack_pack_s"], samples["unpack_tar_s"])
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_avg": os.getloadavg(),
                    "tmpdir": args.tmpdir},
        "pack": {"distributions": spec.distributions, **sizes},
        "analysis_ms": {"first": round(cold * 1000, 1), "again": round(warm * 1000, 1)},
        "build": {"pack_s": med["build_pack_s"], "tar_s": med["build_tar_s"],
                  "ratio": build_ratio, "target": TARGET_BUILD_RATIO,
                  "meets_target": build_ratio <= TARGET_BUILD_RATIO},
        "cache_hit": {"ms": med["cache_hit_ms"], "target_ms": TARGET_CACHE_HIT_MS,
                      "meets_target": med["cache_hit_ms"] <= TARGET_CACHE_HIT_MS},
        "unpack": {"pack_s": med["unpack_pack_s"], "tar_s": med["unpack_tar_s"],
                   "ratio": unpack_ratio, "target": TARGET_UNPACK_RATIO,
                   "meets_target": unpack_ratio <= TARGET_UNPACK_RATIO},
        "repeats": args.repeats,
        "samples": {k: [round(x, 3) for x in v] for k, v in samples.items()},
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
