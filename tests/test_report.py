"""``packmule report``: the HTML page of a run, checked through its parsed elements.

A tiny synthetic event log (written as docs/observability.md describes it)
whose efficiency figures are worked out by hand below, an event log with a
torn last line, a large one (downsampling), and a real run on local workers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import packmule
from packmule.observe import report

from .conftest import connected, wait_until

# ============================================================== a small DOM

_VOID = {"meta", "br", "link", "img", "input", "hr", "wbr", "col", "area", "base", "source"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node] = []
        self.texts: list[str] = []

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        return "".join(self.texts) + "".join(c.text() for c in self.children)

    def iter(self, tag: str | None = None) -> Iterator[Node]:
        for c in self.children:
            if tag is None or c.tag == tag:
                yield c
            yield from c.iter(tag)

    def find(self, tag: str, **attrs: str) -> Node:
        for n in self.iter(tag):
            if all(n.attrs.get(k.rstrip("_")) == v for k, v in attrs.items()):
                return n
        raise AssertionError(f"no <{tag} {attrs}>")


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        if tag not in _VOID:
            self.cur = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.cur.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.cur
        while node is not None and node.tag != tag:
            node = node.parent
        assert node is not None and node.parent is not None, f"unbalanced </{tag}>"
        self.cur = node.parent

    def handle_data(self, data: str) -> None:
        self.cur.texts.append(data)


def parse(page: str) -> Node:
    b = _Builder()
    b.feed(page)
    b.close()
    assert b.cur is b.root, "unclosed elements"
    return b.root


def table(dom: Node, table_id: str) -> dict[str, list[str]]:
    """A table's body rows by their first cell's text: the other cells' texts."""
    rows = {}
    for tr in dom.find("table", id=table_id).find("tbody").iter("tr"):
        cells = [c.text().strip() for c in tr.children if c.tag in ("td", "th")]
        rows[cells[0]] = cells[1:]
    return rows


def summary(dom: Node) -> dict[str, str]:
    return {div.attrs["data-key"]: div.find("dd").text()
            for div in dom.find("dl", id="summary").iter("div")}


# ============================================================== a synthetic event log

#: One time unit of the tiny run, in seconds: an attempt of 10 units on 1 core is 1 core-hour.
U = 360.0
T0 = 1_764_790_000.0


def t(units: float) -> float:
    return T0 + units * U


class EventWriter:
    """Writes an ``events.jsonl`` in the documented format (header, then events)."""

    def __init__(self, run_dir: Path, start: float = T0) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        self.events: list[dict[str, Any]] = []
        self.header = {"format": "packmule-events", "version": 1, "packmule": packmule.__version__,
                       "t": start, "address": "node1:9123", "host": "node1", "pid": 4242,
                       "run_dir": str(run_dir)}

    def add(self, at: float, event: str, **fields: Any) -> None:
        self.events.append({"t": at, "event": event, **fields})

    def joined(self, at: float, worker: str, host: str, **resources: float) -> None:
        self.add(at, "worker_joined", worker=worker, host=host, pid=7, resources=resources)

    def left(self, at: float, worker: str, host: str, why: str, requeued: int = 0,
             lost: bool | None = None) -> None:
        extra = {} if lost is None else {"lost": lost}
        self.add(at, "worker_left", worker=worker, host=host, why=why, requeued=requeued,
                 **extra)

    def submit(self, at: float, task: int, category: str, **request: float) -> None:
        self.add(at, "task_submitted", task=task, category=category, label=category,
                 request=request, priority=0)

    def dispatch(self, at: float, task: int, attempt: int, worker: str,
                 **allocation: float) -> None:
        self.add(at, "attempt_dispatched", task=task, attempt=attempt, worker=worker,
                 allocation=allocation, prefetched=False)

    def finish(self, at: float, task: int, attempt: int, worker: str, status: str, wall: float,
               exit_code: int = 0, exceeded: list[str] | None = None,
               **measured: float) -> None:
        self.add(at, "attempt_finished", task=task, attempt=attempt, worker=worker,
                 status=status, started=at - wall, wall_time=wall, measured=measured,
                 exceeded=exceeded or [], exit_code=exit_code)

    def done(self, at: float, task: int, attempts: int, error: str | None = None,
             message: str | None = None) -> None:
        if error is None:
            self.add(at, "task_done", task=task, ok=True, attempts=attempts)
        else:
            self.add(at, "task_done", task=task, ok=False, attempts=attempts, error=error,
                     message=message)

    def write(self, torn: str = "") -> Path:
        path = self.run_dir / "events.jsonl"
        with path.open("w") as f:
            f.write(json.dumps(self.header) + "\n")
            for ev in sorted(self.events, key=lambda e: e["t"]):
                f.write(json.dumps(ev) + "\n")
            f.write(torn)
        return path


