"""Environment packs: ship a Python function's whole environment to nodes without it.

- :func:`analyze` finds what functions import: distributions (with their
  requirements), the user's own local modules, and packmule's runtime.
- :func:`build_pack` turns that :class:`PackSpec` into one tar holding the
  interpreter, its standard library and every package, named and cached by
  :func:`pack_digest`.
- :func:`unpack` (worker side) verifies and unpacks it once per node;
  :func:`pack_python` is the interpreter to run tasks with.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .unpack import default_cache_root, pack_python, read_manifest, unpack

if TYPE_CHECKING:
    from .analysis import PackSpec, analyze
    from .build import Pack, build_pack, cached_pack, default_cache_dir, pack_digest

# Loaded on first use: a worker unpacks packs and never needs the builder (nor
# ``packaging`` and ``importlib.metadata``, which the analysis imports).
_HOMES = {
    "PackSpec": "analysis", "analyze": "analysis",
    "Pack": "build", "build_pack": "build", "cached_pack": "build",
    "default_cache_dir": "build", "pack_digest": "build",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value

__all__ = [
    "Pack",
    "PackSpec",
    "analyze",
    "build_pack",
    "cached_pack",
    "default_cache_dir",
    "default_cache_root",
    "pack_digest",
    "pack_python",
    "read_manifest",
    "unpack",
]
