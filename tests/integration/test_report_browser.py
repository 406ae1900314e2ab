"""The report page in a real headless Chromium: it renders, logs no console error, shows the JSON.

Skipped, with the reason printed, where no Chromium is installed (Debian: apt-get install
chromium).
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import psutil
import pytest
from fakes.event_log import SimulatedJob, busy_months, spot_schedule

from ckptd.reporting.goodput import KINDS, account
from ckptd.reporting.html import render
from ckptd.reporting.style import COLORS

BROWSER = next(
    (found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None
)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="chromium is not installed (apt-get install chromium)"
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-breakpad",
    "--enable-logging=stderr",
    "--v=0",
]


@pytest.fixture
def browse(tmp_path: Path) -> Iterator[object]:
    """Run Chromium on a file with a fresh profile; end its helpers (crashpad, zygotes) after."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    runs = 0

    def run(page: Path, *action: str) -> subprocess.CompletedProcess[str]:
        nonlocal runs
        runs += 1
        assert BROWSER is not None
        profile = tmp_path / f"profile-{runs}"
        return subprocess.run(
            [BROWSER, *FLAGS, f"--user-data-dir={profile}", *action, page.as_uri()],
            capture_output=True,
            text=True,
            timeout=180,
        )

    yield run
    helpers = [p for p in me.children(recursive=True) if p.pid not in before]
    for helper in helpers:
        try:
            helper.terminate()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(helpers, timeout=10)


