"""Shift traces (``packmule sim shifts``): published traces reordered by tag or joined."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from packmule.cli import main as cli_main
from packmule.sim import shifts
from packmule.sim.alloc import load_trace
from packmule.sim.shifts import (
    SHIFTS,
    Row,
    alternating,
    build,
    concat,
    falling,
    phase_order,
    phases,
    read_rows,
    rising,
    write_trace,
)

WORKLOADS = Path("/work/shared/workloads/phung2021")
HEADER = "taskid -- core -- memory -- virtual_memory -- disk -- time -- average_cores -- tag"


def _write(path: Path, tasks: list[tuple[str, int]], header: str = HEADER) -> Path:
    """A trace of (tag, memory) tasks; virtual_memory holds the task's name (tag + index
    within the tag, e.g. ``s3``) so the order of the output can be read off it."""
    seen: Counter[str] = Counter()
    lines = [header] if header else []
    for i, (tag, memory) in enumerate(tasks, 1):
        seen[tag] += 1
        lines.append(f"{i} -- 4 -- {memory} -- {tag}{seen[tag]} -- 4000 -- 500 -- 0 -- {tag}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _names(rows: list[Row]) -> list[str]:
    return [r.fields[3] for r in rows]


def _mixed(tmp_path: Path, counts: dict[str, int], means: dict[str, int]) -> list[Row]:
    """Tags interleaved round-robin in the source, each tag's memory around its mean."""
    tasks = []
    left = dict(counts)
    while any(left.values()):
        for tag in counts:
            if left[tag]:
                tasks.append((tag, means[tag] + left[tag] % 3))
                left[tag] -= 1
    return read_rows(_write(tmp_path / "mixed.txt", tasks))


def test_rising_and_falling_order_tags_by_mean_memory_keeping_order_within_a_tag(
        tmp_path: Path) -> None:
    rows = _mixed(tmp_path, {"big": 3, "s": 2, "mid": 2}, {"big": 30000, "s": 1000, "mid": 9000})
    assert _names(rows) == ["big1", "s1", "mid1", "big2", "s2", "mid2", "big3"]
    assert _names(rising(rows)) == ["s1", "s2", "mid1", "mid2", "big1", "big2", "big3"]
    assert _names(falling(rows)) == ["big1", "big2", "big3", "mid1", "mid2", "s1", "s2"]


def test_equal_means_are_ordered_by_tag_name(tmp_path: Path) -> None:
    rows = read_rows(_write(tmp_path / "t.txt", [("b", 10), ("a", 10), ("b", 10)]))
    assert _names(rising(rows)) == ["a1", "b1", "b2"]
    assert _names(falling(rows)) == ["b1", "b2", "a1"]


def test_alternating_blocks_take_turns_and_an_exhausted_tag_drops_out(tmp_path: Path) -> None:
    rows = _mixed(tmp_path, {"L": 5, "S": 3}, {"L": 20000, "S": 500})
    assert _names(alternating(rows, block=2)) == [
        "S1", "S2", "L1", "L2", "S3", "L3", "L4", "L5"]
    assert _names(alternating(rows)) == _names(rising(rows))  # one block of 200 each
    with pytest.raises(ValueError, match="block must be at least 1"):
        alternating(rows, block=0)


def test_alternating_default_block_is_200(tmp_path: Path) -> None:
    rows = _mixed(tmp_path, {"L": 450, "S": 250}, {"L": 20000, "S": 500})
    out = alternating(rows)
    runs = []  # (tag, length) of each run of one tag
    for r in out:
        if runs and runs[-1][0] == r.tag:
            runs[-1][1] += 1
        else:
            runs.append([r.tag, 1])
    assert runs == [["S", 200], ["L", 200], ["S", 50], ["L", 250]]  # L's blocks 200, 200, 50
    assert _names(out)[:2] == ["S1", "S2"] and _names(out)[400:402] == ["S201", "S202"]


def test_phase_order_is_zigzag_repeated_to_three_phases() -> None:
    assert phase_order(2) == [0, 1, 0, 1]
    assert phase_order(3) == [0, 2, 1]
    assert phase_order(4) == [0, 3, 1, 2]
    assert phase_order(5) == [0, 4, 1, 3, 2]


def test_phases_of_two_tags_exact_order(tmp_path: Path) -> None:
    rows = _mixed(tmp_path, {"L": 10, "S": 10}, {"L": 32000, "S": 8000})
    # Phases dominated by S, L, S, L; S's pieces 4, 1, 4, 1 and L's 1, 4, 1, 4, spread evenly.
    assert _names(phases(rows)) == [
        "S1", "S2", "L1", "S3", "S4",
        "L2", "L3", "S5", "L4", "L5",
        "S6", "S7", "L6", "S8", "S9",
        "L7", "L8", "S10", "L9", "L10",
    ]


