"""What is installed in this interpreter's environment, cached until it changes.

Listing distributions and mapping modules to them reads every ``dist-info``
directory (tens of milliseconds); the result is kept until a ``sys.path``
entry is added, removed or modified (``pip install`` touches site-packages).
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .layout import in_site_dir


@dataclass
class Environment:
    """A snapshot of the installed distributions on ``sys.path``."""

    key: tuple[tuple[str, int], ...]
    #: canonical distribution name -> the distribution Python would import from
    dists: dict[str, md.Distribution]
    #: top-level module name -> canonical names of the distributions providing it
    modules: dict[str, list[str]]
    _requires: dict[str, list[Requirement]] = field(default_factory=dict)
    _editable: dict[str, dict[str, str] | None] = field(default_factory=dict)

    def requires(self, name: str) -> list[Requirement]:
        """``name``'s declared requirements (markers not yet evaluated)."""
        if name not in self._requires:
            reqs = []
            for text in self.dists[name].requires or ():
                try:
                    reqs.append(Requirement(text))
                except InvalidRequirement:
                    continue  # a malformed line in someone's metadata: pip ignores it too
            self._requires[name] = reqs
        return self._requires[name]

    def editable_sources(self, name: str) -> dict[str, str] | None:
        """For an editable install: top-level module -> its source path; else None."""
        if name not in self._editable:
            dist = self.dists[name]
            self._editable[name] = (
                _editable_sources(name, dist, self.modules) if is_editable(dist) else None
            )
        return self._editable[name]


def metadata_dir(dist: md.Distribution) -> Path | None:
    """The ``.dist-info``/``.egg-info`` directory of ``dist``, when it is on disk."""
    path = getattr(dist, "_path", None)
    return Path(path) if isinstance(path, (str, os.PathLike)) else None


def is_editable(dist: md.Distribution) -> bool:
    """Installed with ``pip install -e``, or ``setup.py develop`` (metadata next to the source)."""
    text = dist.read_text("direct_url.json")
    if text:
        try:
            info = json.loads(text)
        except ValueError:
            info = {}
        if isinstance(info, dict) and (info.get("dir_info") or {}).get("editable"):
            return True
    where = metadata_dir(dist)
    return where is not None and not in_site_dir(str(where))


def _finder_mapping(dist: md.Distribution) -> dict[str, str]:
    """The module -> path table of a setuptools editable finder, if the dist has one."""
    out: dict[str, str] = {}
    for f in dist.files or ():
        if not (f.name.startswith("__editable__") and f.name.endswith("_finder.py")):
            continue
        try:
            tree = ast.parse(Path(str(dist.locate_file(f))).read_text("utf-8"))
        except (OSError, SyntaxError):
            continue
        for node in ast.walk(tree):
            target = node.targets[0] if isinstance(node, ast.Assign) else getattr(
                node, "target", None)
            if isinstance(target, ast.Name) and target.id == "MAPPING" and isinstance(
                    node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                try:
                    value = ast.literal_eval(node.value)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    out.update({str(k): str(v) for k, v in value.items()})
    return out


def _editable_sources(
    name: str, dist: md.Distribution, modules: dict[str, list[str]]
) -> dict[str, str]:
    from importlib.util import find_spec

    found = _finder_mapping(dist)
    for top, owners in modules.items():
        if name not in owners or top in found or top.startswith("__editable__"):
            continue
        try:
            spec = find_spec(top)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        locations = list(spec.submodule_search_locations or ())
        path = locations[0] if locations else spec.origin
        if path and os.path.exists(path):
            found[top] = path
    return found


def _snapshot_key() -> tuple[tuple[str, int], ...]:
    """``sys.path``, with the modification time of each site directory on it."""
    key = []
    for entry in sys.path:
        stamp = 0
        if in_site_dir(entry):
            try:
                stamp = os.stat(entry).st_mtime_ns
            except OSError:
                stamp = -1
        key.append((entry, stamp))
    return tuple(key)


def _scan() -> tuple[dict[str, md.Distribution], dict[str, list[str]]]:
    dists: dict[str, md.Distribution] = {}
    for dist in md.distributions():
        try:
            raw = dist.metadata["Name"]
        except (KeyError, OSError):
            continue
        if raw:
            dists.setdefault(canonicalize_name(raw), dist)
    modules = {
        top: sorted({str(canonicalize_name(n)) for n in names} & dists.keys())
        for top, names in md.packages_distributions().items()
    }
    return dists, {k: v for k, v in modules.items() if v}


_lock = threading.Lock()
_current: Environment | None = None


def environment() -> Environment:
    """The installed distributions, rescanned only when ``sys.path`` changed."""
    global _current
    key = _snapshot_key()
    with _lock:
        if _current is None or _current.key != key:
            dists, modules = _scan()
            _current = Environment(key, dists, modules)
        return _current
