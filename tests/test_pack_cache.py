"""``packmule pack list|clean``: the manager's and the workers' pack caches, on a real
pack built once for the module (packmule alone: about a second)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from packmule.envpack import Pack, analyze, build_pack, unpack
from packmule.envpack import cache as c
from packmule.envpack.cli import add_parser, main
from packmule.envpack.unpack import COMPLETE
from packmule.observe import units
from packmule.protocol import messages as m
from packmule.worker.packs import PackCache

DAY = 86400.0
OTHER = "ab" * 32  # a second, hand-made pack in the manager's cache


class Built:
    def __init__(self, base: Path, digest: str, logs: list[str]) -> None:
        self.base, self.digest, self.logs = base, digest, logs

    def manager_cache(self, dest: Path, other: bool = False) -> Path:
        """A manager's cache holding the pack (a hard link: no copying), and with ``other``
        a small hand-made one named :data:`OTHER`."""
        dest.mkdir(parents=True)
        os.link(self.base / "packs" / f"{self.digest}.tar", dest / f"{self.digest}.tar")
        shutil.copy(self.base / "packs" / f"{self.digest}.json", dest / f"{self.digest}.json")
        if other:
            tar = dest / f"{OTHER}.tar"
            with tarfile.open(tar, "w") as t:
                data = json.dumps({"digest": OTHER, "distributions": {"numpy": "2.0"}}).encode()
                info = tarfile.TarInfo("manifest.json")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            (dest / f"{OTHER}.json").write_text(json.dumps({"size": tar.stat().st_size}))
        return dest

    def worker_cache(self, dest: Path) -> Path:
        dest.mkdir(parents=True)
        shutil.copytree(self.base / "worker" / self.digest, dest / self.digest,
                        copy_function=os.link, symlinks=True)
        return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    base = tmp_path_factory.mktemp("pack-cache")
    logs: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logs.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("packmule.envpack")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        pack = build_pack(analyze([]), base / "packs")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    unpack(pack.path, pack.digest, pack.sha256, base / "worker")
    return Built(base, pack.digest, logs)


def run(*args: str) -> tuple[int, str]:
    """``packmule pack ARGS`` in this process; its exit status and output."""
    parser = argparse.ArgumentParser(prog="packmule")
    add_parser(parser.add_subparsers(dest="command"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(parser.parse_args(["pack", *args]))
    return rc, out.getvalue()


def age(*paths: Path, days: float) -> None:
    """Make ``paths`` last used ``days`` ago."""
    t = time.time() - days * DAY
    for p in paths:
        os.utime(p, (t, t))


def find(built: Built, cache: Path, monkeypatch: pytest.MonkeyPatch) -> Pack:
    """``build_pack`` finding the built pack in ``cache``, as a manager does. (Its digest
    is that of the fixture's pack even when packmule's own source, which is in the
    pack, is edited meanwhile.)"""
    from packmule.envpack import build

    monkeypatch.setattr(build, "pack_digest", lambda spec: built.digest)
    return build_pack(analyze([]), cache)


def manager_files(cache: Path, digest: str) -> list[Path]:
    return [cache / f"{digest}.tar", cache / f"{digest}.json"]


def test_the_first_build_logs_where_the_pack_is_once(built: Built) -> None:
    where = str(built.base / "packs" / f"{built.digest}.tar")
    said = [msg for msg in built.logs if where in msg]
    assert len(said) == 1 and "packmule pack list" in said[0], built.logs


def test_list_shows_each_pack_with_size_age_and_contents(built: Built, tmp_path: Path) -> None:
    cache = built.manager_cache(tmp_path / "packs", other=True)
    age(*manager_files(cache, built.digest), days=3)
    rc, out = run("list", "--cache", str(cache))
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == f"pack cache {cache}"
    assert lines[1].split()[:4] == ["DIGEST", "SIZE", "LAST", "USED"]
    size = (cache / f"{built.digest}.tar").stat().st_size
    mb = units.size(size + (cache / f"{built.digest}.json").stat().st_size)
    assert lines[2].startswith(OTHER[:12]) and "just now" in lines[2]  # most recent first
    assert "numpy 2.0" in lines[2]
    assert lines[3].startswith(built.digest[:12]) and "3d00h ago" in lines[3]
    assert mb in lines[3] and "packmule only (a worker pack)" in lines[3]
    assert lines[4].startswith("total: 2 packs, ")
    assert len(lines) == 5


def test_list_of_a_worker_cache_and_the_default_caches(
        built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    root = built.worker_cache(tmp_path / "packmule" / "worker-packs")
    rc, out = run("list", "--worker")
    assert rc == 0 and out.splitlines()[0] == f"worker pack cache {root}"
    assert built.digest[:12] in out and "packmule only" in out and "total: 1 pack, " in out
    rc, out = run("list")  # the manager's default cache: not made yet
    assert rc == 0 and str(tmp_path / "packmule" / "packs") in out and "no packs" in out


def test_what_a_pack_holds_names_apps_distributions_and_own_modules(tmp_path: Path) -> None:
    (tmp_path / "cachehelper.py").write_text("import numpy\n")
    sys.path.insert(0, str(tmp_path))
    try:
        def simulate(n: int) -> float:
            import cachehelper

            return float(cachehelper.numpy.ones(n).sum())

        spec = analyze([simulate])
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("cachehelper", None)
    said = c.holds({"distributions": spec.distributions, "local_modules": spec.local_modules,
                    "reasons": spec.reasons})
    assert said.startswith("for ") and "simulate" in said.split(";")[0]
    assert f"numpy {np.__version__}" in said and "cachehelper" in said
    assert "pyzmq" not in said and "msgpack" not in said  # packmule's runtime is implied
    runtime_only = analyze([])
    assert c.holds({"distributions": runtime_only.distributions,
                    "local_modules": runtime_only.local_modules,
                    "reasons": runtime_only.reasons}) == "packmule only (a worker pack)"


def test_clean_older_than_removes_only_old_packs(built: Built, tmp_path: Path) -> None:
    cache = built.manager_cache(tmp_path / "packs", other=True)
    age(*manager_files(cache, built.digest), days=10)
    age(*manager_files(cache, OTHER), days=2)
    old_size = sum(p.stat().st_size for p in manager_files(cache, built.digest))
    rc, out = run("clean", "--older-than", "5", "--cache", str(cache))
    assert rc == 0, out
    assert f"removed {built.digest[:12]} ({units.size(old_size)}, last used 10d00h ago)" in out
    assert f"kept {OTHER[:12]}: used 2d00h ago" in out
    assert f"freed {units.size(old_size)} (1 pack); 1 pack kept" in out
    assert sorted(p.name for p in cache.iterdir()) == [f"{OTHER}.json", f"{OTHER}.tar"]
    rc, out = run("clean", "--older-than", "1.5", "--cache", str(cache))
    assert rc == 0 and list(cache.iterdir()) == []


def test_dry_run_removes_nothing(built: Built, tmp_path: Path) -> None:
    cache = built.manager_cache(tmp_path / "packs")
    age(*manager_files(cache, built.digest), days=10)
    before = sorted(cache.iterdir())
    rc, out = run("clean", "--all", "--dry-run", "--cache", str(cache))
    assert rc == 0 and f"would remove {built.digest[:12]}" in out
    total = units.size(sum(p.stat().st_size for p in before))
    assert out.splitlines()[-1] == f"would free {total} (1 pack); 0 packs kept"
    assert sorted(cache.iterdir()) == before


def test_clean_needs_an_age_or_all(built: Built, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    for args in ([], ["--older-than", "-1"], ["--older-than", "soon"],
                 ["--all", "--older-than", "3"]):
        with pytest.raises(SystemExit) as exc:
            run("clean", "--cache", str(tmp_path), *args)
        assert exc.value.code == 2
    assert "--older-than" in capsys.readouterr().err


def test_a_pack_used_in_the_last_minute_stays(built: Built, tmp_path: Path) -> None:
    cache = built.manager_cache(tmp_path / "packs")
    rc, out = run("clean", "--all", "--cache", str(cache))
    assert rc == 0 and "used in the last minute" in out and "freed 0B" in out
    assert len(list(cache.iterdir())) == 2


def test_a_cache_hit_records_the_use(built: Built, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cache = built.manager_cache(tmp_path / "packs")
    tar, sidecar = manager_files(cache, built.digest)
    age(tar, sidecar, days=10)
    tar_mtime = tar.stat().st_mtime_ns
    pack = find(built, cache, monkeypatch)
    assert pack.path == tar and tar.stat().st_mtime_ns == tar_mtime  # not rebuilt
    assert time.time() - sidecar.stat().st_mtime < 60
    del pack
    root = built.worker_cache(tmp_path / "worker") / built.digest
    age(root, days=10)
    unpack(tar, built.digest, json.loads(sidecar.read_text())["sha256"], root.parent)
    assert time.time() - root.stat().st_mtime < 60
    age(root, days=10)
    workers = PackCache(root.parent)
    try:
        assert workers.scan() == [built.digest]
        assert time.time() - root.stat().st_mtime > DAY  # known is not used ...
        workers.interpreter(built.digest)  # ... starting a runner with it is
        assert time.time() - root.stat().st_mtime < 60
    finally:
        workers.close()


def test_a_pack_a_manager_holds_is_never_removed(built: Built, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cache = built.manager_cache(tmp_path / "packs")
    pack = find(built, cache, monkeypatch)  # as a manager finds it: held while it lives
    age(*manager_files(cache, built.digest), days=10)
    rc, out = run("list", "--cache", str(cache))
    assert rc == 0 and str(os.getpid()) in out.splitlines()[2] and "1 in use" in out
    rc, out = run("clean", "--all", "--cache", str(cache))
    assert rc == 0 and f"kept {built.digest[:12]}: in use by process {os.getpid()}" in out
    assert pack.path.exists()
    del pack
    gc.collect()
    rc, out = run("clean", "--all", "--cache", str(cache))
    assert rc == 0 and f"removed {built.digest[:12]}" in out
    assert list(cache.iterdir()) == []


def test_a_pack_a_worker_holds_is_never_removed(built: Built, tmp_path: Path) -> None:
    root = built.worker_cache(tmp_path / "worker")
    age(root / built.digest, root / built.digest / COMPLETE, days=10)
    workers = PackCache(root)
    assert workers.scan() == [built.digest]  # a worker started here: it may use the pack
    try:
        rc, out = run("clean", "--older-than", "1", "--cache", str(root))
        assert rc == 0 and f"in use by process {os.getpid()}" in out
        assert (root / built.digest / COMPLETE).exists()
    finally:
        workers.close()
    rc, out = run("clean", "--older-than", "1", "--cache", str(root))
    assert rc == 0 and f"removed {built.digest[:12]}" in out
    assert list(root.iterdir()) == []  # nothing half removed left behind
    again = PackCache(root)
    try:
        assert again.scan() == []
    finally:
        again.close()


def test_a_worker_does_not_take_a_pack_being_removed(built: Built, tmp_path: Path) -> None:
    root = built.worker_cache(tmp_path / "worker")
    marker = root / built.digest / COMPLETE
    fd = c._claim(marker)  # a cleaner has it
    assert fd is not None
    try:
        workers = PackCache(root)
        assert workers.scan() == []
        workers.close()
    finally:
        os.close(fd)



def test_a_worker_treats_a_pack_removed_as_it_unpacks_as_absent(
        built: Built, tmp_path: Path) -> None:
    """The unpack ends (here: finds the pack already there) while a cleaner holds it:
    the worker does not count it ready, and asks for it again."""
    root = built.worker_cache(tmp_path / "worker")
    fd = c._claim(root / built.digest / COMPLETE)  # a cleaner has it
    assert fd is not None
    workers = PackCache(root)

    def send(transfer: int) -> list[object]:
        data = b"x" * 100  # not looked at: the pack is on disk already
        assert workers.receive(m.PutPack(built.digest, "0" * 64, len(data), 0, transfer),
                               data) == len(data)
        assert select.select([workers], [], [], 60)[0], "the unpack did not end"
        return list(workers.finished())

    try:
        (done,) = send(1)
        assert done.root is None and done.corrupted and done.transfer == 1  # send it again
        assert "packmule pack clean" in done.error
        assert built.digest not in workers.ready and built.digest not in workers.failed
        assert built.digest not in workers.pending
        os.close(fd)  # the cleaner kept it after all (or it is sent again): usable
        fd = -1
        (done,) = send(2)
        assert done.root == root / built.digest and workers.ready == {built.digest: done.root}
        rc, out = run("clean", "--all", "--cache", str(root))  # and held
        assert rc == 0 and f"in use by process {os.getpid()}" in out
    finally:
        if fd >= 0:
            os.close(fd)
        workers.close()


def test_a_pack_taken_after_the_listing_stays(built: Built, tmp_path: Path) -> None:
    """A worker holds the pack between the cleaner's listing and its removal."""
    root = built.worker_cache(tmp_path / "worker")
    age(root / built.digest, root / built.digest / COMPLETE, days=10)
    (e,) = c.entries(root)
    assert c.removable(e, DAY) is None
    workers = PackCache(root)
    try:
        assert workers.scan() == [built.digest]
        assert c.remove(e, DAY) == "in use"
        assert (root / built.digest / COMPLETE).exists()
    finally:
        workers.close()


