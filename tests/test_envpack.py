"""Environment packs: import analysis, digests, building, unpacking and the CLI.

Real files throughout: apps are written into ``tmp_path`` and imported, packs
are built from this interpreter and numpy, and their ``bin/python`` is run
with an environment that holds nothing of this venv.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import packmule
from packmule.envpack import (
    Pack,
    analyze,
    build_pack,
    pack_digest,
    pack_python,
    read_manifest,
    unpack,
)
from packmule.envpack.environment import environment, is_editable
from packmule.envpack.tarcheck import UnsafeMember, check_file, check_members
from packmule.errors import PackCorrupted, PackError

np = pytest.importorskip("numpy")

Project = Callable[..., Any]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    """Write modules into a fresh directory on sys.path; ``project(files, "mod")`` imports one."""
    written: set[str] = set()
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(files: dict[str, str], module: str) -> Any:
        for rel, text in files.items():
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
            written.add(rel.split("/")[0].removesuffix(".py"))
        for name in written:
            for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                del sys.modules[key]
        importlib.invalidate_caches()
        return importlib.import_module(module)

    yield make
    for name in written:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


# -- analysis -----------------------------------------------------------------


def test_numpy_import_is_listed_with_version_and_reason(project: Project) -> None:
    mod = project({"app_np.py": """
        def f(n):
            import numpy
            return numpy.arange(n).sum()
    """}, "app_np")
    spec = analyze([mod.f])
    assert spec.distributions["numpy"] == np.__version__
    assert "imported by app f" in spec.reasons["numpy"]
    assert spec.local_modules["app_np"] == str(Path(mod.__file__))
    assert spec.reasons["app_np"] == ["defines app f"]


def test_local_helpers_are_found_with_their_imports(project: Project, tmp_path: Path) -> None:
    mod = project({
        "helper.py": """
            import json
            import helper2
            import numpy as np

            def h(n):
                return helper2.g(np.arange(n))
        """,
        "helper2.py": """
            import msgpack

            def g(x):
                return msgpack.packb(int(x.sum()))
        """,
        "app_local.py": """
            import helper

            def f(n):
                return helper.h(n)
        """,
    }, "app_local")
    spec = analyze([mod.f])
    assert spec.local_modules["helper"] == str(tmp_path / "helper.py")
    assert spec.local_modules["helper2"] == str(tmp_path / "helper2.py")
    assert any(r.startswith("imported by helper (") for r in spec.reasons["numpy"])
    assert any(r.startswith("imported by helper2 (") for r in spec.reasons["msgpack"])
    assert "json" not in spec.local_modules and "json" not in spec.distributions


def test_missing_import_names_module_file_and_line(project: Project, tmp_path: Path) -> None:
    mod = project({"app_missing.py": """
        def f():
            x = 1
            import no_such_module_xyz.sub
            return x
    """}, "app_missing")
    with pytest.raises(PackError) as info:
        analyze([mod.f])
    msg = str(info.value)
    assert "'no_such_module_xyz.sub'" in msg
    assert f"{tmp_path / 'app_missing.py'}:4" in msg
    assert "pip" in msg and "extra_pkgs" in msg


def test_missing_import_in_a_helper_names_the_helper(project: Project, tmp_path: Path) -> None:
    mod = project({
        "badhelper.py": "try:\n    import json\nexcept ImportError:\n    pass\n"
                        "import also_not_there_xyz\n",
        "app_bad.py": "def f():\n    import badhelper\n",
    }, "app_bad")
    with pytest.raises(PackError, match=r"badhelper\.py:5: imports 'also_not_there_xyz'"):
        analyze([mod.f])


def test_optional_imports_are_skipped(project: Project) -> None:
    mod = project({"app_opt.py": """
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            import types_only_xyz

        def f():
            try:
                import opt_one_xyz
            except ImportError:
                opt_one_xyz = None
            try:
                import opt_two_xyz
            except (ValueError, ModuleNotFoundError):
                pass
            try:
                import opt_three_xyz
            except Exception:
                pass
            try:
                import opt_four_xyz
            except:  # noqa: E722
                pass
            import importlib
            importlib.import_module("dynamic_xyz")
            return opt_one_xyz
    """}, "app_opt")
    spec = analyze([mod.f])
    assert not any("xyz" in k for k in [*spec.distributions, *spec.local_modules])


def test_relative_imports_in_a_local_package_resolve(project: Project) -> None:
    mod = project({
        "lpkg/__init__.py": "from .core import run\n",
        "lpkg/core.py": "from . import util\nfrom .sub.deep import x\n\ndef run():\n"
                        "    return util.y + x\n",
        "lpkg/util.py": "import msgpack\ny = 1\n",
        "lpkg/sub/__init__.py": "",
        "lpkg/sub/deep.py": "from ..util import y as x\n",
        "app_rel.py": "import lpkg\n\ndef f():\n    return lpkg.run()\n",
    }, "app_rel")
    spec = analyze([mod.f])
    assert spec.local_modules["lpkg"].endswith("lpkg")
    assert any("lpkg/util.py:1" in r for r in spec.reasons["msgpack"])


def test_a_relative_import_of_a_missing_module_is_an_error(project: Project) -> None:
    mod = project({
        "rpkg/__init__.py": "from .gone import x\n",
        "app_rgone.py": "def f():\n    import rpkg\n",
    }, "app_rgone")
    with pytest.raises(PackError, match=r"rpkg.+__init__\.py:1: imports 'rpkg\.gone'"):
        analyze([mod.f])


def test_packmule_runtime_is_always_included() -> None:
    spec = analyze([])
    for name in ("packmule", "pyzmq", "msgpack", "psutil", "cloudpickle"):
        assert name in spec.distributions
        assert "packmule runtime" in spec.reasons[name]
    assert "numpy" not in spec.distributions


@pytest.mark.skipif(not is_editable(environment().dists["packmule"]),
                    reason="packmule is not an editable install here")
def test_editable_packmule_ships_its_source() -> None:
    spec = analyze([])
    assert spec.local_modules["packmule"] == str(Path(packmule.__file__).parent)
    assert "editable install of packmule" in spec.reasons["packmule"]


def test_extra_pkgs(project: Project) -> None:
    spec = analyze([], extra_pkgs=["numpy"])
    assert spec.reasons["numpy"] == ["extra_pkgs"]
    with pytest.raises(PackError, match="'no-such-dist-xyz', which is not installed"):
        analyze([], extra_pkgs=["no-such-dist-xyz"])


def test_functions_in_a_main_script(tmp_path: Path) -> None:
    (tmp_path / "mhelper.py").write_text("def h(x):\n    return x\n")
    (tmp_path / "main_app.py").write_text(textwrap.dedent("""
        import json
        import numpy as np
        import mhelper
        from packmule.envpack import analyze

        def f(n):
            return mhelper.h(np.arange(n))

        if __name__ == "__main__":
            s = analyze([f])
            print(json.dumps([s.distributions, s.local_modules, s.reasons]))
    """))
    out = subprocess.run([sys.executable, "main_app.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    dists, local, reasons = json.loads(out)
    assert "numpy" in dists and local["mhelper"] == str(tmp_path / "mhelper.py")
    assert "main_app" not in local  # pickled by value: its imports are what matter
    assert any("main script" in r for r in reasons["mhelper"])


def test_second_analysis_is_fast(project: Project) -> None:
    mod = project({"app_fast.py": "import numpy\n\ndef f():\n    return numpy.zeros(1)\n"},
                  "app_fast")
    analyze([mod.f])
    times = []
    for _ in range(3):
        start = time.perf_counter()
        spec = analyze([mod.f])
        _ = spec.digest
        times.append(time.perf_counter() - start)
    assert min(times) < 0.1, times


def test_digest_is_stable_and_follows_local_contents(project: Project, tmp_path: Path) -> None:
    mod = project({"dhelper.py": "X = 1\n", "app_dig.py": "import dhelper\n\ndef f():\n"
                   "    return dhelper.X\n"}, "app_dig")
    first, second = analyze([mod.f]).digest, analyze([mod.f]).digest
    assert first == second and len(first) == 64
    (tmp_path / "dhelper.py").write_text("X = 22\n")
    assert analyze([mod.f]).digest != first


def test_identical_environments_share_a_digest(project: Project) -> None:
    a = analyze([], extra_pkgs=["numpy"])
    mod = project({"app_same.py": "def g():\n    import numpy\n"}, "app_same")
    b = analyze([mod.g])
    assert pack_digest(a) != pack_digest(b)  # b also holds app_same itself
    assert pack_digest(a) == pack_digest(analyze([], extra_pkgs=["numpy"]))


# -- build and unpack ---------------------------------------------------------


CLEAN_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}


@pytest.fixture(scope="module")
def numpy_pack(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pack, Path]:
    """A pack of numpy (and packmule's runtime), built once and unpacked once."""
    spec = analyze([], extra_pkgs=["numpy"])
    base = tmp_path_factory.mktemp("packs")
    pack = build_pack(spec, base / "cache")
    root = unpack(pack.path, pack.digest, pack.sha256, base / "worker")
    return pack, root


def test_pack_layout_and_manifest(numpy_pack: tuple[Pack, Path]) -> None:
    pack, root = numpy_pack
    assert pack.path.name == f"{pack.digest}.tar"
    assert pack.size == pack.path.stat().st_size
    assert pack.sha256 == hashlib.sha256(pack.path.read_bytes()).hexdigest()
    py = f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert (root / "bin" / py).is_file() and (root / f"lib/{py}/os.py").is_file()
    assert (root / f"lib/{py}/lib-dynload").is_dir()
    assert not (root / f"lib/{py}/test").exists()
    manifest = read_manifest(pack.path)
    assert manifest["digest"] == pack.digest
    assert manifest["distributions"]["numpy"] == np.__version__
    with tarfile.open(pack.path) as tar:
        assert manifest["files"] == len(tar.getnames())


def test_unpacked_python_runs_numpy_inside_the_pack(numpy_pack: tuple[Pack, Path]) -> None:
    _, root = numpy_pack
    code = ("import json, sys, numpy, zmq, msgpack, psutil, cloudpickle, packmule\n"
            "maps = [l.split()[-1] for l in open('/proc/self/maps') if 'libpython' in l]\n"
            "print(json.dumps([sys.prefix, sys.path, numpy.__version__, numpy.__file__, "
            "maps]))")
    out = subprocess.run([str(pack_python(root)), "-c", code], env=CLEAN_ENV, cwd=root,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    prefix, path, version, where, maps = json.loads(out)
    assert Path(prefix) == root.resolve()
    assert version == np.__version__
    assert where.startswith(str(root.resolve()))
    assert all(p == "" or p.startswith(str(root.resolve())) for p in path), path
    assert all(m.startswith(str(root.resolve())) for m in maps), maps


def test_the_pack_runs_a_worker_command(numpy_pack: tuple[Pack, Path]) -> None:
    _, root = numpy_pack
    res = subprocess.run([str(pack_python(root)), "-m", "packmule", "worker", "--help"],
                         env=CLEAN_ENV, capture_output=True, text=True, timeout=60, check=True)
    assert "HOST:PORT" in res.stdout


def test_cache_hit_does_not_rebuild(numpy_pack: tuple[Pack, Path]) -> None:
    pack, _ = numpy_pack
    before = pack.path.stat().st_mtime_ns
    start = time.perf_counter()
    again = build_pack(analyze([], extra_pkgs=["numpy"]), pack.path.parent)
    assert time.perf_counter() - start < 0.5
    assert again == pack and pack.path.stat().st_mtime_ns == before


def test_unpacking_again_returns_the_same_directory(numpy_pack: tuple[Pack, Path]) -> None:
    pack, root = numpy_pack
    marker = root / ".packmule-unpacked"
    stamp = marker.stat().st_mtime_ns
    assert unpack(pack.path, pack.digest, pack.sha256, root.parent) == root
    assert marker.stat().st_mtime_ns == stamp
    assert [p.name for p in root.parent.iterdir()] == [pack.digest]  # no temporaries


def test_concurrent_builders_and_unpackers_agree(tmp_path: Path) -> None:
    spec = analyze([])
    with ThreadPoolExecutor(2) as pool:
        packs = list(pool.map(lambda _: build_pack(spec, tmp_path / "cache"), range(2)))
    assert packs[0] == packs[1]
    pack = packs[0]
    assert hashlib.sha256(pack.path.read_bytes()).hexdigest() == pack.sha256
    assert sorted(p.name for p in pack.path.parent.iterdir()) == [
        f"{pack.digest}.json", f"{pack.digest}.tar"]
    with ThreadPoolExecutor(2) as pool:
        roots = list(pool.map(
            lambda _: unpack(pack.path, pack.digest, pack.sha256, tmp_path / "worker"), range(2)))
    assert roots[0] == roots[1]
    assert [p.name for p in (tmp_path / "worker").iterdir()] == [pack.digest]


def test_a_distribution_with_missing_files_is_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site-packages"
    info = site / "brokendist-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokendist\nVersion: 1.0\n")
    (info / "RECORD").write_text("brokendist.py,,\nbrokendist-1.0.dist-info/METADATA,,\n"
                                 "brokendist-1.0.dist-info/RECORD,,\n")
    monkeypatch.syspath_prepend(str(site))
    spec = analyze([], extra_pkgs=["brokendist"])
    assert spec.distributions["brokendist"] == "1.0"
    with pytest.raises(PackError, match=r"'brokendist' is missing .*brokendist\.py; reinstall"):
        build_pack(spec, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


# -- unpack refusals, on small hand-made packs -----------------------------------

DIGEST = "ab" * 32


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]],
             manifest: dict[str, Any] | None = None, fmt: int = tarfile.GNU_FORMAT) -> str:
    """Write a tar whose first member is a manifest; returns its sha256."""
    man = {"digest": DIGEST, "sys_platform": sys.platform, "machine": platform.machine(),
           "platform": "test", **(manifest or {})}
    with tarfile.open(path, "w", format=fmt) as tar:
        for item in [("manifest.json", json.dumps(man).encode()), *members]:
            if isinstance(item, tarfile.TarInfo):
                tar.addfile(item)
            else:
                info = tarfile.TarInfo(item[0])
                info.size = len(item[1])
                tar.addfile(info, io.BytesIO(item[1]))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def assert_nothing_left(cache: Path) -> None:
    assert not cache.exists() or list(cache.iterdir()) == []


