"""Where things live: in this interpreter's installation, and inside a pack.

A pack is a prefix of its own (``bin/``, ``lib/``) that Python recognises by
the landmark ``lib/python3.X/os.py`` next to its binary.
"""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

#: Bumped whenever the pack layout changes, so old and new packs never share a digest.
PACK_FORMAT = 1

PY_DIR = f"python{sys.version_info.major}.{sys.version_info.minor}"


def _site_dir() -> str:
    """The site directory this interpreter's ``site`` module adds under a prefix.

    ``lib/python3.X/site-packages`` for python.org, pyenv and conda builds;
    Debian and Ubuntu patch ``site`` to use ``dist-packages`` instead.
    """
    import site

    fake = os.path.join(os.sep, "packmule-pack")
    rels = [os.path.relpath(p, fake) for p in getattr(site, "getsitepackages", list)([fake])]
    # In a venv, Debian's site lists the venv's site-packages first: the pack is no venv.
    ours = [r for r in rels if r.split(os.sep)[:2] == ["lib", PY_DIR]]
    return ours[-1].replace(os.sep, "/") if ours else f"lib/{PY_DIR}/site-packages"


#: Paths inside a pack.
BIN_PYTHON = "bin/python"
BIN_REAL = f"bin/{PY_DIR}"
STDLIB = f"lib/{PY_DIR}"
DYNLOAD = f"{STDLIB}/lib-dynload"
SITE = _site_dir()
MANIFEST = "manifest.json"

_SITE_DIR_NAMES = frozenset({"site-packages", "dist-packages"})
#: Extensions of importable files (.py, .pyc, .so with ABI tags, ...).
_MODULE_SUFFIXES = tuple(importlib.machinery.all_suffixes())


def in_site_dir(path: str) -> bool:
    """Whether ``path`` lies inside a site-packages or dist-packages directory."""
    return not _SITE_DIR_NAMES.isdisjoint(Path(path).parts)


@lru_cache(maxsize=1)
def stdlib_dirs() -> tuple[str, ...]:
    """The directories holding this interpreter's standard library."""
    dirs = {sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib", vars=_base_vars())}
    dynload = sysconfig.get_config_var("DESTSHARED")
    if isinstance(dynload, str):
        dirs.add(dynload)
    return tuple(sorted(os.path.realpath(d) for d in dirs if d))


def _base_vars() -> dict[str, str]:
    return {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}


def in_stdlib(path: str) -> bool:
    """Whether ``path`` is part of the standard library (and not of a site directory)."""
    real = os.path.realpath(path)
    return not in_site_dir(real) and any(
        real == d or real.startswith(d + os.sep) for d in stdlib_dirs()
    )


def interpreter() -> Path:
    """The real interpreter binary (through venvs and symlinks)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return Path(os.path.realpath(base))


@lru_cache(maxsize=1)
def libpython() -> Path | None:
    """The shared libpython the interpreter binary loads, or None when it has it built in.

    Debian builds the shared library but links ``python3.X`` statically: the
    binary is searched for the library's name, as the dynamic loader would.
    """
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    name = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    libdir = sysconfig.get_config_var("LIBDIR")
    if not isinstance(name, str) or not isinstance(libdir, str):
        return None
    path = Path(libdir, name)
    if not path.exists() or name.encode() + b"\0" not in interpreter().read_bytes():
        return None
    return path


def cache_home() -> Path:
    """``$XDG_CACHE_HOME/packmule`` (default ``~/.cache/packmule``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "packmule")


def _walk(top: str, keep: tuple[str, ...] | None) -> list[str]:
    """Files under ``top`` relative to it, sorted; no ``__pycache__`` or hidden directories."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        rel = os.path.relpath(dirpath, top)
        for name in sorted(filenames):
            if keep is None or name.endswith(keep):
                out.append(name if rel == "." else os.path.join(rel, name))
    return out


def source_files(name: str, path: str) -> list[tuple[str, str]]:
    """The files that ship a local module: (path inside site-packages, absolute path).

    A package directory ships whole (data files too) except ``__pycache__``; a
    namespace directory (no ``__init__``) ships only its Python modules; a
    module ships its one file.
    """
    if not os.path.isdir(path):
        return [(os.path.basename(path), path)]
    is_package = any(
        os.path.exists(os.path.join(path, "__init__" + s)) for s in _MODULE_SUFFIXES
    )
    rels = _walk(path, None if is_package else _MODULE_SUFFIXES)
    return [(os.path.join(name, r), os.path.join(path, r)) for r in rels]


@lru_cache(maxsize=1)
def gnu_tar() -> str | None:
    """The path of GNU tar, or None when ``tar`` is missing or another implementation."""
    path = shutil.which("tar")
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return path if "GNU tar" in out else None