def test_phases_of_three_tags_are_80_percent_one_tag(tmp_path: Path) -> None:
    rows = _mixed(tmp_path, {"a": 10, "b": 10, "c": 10}, {"a": 30000, "b": 10000, "c": 15000})
    out = phases(rows)
    # Rising order b, c, a; zig-zag dominants b, a, c; each tag's pieces 8, 1, 1 in its order.
    assert [Counter(r.tag for r in out[i:i + 10]) for i in (0, 10, 20)] == [
        {"b": 8, "c": 1, "a": 1}, {"a": 8, "b": 1, "c": 1}, {"c": 8, "b": 1, "a": 1}]
    assert _names(out[:10]) == ["b1", "b2", "b3", "b4", "c1", "a1", "b5", "b6", "b7", "b8"]
    for tag in "abc":  # within a tag the source order is kept
        mine = [int(n[1:]) for n in _names(out) if n[0] == tag]
        assert mine == sorted(mine)


def test_phases_keep_every_task_once_with_uneven_tags(tmp_path: Path) -> None:
    rows = _mixed(tmp_path, {"a": 7, "b": 1, "c": 13}, {"a": 30000, "b": 10000, "c": 15000})
    assert sorted(_names(phases(rows))) == sorted(_names(rows))


def test_a_single_tag_trace_cannot_be_ordered_by_tag(tmp_path: Path) -> None:
    rows = read_rows(_write(tmp_path / "t.txt", [("1", 10), ("1", 20)]))
    for make in (rising, falling, alternating, phases):
        with pytest.raises(ValueError, match="at least 2 tags"):
            make(rows)


def test_concat_and_written_trace_renumbered_with_every_column_kept(tmp_path: Path) -> None:
    a = tmp_path / "a.txt"
    a.write_text(HEADER + "\n7 -- 1.5 -- -12 -- 99 -- 10.5 -- 20.5 -- 0.9 -- x\n\n"
                 "3 -- 4 -- 2000 -- 0 -- 4000 -- 500 -- 0 -- x\n")
    b = _write(tmp_path / "b.txt", [("y", 5000)])
    out = tmp_path / "out.txt"
    assert write_trace(out, concat(read_rows(a), read_rows(b))) == 3
    assert out.read_text() == (
        HEADER + "\n"
        "1 -- 1.5 -- -12 -- 99 -- 10.5 -- 20.5 -- 0.9 -- x\n"
        "2 -- 4 -- 2000 -- 0 -- 4000 -- 500 -- 0 -- x\n"
        "3 -- 4 -- 5000 -- y1 -- 4000 -- 500 -- 0 -- y\n")
    back = load_trace(out)
    assert [t.id for t in back] == ["1", "2", "3"]
    assert [(t.peak, t.tag) for t in back] == [
        ((2, 0, 11, 0), "x"), ((4, 2000, 4000, 0), "x"), ((4, 5000, 4000, 0), "y")]
    assert not list(tmp_path.glob(".*.tmp"))


def test_sources_in_other_column_orders_or_without_header_are_written_as_published(
        tmp_path: Path) -> None:
    p = tmp_path / "t.txt"
    p.write_text("Task_ID -- tag -- time -- average_cores -- disk -- virtual_memory -- memory "
                 "-- core\n5 -- q -- 60 -- 0.5 -- 100 -- 0 -- 300 -- 2\n")
    assert read_rows(p)[0].fields == ("5", "2", "300", "0", "100", "60", "0.5", "q")
    p.write_text("5 -- 2 -- 300 -- 0 -- 100 -- 60 -- 0.5 -- q\n")
    assert read_rows(p)[0].fields == ("5", "2", "300", "0", "100", "60", "0.5", "q")
    p.write_text("taskid -- core -- memory -- disk -- time -- tag\n1 -- 1 -- 1 -- 1 -- 1 -- a\n")
    with pytest.raises(ValueError, match="exactly those; this header has"):
        read_rows(p)


# ------------------------------------------------------------- the set and the CLI
SOURCE_TAGS = {
    "bimodal_small_std": {"1": 32000, "2": 8000},
    "trimodal_small_std": {"1": 32000, "2": 11000, "3": 16000},
    "bimodal": {"1": 32000, "2": 11000},
    "trimodal": {"1": 32000, "2": 11000, "3": 16000},
    "uniform_small": {"1": 2500},
    "uniform_large": {"1": 25000},
    "normal_large": {"1": 32000},
    "normal_small": {"1": 8000},
}


def _sources(folder: Path, per_tag: int = 4) -> Path:
    folder.mkdir(parents=True)
    for name, tags in SOURCE_TAGS.items():
        _mixed(folder, dict.fromkeys(tags, per_tag), tags)
        (folder / "mixed.txt").rename(folder / f"{name}.txt")
    return folder