def test_small_pack_round_trip(tmp_path: Path) -> None:
    sha = make_tar(tmp_path / "p.tar", [("lib/a.txt", b"hello"), link("lib/b", "a.txt")])
    root = unpack(tmp_path / "p.tar", DIGEST, sha, tmp_path / "cache")
    assert (root / "lib/b").read_text() == "hello"


@pytest.mark.parametrize("where", ["data", "header"])
def test_a_corrupted_pack_is_refused_and_leaves_nothing(tmp_path: Path, where: str) -> None:
    tar = tmp_path / "p.tar"
    sha = make_tar(tar, [("lib/a.txt", b"x" * 5000), ("lib/b.txt", b"y" * 100)])
    data = bytearray(tar.read_bytes())
    offset = data.index(b"x" * 100) + 2000 if where == "data" else data.index(b"lib/b.txt") + 2
    data[offset] ^= 0x20
    tar.write_bytes(bytes(data))
    expected = (f"pack {DIGEST} arrived corrupted: sha256 [0-9a-f]{{64}}, expected {sha}; "
                "it will be sent again")
    with pytest.raises(PackCorrupted, match=expected):
        unpack(tar, DIGEST, sha, tmp_path / "cache")
    assert_nothing_left(tmp_path / "cache")


def test_a_pack_for_another_platform_is_refused(tmp_path: Path) -> None:
    tar = tmp_path / "p.tar"
    sha = make_tar(tar, [("lib/a.txt", b"a")], {"machine": "sparc64", "platform": "linux-sparc64"})
    with pytest.raises(PackError, match=r"built for .*sparc64.* but this worker runs on"):
        unpack(tar, DIGEST, sha, tmp_path / "cache")
    assert_nothing_left(tmp_path / "cache")


