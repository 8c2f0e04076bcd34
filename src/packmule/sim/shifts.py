"""Shift traces: published traces reordered or joined so that the workload changes over time.

None of the twelve public traces (``workloads/phung2021/``) changes its
distribution over time: their tasks are shuffled. To test whether an
allocation mode follows a workload that shifts, :func:`build` derives
*shift traces* from them. Everything is deterministic (no randomness): the
same sources always give the same files, byte for byte.

Every shift trace is written in the published format (the header ``taskid --
core -- memory -- virtual_memory -- disk -- time -- average_cores -- tag``,
one task per line, fields separated by `` -- ``). Each task's line is its
source line with every column kept as written (tag included), except the
task id: tasks are renumbered 1..n in their new order. A source must have
the published eight columns (a header naming them in any order, the id
spelled ``taskid`` or ``task_id``, or no header); it is first read with
:func:`~packmule.sim.alloc.load_trace`, so what that rejects is rejected.

Terms. A trace's *tags* are the values of its ``tag`` column. A tag's *mean*
is the mean memory of its tasks as the simulator reads them (rounded up to
whole MB, negatives as 0). *Rising order* is the tags sorted by mean, smallest
first (ties by tag name); *falling order* is its reverse. A tag's tasks always
keep their order in the source trace.

The constructions (``SOURCE`` is the source trace's name):

``SOURCE-rising``
    every task of the first tag in rising order, then every task of the
    second, and so on: one shift upward per tag boundary.
``SOURCE-falling``
    the same in falling order: the largest tag first, then shifts down.
``SOURCE-alternating``
    each tag's tasks cut into consecutive blocks of :data:`BLOCK` (200)
    tasks (the last block of a tag may be shorter); the tags take turns block
    by block in rising order: block 1 of each tag, then block 2 of each tag,
    and so on; a tag whose blocks are used up drops out of the turn.
``SOURCE-phases``
    the trace split into phases, each dominated by one tag. The dominant tags
    of the phases are the tags in zig-zag order (smallest mean, largest,
    second smallest, second largest, ...), repeated until there are at least
    :data:`MIN_PHASES` (3) phases: with two tags small, large, small, large;
    with three small, large, middle. In a phase its dominant tag has weight
    ``4 (k - 1)`` and every other tag weight 1 (k tags), i.e. 80% of the
    phase and 20% shared by the others. Each tag's tasks are cut into one
    consecutive piece per phase, the piece sizes proportional to the tag's
    weights in the phases (boundary p at ``round_half_up(n_tag x
    cumulative weight / total weight)``). Within a phase the pieces are
    interleaved evenly: the j-th of a piece's m tasks (j = 0..m-1) is placed
    at position (j + 1/2) / m, ties by rising order of the tags.
``A-then-B``
    all of trace A's tasks, then all of trace B's: one shift between two
    single-tag traces (both keep their own tags, ``1`` in the published
    files, so ``--categories tag`` sees one category for both halves).

The set (:data:`SHIFTS`), 16 traces:

* bimodal_small_std and trimodal_small_std (narrow, well-separated tags):
  rising, falling, alternating and phases;
* bimodal and trimodal (wide, overlapping tags): rising, falling and
  alternating;
* uniform_small-then-uniform_large (a shift up by 10x) and
  normal_large-then-normal_small (a shift down by 4x).

``packmule sim shifts OUTDIR [--from DIR]`` writes them (``NAME.txt``) into
OUTDIR; ``packmule sim alloc --table OUTDIR`` then compares modes on them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from .alloc import _SEP, HEADER, ID_NAMES, load_trace

__all__ = [
    "BLOCK",
    "MIN_PHASES",
    "SHIFTS",
    "Row",
    "Shift",
    "SourceError",
    "alternating",
    "build",
    "concat",
    "falling",
    "find_source",
    "main",
    "phases",
    "read_rows",
    "rising",
    "write_trace",
]

#: Tasks per block in ``-alternating``.
BLOCK = 200
#: ``-phases`` repeats the zig-zag order of the tags until there are at least this many phases.
MIN_PHASES = 3
#: Where the published traces are looked for (under the working directory, the package, or a
#: folder above either) when ``--from`` is not given.
SOURCE_DIRS = (Path("workloads", "phung2021"), Path("shared", "workloads", "phung2021"))


class SourceError(ValueError):
    """A source trace is missing, unreadable or unusable (the message names it)."""


@dataclass(frozen=True)
class Row:
    """One task of a source trace: its eight published fields as written, and as read."""

    fields: tuple[str, ...]  # in the published column order (HEADER)
    memory: int  # as the simulator reads it (whole MB, negatives as 0)
    tag: str


def read_rows(path: str | Path) -> list[Row]:
    """The tasks of a trace with their fields as written, in the published column order.

    The trace is first checked by :func:`load_trace` (ValueError naming file, line and
    column). It must have exactly the published eight columns: a header naming them (any
    order, any case, the id as ``taskid`` or ``task_id``) or no header."""
    path = Path(path)
    tasks = load_trace(path)
    order: list[int] | None = None
    rows: list[Row] = []
    with path.open(encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    for text in lines:
        if not text:
            continue
        parts = [p.strip() for p in _SEP.split(text)]
        if order is None:
            names = ["taskid" if p.lower() in ID_NAMES else p.lower() for p in parts]
            if "taskid" in names:
                if sorted(names) != sorted(HEADER):
                    raise ValueError(
                        f"{path}: a shift trace keeps every column of the published format "
                        f"({' -- '.join(HEADER)}), so its sources must have exactly those; "
                        f"this header has: {' -- '.join(parts)}")
                order = [names.index(h) for h in HEADER]
                continue
            order = list(range(len(HEADER)))
        task = tasks[len(rows)]
        rows.append(Row(tuple(parts[i] for i in order), task.peak[1], task.tag))
    assert len(rows) == len(tasks)
    return rows


def write_trace(path: str | Path, rows: Iterable[Row]) -> int:
    """Write ``rows`` in the published format, ids renumbered 1..n; return n.

    The file is written beside ``path`` and renamed into place."""
    path = Path(path)
    out = [" -- ".join(HEADER)]
    for n, row in enumerate(rows, 1):
        out.append(" -- ".join((str(n), *row.fields[1:])))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(out) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return len(out) - 1


# ----------------------------------------------------------------- constructions
def by_tag(rows: Sequence[Row]) -> list[tuple[str, list[Row]]]:
    """The tags in rising order of mean memory (ties by name), each with its tasks in order."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.tag, []).append(row)
    return sorted(groups.items(),
                  key=lambda kv: (Fraction(sum(r.memory for r in kv[1]), len(kv[1])), kv[0]))


