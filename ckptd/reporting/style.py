"""How ``ckptd report`` looks: the colours of each kind of time, the page's CSS, and how
durations, clock times and text from the log are written on it."""

from __future__ import annotations

import html
import time

COLORS = {
    "productive": "#2e9d5b",
    "saving": "#3b7dd8",
    "lost": "#d64545",
    "restarting": "#f0a830",
    "idle": "#b3b9c2",
    "unsaved": "#f2a3a3",
}

LABELS = {
    "productive": "productive (kept)",
    "saving": "saving (training stalled)",
    "lost": "lost (trained, never saved)",
    "restarting": "restarting",
    "idle": "idle / backoff",
    "unsaved": "unsaved (at risk now)",
}

STYLE = """
:root { color-scheme: light; --ink: #1d2430; --muted: #6b7480; --line: #e3e7ec; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1160px; padding: 24px 28px 48px; color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif;
  background: #f7f8fa; }
h1 { margin: 0; font-size: 26px; letter-spacing: -0.01em; }
h2 { margin: 0 0 12px; font-size: 16px; text-transform: uppercase; letter-spacing: 0.06em;
  color: var(--muted); }
.sub { margin: 4px 0 0; color: var(--muted); }
header { margin-bottom: 18px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px;
  padding: 18px 20px; margin: 14px 0; }
section.headline { display: flex; gap: 12px; flex-wrap: wrap; background: none; border: 0;
  padding: 0; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px;
  padding: 12px 16px; min-width: 120px; color: var(--muted); }
.card .num { font-size: 24px; font-weight: 650; color: var(--ink);
  font-variant-numeric: tabular-nums; }
.card.big { min-width: 260px; }
.card.big .num { font-size: 40px; }
.card.good .num { color: #23804a; } .card.fair .num { color: #b7791f; }
.card.poor .num { color: #c53030; }
.bar { display: flex; height: 34px; border-radius: 7px; overflow: hidden; margin-bottom: 14px;
  background: #eef0f3; }
.bar .seg { position: relative; min-width: 1px; }
.bar .seg .tip { display: none; }
.bar .seg:hover .tip { display: block; position: absolute; top: 38px; left: 0; z-index: 2;
  white-space: nowrap; background: var(--ink); color: #fff; padding: 3px 8px;
  border-radius: 4px; font-size: 12px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
td, th { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: left; }
th { color: var(--muted); font-weight: 600; font-size: 12px; text-transform: uppercase; }
td.r { text-align: right; } td.bad { color: #c53030; font-weight: 600; }
table.breakdown { max-width: 560px; }
tr.muted td { color: var(--muted); }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 3px;
  margin-right: 8px; vertical-align: -1px; }
.swatch.offline, rect.offline { background: repeating-linear-gradient(45deg, #d7dbe1 0 3px,
  #f3f4f6 3px 6px); }
svg.timeline { width: 100%; height: auto; display: block; }
svg .grid { stroke: #eef0f3; } svg .tick { stroke: #9aa3ad; }
svg .ax { fill: var(--muted); font-size: 11px; }
svg rect.offline { fill: #eceef1; stroke: #d7dbe1; stroke-dasharray: 3 3; }
svg .progress { fill: none; stroke-width: 2; stroke-linejoin: round; }
svg .progress.kept { stroke: #2e9d5b; }
svg .progress.lost { stroke: #d64545; stroke-dasharray: 5 3; }
svg .progress.unsaved { stroke: #e98a8a; stroke-dasharray: 2 3; }
svg .ckpt { fill: #1f6f43; stroke: #fff; stroke-width: 1; }
svg .ckpt-ram { fill: #8fd3b0; stroke: #1f6f43; stroke-width: 1.5; }
svg .ckpt-failed { fill: #fff; stroke: #d64545; stroke-width: 2; }
svg .request { fill: #8a94a0; } svg .preempt { fill: #e07b00; }
svg .crash { stroke: #c53030; stroke-width: 2.5; fill: none; }
svg .hang { fill: #7b3fb0; }
svg .count { fill: #c53030; font-size: 9px; font-weight: 700; }
svg .lane-column rect { shape-rendering: crispEdges; }
.advice { margin: 14px 2px 0; padding: 10px 14px; background: #fff8e6;
  border: 1px solid #f3dfa8; border-radius: 8px; }
.advice code { background: #fdf0cc; padding: 0 4px; border-radius: 3px; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 18px; margin-top: 10px; color: var(--muted);
  font-size: 12px; align-items: center; }
.legend svg.sym { width: 16px; height: 18px; vertical-align: middle; margin-right: 4px; }
.attempts-summary { margin: 0 0 10px; color: var(--muted); }
tr.skipped td { color: var(--muted); font-style: italic; text-align: center; }
svg.curve { width: 100%; height: auto; display: block; margin-bottom: 6px; }
svg .curve { fill: none; stroke: #3b7dd8; stroke-width: 1.6; stroke-linejoin: round; }
svg .curve.superseded { stroke: #a9c3ea; stroke-dasharray: 4 3; }
svg .metric-dot { fill: #3b7dd8; } svg .best { fill: none; stroke: #23804a; stroke-width: 2.5; }
svg .rollback { stroke: #3b5bd8; stroke-width: 1.5; stroke-dasharray: 6 3; }
svg .diverged { stroke: #c53030; stroke-width: 1.5; } svg .nonfinite { fill: #c53030; }
svg .ax.name { fill: var(--ink); font-weight: 600; }
.legend .line-curve, .legend .line-rollback, .legend .line-diverged { display: inline-block;
  width: 22px; vertical-align: 3px; border-top: 2px solid #3b7dd8; }
.legend .line-curve.superseded { border-top: 2px dashed #a9c3ea; }
.legend .line-rollback { border-top: 2px dashed #3b5bd8; }
.legend .line-diverged { border-top: 2px solid #c53030; }
.legend .line-lost { display: inline-block; width: 22px; border-top: 2px dashed #d64545;
  vertical-align: 3px; }
"""


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    if seconds < 86400 * 2:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    return f"{seconds / 86400:.1f} days"


def clock(t: float | None, with_date: bool = False, layout: str | None = None) -> str:
    """Local time of ``t`` (``layout``: a strftime format); "-" for a time no clock shows."""
    if t is None:
        return "-"
    layout = layout or ("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")
    try:
        return time.strftime(layout, time.localtime(t))
    except (ValueError, OverflowError, OSError):  # read_events keeps times a clock can show
        return "-"


def escape(text: str) -> str:
    return html.escape(text, quote=True)