def test_build_writes_the_set_deterministically(tmp_path: Path) -> None:
    src = _sources(tmp_path / "src")
    written = build(src, tmp_path / "out")
    assert [w[0] for w in written] == [f"{s.name}.txt" for s in SHIFTS]
    assert 10 <= len(written) <= 16
    assert len({w[0] for w in written}) == len(written)
    for name, n, text in written:
        assert n == len(load_trace(tmp_path / "out" / name)) and text
    counts = {name: n for name, n, _ in written}
    assert counts["bimodal_small_std-rising.txt"] == 8
    assert counts["trimodal-alternating.txt"] == 12
    assert counts["uniform_small-then-uniform_large.txt"] == 8
    first = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    build(src, tmp_path / "again")
    assert {p.name: p.read_bytes() for p in (tmp_path / "again").iterdir()} == first
    lines = first["normal_large-then-normal_small.txt"].decode().splitlines()
    assert lines[0] == HEADER
    assert [line.split(" -- ")[2] for line in lines[1:]] == [
        "32001", "32000", "32002", "32001", "8001", "8000", "8002", "8001"]


def test_cli_finds_the_published_traces_above_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _sources(tmp_path / "shared" / "workloads" / "phung2021")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert cli_main(["sim", "shifts", "out"]) == 0
    out = capsys.readouterr().out
    assert len(list((tmp_path / "work" / "out").glob("*.txt"))) == len(SHIFTS)
    assert "bimodal_small_std-falling.txt" in out and "8 tasks" in out
    assert f"wrote {len(SHIFTS)} shift traces" in out
    assert "packmule sim alloc --table out" in out


@pytest.mark.parametrize("case", ["missing source", "no folder", "outdir a file",
                                  "outdir the source", "unreadable source", "one tag"])
def test_cli_bad_input_exits_2_saying_what_is_wrong(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    src = _sources(tmp_path / "src")
    out = tmp_path / "out"
    if case == "missing source":
        (src / "trimodal.txt").unlink()
        why = "trimodal.txt: source trace not found; pass --from DIR"
    elif case == "no folder":
        src = tmp_path / "nowhere"
        why = "nowhere: no such folder of source traces; pass --from DIR"
    elif case == "outdir a file":
        out.write_text("")
        why = "exists and is not a folder"
    elif case == "outdir the source":
        out = src
        why = "is the folder of the source traces"
    elif case == "unreadable source":
        (src / "bimodal.txt").write_text(HEADER + "\n1 -- 4 -- lots -- 0 -- 1 -- 1 -- 0 -- 1\n")
        why = r"bimodal.txt:2: column 'memory' is not a number"
    else:
        _write(src / "bimodal.txt", [("1", 5), ("1", 6)])
        why = "bimodal-rising from bimodal: rising needs a trace with at least 2 tags"
    assert cli_main(["sim", "shifts", str(out), "--from", str(src)]) == 2
    err = capsys.readouterr().err
    assert why in err
    if case != "outdir the source":
        assert not out.is_dir() or not list(out.glob("*.txt"))


def test_cli_outdir_below_a_file_is_not_writable(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _sources(tmp_path / "src")
    (tmp_path / "f").write_text("")
    assert cli_main(["sim", "shifts", str(tmp_path / "f" / "out"), "--from", str(src)]) == 2
    assert "cannot write the traces into" in capsys.readouterr().err


def test_cli_help_names_the_command_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["sim", "shifts", "--help"]) == 0
    text = capsys.readouterr().out
    assert "packmule sim shifts" in text and "--from DIR" in text and "OUTDIR" in text
    assert shifts.main([]) == 2


@pytest.mark.skipif(not WORKLOADS.is_dir(), reason=f"{WORKLOADS} (the public traces) not present")
def test_cli_on_the_public_traces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shifts"
    assert cli_main(["sim", "shifts", str(out), "--from", str(WORKLOADS)]) == 0
    printed = capsys.readouterr().out
    files = sorted(out.glob("*.txt"))
    assert len(files) == len(SHIFTS) == 16
    sizes = {p.stem: len(load_trace(p)) for p in files}
    assert sizes == {s.name: 4000 if "-then-" in s.name else 2000 for s in SHIFTS}
    for p in files:
        assert f"{p.name}" in printed
        assert p.read_text().splitlines()[0] == HEADER
    # The same tasks as the source, every column kept: only the id and the order change.
    def body(path: Path) -> Counter[str]:
        return Counter(line.split(" -- ", 1)[1] for line in path.read_text().splitlines()[1:])
    assert body(out / "trimodal_small_std-phases.txt") == body(WORKLOADS / "trimodal_small_std.txt")
    rising_tags = [t.tag for t in load_trace(out / "bimodal_small_std-rising.txt")]
    assert rising_tags == ["2"] * 1000 + ["1"] * 1000
    alt = [t.tag for t in load_trace(out / "trimodal-alternating.txt")]
    assert alt[:600] == ["2"] * 200 + ["3"] * 200 + ["1"] * 200
    assert [t.id for t in load_trace(out / "normal_large-then-normal_small.txt")] == [
        str(i) for i in range(1, 4001)]
