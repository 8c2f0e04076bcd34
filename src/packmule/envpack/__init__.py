"""Environment packs: ship a Python function's whole environment to nodes without it.

- :func:`analyze` finds what functions import: distributions (with their
  requirements), the user's own local modules, and packmule's runtime.
- :func:`build_pack` turns that :class:`PackSpec` into one tar holding the
  interpreter, its standard library and every package, named and cached by
  :func:`pack_digest`.
- :func:`unpack` (worker side) verifies and unpacks it once per node;
  :func:`pack_python` is the interpreter to run tasks with.
"""

from .analysis import PackSpec, analyze
from .build import Pack, build_pack, cached_pack, default_cache_dir, pack_digest
from .unpack import default_cache_root, pack_python, read_manifest, unpack

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
