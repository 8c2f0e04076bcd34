"""Worker side: unpack a pack once per node, verified, atomically, into a cache.

Every member header is checked first (:func:`~.tarcheck.check_file` walks
from header to header), then ``tar -x`` extracts into a temporary directory
while this process computes the sha256 of the same file on another core.
The result is renamed into ``cache_root/<digest>/`` only when the checksum
matches, so a pack directory either is complete or does not exist, and it
survives worker restarts.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ..errors import PackCorrupted, PackError
from .cache import touch
from .layout import BIN_PYTHON, MANIFEST, cache_home, gnu_tar
from .tarcheck import UnsafeMember, check_file, check_path

#: Written last into a pack directory; its presence means the unpack completed.
COMPLETE = ".packmule-unpacked"
_DIGEST = re.compile(r"[0-9a-f]{16,128}")
_CHUNK = 1 << 20


def default_cache_root() -> Path:
    """Where workers keep unpacked packs: ``$XDG_CACHE_HOME/packmule/worker-packs``."""
    return cache_home() / "worker-packs"


def pack_python(root: Path) -> Path:
    """The interpreter wrapper of the pack unpacked at ``root``."""
    return Path(root) / BIN_PYTHON


def unpack(tar_path: Path, digest: str, sha256: str, cache_root: Path) -> Path:
    """Unpack the pack ``digest`` from ``tar_path``; returns ``cache_root/<digest>``.

    Returns at once when it is already unpacked. Raises :class:`PackCorrupted`
    (a :class:`PackError`) when the tar's sha256 is not ``sha256``, and
    :class:`PackError` when a member could land outside the pack, when the
    pack is for another platform, or when the disk is too full; nothing is
    left behind.
    """
    if not _DIGEST.fullmatch(digest):
        raise PackError(f"{digest!r} is not a pack digest (expected lowercase hex)")
    cache_root, tar_path = Path(cache_root), Path(tar_path)
    final = cache_root / digest
    if (final / COMPLETE).exists():
        touch(final)  # its last use, for packmule pack list|clean
        return final
    cache_root.mkdir(parents=True, exist_ok=True)
    try:
        _check_manifest(read_manifest(tar_path), digest)
    except PackError:
        _raise_if_corrupted(tar_path, digest, sha256)  # a damaged manifest is corruption
        raise
    _check_space(tar_path, cache_root, digest)
    tmp = Path(tempfile.mkdtemp(dir=cache_root, prefix=f".{digest[:16]}."))
    try:
        _extract_verified(tar_path, tmp, digest, sha256)
        (tmp / COMPLETE).write_text(json.dumps({"sha256": sha256}) + "\n", "utf-8")
        _install(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_manifest(tar_path: Path) -> dict[str, Any]:
    """The manifest, read from the first member of the tar without extracting anything."""
    try:
        with tarfile.open(tar_path, "r:") as tar:
            first = tar.next()
            fh = tar.extractfile(first) if first is not None and first.name == MANIFEST else None
            if fh is None:
                raise PackError(f"{tar_path} is not a packmule pack: it does not start with "
                                f"{MANIFEST}")
            manifest = json.loads(fh.read(1 << 22))
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise PackError(f"{tar_path} is not a readable packmule pack: {exc}") from None
    if not isinstance(manifest, dict):
        raise PackError(f"{tar_path}: its {MANIFEST} is not a JSON object")
    return manifest


def _check_manifest(manifest: dict[str, Any], digest: str) -> None:
    if manifest.get("digest") != digest:
        raise PackError(f"pack {digest} holds the manifest of pack {manifest.get('digest')}")
    want = (manifest.get("sys_platform"), manifest.get("machine"))
    here = (sys.platform, platform.machine())
    if want != here:
        raise PackError(
            f"pack {digest[:12]} was built for {want[0]}/{want[1]} ({manifest.get('platform')}) "
            f"but this worker runs on {here[0]}/{here[1]}: its interpreter and compiled "
            f"packages cannot run here. Build the pack on a {here[1]} machine or run these "
            f"tasks on {want[1]} workers."
        )


def _check_space(tar_path: Path, cache_root: Path, digest: str) -> None:
    need = tar_path.stat().st_size
    free = shutil.disk_usage(cache_root).free
    if need > free:
        raise PackError(
            f"pack {digest[:12]} needs {need / 1e6:.0f} MB to unpack but {cache_root} has "
            f"{free / 1e6:.0f} MB free: free some space or give the worker a cache on a "
            "larger disk"
        )


def _raise_if_corrupted(tar_path: Path, digest: str, expected: str) -> None:
    h = hashlib.sha256()
    for chunk in _chunks(tar_path):
        h.update(chunk)
    _compare(h.hexdigest(), expected, digest)


def _compare(got: str, expected: str, digest: str) -> None:
    if got != expected:
        raise PackCorrupted(
            f"pack {digest} arrived corrupted: sha256 {got}, expected {expected}; "
            "it will be sent again"
        )


def _install(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; a concurrent unpacker that got there first wins."""
    for _ in range(3):
        try:
            os.rename(tmp, final)
            return
        except OSError:
            if (final / COMPLETE).exists():
                return  # another worker on this node finished first: use its copy
            shutil.rmtree(final, ignore_errors=True)  # a leftover without its marker
    raise PackError(f"could not move the unpacked pack into {final}")