def tiny_run(run_dir: Path, torn: str = "") -> Path:
    """Six tasks in two categories on three workers (``U`` seconds a unit):

    =====  ========  =======  ==============  ====================================
    task   category  attempt  worker, units   allocation -> measured, outcome
    =====  ========  =======  ==============  ====================================
    1      sim       1        w1, 2-12        1 core 1000 MB -> 0.5, 400: success
    2      sim       1        w1, 2-6         2 cores 2000 MB -> 2, 2000: exhausted
    2      sim       2        w2, 6-26        2 cores 4000 MB -> 1.5, 3000: success
    3      io        1        w2, 2-5         1 core 500 MB -> 1, 100: exception
    4      io        1        w3, 3-8         1 core 1000 MB: lost with w3
    4      io        2        w1, 12-15       1 core 1000 MB -> 1, 1000: success
    5      sim       -        -               cancelled while waiting
    6      io        1        w1, 15-16       1 core 500 MB -> 1, 50: exception
    =====  ========  =======  ==============  ====================================

    Measured cores are the mean (``cores_avg``; for task 4's second attempt, which
    has none, ``cpu_time`` / wall time). The peak ``cores`` the worker also reports
    is higher for tasks 1, 2 (attempt 2) and 4 (2 each): a report that took the peak
    for the mean would get every efficiency figure below wrong.
    """
    w = EventWriter(run_dir)
    w.joined(t(0), "w1aaaaaaaaaa", "alpha", cores=4, memory=8000, disk=8000)
    w.joined(t(0.5), "w2bbbbbbbbbb", "beta", cores=2, memory=4000, disk=8000)
    w.joined(t(1), "w3cccccccccc", "gamma", cores=1, memory=1000, disk=8000)
    w.submit(t(1), 1, "sim", cores=1, memory=1000)
    w.submit(t(1), 2, "sim", cores=2)
    w.submit(t(1), 3, "io", cores=1, memory=500)
    w.submit(t(1), 4, "io", cores=1)
    w.submit(t(1), 5, "sim", cores=1)
    w.submit(t(1), 6, "io", cores=1, memory=500)
    w.dispatch(t(2), 1, 1, "w1aaaaaaaaaa", cores=1, memory=1000)
    w.dispatch(t(2), 2, 1, "w1aaaaaaaaaa", cores=2, memory=2000)
    w.dispatch(t(2), 3, 1, "w2bbbbbbbbbb", cores=1, memory=500)
    w.dispatch(t(3), 4, 1, "w3cccccccccc", cores=1, memory=1000)
    w.add(t(4), "task_cancelled", task=5)
    w.done(t(4), 5, 0, "TaskCancelled", "cancelled")
    w.finish(t(5), 3, 1, "w2bbbbbbbbbb", "exception", 3 * U, 1, cores=1, cores_avg=1,
             memory=100)
    w.done(t(5), 3, 1, "ValueError", "bad input 17 at line 3\nTraceback ...")
    w.finish(t(6), 2, 1, "w1aaaaaaaaaa", "exhausted", 4 * U, exceeded=["memory"],
             cores=2, cores_avg=2, memory=2000)
    w.add(t(6), "task_retried", task=2, attempt=2, why="exhausted", exceeded=["memory"])
    w.add(t(6), "category_changed", category="sim", old={"cores": 2, "memory": 2000},
          new={"cores": 2, "memory": 4000}, why="task 2 exceeded memory")
    w.dispatch(t(6), 2, 2, "w2bbbbbbbbbb", cores=2, memory=4000)
    w.add(t(8), "task_lost", task=4, attempt=1, worker="w3cccccccccc", why="worker lost")
    w.left(t(8), "w3cccccccccc", "gamma", "connection closed", requeued=1)
    w.finish(t(12), 1, 1, "w1aaaaaaaaaa", "success", 10 * U, cores=1, cores_avg=0.5,
             memory=400)
    w.done(t(12), 1, 1)
    w.dispatch(t(12), 4, 2, "w1aaaaaaaaaa", cores=1, memory=1000)
    w.finish(t(15), 4, 2, "w1aaaaaaaaaa", "success", 3 * U, cores=2, cpu_time=3 * U,
             wall_time=3 * U, memory=1000)
    w.done(t(15), 4, 2)
    w.dispatch(t(15), 6, 1, "w1aaaaaaaaaa", cores=1, memory=500)
    w.finish(t(16), 6, 1, "w1aaaaaaaaaa", "exception", 1 * U, 1, cores=1, cores_avg=1,
             memory=50)
    w.done(t(16), 6, 1, "ValueError", "bad input 42 at line 9")
    w.finish(t(26), 2, 2, "w2bbbbbbbbbb", "success", 20 * U, cores=2, cores_avg=1.5,
             memory=3000)
    w.done(t(26), 2, 2)
    w.left(t(27), "w1aaaaaaaaaa", "alpha", "shutdown")
    w.left(t(27), "w2bbbbbbbbbb", "beta", "shutdown")
    w.add(t(27.5), "manager_stopped", why="shutdown", tasks=6, failed=3)
    return w.write(torn)