def _tags(rows: Sequence[Row], what: str) -> list[tuple[str, list[Row]]]:
    groups = by_tag(rows)
    if len(groups) < 2:
        raise ValueError(f"{what} needs a trace with at least 2 tags, got "
                         f"{len(groups)} ({', '.join(repr(t) for t, _ in groups)})")
    return groups


def rising(rows: Sequence[Row]) -> list[Row]:
    """Every task of each tag in turn, tags by rising mean memory."""
    return [r for _, group in _tags(rows, "rising") for r in group]


def falling(rows: Sequence[Row]) -> list[Row]:
    """Every task of each tag in turn, tags by falling mean memory."""
    return [r for _, group in reversed(_tags(rows, "falling")) for r in group]


def alternating(rows: Sequence[Row], block: int = BLOCK) -> list[Row]:
    """Blocks of ``block`` tasks of each tag, the tags (rising order) taking turns."""
    if block < 1:
        raise ValueError(f"block must be at least 1, got {block}")
    groups = [g for _, g in _tags(rows, "alternating")]
    out: list[Row] = []
    start = 0
    while any(start < len(g) for g in groups):
        for g in groups:
            out.extend(g[start:start + block])
        start += block
    return out


def phase_order(k: int, min_phases: int = MIN_PHASES) -> list[int]:
    """The dominant tag (index in rising order) of each phase: zig-zag, repeated."""
    lo, hi = 0, k - 1
    zigzag: list[int] = []
    while lo <= hi:
        zigzag.append(lo)
        if hi != lo:
            zigzag.append(hi)
        lo, hi = lo + 1, hi - 1
    order = list(zigzag)
    while len(order) < min_phases:
        order.extend(zigzag)
    return order


