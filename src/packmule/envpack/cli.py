"""``packmule pack show|build``: what a pack would hold, and building it."""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import PackError

_EPILOG = (
    "MODULE is a dotted module importable from the current directory (mypkg.tasks) or a "
    "path to a .py file (./tasks.py); FUNC may be dotted (MyClass.method). "
    "Exit codes: 0 done, 1 the pack cannot be analysed or built, 2 bad command line."
)


def add_parser(sub: Any) -> None:
    """Add ``pack show`` and ``pack build`` to the ``packmule`` subcommands."""
    pack = sub.add_parser(
        "pack",
        help="show or build the environment pack of Python functions",
        description=(
            "An environment pack is one tar holding a Python interpreter, its standard "
            "library, the distributions and local modules some functions import, and "
            "packmule itself, so the functions run on nodes that lack them (or lack Python)."
        ),
    )
    verbs = pack.add_subparsers(dest="pack_command", required=True)
    show = verbs.add_parser(
        "show", help="print what the pack of MODULE:FUNC would hold, and why",
        description="Print the distributions (with versions), local modules (with paths) "
                    "and digest of the pack the functions need, and why each item is in it.",
        epilog=_EPILOG,
    )
    build = verbs.add_parser(
        "build", help="build the pack of MODULE:FUNC (or reuse it from the cache)",
        description="Build the pack the functions need, or find it in the cache, and print "
                    "its path, digest, checksum and size. With --worker: a pack holding only "
                    "packmule, to start workers on nodes without Python: "
                    "tar -xf worker-pack.tar -C DIR && DIR/bin/python -m packmule worker "
                    "HOST:PORT --password-file FILE",
        epilog=_EPILOG,
    )
    for p in (show, build):
        p.add_argument("targets", nargs="*", metavar="MODULE:FUNC",
                       help="functions whose imports the pack must satisfy")
        p.add_argument("--extra-pkg", action="append", default=[], metavar="NAME",
                       help="also include this installed distribution and its requirements "
                            "(repeatable), e.g. one imported under another name or at run time")
        p.add_argument("--worker", action="store_true",
                       help="no functions: only packmule and its runtime (a worker pack)")
    build.add_argument("--output", metavar="PATH",
                       help="also copy the pack here (a file, or a directory to put it in)")
    build.add_argument("--cache-dir", metavar="DIR",
                       help="where packs are kept (default: $XDG_CACHE_HOME/packmule/packs)")


def load_function(target: str) -> Callable[..., Any]:
    """The function named by ``MODULE:FUNC``, importing MODULE as a worker would."""
    module, sep, attr = target.rpartition(":")
    if not sep or not module or not attr:
        raise PackError(f"expected MODULE:FUNC (e.g. tasks.py:simulate), got {target!r}")
    if module.endswith(".py") or os.sep in module:
        path = Path(module).resolve()
        if not path.is_file():
            raise PackError(f"{module}: no such file")
        sys.path.insert(0, str(path.parent))
        module = path.stem
    else:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module)
    except Exception as exc:
        raise PackError(f"cannot import {module}: {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PackError(f"{module} has no attribute {attr!r}") from None
    if not callable(obj):
        raise PackError(f"{target} is a {type(obj).__name__}, not a function")
    return obj  # type: ignore[no-any-return]


def _functions(args: argparse.Namespace) -> list[Callable[..., Any]]:
    if args.worker and args.targets:
        raise PackError("--worker builds a pack without functions: leave out MODULE:FUNC")
    if not args.worker and not args.targets:
        raise PackError("name at least one MODULE:FUNC, or pass --worker")
    return [load_function(t) for t in args.targets]


def _table(rows: Sequence[tuple[str, str]]) -> list[str]:
    width = max((len(a) for a, _ in rows), default=0)
    return [f"  {a.ljust(width)}  {b}" for a, b in rows]


def show(args: argparse.Namespace) -> int:
    from .analysis import analyze

    spec = analyze(_functions(args), args.extra_pkg)
    why = spec.reasons
    lines = [f"python         {spec.python} on {spec.platform}", f"digest         {spec.digest}",
             f"distributions  {len(spec.distributions)}"]
    lines += _table([(f"{n} {v}", "; ".join(why.get(n, []))) for n, v in
                     spec.distributions.items()])
    lines.append(f"local modules  {len(spec.local_modules)}")
    for name, path in spec.local_modules.items():
        lines += _table([(name, path)])
        lines.append(f"      {'; '.join(why.get(name, []))}")
    print("\n".join(lines))
    return 0


def _copy(src: Path, dest: Path) -> Path:
    if dest.is_dir():
        dest = dest / src.name
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise
    return dest


def build(args: argparse.Namespace) -> int:
    from .analysis import analyze
    from .build import build_pack, cached_pack
    from .unpack import read_manifest

    cache = Path(args.cache_dir) if args.cache_dir else None
    spec = analyze(_functions(args), args.extra_pkg)
    started = time.perf_counter()
    reused = cached_pack(spec.digest, cache) is not None
    pack = build_pack(spec, cache)
    elapsed = time.perf_counter() - started
    path = _copy(pack.path, Path(args.output)) if args.output else pack.path
    files = read_manifest(path).get("files", "?")
    how = "found in the cache" if reused else f"built in {elapsed:.1f} s"
    print(f"pack     {path}\ndigest   {pack.digest}\nsha256   {pack.sha256}\n"
          f"size     {pack.size / 1e6:.1f} MB, {files} files ({how})")
    if args.worker:
        print("start a worker on a node without Python:\n"
              f"  mkdir -p DIR && tar -xf {path.name} -C DIR && "
              "DIR/bin/python -m packmule worker HOST:PORT --password-file FILE")
    return 0


def main(args: argparse.Namespace) -> int:
    """Run ``packmule pack ...``; a :class:`PackError` becomes a message and exit status 1."""
    try:
        return show(args) if args.pack_command == "show" else build(args)
    except PackError as exc:
        print(f"packmule pack: {exc}", file=sys.stderr)
        return 1