def run_report(run_dir: Path | None, out: Path | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "packmule", "report"]
    if run_dir is not None:
        args.append(str(run_dir))
    if out is not None:
        args += ["-o", str(out)]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False,
                          env=full_env)


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Node]:
    run_dir = tmp_path / "001-20251203-120000"
    tiny_run(run_dir)
    out = report.write_report(run_dir)
    assert out == run_dir / "report.html"
    return out, parse(out.read_text())


# ============================================================== the tiny run


def test_timeline_has_one_bar_per_attempt_with_its_category_and_outcome(
        tiny: tuple[Path, Node]) -> None:
    _, dom = tiny
    svg = dom.find("svg", **{"class": "timeline"})
    bars = [n for n in svg.iter("rect") if "bar" in n.classes]
    assert len(bars) == 7
    # Categories are numbered in name order: io is c0, sim c1.
    got = {(int(b.attrs["data-task"]), int(b.attrs["data-attempt"])):
           b.classes - {"bar"} for b in bars}
    assert got == {
        (1, 1): {"c1", "ok"}, (2, 1): {"c1", "exhausted"}, (2, 2): {"c1", "ok"},
        (3, 1): {"c0", "failed"}, (4, 1): {"c0", "lost"}, (4, 2): {"c0", "ok"},
        (6, 1): {"c0", "failed"},
    }
    rows = [g for g in svg.iter("g") if "row" in g.classes]
    assert [r.attrs["data-worker"] for r in rows] == ["w1aaaaaaaaaa", "w2bbbbbbbbbb",
                                                      "w3cccccccccc"]
    per_row = {r.attrs["data-worker"]: sum(1 for n in r.iter("rect") if "bar" in n.classes)
               for r in rows}
    assert per_row == {"w1aaaaaaaaaa": 4, "w2bbbbbbbbbb": 2, "w3cccccccccc": 1}
    # Bars are in time: the lost attempt runs from its dispatch (3) to the loss (8),
    # task 1 from 2 to 12: the same time scale, so twice as wide.
    width = {k: float(b.attrs["width"]) for k, b in
             ((int(b.attrs["data-task"]), b) for b in bars if b.attrs["data-attempt"] == "1")}
    assert width[1] == pytest.approx(2 * width[4], rel=0.02)
    assert any("task 4 attempt 1" in n.text() for n in bars)
    # The time axis has ticks, and the legend names both categories.
    assert len([n for n in svg.iter("text") if "tick" in n.classes]) >= 3
    legend = dom.find("section", id="timeline").text()
    assert "io" in legend and "sim" in legend and "lost with its worker" in legend


def test_header_counts(tiny: tuple[Path, Node]) -> None:
    path, dom = tiny
    s = summary(dom)
    assert s["tasks"] == "6"
    assert s["succeeded"] == "3"
    assert s["failed"] == "2"  # the cancelled task is counted as cancelled only
    assert s["cancelled"] == "1"
    assert s["attempts"] == "7"
    assert s["retries"] == "1"
    assert s["workers"].startswith("3 ")
    assert s["workers lost"] == "1"
    assert s["duration"] == "2h45m"  # 27.5 units of 6 minutes
    assert s["state"] == "stopped (shutdown)"
    assert s["run directory"] == str(path.parent)


def test_category_table_counts_and_resources(tiny: tuple[Path, Node]) -> None:
    _, dom = tiny
    rows = table(dom, "categories")
    # tasks, ok, failed, attempts, retries, lost, cores req/alloc/meas (mean), memory
    # req/alloc/meas (peak), wall time
    io, sim, total = rows["io"], rows["sim"], rows["all"]
    assert io[:6] == ["3", "1", "2", "4", "0", "1"]
    assert sim[:6] == ["3", "2", "0", "3", "1", "0"]
    assert total[:6] == ["6", "3", "2", "7", "1", "1"]
    assert sim[6] == "1.3 / 2"  # requested cores 1, 2, 1
    assert sim[7] == "1.7 / 2"  # allocated 1, 2, 2
    assert sim[8] == "1.3 / 2"  # measured mean 0.5, 2, 1.5 (peaks 1, 2, 2)
    assert io[8] == "1 / 1"  # 1, 1 (task 4: cpu_time / wall time, not its peak 2), 1
    assert sim[9] == "1GB / 1GB"  # only task 1 asked for memory
    assert sim[10] == "2.3GB / 4GB"  # 1000, 2000, 4000
    assert sim[11] == "1.8GB / 3GB"  # 400, 2000, 3000
    assert io[11] == "383MB / 1GB"  # 100, 1000, 50 (the lost attempt was not measured)
    assert sim[12] == "1h08m / 2h00m"  # 10, 4, 20 units of 360 s: 4,080 s and 7,200 s
    assert io[12] == "14m00s / 18m00s"  # 3, 3, 1 units: 840 s and 1,080 s