def phases(rows: Sequence[Row], min_phases: int = MIN_PHASES) -> list[Row]:
    """Phases each dominated (80%) by one tag; see the module docstring."""
    groups = [g for _, g in _tags(rows, "phases")]
    k = len(groups)
    dominant = phase_order(k, min_phases)
    pieces: list[list[list[Row]]] = [[] for _ in dominant]  # phase -> tag -> tasks
    for t, g in enumerate(groups):
        weights = [4 * (k - 1) if d == t else 1 for d in dominant]
        total = sum(weights)
        cum = 0
        start = 0
        for p, w in enumerate(weights):
            cum += w
            end = (2 * len(g) * cum + total) // (2 * total)  # round half up
            pieces[p].append(g[start:end])
            start = end
    out: list[Row] = []
    for phase in pieces:
        placed = [(Fraction(2 * j + 1, 2 * len(piece)), t, row)
                  for t, piece in enumerate(phase) for j, row in enumerate(piece)]
        placed.sort(key=lambda x: (x[0], x[1]))
        out.extend(row for _, _, row in placed)
    return out


def concat(*traces: Sequence[Row]) -> list[Row]:
    """The traces one after the other."""
    return [r for rows in traces for r in rows]


# ----------------------------------------------------------------------- the set
def _mb(x: Fraction | float) -> str:
    return f"{round(x):,} MB"


def _tag_list(rows: Sequence[Row], falling_order: bool = False) -> str:
    groups = by_tag(rows)
    if falling_order:
        groups = groups[::-1]
    return ", ".join(f"tag {t} ({len(g)} tasks, mean {_mean(g)})" for t, g in groups)


def _mean(rows: Sequence[Row]) -> str:
    return _mb(Fraction(sum(r.memory for r in rows), len(rows)))


@dataclass(frozen=True)
class Shift:
    """One shift trace: its name, its source traces (names without ``.txt``), how it is
    made from their rows, and a one-line description."""

    name: str
    sources: tuple[str, ...]
    make: Callable[..., list[Row]]
    describe: Callable[..., str]


def _per_tag(source: str) -> list[Shift]:
    return [
        Shift(f"{source}-rising", (source,), rising,
              lambda rows: f"by tag, smallest mean first: {_tag_list(rows)}"),
        Shift(f"{source}-falling", (source,), falling,
              lambda rows: f"by tag, largest mean first: {_tag_list(rows, True)}"),
        Shift(f"{source}-alternating", (source,), alternating,
              lambda rows: f"blocks of {BLOCK} tasks, tags taking turns (smallest first): "
                           f"{_tag_list(rows)}"),
        Shift(f"{source}-phases", (source,), phases, _describe_phases),
    ]


def _describe_phases(rows: Sequence[Row]) -> str:
    tags = [t for t, _ in by_tag(rows)]
    order = phase_order(len(tags))
    return (f"{len(order)} phases, each 80% one tag (tags {', '.join(tags[d] for d in order)}): "
            f"{_tag_list(rows)}")


def _concat(first: str, second: str) -> Shift:
    return Shift(f"{first}-then-{second}", (first, second), concat,
                 lambda a, b: f"{first} ({len(a)} tasks, mean {_mean(a)}) then {second} "
                              f"({len(b)} tasks, mean {_mean(b)})")


SHIFTS: tuple[Shift, ...] = (
    *_per_tag("bimodal_small_std"),
    *_per_tag("trimodal_small_std"),
    *(s for s in _per_tag("bimodal") if not s.name.endswith("-phases")),
    *(s for s in _per_tag("trimodal") if not s.name.endswith("-phases")),
    _concat("uniform_small", "uniform_large"),
    _concat("normal_large", "normal_small"),
)
"""The shift traces :func:`build` writes (see the module docstring)."""


def sources() -> list[str]:
    """The source traces the set needs (names without ``.txt``), in first-use order."""
    return list(dict.fromkeys(s for shift in SHIFTS for s in shift.sources))


def find_source(starts: Iterable[Path] | None = None) -> Path | None:
    """The folder of the published traces, if one is found: the first of
    :data:`SOURCE_DIRS` under the working directory, this package's folder, or a folder above
    either, that holds every source trace the set needs."""
    if starts is None:
        starts = (Path.cwd(), Path(__file__).resolve().parent)
    need = sources()
    for start in starts:
        for folder in (start, *start.parents):
            for sub in SOURCE_DIRS:
                d = folder / sub
                if all((d / f"{n}.txt").is_file() for n in need):
                    return d
    return None


