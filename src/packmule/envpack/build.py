"""Build an environment pack: one plain tar holding an interpreter, its stdlib and packages.

The tar is named by :func:`pack_digest` and kept in a cache directory, so an
environment is built once however many apps and runs use it. GNU tar does
the copying when it is installed (it is several times faster than
:mod:`tarfile`); the file list, the names inside the pack and the checksum
are ours.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata as md
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .._version import __version__
from ..errors import PackError
from .analysis import PackSpec
from .cache import hold, touch
from .environment import environment, is_editable, metadata_dir
from .layout import (
    BIN_PYTHON,
    BIN_REAL,
    DYNLOAD,
    MANIFEST,
    PACK_FORMAT,
    PY_DIR,
    SITE,
    STDLIB,
    cache_home,
    gnu_tar,
    interpreter,
    libpython,
    source_files,
)

#: Generated files get this modification time, so identical inputs give identical tars.
_FIXED_MTIME = 946684800  # 2000-01-01
#: Standard-library directories left out: tests, the IDE, demos, build-time files.
_STDLIB_SKIP_TOP = ("site-packages", "dist-packages", "test", "idlelib", "turtledemo", "ensurepip")
_STDLIB_SKIP_ANY = ("test", "tests", "idle_test")
_CHUNK = 1 << 20

log = logging.getLogger("packmule.envpack")

_WRAPPER = f"""#!/bin/sh
# packmule environment pack: run the pack's own interpreter on the pack's own libraries.
case $0 in */*) bin=${{0%/*}} ;; *) bin=$(dirname -- "$(command -v -- "$0")") ;; esac
root=$(cd -- "$bin/.." && pwd -P) || exit 127
LD_LIBRARY_PATH="$root/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"
PYTHONNOUSERSITE=1
export LD_LIBRARY_PATH PYTHONNOUSERSITE
unset PYTHONPATH PYTHONHOME
exec "$root/{BIN_REAL}" "$@"
"""


@dataclass(frozen=True)
class Pack:
    """A built pack: its environment digest, tar file, tar checksum and size in bytes."""

    digest: str
    path: Path
    sha256: str
    size: int


def default_cache_dir() -> Path:
    """Where built packs are kept: ``$XDG_CACHE_HOME/packmule/packs``."""
    return cache_home() / "packs"


# -- the digest ---------------------------------------------------------------

_hash_cache: dict[tuple[str, int, int, int], str] = {}


def _file_hash(path: str) -> str:
    st = os.stat(path)
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _hash_cache:
        if len(_hash_cache) > 50_000:
            _hash_cache.clear()  # old versions of edited files pile up otherwise
        _hash_cache[key] = _sha256_of(path)
    return _hash_cache[key]


def _sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def pack_digest(spec: PackSpec) -> str:
    """The sha256 naming ``spec``'s environment.

    It covers the interpreter (version, platform, the binary's and libpython's
    size and modification time), each distribution and version, and the
    contents of local modules and editable sources, so editing a helper gives
    a new pack. Absolute paths are left out: the same environment gives the
    same digest for every app and run.
    """
    h = hashlib.sha256()

    def put(*parts: object) -> None:
        for part in parts:
            data = str(part).encode("utf-8", "surrogateescape")
            h.update(len(data).to_bytes(8, "little") + data)

    put("packmule-pack", PACK_FORMAT, spec.python, spec.platform)
    for binary in (interpreter(), libpython()):
        if binary is not None:
            st = os.stat(binary)
            put(binary.name, st.st_size, st.st_mtime_ns)
    for name, version in sorted(spec.distributions.items()):
        put("dist", name, version)
    for name, path in sorted(spec.local_modules.items()):
        if not os.path.exists(path):
            raise PackError(f"local module {name!r} was at {path}, which no longer exists")
        put("local", name)
        for rel, full in source_files(name, path):
            put(rel, _file_hash(full))
    return h.hexdigest()


# -- what goes in -------------------------------------------------------------


@dataclass
class _Listing:
    """The pack's members: each a name in the staging directory, by its path in the pack.

    Every source directory gets a symlink ``rN`` in the staging directory, and
    ``rN/`` is renamed to the directory's place in the pack as it is archived.
    """

    stage: Path
    prefixes: dict[str, str] = field(default_factory=dict)  # alias -> prefix in the pack
    _aliases: dict[tuple[str, str], str] = field(default_factory=dict)
    members: dict[str, str] = field(default_factory=dict)  # pack path -> staging name

    def add(self, root: str, rel: str, prefix: str) -> None:
        dest = f"{prefix}/{rel}" if prefix else rel
        if dest in self.members:
            return  # the first provider wins, as on sys.path
        key = (root, prefix)
        alias = self._aliases.get(key)
        if alias is None:
            alias = self._aliases[key] = f"r{len(self._aliases)}"
            self.prefixes[alias] = prefix
            os.symlink(root, self.stage / alias)
        self.members[dest] = f"{alias}/{rel}"

    def add_generated(self, dest: str) -> None:
        self.members[dest] = dest


def _stdlib_files(root: str) -> Iterator[str]:
    tag = f".{sys.implementation.cache_tag}.pyc"
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        top = rel == "."
        dirnames[:] = sorted(
            d for d in dirnames
            if d not in _STDLIB_SKIP_ANY and not (top and (
                d in _STDLIB_SKIP_TOP or d.startswith("config-")))
        )
        in_cache = os.path.basename(dirpath) == "__pycache__"
        for name in sorted(filenames):
            if in_cache and not name.endswith(tag):
                continue
            yield name if top else os.path.join(rel, name)


def _recorded_files(dist: md.Distribution) -> list[str] | None:
    """The paths a distribution installed, relative to its site directory.

    RECORD is read directly: :attr:`Distribution.files` makes a path object
    per line, several times slower for a large package.
    """
    text = dist.read_text("RECORD")
    if text:
        return [row[0] for row in csv.reader(text.splitlines()) if row and row[0]]
    files = dist.files
    return None if files is None else [str(f) for f in files]


def _dist_files(name: str) -> Iterator[tuple[str, str]]:
    """(site directory, path inside it) for each installed file of a distribution."""
    dist = environment().dists.get(name)
    if dist is None:
        raise PackError(f"distribution {name!r} is no longer installed; analyze again")
    if is_editable(dist):  # its sources ship as local modules: only its metadata here
        meta = metadata_dir(dist)
        if meta is not None:
            for dirpath, _, filenames in os.walk(meta):
                for f in sorted(filenames):
                    yield str(meta.parent), os.path.relpath(os.path.join(dirpath, f), meta.parent)
        return
    files = _recorded_files(dist)
    if files is None:
        raise PackError(
            f"distribution {name!r} does not list its files (no RECORD); reinstall it with "
            f"pip: pip install --force-reinstall {name}=={dist.version}"
        )
    site = os.path.normpath(str(dist.locate_file("")))
    for f in files:
        rel = os.path.normpath(f)
        if os.path.isabs(rel) or rel.startswith(".."):
            continue  # scripts and data installed outside site-packages
        if not os.path.lexists(os.path.join(site, rel)):
            if "__pycache__" in rel:
                continue  # byte code is optional: Python recompiles it
            raise PackError(
                f"distribution {name!r} is missing {os.path.join(site, rel)}; reinstall it: "
                f"pip install --force-reinstall {name}=={dist.version}"
            )
        yield site, rel


def _manifest(spec: PackSpec, digest: str, files: int) -> dict[str, object]:
    return {
        "format": PACK_FORMAT,
        "digest": digest,
        "python": spec.python,
        "py_dir": PY_DIR,
        "platform": spec.platform,
        "sys_platform": sys.platform,
        "machine": platform.machine(),
        "distributions": spec.distributions,
        "local_modules": spec.local_modules,
        "reasons": spec.reasons,
        "files": files,
        "packmule_version": __version__,
    }


def _write_generated(stage: Path, rel: str, data: str, mode: int = 0o644) -> None:
    path = stage / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data, "utf-8")
    path.chmod(mode)
    os.utime(path, (_FIXED_MTIME, _FIXED_MTIME))


def _link_into(stage: Path, rel: str, target: Path) -> None:
    path = stage / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def _collect(spec: PackSpec, digest: str, stage: Path) -> _Listing:
    """Lay out the staging directory and list every member, manifest first."""
    if not sys.platform.startswith("linux"):
        raise PackError(f"environment packs are built on Linux only, not {sys.platform}")
    listing = _Listing(stage)
    listing.add_generated(MANIFEST)
    for rel in (BIN_PYTHON, "bin/python3"):
        _write_generated(stage, rel, _WRAPPER, 0o755)
        listing.add_generated(rel)
    _link_into(stage, BIN_REAL, interpreter())
    listing.add_generated(BIN_REAL)
    lib = libpython()
    if lib is not None:
        _link_into(stage, f"lib/{lib.name}", lib)
        listing.add_generated(f"lib/{lib.name}")
    stdlib = os.path.realpath(_stdlib_dir())
    for rel in _stdlib_files(stdlib):
        listing.add(stdlib, rel, STDLIB)
    dynload = _dynload_dir()
    if dynload and not (dynload + os.sep).startswith(stdlib + os.sep):
        for rel in sorted(os.listdir(dynload)):
            listing.add(dynload, rel, DYNLOAD)
    for name, path in spec.local_modules.items():
        if os.path.isdir(path):
            for rel, _ in source_files(name, path):
                listing.add(path, os.path.relpath(rel, name), f"{SITE}/{name}")
        else:
            listing.add(os.path.dirname(path), os.path.basename(path), SITE)
    for name in spec.distributions:
        for site, rel in _dist_files(name):
            listing.add(site, rel, SITE)
    manifest = _manifest(spec, digest, len(listing.members))
    _write_generated(stage, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return listing


def _stdlib_dir() -> str:
    import sysconfig

    return sysconfig.get_path("stdlib")


def _dynload_dir() -> str | None:
    import sysconfig

    d = sysconfig.get_config_var("DESTSHARED")
    return os.path.realpath(d) if isinstance(d, str) and os.path.isdir(d) else None


# -- writing the tar ----------------------------------------------------------


def tar_command(listing: _Listing, list_file: Path, output: str = "-") -> list[str]:
    """The GNU tar command that writes ``listing`` to ``output`` (``-``: stdout)."""
    tar = gnu_tar()
    assert tar is not None
    transforms = [f"--transform=s,^{a}/,{p}/," for a, p in listing.prefixes.items()]
    return [
        tar, "-c", "-f", output, "--format=gnu", "--no-recursion", "--dereference",
        "--owner=0", "--group=0", "--numeric-owner", "-C", str(listing.stage),
        *transforms, "--null", "-T", str(list_file),
    ]


def _write_list(listing: _Listing, path: Path) -> None:
    path.write_bytes(b"".join(os.fsencode(n) + b"\0" for n in listing.members.values()))


def _tar_with_gnu(listing: _Listing, dest: Path) -> tuple[str, int]:
    """Run GNU tar into ``dest`` while hashing the bytes it has written so far.

    Hashing the growing file, instead of piping tar through this process,
    saves two copies of every byte; the hash keeps pace with tar on another
    core and finishes right after it.
    """
    list_file = listing.stage.parent / (listing.stage.name + ".files")
    _write_list(listing, list_file)
    h, size = hashlib.sha256(), 0
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with tempfile.TemporaryFile() as err, open(dest, "wb") as out, open(dest, "rb") as fh:
        proc = subprocess.Popen(tar_command(listing, list_file), stdout=out, stderr=err)
        done = False
        while True:
            n = fh.readinto(buf)
            if n:
                h.update(view[:n])
                size += n
            elif done:
                break
            else:
                try:
                    proc.wait(timeout=0.002)
                    done = True  # read once more: tar may have written since
                except subprocess.TimeoutExpired:
                    pass
        if proc.returncode != 0:
            err.seek(0)
            raise PackError(
                f"tar failed (exit {proc.returncode}) building the pack; a file may have "
                f"changed while it was read, so try again: "
                f"{err.read().decode(errors='replace').strip()[-2000:]}"
            )
    list_file.unlink()
    return h.hexdigest(), size


def _tar_with_tarfile(listing: _Listing, dest: Path) -> tuple[str, int]:
    def scrub(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(dest, "w", format=tarfile.GNU_FORMAT, dereference=True) as tar:
        for dest_name, name in listing.members.items():
            tar.add(listing.stage / name, arcname=dest_name, recursive=False, filter=scrub)
    return _sha256_of(dest), dest.stat().st_size


# -- the cache ----------------------------------------------------------------


def _sidecar(cache: Path, digest: str) -> Path:
    return cache / f"{digest}.json"


def cached_pack(digest: str, cache_dir: Path | None = None) -> Pack | None:
    """The pack for ``digest`` when the cache already holds it complete."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    tar = cache / f"{digest}.tar"
    try:
        meta = json.loads(_sidecar(cache, digest).read_text("utf-8"))
        size = tar.stat().st_size
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("size") != size or not meta.get("sha256"):
        return None
    return Pack(digest, tar, str(meta["sha256"]), size)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _held(pack: Pack) -> bool:
    """Mark the pack's tar in use for as long as ``pack`` lives (see :mod:`.cache`);
    False: a cleaner is removing it."""
    fd = hold(pack.path)
    if fd is None:
        return False
    weakref.finalize(pack, os.close, fd)
    return True


def build_pack(spec: PackSpec, cache_dir: Path | None = None) -> Pack:
    """The pack for ``spec``, from the cache or built into it.

    A build writes a temporary file and renames it into place, so concurrent
    builders and crashes never leave a partial pack; identical inputs give
    identical bytes, so racing builders agree. The pack is marked in use for as
    long as the returned :class:`Pack` lives, so ``packmule pack clean`` leaves
    it alone.
    """
    digest = pack_digest(spec)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    hit = cached_pack(digest, cache)
    if hit is not None and _held(hit):
        touch(_sidecar(cache, digest))  # its last use, for packmule pack list|clean
        return hit
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / f"{digest}.tar"
    work = Path(tempfile.mkdtemp(dir=cache, prefix=f".{digest[:16]}."))
    started = time.perf_counter()
    try:
        stage = work / "stage"
        stage.mkdir()
        listing = _collect(spec, digest, stage)
        tmp = work / "pack.tar"
        writer = _tar_with_gnu if gnu_tar() else _tar_with_tarfile
        sha, size = writer(listing, tmp)
        os.replace(tmp, final)
        info = {"digest": digest, "sha256": sha, "size": size,
                "files": len(listing.members), "python": spec.python, "platform": spec.platform}
        _atomic_write(_sidecar(cache, digest), json.dumps(info, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    pack = Pack(digest, final, sha, size)
    _held(pack)
    log.info("built environment pack %s (%.1f MB, %d files) in %.1f s: %s; "
             "`packmule pack list` shows the packs kept there, `packmule pack clean` "
             "removes old ones", digest[:12], size / 1e6, len(listing.members),
             time.perf_counter() - started, final)
    return pack
