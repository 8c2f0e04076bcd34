"""Which distributions and local modules a set of Python functions needs.

:func:`analyze` reads (never runs) the functions' source, the modules their
globals point at, and the module that defines them, then follows local
modules' imports and distributions' requirements transitively. The standard
library is skipped: it ships with the interpreter.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import platform
import sys
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.machinery import ModuleSpec, all_suffixes
from importlib.util import find_spec
from types import CodeType, FunctionType, ModuleType
from typing import Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ..errors import PackError
from . import imports
from .environment import Environment, environment
from .imports import ImportRef
from .layout import in_site_dir, in_stdlib, source_files

#: The distributions the task runner itself needs inside every pack.
RUNTIME = ("packmule", "pyzmq", "msgpack", "psutil", "cloudpickle")
RUNTIME_REASON = "packmule runtime"

log = logging.getLogger("packmule.envpack")

_FIX = (
    "Install it with pip in this environment, or add its distribution to extra_pkgs "
    "if it is imported under another name"
)


@dataclass(frozen=True)
class PackSpec:
    """What an environment pack holds: the interpreter, distributions and local modules."""

    python: str
    platform: str
    #: canonical distribution name -> version
    distributions: dict[str, str]
    #: top-level module name -> absolute path of its file or package directory
    local_modules: dict[str, str]
    #: distribution or module name -> why it is included
    reasons: dict[str, list[str]]

    @property
    def digest(self) -> str:
        """The content hash naming this environment (see :func:`~.build.pack_digest`)."""
        from .build import pack_digest

        return pack_digest(self)


def python_id() -> str:
    """This interpreter as ``implementation-version``, e.g. ``cpython-3.11.7``."""
    return f"{sys.implementation.name}-{platform.python_version()}"


def analyze(funcs: Sequence[Callable[..., Any]], extra_pkgs: Sequence[str] = ()) -> PackSpec:
    """The environment that ``funcs`` need to run elsewhere, and why each item is in it.

    Raises :class:`PackError` for a required import that is not installed here.
    """
    a = _Analyzer(environment())
    for func in funcs:
        a.add_function(func)
    for text in extra_pkgs:
        a.add_extra(text)
    a.add_runtime()
    return PackSpec(
        python=python_id(),
        platform=sysconfig.get_platform(),
        distributions=dict(sorted(a.dists.items())),
        local_modules=dict(sorted(a.local.items())),
        reasons={k: a.reasons[k] for k in sorted(a.reasons)},
    )


Kind = Literal["stdlib", "dist", "local", "missing"]


@dataclass(frozen=True)
class _Found:
    kind: Kind
    path: str = ""
    dists: tuple[str, ...] = ()


def unwrap(func: Any) -> Any:
    """The plain function behind partials, bound methods, decorators and Parsl apps."""
    for _ in range(32):
        if isinstance(func, functools.partial):
            func = func.func
        elif inspect.ismethod(func):
            func = func.__func__
        elif hasattr(func, "__wrapped__"):
            func = inspect.unwrap(func)
        elif not inspect.isroutine(func) and callable(getattr(func, "func", None)):
            func = func.func  # a Parsl PythonApp keeps the user's function here
        else:
            break
    return func


def pickled_by_value(func: FunctionType) -> bool:
    """Whether cloudpickle sends the function itself rather than a reference to
    it: functions of ``__main__``, nested ones, and any not reachable by name."""
    if func.__module__ == "__main__" or "<locals>" in func.__qualname__:
        return True
    found: Any = sys.modules.get(func.__module__)
    for part in func.__qualname__.split("."):
        found = getattr(found, part, None)
    return found is not func


def _code_names(code: CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _code_names(const)


def _referenced_values(func: FunctionType) -> Iterator[tuple[str, Any]]:
    """The globals, closure cells and defaults ``func`` can reach."""
    g = func.__globals__
    for name in dict.fromkeys(_code_names(func.__code__)):
        if name in g:
            yield name, g[name]
    for name, cell in zip(func.__code__.co_freevars, func.__closure__ or (), strict=False):
        try:
            yield name, cell.cell_contents
        except ValueError:
            continue  # an empty cell
    for value in (*(func.__defaults__ or ()), *(func.__kwdefaults__ or {}).values()):
        yield "default", value


def _module_of(value: Any) -> str | None:
    """The module a value is pickled by reference from, if it has one."""
    if isinstance(value, ModuleType):
        return value.__name__
    owner = value if isinstance(value, type) or callable(value) else type(value)
    mod = getattr(owner, "__module__", None)
    return mod if isinstance(mod, str) and mod != "builtins" else None


def _package_of(module_name: str | None) -> str | None:
    mod = sys.modules.get(module_name or "")
    pkg = getattr(mod, "__package__", None)
    return pkg if isinstance(pkg, str) else None


def _python_files(top: str, path: str) -> Iterator[tuple[str, str | None]]:
    """The .py files of a local module, each with the package its relative imports use."""
    for rel, full in source_files(top, path):
        if rel.endswith(".py"):
            yield full, ".".join(rel[:-3].split(os.sep)[:-1]) or None


def _submodule_exists(path: str, parts: list[str]) -> bool:
    """Whether ``parts`` name a module inside the local package directory ``path``."""
    for i, part in enumerate(parts):
        sub = os.path.join(path, part)
        if os.path.isdir(sub):
            path = sub
        elif i == len(parts) - 1:
            return any(os.path.isfile(sub + suffix) for suffix in all_suffixes())
        else:
            return False
    return True


class _Analyzer:
    def __init__(self, env: Environment) -> None:
        self.env = env
        self.dists: dict[str, str] = {}
        self.local: dict[str, str] = {}
        self.reasons: dict[str, list[str]] = {}
        self._found: dict[str, _Found] = {}
        self._expanded: set[tuple[str, frozenset[str]]] = set()
        self._seen_funcs: set[int] = set()
        self._main_scanned = False

    def because(self, item: str, reason: str) -> None:
        reasons = self.reasons.setdefault(item, [])
        if reason not in reasons:
            reasons.append(reason)

    # -- functions ---------------------------------------------------------

    def add_function(self, func: Callable[..., Any], app: str | None = None) -> None:
        func = unwrap(func)
        name = getattr(func, "__qualname__", None) or repr(func)
        app = app or name
        if not isinstance(func, FunctionType):
            self.add_module(_module_of(func) or "", None, f"defines app {app}")
            return
        if id(func) in self._seen_funcs:
            return
        self._seen_funcs.add(id(func))
        package = _package_of(func.__module__)
        for ref in imports.scan_function(func, package):
            self.add_module(ref.name, ref, f"imported by app {app}")
        for var, value in _referenced_values(func):
            self.add_value(var, value, app)
        if func.__module__ == "__main__":
            self.add_main_script()
        elif func.__module__ and not pickled_by_value(func):
            self.add_module(func.__module__, None, f"defines app {app}")

    def add_value(self, var: str, value: Any, app: str) -> None:
        if isinstance(value, FunctionType) and pickled_by_value(value):
            self.add_function(value, app)  # pickled by value: follow what it uses
            return
        mod = _module_of(value)
        if mod:
            self.add_module(mod, None, f"used by app {app} (as {var})")

    def add_main_script(self) -> None:
        main = sys.modules.get("__main__")
        path = getattr(main, "__file__", None)
        if self._main_scanned or not isinstance(path, str) or not path.endswith(".py"):
            return
        self._main_scanned = True
        for ref in imports.scan_file(os.path.abspath(path), _package_of("__main__")):
            self.add_module(ref.name, ref, f"imported by the main script ({ref.where()})")

    # -- modules -----------------------------------------------------------

    def locate(self, top: str) -> _Found:
        if top not in self._found:
            self._found[top] = self._locate(top)
        return self._found[top]

    def _locate(self, top: str) -> _Found:
        if top in sys.stdlib_module_names or top in sys.builtin_module_names or top == "__main__":
            return _Found("stdlib")
        try:
            spec: ModuleSpec | None = find_spec(top)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            return _Found("missing")
        locations = list(spec.submodule_search_locations or ())
        path = locations[0] if locations else (spec.origin or "")
        if not path or not os.path.isabs(path) or in_stdlib(path):
            return _Found("stdlib")  # built-in, frozen, or a stdlib file
        owners = tuple(self.env.modules.get(top, ()))
        if owners and (in_site_dir(path) or any(
                self.env.editable_sources(d) is not None for d in owners)):
            return _Found("dist", path, owners)
        return _Found("local", path)

    def add_module(self, name: str, ref: ImportRef | None, reason: str) -> None:
        top, _, rest = name.partition(".")
        if not top:
            if ref is not None and name and not ref.optional:
                raise PackError(
                    f"{ref.where()}: relative import {name!r} reaches above its top-level "
                    "package; Python cannot import it either. Make it an absolute import."
                )
            return
        found = self.locate(top)
        if found.kind == "missing":
            if ref is not None and not ref.optional:
                raise PackError(
                    f"{ref.where()}: imports {name!r}, which is not installed in this "
                    f"environment ({sys.prefix}). {_FIX}."
                )
        elif found.kind == "dist":
            for dist in found.dists:
                self.add_distribution(dist, frozenset(), reason)
        elif found.kind == "local":
            if ref is not None and rest and not ref.optional and not _submodule_exists(
                    found.path, rest.split(".")):
                raise PackError(
                    f"{ref.where()}: imports {name!r}, but the local package {top!r} at "
                    f"{found.path} has no module {rest!r}. {_FIX}."
                )
            self.add_local(top, found.path, reason)

    def add_local(self, top: str, path: str, reason: str, scan: bool = True) -> None:
        self.because(top, reason)
        if top in self.local:
            return
        self.local[top] = os.path.abspath(path)
        if not scan:
            return
        for file, package in _python_files(top, path):
            for ref in imports.scan_file(file, package):
                self.add_module(ref.name, ref, f"imported by {top} ({ref.where()})")

    # -- distributions -----------------------------------------------------

    def add_distribution(self, name: str, extras: frozenset[str], reason: str) -> bool:
        canon = canonicalize_name(name)
        dist = self.env.dists.get(canon)
        if dist is None:
            return False
        self.because(canon, reason)
        key = (canon, extras)
        if key in self._expanded:
            return True
        self._expanded.add(key)
        self.dists[canon] = dist.version
        for top, path in (self.env.editable_sources(canon) or {}).items():
            self.add_local(top, path, f"editable install of {canon}", scan=False)
        for req in self.env.requires(canon):
            if req.marker is not None and not any(
                    req.marker.evaluate({"extra": e}) for e in ("", *sorted(extras))):
                continue
            if not self.add_distribution(req.name, frozenset(req.extras), f"required by {canon}"):
                log.warning(
                    "%s requires %s, which is not installed here: leaving it out of the pack",
                    canon, req)
        return True

    def add_extra(self, text: str) -> None:
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise PackError(f"extra_pkgs: {text!r} is not a distribution name ({exc})") from None
        if not self.add_distribution(req.name, frozenset(req.extras), "extra_pkgs"):
            raise PackError(
                f"extra_pkgs names {req.name!r}, which is not installed in this environment "
                f"({sys.prefix}). Install it with pip here, or check the name with `pip list`."
            )

    def add_runtime(self) -> None:
        for name in RUNTIME:
            self.because(name, RUNTIME_REASON)
        if not self.add_distribution("packmule", frozenset(), RUNTIME_REASON):
            # running from a source tree that is not installed
            here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            self.add_local("packmule", here, RUNTIME_REASON, scan=False)
        for name in RUNTIME[1:]:
            if not self.add_distribution(name, frozenset(), RUNTIME_REASON):
                raise PackError(
                    f"packmule needs {name!r} inside every pack, but it is not installed "
                    f"here ({sys.prefix}). Reinstall packmule: pip install packmule"
                )