def test_efficiency_worked_by_hand(tiny: tuple[Path, Node]) -> None:
    """One unit is 360 s, so 10 core-units are 1 core-hour and 10,000 MB-units 1 GB-hour.

    sim: allocated cores 1x10 + 2x4 + 2x20 = 58 units (5.8 core-h), measured
    0.5x10 + 2x4 + 1.5x20 = 43: CPU 74.1 %. Memory 1000x10 + 2000x4 + 4000x20 =
    98,000 (9.8 GB-h), peaks 400x10 + 2000x4 + 3000x20 = 72,000: 73.5 %. Failed
    (the exhausted attempt): 2x4 = 8 (0.8 core-h), 2000x4 (0.8 GB-h).
    Over-allocated: (1-0.5)x10 + (2-1.5)x20 = 15 (1.5 core-h); (1000-400)x10 +
    (4000-3000)x20 = 26,000 (2.6 GB-h).

    io: allocated 1x3 + 1x5 (lost) + 1x3 + 1x1 = 12 (1.2), measured 3 + 0 + 3 + 1 = 7:
    58.3 %. Memory 500x3 + 1000x5 + 1000x3 + 500x1 = 10,000 (1.0), peaks 300 + 0 +
    3000 + 50 = 3,350: 33.5 %. Failed: 3 + 5 + 1 = 9 (0.9); 1500 + 5000 + 500 =
    7000 (0.7). Over-allocated: none (task 4 used all it had).
    """
    _, dom = tiny
    rows = table(dom, "efficiency")
    # CPU, memory, core-h alloc/failed/over, GB-h alloc/failed/over
    assert rows["sim"] == ["74.1%", "73.5%", "5.800", "0.800", "1.500", "9.800", "0.800",
                           "2.600"]
    assert rows["io"] == ["58.3%", "33.5%", "1.200", "0.900", "0.000", "1.000", "0.700",
                          "0.000"]
    # all: 50/70 cores, 75,350/108,000 memory
    assert rows["all"] == ["71.4%", "69.8%", "7.000", "1.700", "1.500", "10.8", "1.500",
                           "2.600"]
    head = dom.find("table", id="efficiency").find("thead").text()
    assert "core-hours" in head and "memory GB-hours" in head
    s = summary(dom)
    assert (s["CPU efficiency"], s["memory efficiency"]) == ("71.4%", "69.8%")


def test_resources_over_time(tiny: tuple[Path, Node]) -> None:
    """Committed cores peak at 5 (units 3-5: tasks 1, 2, 3 and 4); measured at 3.5
    (0.5 + 2 + 1, units 2-5); the workers' total at 7. Memory: committed 6000 MB
    (units 6-8: 1000 + 4000 + 1000), measured 4000 (units 12-15: 3000 + 1000)."""
    _, dom = tiny
    peaks = {}
    for res in ("cores", "memory"):
        fig = dom.find("figure", id=f"res-{res}")
        for p in fig.iter("path"):
            peaks[res, p.attrs["data-series"]] = float(p.attrs["data-max"])
            assert p.attrs["d"].startswith("M")
    assert peaks == {("cores", "total"): 7, ("cores", "committed"): 5,
                     ("cores", "measured"): 3.5, ("memory", "total"): 13000,
                     ("memory", "committed"): 6000, ("memory", "measured"): 4000}


def _plot_lines(fig: Node) -> dict[str, list[float]]:
    """A per-task plot's two lines (alloc, meas) as the y of each step, left to right."""
    out = {}
    for p in fig.iter("path"):
        kind = "alloc" if "alloc" in p.classes else "meas"
        tokens = re.findall(r"[MHV]|-?[\d.]+", p.attrs["d"])
        ys = [float(tokens[2])] + [float(tokens[i + 1]) for i, tok in enumerate(tokens)
                                   if tok == "V"]
        assert tokens[0] == "M" and tokens.count("H") == len(ys)
        out[kind] = ys
    return out