def build(source: str | Path, outdir: str | Path,
          shifts: Sequence[Shift] = SHIFTS) -> list[tuple[str, int, str]]:
    """Write every shift trace of ``shifts`` into ``outdir`` (made if missing), from the
    traces in ``source``; return (file name, tasks, description) for each.

    Raises SourceError (a ValueError) naming a source trace that is missing or cannot be
    read or used, before anything is written; OSError when ``outdir`` cannot be written."""
    source, outdir = Path(source), Path(outdir)
    if not source.is_dir():
        raise SourceError(f"{source}: no such folder of source traces")
    rows: dict[str, list[Row]] = {}
    for name in dict.fromkeys(s for shift in shifts for s in shift.sources):
        path = source / f"{name}.txt"
        if not path.is_file():
            raise SourceError(f"{path}: source trace not found")
        try:
            rows[name] = read_rows(path)
        except OSError as e:
            raise SourceError(f"{path}: cannot read: {e.strerror or e}") from None
        except ValueError as e:
            raise SourceError(str(e)) from None
    made = []
    for shift in shifts:
        args = [rows[s] for s in shift.sources]
        try:
            trace = shift.make(*args)
        except ValueError as e:
            raise SourceError(f"{shift.name} from {', '.join(shift.sources)}: {e}") from None
        made.append((shift.name, trace, shift.describe(*args)))
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, trace, text in made:
        n = write_trace(outdir / f"{name}.txt", trace)
        written.append((f"{name}.txt", n, text))
    return written


# ------------------------------------------------------------------------ CLI
def build_parser(prog: str = "packmule sim shifts") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            f"Write {len(SHIFTS)} shift traces into OUTDIR: published traces reordered by tag "
            "(rising, falling, alternating blocks, phases) or joined one after another, so "
            "that the workload changes over time. Deterministic; published format, ids "
            "renumbered. Compare modes on them with: packmule sim alloc --table OUTDIR. "
            "Exit codes: 0 done, 2 bad command line, missing or unreadable source trace, or "
            "OUTDIR not writable."
        ),
    )
    p.add_argument("outdir", metavar="OUTDIR",
                   help="folder to write NAME.txt into (made if missing; files of the same "
                        "name are replaced)")
    p.add_argument("--from", dest="source", metavar="DIR",
                   help="folder of the published traces (" + ", ".join(
                       f"{n}.txt" for n in sources()) + "); default: the first "
                   + " or ".join(str(d) for d in SOURCE_DIRS) + " found under the working "
                   "directory, the packmule package or a folder above either")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``packmule sim shifts`` (also ``python -m packmule.sim.shifts``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 2
    prog = "packmule sim shifts"
    source = Path(args.source) if args.source else find_source()
    if source is None:
        print(f"{prog}: the published traces were not found (looked for "
              + " or ".join(str(d) for d in SOURCE_DIRS) + " under the working directory and "
              "the package); pass --from DIR, the folder holding "
              + ", ".join(f"{n}.txt" for n in sources()), file=sys.stderr)
        return 2
    outdir = Path(args.outdir)
    if outdir.exists() and source.exists() and outdir.resolve() == source.resolve():
        print(f"{prog}: OUTDIR {outdir} is the folder of the source traces; the shift traces "
              "would mix with them. Choose another folder.", file=sys.stderr)
        return 2
    if outdir.exists() and not outdir.is_dir():
        print(f"{prog}: OUTDIR {outdir} exists and is not a folder; choose a folder to write "
              "the traces into", file=sys.stderr)
        return 2
    try:
        written = build(source, outdir)
    except SourceError as e:
        print(f"{prog}: {e}; pass --from DIR, the folder holding the published traces "
              + ", ".join(f"{n}.txt" for n in sources()), file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{prog}: cannot write the traces into {outdir}: {e.strerror or e}; choose a "
              "writable folder", file=sys.stderr)
        return 2
    width = max(len(name) for name, _, _ in written)
    for name, n, text in written:
        print(f"{name:<{width}}  {n:>5} tasks  {text}")
    print(f"wrote {len(written)} shift traces from {source} into {outdir}; compare modes on "
          f"them with: packmule sim alloc --table {outdir}")
    ours = {name for name, _, _ in written}
    others = sorted(p.name for p in outdir.glob("*.txt") if p.name not in ours)
    if others:
        print(f"{prog}: note: {outdir} also holds other *.txt files ({', '.join(others)}), "
              "which sim alloc --table reads too", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