@pytest.mark.parametrize("member", [
    ("../evil.txt", b"x"),
    ("lib/../../evil.txt", b"x"),
    ("/tmp/evil.txt", b"x"),
    link("lib/up", "../../.."),
    link("lib/abs", "/etc"),
    link("lib/hard", "../outside", tarfile.LNKTYPE),
    link("lib/fifo", "", tarfile.FIFOTYPE),
    ("d/" + "n" * 150 + "/../../../evil.txt", b"x"),  # a long name, in an extension header
], ids=["dotdot", "nested-dotdot", "absolute", "symlink-up", "symlink-abs", "hardlink-up",
        "fifo", "long-name"])
@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu", "pax"])
def test_unsafe_members_are_refused(tmp_path: Path, member: Any, fmt: int) -> None:
    tar = tmp_path / "sub" / "p.tar"
    tar.parent.mkdir()
    sha = make_tar(tar, [("lib/ok.txt", b"ok"), member], fmt=fmt)
    with pytest.raises(PackError, match="unsafe, refusing to unpack"):
        unpack(tar, DIGEST, sha, tmp_path / "sub" / "cache")
    assert_nothing_left(tmp_path / "sub" / "cache")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


def test_a_pack_that_does_not_fit_on_disk_is_refused(tmp_path: Path) -> None:
    tar = tmp_path / "p.tar"
    make_tar(tar, [("lib/a.txt", b"a")])
    free = shutil.disk_usage(tmp_path).free
    os.truncate(tar, free + (1 << 30))  # sparse: takes no space itself
    with pytest.raises(PackError, match=r"needs \d+ MB to unpack but .* has \d+ MB free"):
        unpack(tar, DIGEST, "0" * 64, tmp_path / "cache")