def test_memory_and_cores_plots_per_category(tiny: tuple[Path, Node]) -> None:
    _, dom = tiny
    plots = {(f.attrs["data-category"], f.attrs["data-what"]): f for f in dom.iter("figure")
             if "catplot" in f.classes}
    assert set(plots) == {(c, w) for c in ("io", "sim") for w in ("memory", "cores")}
    # sim memory: two tasks with a measured peak (task 5 never ran). Task 1: 1000 MB
    # allocated, 400 used; task 2: 4000 and 3000 (its largest attempt). Sorted, each
    # line rises (SVG y grows downwards).
    mem = _plot_lines(plots["sim", "memory"])
    assert len(mem["alloc"]) == len(mem["meas"]) == 2
    assert mem["alloc"][1] < mem["alloc"][0] and mem["meas"][1] < mem["meas"][0]
    assert "2 tasks" in plots["sim", "memory"].text()
    assert "3 tasks" in plots["io", "memory"].text()
    # sim cores: task 1 allocated 1, mean 0.5; task 2 (its last attempt) 2 and 1.5. On
    # one scale: 0.5 is as far below 1 as 1.5 below 2, and 1 is half of 2.
    cores = _plot_lines(plots["sim", "cores"])
    frame = dom.find("figure", **{"data-category": "sim", "data-what": "cores"})
    base = float(next(n for n in frame.iter("line") if "axis" in n.classes).attrs["y1"])
    height = {k: [base - y for y in ys] for k, ys in cores.items()}
    assert height["alloc"][0] == pytest.approx(height["alloc"][1] / 2, abs=0.2)
    assert height["meas"][0] == pytest.approx(height["alloc"][1] / 4, abs=0.2)
    assert height["meas"][1] == pytest.approx(height["alloc"][1] * 3 / 4, abs=0.2)
    # io: every task allocated 1 core and used 1 on average (task 4 by its cpu_time).
    io = _plot_lines(plots["io", "cores"])
    assert len(set(io["alloc"])) == 1 and io["meas"] == io["alloc"]


def test_failures_grouped_by_cause(tiny: tuple[Path, Node]) -> None:
    _, dom = tiny
    rows = table(dom, "failures")
    # count -> error, example first line, categories, example tasks
    assert rows == {"2": ["ValueError", "bad input 17 at line 3", "io", "3, 6"]}
    assert report.normalise("bad input 17 at line 3\nmore") == "bad input N at line N"


def test_workers_joined_and_lost(tiny: tuple[Path, Node]) -> None:
    _, dom = tiny
    section = dom.find("section", id="workers")
    path = next(p for p in section.iter("path") if "workers" in p.classes)
    assert float(path.attrs["data-max"]) == 3
    assert len([p for p in section.iter("path") if "loss" in p.classes]) == 1
    rows = table(dom, "workers-lost")
    assert list(rows.values()) == [["gamma", "w3cccccccccc", "connection closed", "1"]]
    assert "3 workers joined; 1 were lost, 2 left normally" in section.text()


def test_changes_listed(tiny: tuple[Path, Node]) -> None:
    _, dom = tiny
    rows = table(dom, "changes")
    assert list(rows.values()) == [["sim", "2c 2GB", "2c 4GB", "task 2 exceeded memory"]]


def test_page_is_self_contained(tiny: tuple[Path, Node]) -> None:
    path, dom = tiny
    page = path.read_text()
    for n in dom.iter():
        for attr in ("src", "href"):
            assert not n.attrs.get(attr, "").startswith(("http", "//")), n.attrs
    assert "@import" not in page and "url(http" not in page
    scripts = list(dom.iter("script"))
    assert len(scripts) == 1 and len(scripts[0].text()) < 600