def test_a_pack_used_after_the_listing_stays(built: Built, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker or manager used the pack, and let it go, between the cleaner's listing
    and its lock: the cleaner goes by the time of that use."""
    root = built.worker_cache(tmp_path / "worker")
    age(root / built.digest, root / built.digest / COMPLETE, days=10)
    (e,) = c.entries(root)
    workers = PackCache(root)
    assert workers.scan() == [built.digest]
    workers.interpreter(built.digest)  # a runner started from it
    workers.close()
    assert c.remove(e, DAY) == "used in the last minute"
    assert (root / built.digest / COMPLETE).exists()

    cache = built.manager_cache(tmp_path / "packs")
    age(*manager_files(cache, built.digest), days=10)
    (e,) = c.entries(cache)
    age(cache / f"{built.digest}.json", days=2)  # a cache hit since (its manager gone)
    assert c.remove(e, 5 * DAY) == "used 2d00h ago"
    assert all(p.exists() for p in manager_files(cache, built.digest))
    assert c.remove(e, DAY) is None
    assert list(cache.iterdir()) == []


def test_a_pack_that_cannot_be_removed_is_reported_and_the_others_go(
        built: Built, tmp_path: Path) -> None:
    cache = built.manager_cache(tmp_path / "packs", other=True)
    sidecar = cache / f"{OTHER}.json"
    sidecar.unlink()
    sidecar.mkdir()  # a directory where a file belongs: unlink fails, even for root
    age(*manager_files(cache, built.digest), *manager_files(cache, OTHER), days=10)
    rc, out = run("clean", "--older-than", "5", "--cache", str(cache))
    assert rc == 1, out
    assert f"cannot remove {sidecar}: " in out and "permissions" in out
    assert f"removed {built.digest[:12]}" in out
    assert out.splitlines()[-1].endswith("(1 pack); 0 packs kept; 1 could not be removed")
    assert sorted(p.name for p in cache.iterdir()) == [f"{OTHER}.json", f"{OTHER}.tar"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may remove files from any directory")
def test_a_cache_of_another_user_is_reported_not_a_traceback(
        built: Built, tmp_path: Path) -> None:
    cache = built.manager_cache(tmp_path / "packs", other=True)
    age(*manager_files(cache, built.digest), *manager_files(cache, OTHER), days=10)
    before = sorted(cache.iterdir())
    cache.chmod(0o555)
    try:
        rc, out = run("clean", "--all", "--cache", str(cache))
    finally:
        cache.chmod(0o755)
    assert rc == 1, out
    for digest in (built.digest, OTHER):
        assert f"cannot remove {cache / digest}.json: Permission denied; check who owns" in out
    assert out.splitlines()[-1] == "freed 0B (0 packs); 0 packs kept; 2 could not be removed"
    assert sorted(cache.iterdir()) == before

def test_leftovers_of_killed_builds_go_after_a_day(built: Built, tmp_path: Path) -> None:
    cache = built.manager_cache(tmp_path / "packs")
    age(*manager_files(cache, built.digest), days=1)
    old, new = cache / ".0123456789abcdef.old", cache / ".fedcba9876543210.new"
    for d in (old, new):
        d.mkdir()
        (d / "pack.tar").write_bytes(b"x" * 1000)
    incoming, other = cache / ".incoming-x1y2.tar", cache / ".not-ours"
    for f in (incoming, other):
        f.write_bytes(b"y" * 10)
    age(old / "pack.tar", old, incoming, other, days=2)
    rc, out = run("list", "--cache", str(cache))
    assert "and 3 leftovers of builds or unpacks" in out
    rc, out = run("clean", "--older-than", "7", "--cache", str(cache))
    assert rc == 0 and f"removed leftover {old.name}" in out
    assert out.splitlines()[-1].endswith("(0 packs, 2 leftovers); 1 pack kept")
    assert not old.exists() and not incoming.exists()
    assert new.exists() and other.exists() and (cache / f"{built.digest}.tar").exists()


def test_the_command_line_lists_and_cleans(built: Built, tmp_path: Path) -> None:
    cache = built.manager_cache(tmp_path / "packs")
    age(*manager_files(cache, built.digest), days=40)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    res = subprocess.run([sys.executable, "-m", "packmule", "pack", "list", "--cache-dir",
                          str(cache)], capture_output=True, text=True, env=env, timeout=60,
                         check=False)
    assert res.returncode == 0 and "40d00h ago" in res.stdout, res.stderr
    res = subprocess.run([sys.executable, "-m", "packmule", "pack", "clean", "--older-than",
                          "30", "--cache", str(cache)], capture_output=True, text=True, env=env,
                         timeout=60, check=False)
    assert res.returncode == 0 and "removed" in res.stdout, res.stderr
    assert list(cache.iterdir()) == []