def test_a_bad_digest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackError, match="not a pack digest"):
        unpack(tmp_path / "p.tar", "../etc", "0" * 64, tmp_path / "cache")


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_member_check_reads_every_tar_format(tmp_path: Path, fmt: int) -> None:
    members: list[tarfile.TarInfo | tuple[str, bytes]] = [
        ("a/" + "long" * 30 + ".txt" if fmt != tarfile.USTAR_FORMAT else "a/b" * 40, b"z" * 700),
        ("empty", b""), link("a/l", "empty"), ("x" * 99, b"1" * 512),
        link("a/" + "deep/" * 30 + "hard", "empty", tarfile.LNKTYPE),
    ]
    make_tar(tmp_path / "p.tar", members, fmt=fmt)
    assert check_file(tmp_path / "p.tar") == 6
    with tarfile.open(tmp_path / "p.tar") as tar:
        assert len(tar.getmembers()) == 6


def test_member_check_refuses_truncated_and_damaged_tars(tmp_path: Path) -> None:
    make_tar(tmp_path / "p.tar", [("a.txt", b"z" * 5000)])
    data = (tmp_path / "p.tar").read_bytes()
    with pytest.raises(UnsafeMember, match="truncated"):
        check_members(data[:2048])
    damaged = bytearray(data)
    damaged[10] ^= 1  # inside the manifest's name: the header checksum no longer adds up
    with pytest.raises(UnsafeMember, match="bad checksum"):
        check_members(bytes(damaged))


