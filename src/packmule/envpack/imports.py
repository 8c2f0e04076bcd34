"""Find the imports in Python source: which modules, where, and whether optional.

Pure functions over :mod:`ast`; nothing is imported. An import is *optional*
when it sits in the body of a ``try`` whose handlers catch ``ImportError``
(or a base of it), or when it is dynamic (``importlib.import_module("x")``).
Imports under ``if TYPE_CHECKING:`` never run, so they are not reported.
"""

from __future__ import annotations

import ast
import inspect
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Exception names whose handler makes the imports in a ``try`` body optional.
_CATCHES_IMPORT_ERROR = frozenset(
    {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
)


@dataclass(frozen=True)
class ImportRef:
    """One import statement's module, resolved to an absolute dotted name.

    ``name`` starts with ``.`` when a relative import reaches above its
    top-level package (Python would fail on it too).
    """

    name: str
    file: str
    line: int
    optional: bool

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def resolve_relative(module: str | None, level: int, package: str | None) -> str:
    """The absolute name of ``from <level dots><module> import ...`` in ``package``."""
    if level == 0:
        return module or ""
    parts = package.split(".") if package else []
    if level - 1 >= len(parts):
        return "." * level + (module or "")
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{module}" if module else base


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _handler_names(node: ast.expr | None) -> list[str]:
    if node is None:
        return ["BaseException"]
    if isinstance(node, ast.Tuple):
        return [n for elt in node.elts for n in _handler_names(elt)]
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    return []


def _catches_import_error(handlers: list[ast.ExceptHandler]) -> bool:
    return any(
        name in _CATCHES_IMPORT_ERROR for h in handlers for name in _handler_names(h.type)
    )


def _dynamic_target(node: ast.Call) -> str | None:
    func = node.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    if name not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value:
        return None if arg.value.startswith(".") else arg.value
    return None


class _Collector(ast.NodeVisitor):
    def __init__(self, file: str, first_line: int, package: str | None) -> None:
        self.file, self.offset, self.package = file, first_line - 1, package
        self.optional = 0
        self.refs: list[ImportRef] = []

    def _add(self, name: str, node: ast.AST, optional: bool = False) -> None:
        line = getattr(node, "lineno", 1) + self.offset
        self.refs.append(ImportRef(name, self.file, line, optional or self.optional > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self._add(resolve_relative(node.module, node.level, self.package), node)

    def visit_Call(self, node: ast.Call) -> None:
        target = _dynamic_target(node)
        if target is not None:
            self._add(target, node, optional=True)
        self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _visit_try(self, node: ast.Try | Any) -> None:
        guarded = _catches_import_error(node.handlers)
        self.optional += guarded
        for child in node.body:
            self.visit(child)
        self.optional -= guarded
        for child in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(child)

    visit_Try = _visit_try
    visit_TryStar = _visit_try


def scan_source(
    source: str, file: str, first_line: int = 1, package: str | None = None
) -> list[ImportRef]:
    """Every import in ``source``; raises :class:`SyntaxError` if it does not parse."""
    collector = _Collector(file, first_line, package)
    collector.visit(ast.parse(source, filename=file))
    return collector.refs


#: (path, package) -> ((mtime_ns, size), refs): files are parsed again only when they change.
_file_cache: dict[tuple[str, str | None], tuple[tuple[int, int], list[ImportRef]]] = {}


def scan_file(path: str, package: str | None) -> list[ImportRef]:
    """Every import in the file at ``path`` (cached until the file changes)."""
    st = os.stat(path)
    key, stamp = (path, package), (st.st_mtime_ns, st.st_size)
    hit = _file_cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        refs = scan_source(data.decode("utf-8", "replace"), path, 1, package)
    except SyntaxError:
        refs = []  # not ours to judge: Python reports it when the module is imported
    if len(_file_cache) > 50_000:
        _file_cache.clear()
    _file_cache[key] = (stamp, refs)
    return refs


def scan_function(func: Callable[..., Any], package: str | None) -> list[ImportRef]:
    """The imports written inside ``func``'s own source; none if its source is unavailable."""
    try:
        lines, start = inspect.getsourcelines(func)
        file = inspect.getsourcefile(func) or "<unknown>"
    except (OSError, TypeError):
        return []
    try:
        return scan_source(textwrap.dedent("".join(lines)), file, max(start, 1), package)
    except SyntaxError:
        return []  # e.g. a lambda cut out of a longer expression
