"""The run report in a real browser: headless Chromium renders it without errors.

Needs ``chromium`` on PATH (Debian: ``apt-get install chromium``); skipped
without it. Console messages come from ``--enable-logging=stderr --v=0``
(``CONSOLE`` lines); the page's own script also records script errors into
the ``data-errors`` attribute of ``<html>``, read back with ``--dump-dom``.
A page with deliberate errors shows that both detections work.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from packmule.observe import report

from .test_report import EventWriter, Node, U, parse, t, tiny_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not on PATH (Debian: apt-get install chromium)")

WIDTH, HEIGHT = 1400, 2000


def chrome(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def rendered(page: Path, profile: Path) -> tuple[Node, list[str]]:
    """The DOM after load (scripts run) and the console messages."""
    res = chrome(profile, "--dump-dom", page.as_uri())
    return parse(res.stdout), console_lines(res.stderr)


def png_pixels(data: bytes) -> tuple[int, int, set[bytes]]:
    """Width, height and the colours (RGB) of every other pixel of every other row of
    an 8-bit RGB or RGBA PNG, decoded with the standard library."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, []
    width = height = bpp = 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    assert len(raw) == height * (stride + 1)
    prev = bytearray(stride)
    colours: set[bytes] = set()
    for y in range(height):
        o = y * (stride + 1)
        kind_ = raw[o]
        line = bytearray(raw[o + 1:o + 1 + stride])
        if kind_ == 1:  # Sub
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind_ == 2:  # Up
            line = bytearray([(a + b) & 255 for a, b in zip(line, prev, strict=True)])
        elif kind_ == 3:  # Average
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif kind_ == 4:  # Paeth
            for i in range(stride):
                a, c = (line[i - bpp], prev[i - bpp]) if i >= bpp else (0, 0)
                b = prev[i]
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 255
        else:
            assert kind_ == 0, f"unknown PNG filter {kind_}"
        prev = line
        if y % 2 == 0:
            colours.update(bytes(line[i:i + 3]) for i in range(0, stride, 2 * bpp))
    return width, height, colours


def rgb(hex_colour: str) -> bytes:
    return bytes.fromhex(hex_colour.lstrip("#"))


@needs_chromium
def test_detection_catches_errors(tmp_path: Path) -> None:
    """The two ways of seeing errors work in this Chromium: a page with a console error
    and an uncaught exception is caught by both."""
    page = tmp_path / "broken.html"
    script = report._SCRIPT
    page.write_text(f"<!DOCTYPE html><html><head><script>{script}</script></head><body>"
                    "<p>x</p><script>console.error('boom'); notDefined();</script></body></html>")
    dom, console = rendered(page, tmp_path / "profile")
    html = dom.find("html")
    assert "notDefined" in html.attrs.get("data-errors", "")
    assert any("boom" in line for line in console)
    assert any("notDefined" in line for line in console)


@needs_chromium
def test_report_renders_in_chromium(tmp_path: Path) -> None:
    run_dir = tmp_path / "001-20251203-120000"
    tiny_run(run_dir)
    page = report.write_report(run_dir)
    profile = tmp_path / "profile"

    dom, console = rendered(page, profile)
    assert console == []
    html = dom.find("html")
    assert "data-errors" not in html.attrs
    assert int(html.attrs["data-loaded-ms"]) < 5000  # the page's script ran to the end
    timeline = dom.find("svg", **{"class": "timeline"})
    bars = [n for n in timeline.iter("rect") if "bar" in n.classes]
    assert len(bars) == 7
    for table_id, rows in (("categories", 3), ("efficiency", 3), ("failures", 1),
                           ("workers-lost", 1)):
        body = dom.find("table", id=table_id).find("tbody")
        trs = list(body.iter("tr"))
        assert len(trs) == rows, table_id
        assert all(td.text().strip() for tr in trs for td in tr.iter("td")), table_id
    assert dom.find("figure", id="res-cores").find("path").attrs["d"]

    shot = tmp_path / "report.png"
    res = chrome(profile, f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}",
                 "--hide-scrollbars", page.as_uri())
    assert console_lines(res.stderr) == []
    width, height, colours = png_pixels(shot.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    assert len(colours) > 50, "the screenshot is (nearly) one colour"
    # Both categories' bars were painted in their colours (io is the first, sim the second).
    assert rgb(report.PALETTE[0]) in colours
    assert rgb(report.PALETTE[1]) in colours


@needs_chromium
def test_large_report_renders_in_chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The drawing for many attempts (one path per worker, category and outcome, binned
    series) renders too."""
    monkeypatch.setattr(report, "MAX_BARS", 100)
    monkeypatch.setattr(report, "BINS", 50)
    w = EventWriter(tmp_path / "run")
    n = 0
    for k in range(3):
        w.joined(t(0), f"w{k}", f"h{k}", cores=2, memory=1000)
        for i in range(120):
            n += 1
            w.submit(t(0), n, "c" if i % 4 else "d", cores=1)
            w.dispatch(t(i), n, 1, f"w{k}", cores=1, memory=100)
            ok = i % 50 != 7
            w.finish(t(i + 0.8), n, 1, f"w{k}", "success" if ok else "exception", 0.8 * U,
                     cores=1, memory=60)
            w.done(t(i + 0.8), n, 1, *(() if ok else ("E", f"bad {i}")))
    w.add(t(121), "manager_stopped", why="shutdown", tasks=n, failed=9)
    w.write()
    page = report.write_report(tmp_path / "run")
    profile = tmp_path / "profile"
    dom, console = rendered(page, profile)
    assert console == []
    assert "data-errors" not in dom.find("html").attrs
    timeline = dom.find("svg", **{"class": "timeline"})
    paths = [p for p in timeline.iter("path") if "bar" in p.classes]
    assert sum(int(p.attrs["data-n"]) for p in paths) == 360
    assert any("failed" in p.classes for p in paths)
    shot = tmp_path / "large.png"
    res = chrome(profile, f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}",
                 "--hide-scrollbars", page.as_uri())
    assert console_lines(res.stderr) == []
    width, height, colours = png_pixels(shot.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT) and len(colours) > 50
    assert rgb(report.PALETTE[0]) in colours and rgb(report.PALETTE[1]) in colours