def _chunks(path: Path) -> Iterator[memoryview]:
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            yield view[:n]


def _check_members(tar_path: Path) -> UnsafeMember | None:
    try:
        check_file(tar_path)
    except UnsafeMember as exc:
        return exc
    return None


def _extract_verified(tar_path: Path, dest: Path, digest: str, expected: str) -> None:
    """Check every member, then extract with GNU tar while hashing the same file.

    tar reads the file on one core while this process hashes it on another;
    ``dest`` is only kept by the caller when the hash matches.
    """
    tar = gnu_tar()
    if tar is None:
        _extract_with_tarfile(tar_path, dest, digest, expected)
        return
    unsafe = _check_members(tar_path)
    if unsafe is not None:
        _raise_if_corrupted(tar_path, digest, expected)
        raise PackError(f"pack {digest[:12]} is unsafe, refusing to unpack it: {unsafe}")
    h = hashlib.sha256()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [tar, "-x", "-f", str(tar_path), "-C", str(dest), "--no-same-owner",
             "--warning=no-timestamp"],
            stdin=subprocess.DEVNULL, stderr=err,
        )
        try:
            for chunk in _chunks(tar_path):
                h.update(chunk)
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        _compare(h.hexdigest(), expected, digest)
        if rc != 0:
            err.seek(0)
            text = err.read().decode(errors="replace").strip()[-2000:]
            raise PackError(f"tar failed (exit {rc}) unpacking pack {digest[:12]}: {text}")


class _HashingReader:
    """A file wrapper that hashes every byte read through it."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh, self.hash = fh, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.hash.update(data)
        return data


def _extract_with_tarfile(tar_path: Path, dest: Path, digest: str, expected: str) -> None:
    with open(tar_path, "rb") as raw:
        reader = _HashingReader(raw)
        unsafe: UnsafeMember | None = None
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    _check_member(member)
                    kwargs = {"filter": "fully_trusted"} if hasattr(tarfile, "data_filter") else {}
                    tar.extract(member, dest, **kwargs)
        except UnsafeMember as exc:
            unsafe = exc
        except tarfile.TarError as exc:
            unsafe = UnsafeMember(f"unreadable tar: {exc}")
        while reader.read(_CHUNK):
            pass
    _compare(reader.hash.hexdigest(), expected, digest)
    if unsafe is not None:
        raise PackError(f"pack {digest[:12]} is unsafe, refusing to unpack it: {unsafe}")


def _check_member(member: tarfile.TarInfo) -> None:
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeMember(f"member {member.name!r} is not a file, directory or link")
    check_path(member.name.removeprefix("./"))
    if member.issym() or member.islnk():
        check_path(member.linkname, "link target")