def _console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def _page(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    records = spot_schedule(SimulatedJob()).records
    accounting = account(records)
    page = tmp_path / "report.html"
    page.write_text(render(accounting, "train", generated=0.0))
    return page, accounting.goodput.to_json()


# Added to a copy of the page only (the report itself runs no script): what the browser
# laid out, as JSON in <pre id="measured">.
MEASURE = """<script>
const box = (e) => { const b = e.getBBox(); return [b.x, b.x + b.width, b.height]; };
const measured = {
  labels: [...document.querySelectorAll("svg.timeline text.time")].map(box),
  steps: [...document.querySelectorAll("svg.timeline text.step")].map(box),
  symbols: [...document.querySelectorAll(".legend svg.sym :is(path, circle)")].map(
    (e) => [e.getAttribute("class"), ...box(e)]),
};
const out = document.createElement("pre");
out.id = "measured";
out.textContent = JSON.stringify(measured);
document.body.appendChild(out);
</script>"""


def _busy_page(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    accounting = account(busy_months().records)
    page = tmp_path / "busy.html"
    page.write_text(render(accounting, "train", generated=1.7e9, every="auto"))
    return page, accounting.goodput.to_json()


def test_the_page_renders_without_console_errors(tmp_path: Path, browse) -> None:
    """Chromium parses the page, says nothing on its console, and sees the same numbers."""
    page, goodput = _page(tmp_path)
    shown = browse(page, "--dump-dom")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert _console(shown.stderr) == []
    dom = shown.stdout
    data = re.search(r'<script type="application/json" id="goodput">(.*?)</script>', dom, re.S)
    assert data and json.loads(data.group(1))["goodput"] == goodput
    cells = dict(re.findall(r'data-key="(\w+)" data-seconds="([\d.e+-]+)"', dom))
    assert set(cells) == {*KINDS, "offline"}
    for key, seconds in cells.items():
        assert float(seconds) == pytest.approx(goodput[key], abs=0.001), key
    ratio = re.search(r'data-key="ratio">([\d.]+)%<', dom)
    assert ratio and float(ratio.group(1)) == round(float(goodput["ratio"]) * 100, 1)
    for count in ("attempts", "failures", "preemptions", "checkpoints"):
        assert re.search(rf'data-key="{count}">{goodput[count]}<', dom), count
    assert dom.count('<svg class="timeline"') == 1 and dom.count("<polyline") >= 5


def test_console_errors_would_be_seen(tmp_path: Path, browse) -> None:
    """The console check is live: a page that logs an error is caught by it."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><script>console.error('broken-page-marker')</script>")
    shown = browse(page, "--dump-dom")
    assert any("broken-page-marker" in line for line in _console(shown.stderr))


def test_the_screenshot_shows_the_timeline(tmp_path: Path, browse) -> None:
    """The picture has the productive, lost and restarting colours in quantity."""
    page, _ = _page(tmp_path)
    shot = tmp_path / "report.png"
    done = browse(page, f"--screenshot={shot}", "--window-size=1200,1400")
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    width, height, pixels = _read_png(shot)
    assert (width, height) == (1200, 1400)
    for kind, least in (("productive", 20000), ("lost", 3000), ("restarting", 300)):
        color = bytes.fromhex(COLORS[kind][1:])
        assert _count(pixels, color) >= least, kind


def _read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """Rows of RGB pixels of an 8-bit, non-interlaced RGB or RGBA PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks, header = 8, [], b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        offset += 12 + length
    width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color_type in (2, 6) and interlace == 0
    channels = 3 if color_type == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    rows, previous = [], bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                best = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + best) & 0xFF
        previous = line
        rows.append(bytes(b for i, b in enumerate(line) if i % channels < 3))
    return width, height, rows


def _count(rows: list[bytes], color: bytes) -> int:
    return sum(row[i : i + 3] == color for row in rows for i in range(0, len(row), 3))


def test_a_busy_months_page_renders_with_its_labels_apart(tmp_path: Path, browse) -> None:
    """35k events, 300 attempts: Chromium renders the page without a console error; the
    time labels it lays out do not overlap and stay inside; every legend symbol is drawn."""
    page, goodput = _busy_page(tmp_path)
    measured_page = tmp_path / "measured.html"
    measured_page.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    shown = browse(measured_page, "--dump-dom")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert _console(shown.stderr) == []
    data = re.search(
        r'<script type="application/json" id="goodput">(.*?)</script>', shown.stdout, re.S
    )
    assert data and json.loads(data.group(1))["goodput"] == goodput
    found = re.search(r'<pre id="measured">(.*?)</pre>', shown.stdout, re.S)
    assert found, "the measuring script did not run"
    measured = json.loads(found.group(1))
    labels = measured["labels"]
    assert len(labels) >= 5 and all(height > 5 for _, _, height in labels)
    for (_, right, _), (left, _, _) in pairwise(labels):
        assert left > right + 2, labels
    assert labels[0][0] >= 0 and labels[-1][1] <= 1100, labels
    assert len(measured["steps"]) <= 6
    drawn = {kind for kind, left, right, height in measured["symbols"] if right - left > 4}
    assert drawn >= {"ckpt", "ckpt-failed", "request", "preempt", "hang", "crash"}, measured


def test_the_busy_page_screenshot_shows_the_aggregated_lane(tmp_path: Path, browse) -> None:
    """The lane of a busy month is drawn: productive green in quantity, lost red visible."""
    page, _ = _busy_page(tmp_path)
    shot = tmp_path / "busy.png"
    done = browse(page, f"--screenshot={shot}", "--window-size=1200,1400")
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    _, _, pixels = _read_png(shot)
    assert _count(pixels, bytes.fromhex(COLORS["productive"][1:])) >= 20000
    assert _count(pixels, bytes.fromhex(COLORS["lost"][1:])) >= 300


CURVES_MEASURE = """<script>
const extent = (e) => { const b = e.getBBox(); return [b.x, b.x + b.width, b.height]; };
const charts = [...document.querySelectorAll("svg.curve")].map((svg) => ({
  metric: svg.dataset.metric,
  lines: [...svg.querySelectorAll("polyline")].map(extent),
  labels: [...svg.querySelectorAll("text")].map(extent),
  marks: [...svg.querySelectorAll("line.rollback, line.diverged, circle.best, path.nonfinite")]
    .map((e) => [e.getAttribute("class"), ...extent(e)]),
}));
const out = document.createElement("pre");
out.id = "measured";
out.textContent = JSON.stringify(charts);
document.body.appendChild(out);
</script>"""


def test_the_metric_charts_are_drawn_with_their_marks(tmp_path: Path, browse) -> None:
    """Chromium lays out a chart per curve: lines across the plot, labels inside it, the
    rollback, the divergence, the NaN and the best checkpoint drawn, no console error."""
    records: list[dict[str, object]] = [
        {"time": 0, "event": "job.started", "attempt": 0, "resume_step": None},
    ]
    for step in range(400):
        records.append({"time": 1 + step, "event": "job.progress", "attempt": 0, "step": step,
                        "loss": "nan" if step == 390 else 1.0 / (step + 1)})  # fmt: skip
        if step % 50 == 49:
            records.append({"time": 1.5 + step, "event": "checkpoint.committed", "attempt": 0,
                            "step": step, "metrics": {"val_loss": 2.0 / step}})  # fmt: skip
    records += [
        {"time": 500, "event": "job.diverged", "attempt": 0, "step": 390, "loss": "nan",
         "rule": "nonfinite", "action": "rollback", "resume_step": 349},
        {"time": 510, "event": "job.rolled_back", "attempt": 1, "step": 349, "chosen": "x"},
    ]  # fmt: skip
    page = tmp_path / "curves.html"
    html = render(account(records), "train", generated=0.0)
    page.write_text(html.replace("</body>", CURVES_MEASURE + "</body>"))
    shown = browse(page, "--dump-dom")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert _console(shown.stderr) == []
    found = re.search(r'<pre id="measured">(.*?)</pre>', shown.stdout, re.S)
    assert found, "the measuring script did not run"
    charts = json.loads(found.group(1))
    assert [c["metric"] for c in charts] == ["loss", "val_loss"]
    for chart in charts:
        assert chart["lines"] and max(right - left for left, right, _ in chart["lines"]) > 800
        assert all(left >= 0 and right <= 1100 for left, right, _ in chart["labels"]), chart
        drawn = {kind for kind, _, _, height in chart["marks"] if height > 4}
        assert {"rollback", "diverged"} <= drawn, chart
    assert "nonfinite" in {m[0] for m in charts[0]["marks"]}
    assert "best" in {m[0] for m in charts[1]["marks"]}