def test_cpu_efficiency_uses_the_mean_cores_not_the_peak(tmp_path: Path) -> None:
    """An attempt on 4 cores that kept 1 busy on average (its peak was 4) used a quarter
    of its core-seconds: 75% wasted by over-allocation. 10 units of 360 s on 4 cores
    are 4 core-hours; 3 of them wasted."""
    w = EventWriter(tmp_path / "run")
    w.joined(t(0), "w1", "alpha", cores=4, memory=4000)
    w.submit(t(0), 1, "a", cores=4, memory=1000)
    w.dispatch(t(1), 1, 1, "w1", cores=4, memory=1000)
    w.finish(t(11), 1, 1, "w1", "success", 10 * U, cores=4, cores_avg=1, cpu_time=10 * U,
             memory=1000)
    w.done(t(11), 1, 1)
    w.add(t(12), "manager_stopped", why="shutdown", tasks=1, failed=0)
    w.write()
    dom = parse(report.write_report(tmp_path / "run").read_text())
    # CPU, memory, core-h alloc/failed/over, GB-h alloc/failed/over
    assert table(dom, "efficiency")["a"][:5] == ["25.0%", "100.0%", "4.000", "0.000", "3.000"]
    assert summary(dom)["CPU efficiency"] == "25.0%"
    cores = dom.find("figure", id="res-cores")
    got = {p.attrs["data-series"]: float(p.attrs["data-max"]) for p in cores.iter("path")}
    assert got == {"total": 4, "committed": 4, "measured": 1}
    # Without cores_avg: cpu_time / wall time; without either, the peak.
    assert report.mean_cores({"cores": 4, "cpu_time": 20.0}, 10.0) == 2.0
    assert report.mean_cores({"cores": 4, "cpu_time": 20.0, "wall_time": 5.0}, 10.0) == 4.0
    assert report.mean_cores({"cores": 3}, 10.0) == 3.0
    assert report.mean_cores({}, 10.0) == 0.0


def test_a_task_failing_at_dispatch_ends_its_attempt_there(tmp_path: Path) -> None:
    """Dispatched, then task_done (ok false) with no attempt_finished (its pack could not
    be sent): the attempt ends at task_done, not at the end of the run. 1 core for 1
    unit of 360 s is 6 core-minutes wasted, not the 99 units left of the run."""
    w = EventWriter(tmp_path / "run")
    w.joined(t(0), "w1", "alpha", cores=4, memory=4000)
    w.submit(t(0), 1, "a", cores=1, memory=1000)
    w.dispatch(t(1), 1, 1, "w1", cores=1, memory=1000)
    w.done(t(2), 1, 1, "PackError", "cannot send the pack")
    w.add(t(100), "manager_stopped", why="shutdown", tasks=1, failed=1)
    w.write()
    dom = parse(report.write_report(tmp_path / "run").read_text())
    (bar,) = (n for n in dom.find("svg", **{"class": "timeline"}).iter("rect")
              if "bar" in n.classes)
    assert bar.classes == {"bar", "c0", "failed"}
    assert "failed" in bar.text() and "+ 6m00s" in bar.text()
    eff = table(dom, "efficiency")["a"]
    assert eff[2:4] == ["6.000", "6.000"]  # allocated, wasted by failed attempts
    assert "core-minutes" in dom.find("table", id="efficiency").find("thead").text()
    assert summary(dom)["failed"] == "1"
    assert table(dom, "failures")["1"][:2] == ["PackError", "cannot send the pack"]


def test_workers_lost_by_the_lost_field_else_by_requeued_tasks() -> None:
    header = {"format": "packmule-events", "version": 1, "t": 0.0}
    events = [{"t": 0.0, "event": "worker_joined", "worker": w, "host": "h", "resources": {}}
              for w in "abcde"]
    events += [
        # said by the manager (lost), whatever the why and with nothing requeued
        {"t": 1.0, "event": "worker_left", "worker": "a", "why": "lease expired",
         "requeued": 0, "lost": True},
        # a goodbye is no loss, even with tasks requeued from it
        {"t": 1.0, "event": "worker_left", "worker": "b", "why": "connection closed",
         "requeued": 2, "lost": False},
        # older logs: lost when tasks were requeued from it, whatever the why
        {"t": 1.0, "event": "worker_left", "worker": "c", "why": "shutdown", "requeued": 1},
        {"t": 1.0, "event": "worker_left", "worker": "d", "why": "connection closed",
         "requeued": 0},
    ]
    run = report.build(header, events)
    assert {w: report.was_lost(x) for w, x in run.workers.items()} == {
        "a": True, "b": False, "c": True, "d": False, "e": False}


def test_one_reader_for_event_logs(tmp_path: Path) -> None:
    """read_events (the report's reader) parses the log in chunks and still names a
    bad line, also one that is valid inside a JSON array (``1, 2``)."""
    from packmule.observe.events import EventLogError, read_events

    path = tiny_run(tmp_path / "run")
    assert [e["event"] for e in read_events(path)] == [
        json.loads(line)["event"] for line in path.read_text().splitlines()[1:]]
    lines = path.read_text().splitlines(keepends=True)
    for bad in ("1, 2\n", "\n", "{\"t\": 1\n"):
        path.write_text("".join(lines[:5]) + bad + "".join(lines[5:]))
        with pytest.raises(EventLogError, match=r"line 6: not a JSON object"):
            list(read_events(path))
    path.write_text("".join(lines) + '{"t": 1, "event": "task_do')  # torn: skipped
    assert len(list(read_events(path))) == len(lines) - 1