# -- the command line -------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cwd / "xdg")}
    return subprocess.run([sys.executable, "-m", "packmule", "pack", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=env, check=False)


def test_cli_show_lists_numpy_and_the_local_helper(tmp_path: Path) -> None:
    (tmp_path / "clihelper.py").write_text("import numpy\n\ndef h():\n    return numpy.ones(2)\n")
    (tmp_path / "tasks.py").write_text("import clihelper\n\ndef f():\n    return clihelper.h()\n")
    res = run_cli("show", "tasks.py:f", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"numpy {np.__version__}" in res.stdout
    assert "clihelper" in res.stdout and str(tmp_path / "clihelper.py") in res.stdout
    assert "digest" in res.stdout
    same = run_cli("show", "tasks:f", cwd=tmp_path)
    assert same.stdout == res.stdout


def test_cli_explains_errors(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("def f():\n    import not_installed_xyz\n")
    res = run_cli("show", "broken.py:f", cwd=tmp_path)
    assert res.returncode == 1 and "broken.py:2: imports 'not_installed_xyz'" in res.stderr
    res = run_cli("build", cwd=tmp_path)
    assert res.returncode == 1 and "--worker" in res.stderr
    res = run_cli("show", "nocolon", cwd=tmp_path)
    assert res.returncode == 1 and "MODULE:FUNC" in res.stderr


def test_cli_builds_a_worker_pack(tmp_path: Path) -> None:
    res = run_cli("build", "--worker", "--output", "worker-pack.tar", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    manifest = read_manifest(tmp_path / "worker-pack.tar")
    assert "numpy" not in manifest["distributions"] and "packmule" in manifest["distributions"]
    assert manifest["digest"] in res.stdout and "bin/python -m packmule worker" in res.stdout
    cached = tmp_path / "xdg" / "packmule" / "packs" / f"{manifest['digest']}.tar"
    assert cached.read_bytes() == (tmp_path / "worker-pack.tar").read_bytes()
    again = run_cli("build", "--worker", cwd=tmp_path)
    assert "found in the cache" in again.stdout


# -- the worker's pack cache: pieces, resends, cancels ------------------------------

def pieces(tar: Path, sha: str, transfer: int, size: int = 1000) -> list[tuple[Any, bytes]]:
    from packmule.protocol import messages as m

    data = tar.read_bytes()
    return [(m.PutPack(DIGEST, sha, len(data), off, transfer), data[off:off + size])
            for off in range(0, len(data), size)]


def finished_one(cache: Any) -> Any:
    from .conftest import wait_until

    got = wait_until(lambda: cache.finished(), timeout=30)
    assert len(got) == 1
    return got[0]


def test_worker_cache_restarts_a_resent_pack_and_ignores_stale_pieces(tmp_path: Path) -> None:
    from packmule.worker.packs import PackCache

    sha = make_tar(tmp_path / "p.tar", [("bin/python", b"#!/bin/sh\n")])
    cache = PackCache(tmp_path / "node")
    first, second = pieces(tmp_path / "p.tar", sha, 1), pieces(tmp_path / "p.tar", sha, 2)
    assert cache.receive(*first[0]) == 1000  # a sending begins ...
    assert cache.receive(*second[0]) == 1000  # ... and a resend replaces it
    assert cache.receive(*first[1]) is None  # a late piece of the first is ignored
    for piece in second[1:]:
        got = cache.receive(*piece)
    assert got == second[-1][0].size
    done = finished_one(cache)
    assert done.root == tmp_path / "node" / DIGEST and done.transfer == 2
    assert DIGEST not in cache.pending
    assert cache.scan() == [DIGEST]
    assert [p.name for p in (tmp_path / "node").iterdir()] == [DIGEST]  # no temporaries


def test_worker_cache_refuses_bad_pieces_and_says_what_is_arriving(tmp_path: Path) -> None:
    from packmule.protocol import messages as m
    from packmule.worker.packs import PackCache

    cache = PackCache(tmp_path / "node")
    bad = cache.receive(m.PutPack("../../etc", "x", 10, 0, 1), b"x" * 10)
    assert bad is not None and not isinstance(bad, int) and "malformed" in bad.error
    assert not (tmp_path / "etc").exists()
    sha = make_tar(tmp_path / "p.tar", [("bin/python", b"#!/bin/sh\n")])
    (first, *rest) = pieces(tmp_path / "p.tar", sha, 1)
    cache.receive(*first)
    assert DIGEST in cache.pending  # tasks that need it wait (tests/test_slots.py)
    for piece in rest:
        cache.receive(*piece)
    done = finished_one(cache)
    assert done.root is not None and DIGEST not in cache.pending
