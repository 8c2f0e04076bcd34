"""``packmule pack show|build|list|clean``: what a pack would hold, building it, and
the packs kept in the manager's and workers' caches."""

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
    """Add ``pack show|build|list|clean`` to the ``packmule`` subcommands."""
    pack = sub.add_parser(
        "pack",
        help="show, build, list or clean environment packs of Python functions",
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
    listing = verbs.add_parser(
        "list", help="list the packs in a pack cache: size, last use, what each holds",
        description="List the packs kept in the manager's pack cache (or a worker's, with "
                    "--worker): digest, size, when last used, whether a running manager or "
                    "worker holds it, and what it holds; then the totals.",
    )
    clean = verbs.add_parser(
        "clean", help="remove packs not used for some days from a pack cache",
        description="Remove the packs of the manager's pack cache (or a worker's, with "
                    "--worker) not used for DAYS days, or all of them with --all. Packs held "
                    "by a running manager or worker, and packs used in the last minute, are "
                    "never removed. Leftovers of builds or unpacks killed over a day ago go "
                    "too. Exit codes: 0 done, 1 the cache cannot be read, 2 bad command line.",
    )
    for p in (listing, clean):
        where = p.add_mutually_exclusive_group()
        where.add_argument("--cache", "--cache-dir", dest="cache", metavar="DIR",
                           help="the pack cache to look at (default: the manager's, "
                                "$XDG_CACHE_HOME/packmule/packs)")
        where.add_argument("--worker", action="store_true",
                           help="the workers' default pack cache "
                                "($XDG_CACHE_HOME/packmule/worker-packs)")
    age = clean.add_mutually_exclusive_group(required=True)
    age.add_argument("--older-than", type=_days, metavar="DAYS",
                     help="remove packs not used for DAYS days (may be fractional: 0.5)")
    age.add_argument("--all", action="store_true",
                     help="remove every pack not in use (nor used in the last minute)")
    clean.add_argument("--dry-run", action="store_true",
                       help="say what would be removed, and remove nothing")


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a number of days >= 0, got {text!r}")
    return days


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


def _cache_dir(args: argparse.Namespace) -> Path:
    if args.cache:
        return Path(args.cache)
    if args.worker:
        from .unpack import default_cache_root

        return default_cache_root()
    from .build import default_cache_dir

    return default_cache_dir()


def _kind(args: argparse.Namespace) -> str:
    return "worker pack cache" if args.worker else "pack cache"


def list_packs(args: argparse.Namespace) -> int:
    from ..observe.units import ago, size
    from . import cache as c

    where = _cache_dir(args)
    found = c.entries(where)
    packs = [e for e in found if e.kind != "leftover"]
    leftovers = [e for e in found if e.kind == "leftover"]
    print(f"{_kind(args)} {where}")
    if not found:
        print("no packs" + ("" if where.is_dir() else " (the directory does not exist)"))
        return 0
    rows = [("DIGEST", "SIZE", "LAST USED", "IN USE", "HOLDS")]
    for e in packs:
        man = c.manifest(e)
        what = c.holds(man) if man is not None else "(no manifest)"
        if not e.complete:
            what = "incomplete (a build or unpack was interrupted); " + what
        users = "?" if e.users is None else ",".join(map(str, e.users)) or "-"
        rows.append((e.name[:12], size(e.size), ago(e.age), users, what))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    in_use = sum(1 for e in packs if e.users)
    total = f"{len(packs)} pack{'s' * (len(packs) != 1)}, {size(sum(e.size for e in packs))}"
    if in_use:
        total += f", {in_use} in use (IN USE: the processes holding it)"
    if leftovers:
        total += (f"; and {len(leftovers)} leftover{'s' * (len(leftovers) != 1)} of builds or "
                  f"unpacks, {size(sum(e.size for e in leftovers))}")
    print(f"total: {total}")
    return 0


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' * (n != 1)}"


def clean_packs(args: argparse.Namespace) -> int:
    from ..observe.units import ago, size
    from . import cache as c

    where = _cache_dir(args)
    older = 0.0 if args.all else args.older_than * 86400
    verb = "would remove" if args.dry_run else "removed"
    freed = 0
    gone = {"pack": 0, "leftover": 0}
    kept = failed = 0
    lines: list[str] = []
    for e in c.entries(where):
        why = c.removable(e, older)
        kind = "leftover" if e.kind == "leftover" else "pack"
        label = f"leftover {e.name}" if kind == "leftover" else e.name[:12]
        if why is None and not args.dry_run:
            try:
                why = c.remove(e, older)
            except OSError as exc:  # another user's cache, a read-only file system
                failed += 1
                lines.append(f"cannot remove {exc.filename or e.paths[0]}: "
                             f"{exc.strerror or exc}; {_UNREMOVABLE}")
                continue
        if why is None:
            freed += e.size
            gone[kind] += 1
            lines.append(f"{verb} {label} ({size(e.size)}, last used {ago(e.age)})")
        elif kind == "pack":
            kept += 1
            lines.append(f"kept {label}: {why}")
    print(f"{_kind(args)} {where}")
    print("\n".join(lines) if lines else "no packs")
    what = _count(gone["pack"], "pack")
    if gone["leftover"]:
        what += f", {_count(gone['leftover'], 'leftover')}"
    space = "would free" if args.dry_run else "freed"
    end = f"; {failed} could not be removed" if failed else ""
    print(f"{space} {size(freed)} ({what}); {_count(kept, 'pack')} kept{end}")
    return 1 if failed else 0


#: What to do about a pack that cannot be removed.
_UNREMOVABLE = ("check who owns it and its permissions (a cache of another user is theirs "
                "to clean), or remove it by hand")


_VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "show": show, "build": build, "list": list_packs, "clean": clean_packs,
}


def main(args: argparse.Namespace) -> int:
    """Run ``packmule pack ...``; a :class:`PackError` becomes a message and exit status 1."""
    try:
        return _VERBS[args.pack_command](args)
    except PackError as exc:
        print(f"packmule pack: {exc}", file=sys.stderr)
        return 1