# ============================================================== the command


def test_command_writes_latest_run_by_default(tmp_path: Path) -> None:
    base = tmp_path / "runs"
    tiny_run(base / "001-20251203-120000")
    tiny_run(base / "002-20251203-130000")
    (base / "latest").symlink_to("002-20251203-130000")
    res = run_report(None, env={"PACKMULE_RUNS_DIR": str(base)})
    assert res.returncode == 0, res.stderr
    written = Path(res.stdout.strip())
    assert written.resolve() == (base / "002-20251203-130000" / "report.html").resolve()
    assert not (base / "001-20251203-120000" / "report.html").exists()
    out = tmp_path / "elsewhere.html"
    res = run_report(base / "001-20251203-120000", out)
    assert res.returncode == 0 and res.stdout.strip() == str(out)
    assert summary(parse(out.read_text()))["attempts"] == "7"


def test_command_finds_runs_as_status_does(tmp_path: Path) -> None:
    """A directory holding run directories (a runs base, Parsl's runinfo/NNN/) means the
    latest of them; a run's events.jsonl means its directory; without a ``latest``
    link, the run that started last (not the last name)."""
    parsl_run = tmp_path / "runinfo" / "000"
    tiny_run(parsl_run / "WorkQueueExecutor")
    (parsl_run / "submit_scripts").mkdir()
    res = run_report(parsl_run)
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()) == parsl_run / "WorkQueueExecutor" / "report.html"
    base = tmp_path / "runs"
    for name, start in (("001-20251203-120000", T0 + 100), ("002-20251203-110000", T0)):
        w = EventWriter(base / name, start=start)
        w.write()
    res = run_report(None, env={"PACKMULE_RUNS_DIR": str(base)})
    assert Path(res.stdout.strip()) == base / "001-20251203-120000" / "report.html"
    res = run_report(base / "002-20251203-110000" / "events.jsonl")
    assert Path(res.stdout.strip()) == base / "002-20251203-110000" / "report.html"


def test_command_explains_missing_runs(tmp_path: Path) -> None:
    res = run_report(None, env={"PACKMULE_RUNS_DIR": str(tmp_path / "none")})
    assert res.returncode == 1 and "no run directory" in res.stderr
    (tmp_path / "empty").mkdir()
    res = run_report(tmp_path / "empty")
    assert res.returncode == 1 and "no event log" in res.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "events.jsonl").write_text("hello\n")
    res = run_report(tmp_path / "bad")
    assert res.returncode == 1 and "not a packmule event log" in res.stderr


def test_torn_last_line_and_a_run_still_going(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    w = EventWriter(run_dir)
    w.joined(t(0), "w1aaaaaaaaaa", "alpha", cores=2, memory=1000)
    w.submit(t(0), 1, "a", cores=1)
    w.dispatch(t(1), 1, 1, "w1aaaaaaaaaa", cores=1, memory=500)
    w.add(t(2), "some_future_event", x=1)
    w.write(torn='{"t": 1, "event": "attempt_fin')
    dom = parse(report.write_report(run_dir).read_text())
    s = summary(dom)
    assert s["state"].startswith("still running")
    assert s["attempts"] == "1"
    timeline = dom.find("svg", **{"class": "timeline"})
    (bar,) = (n for n in timeline.iter("rect") if "bar" in n.classes)
    assert bar.classes == {"bar", "c0", "cut"}


# ============================================================== a large run


def test_large_run_is_downsampled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More attempts than MAX_BARS: short attempts of a lane merge, every attempt is
    still counted, and the workers beyond MAX_ROWS are named in a note."""
    monkeypatch.setattr(report, "MAX_BARS", 300)
    monkeypatch.setattr(report, "MAX_ROWS", 3)
    monkeypatch.setattr(report, "BINS", 50)
    w = EventWriter(tmp_path / "run")
    n = 0
    for k in range(4):
        w.joined(t(0), f"w{k}", f"h{k}", cores=1, memory=1000)
    for k in range(4):
        for i in range(250):
            n += 1
            w.submit(t(0), n, "c" if i % 3 else "d", cores=1)
            w.dispatch(t(i), n, 1, f"w{k}", cores=1, memory=100)
            w.finish(t(i + 0.9), n, 1, f"w{k}", "success" if i != 7 else "exception",
                     0.9 * U, cores=1, memory=50)
            w.done(t(i + 0.9), n, 1, *(() if i != 7 else ("E", "no")))
    w.add(t(251), "manager_stopped", why="shutdown", tasks=n, failed=4)
    w.write()
    dom = parse(report.write_report(tmp_path / "run").read_text())
    svg = dom.find("svg", **{"class": "timeline"})
    # One path per worker, category and outcome: 3 rows x (c, d) x (ok, failed), less
    # the category without a failure in each row.
    assert not [b for b in svg.iter("rect") if "bar" in b.classes]
    paths = [b for b in svg.iter("path") if "bar" in b.classes]
    assert len(paths) == 3 * 3
    assert sum(int(b.attrs["data-n"]) for b in paths) == 750  # three rows of 250
    failed = [b for b in paths if "failed" in b.classes]
    assert len(failed) == 3 and all(b.attrs["data-n"] == "1" for b in failed)
    # Touching bars of one category and outcome are one rectangle: fewer than bars.
    assert sum(b.attrs["d"].count("M") for b in paths) < 750
    note = dom.find("section", id="timeline").text()
    assert "1 more workers (250 attempts) are not drawn" in note
    assert summary(dom)["attempts"] == "1,000"
    fig = dom.find("figure", id="res-cores")
    for p in fig.iter("path"):
        assert p.attrs["d"].count("H") <= 51


def test_binned_series_is_the_mean_over_each_bin() -> None:
    """Bins of 2 s over 0-10 s: a span of 2 cores over 1-5, 1 core over 4-10, and 1 core
    from before the start to after the end (clipped)."""
    spans = [(1.0, 5.0, 2.0, 20.0), (4.0, 10.0, 1.0, 10.0), (-5.0, 20.0, 1.0, 10.0)]
    cores, memory = report._binned(spans, 0.0, 10.0, 5)
    assert cores == pytest.approx([2, 3, 3, 2, 2])
    assert memory == pytest.approx([20, 30, 30, 20, 20])


# ============================================================== a real run


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_report_of_a_real_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from packmule.local import local_cluster

    def ok(x: int) -> int:
        return x * 2

    def bad(x: int) -> int:
        raise ValueError(f"bad value {x}")

    monkeypatch.setenv("PACKMULE_RUNS_DIR", str(tmp_path / "runs"))
    with local_cluster(2, cores=2, memory=2000, disk=2000,
                       worker_args=["--workdir", str(tmp_path / "work")]) as manager:
        wait_until(connected(manager, 2))
        futures = [manager.submit(packmule.PythonTask(ok, i, resources={"cores": 1},
                                                      category="double"))
                   for i in range(6)]
        futures.append(manager.submit(packmule.PythonTask(
            bad, 3, resources={"cores": 1}, category="broken", max_retries=0)))
        started = tmp_path / "started"
        sleeper = manager.submit(packmule.Task(f"touch {started}; sleep 60",
                                               resources={"cores": 1}, category="sleepy"))
        for f in futures[:6]:
            assert f.exception(timeout=60) is None
        assert isinstance(futures[6].exception(timeout=60), ValueError)
        wait_until(started.exists)
        assert sleeper.cancel()
        run_dir = manager.run_dir
    assert run_dir.parent == tmp_path / "runs"
    out = tmp_path / "r.html"
    res = run_report(run_dir, out)
    assert res.returncode == 0, res.stderr
    dom = parse(out.read_text())
    s = summary(dom)
    assert (s["tasks"], s["succeeded"], s["failed"], s["cancelled"], s["attempts"]) == (
        "8", "6", "1", "1", "8")
    assert s["workers"].startswith("2 ")
    assert s["state"] == "stopped (shutdown)"
    bars = [b for b in dom.find("svg", **{"class": "timeline"}).iter("rect")
            if "bar" in b.classes]
    assert len(bars) == 8
    assert sum("failed" in b.classes for b in bars) == 1
    assert sum("cut" in b.classes for b in bars) == 1  # the cancelled one
    assert sum("ok" in b.classes for b in bars) == 6
    rows = table(dom, "categories")
    assert rows["double"][:4] == ["6", "6", "0", "6"]
    assert rows["broken"][:4] == ["1", "0", "1", "1"]
    failures = table(dom, "failures")
    assert failures["1"][:2] == ["ValueError", "bad value 3"]
    eff = table(dom, "efficiency")
    assert eff["double"][0].endswith("%")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_benchmark_quick_runs() -> None:
    """benchmarks/report.py keeps working (a smoke run of 2,000 tasks, not a speed test)."""
    root = Path(__file__).resolve().parent.parent
    res = subprocess.run([sys.executable, str(root / "benchmarks" / "report.py"), "--quick",
                          "--no-browser"], capture_output=True, text=True, timeout=110,
                         check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    gen = out["generation"]
    assert gen["size_mb"] < 5 and gen["seconds"] > 0
    assert gen["attempts_drawn"] > 2000  # every attempt (retries and lost ones too) drawn
    assert out["meets_targets"]["size"] is True
