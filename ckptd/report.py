"""``ckptd report``: one self-contained HTML page of a job's history and its goodput.

Inline CSS and SVG only: no script runs, nothing is fetched, so the page opens the same
from a laptop, a mail attachment or an air-gapped cluster. The numbers are also embedded
as JSON (``<script type="application/json" id="goodput">``) for tools.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from . import strict_json
from .goodput import KINDS, Accounting, Span, first_step_time
from .history import Attempt
from .report_style import COLORS, LABELS, STYLE

__all__ = ["render"]

_W, _LEFT, _RIGHT = 1100, 70, 20
_PLOT = _W - _LEFT - _RIGHT
_GAP = 28  # px for a stretch with no daemon running, whatever its length
_MAX_POINTS = 3000


def render(
    accounting: Accounting, job: str, generated: float | None = None, every: Any = None
) -> str:
    """The page for ``accounting`` (see :func:`ckptd.goodput.account`) of job ``job``.

    ``every``: the job's ``every`` setting as ``job.json`` recorded it (the advice does
    not recommend ``"auto"`` to a job that uses it).
    """
    g = accounting.goodput
    generated = time.time() if generated is None else generated
    attempts = [_attempt_json(a, accounting.spans) for a in accounting.history.attempts]
    data = {
        "job": job,
        "generated": round(generated, 3),
        "goodput": g.to_json(),
        "attempts": attempts,
    }
    # No "<" at all inside the script element: nothing in the log can end it or open a comment.
    embedded = strict_json.dumps(data, indent=1).replace("<", "\\u003c").replace(">", "\\u003e")
    title = f"ckptd report: {job}"
    span = f"{_clock(g.start, True)} to {_clock(g.end, True)}" if g.start and g.end else "no events"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
            f"<header><h1>{_e(job)}</h1><p class='sub'>{_e(span)} &middot; "
            f"{g.daemon_runs} daemon run(s) &middot; generated {_clock(generated, True)}</p>"
            "</header>",
            _headline(g.to_json()),
            _advice(accounting),
            _breakdown(g.to_json()),
            "<section><h2>Timeline</h2>",
            _timeline(accounting),
            _legend(),
            "</section>",
            _attempt_table(attempts),
            f'<script type="application/json" id="goodput">{embedded}</script>',
            "</body></html>",
        ]
    )


# -- numbers ---------------------------------------------------------------------------------


def _headline(g: dict[str, Any]) -> str:
    ratio = g["ratio"]
    tone = "good" if ratio >= 0.9 else "fair" if ratio >= 0.7 else "poor"
    cards = [
        ("attempts", "launches", g["attempts"]),
        ("failures", "failures", g["failures"]),
        ("preemptions", "preemptions", g["preemptions"]),
        ("checkpoints", "checkpoints", g["checkpoints"]),
    ]
    small = "".join(
        f"<div class='card'><div class='num' data-key='{k}'>{v}</div><div>{label}</div></div>"
        for k, label, v in cards
    )
    return (
        "<section class='headline'>"
        f"<div class='card big {tone}'><div class='num' data-key='ratio'>{ratio * 100:.1f}%</div>"
        f"<div>goodput: kept progress per second of wall time</div></div>"
        f"<div class='card'><div class='num' data-key='wall'>{_duration(g['wall'])}</div>"
        "<div>wall time supervised</div></div>"
        f"{small}</section>"
    )


def _advice(accounting: Accounting) -> str:
    """A sentence or two on the biggest wastes and what would reduce them."""
    g = accounting.goodput
    wall = g.wall or 1.0
    saves = sum(1 for a in accounting.history.attempts for s in a.saves if s.committed)
    failures = g.failures + g.preemptions
    notes = [
        (
            g.lost,
            f"Lost work cost {_duration(g.lost)} (about {_duration(g.lost / max(failures, 1))} "
            'per failure): checkpoint more often; <code>every = "auto"</code> picks the '
            "interval from the save cost and failure rate measured here.",
        ),
        (
            g.saving,
            f"Saves stalled training for {_duration(g.saving)} "
            f"({_duration(g.saving / max(saves, 1))} each): save less often, or in the "
            "background (<code>save_async</code>).",
        ),
        (
            g.restarting,
            f"Restarts cost {_duration(g.restarting / max(g.attempts, 1))} per launch "
            "(start-up to the first step): imports, data loading and compilation are worth "
            "trimming.",
        ),
        (
            g.idle,
            f"Backoff waited {_duration(g.idle)} over {failures} failure(s): see how the "
            "attempts below ended.",
        ),
    ]
    worst = [text for seconds, text in sorted(notes, reverse=True) if seconds / wall > 0.03][:2]
    return (
        f"<p class='advice'>{' '.join(worst) or 'Little is wasted: nothing needs attention.'}</p>"
    )


def _breakdown(g: dict[str, Any]) -> str:
    wall = g["wall"] or 1.0
    bar, rows = [], []
    for kind in KINDS:
        seconds = g[kind]
        share = seconds / wall
        if share > 0:
            bar.append(
                f"<div class='seg' style='width:{share * 100:.3f}%;background:{COLORS[kind]}'>"
                f"<span class='tip'>{LABELS[kind]}: {_duration(seconds)}</span></div>"
            )
        rows.append(
            f"<tr><td><span class='swatch' style='background:{COLORS[kind]}'></span>"
            f"{LABELS[kind]}</td><td class='r' data-key='{kind}' data-seconds='{seconds}'>"
            f"{_duration(seconds)}</td><td class='r'>{share * 100:.1f}%</td></tr>"
        )
    rows.append(
        "<tr class='muted'><td><span class='swatch offline'></span>offline (no daemon; "
        f"not counted)</td><td class='r' data-key='offline' data-seconds='{g['offline']}'>"
        f"{_duration(g['offline'])}</td><td></td></tr>"
    )
    return (
        "<section><h2>Where the time went</h2>"
        f"<div class='bar'>{''.join(bar)}</div>"
        f"<table class='breakdown'>{''.join(rows)}</table></section>"
    )


# -- the timeline ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Segment:
    t0: float
    t1: float
    x0: float
    x1: float
    gap: bool  # no daemon ran: drawn at a fixed width whatever its length


@dataclass
class _Axis:
    """Maps times to x: each daemon run in proportion to its length, each gap a fixed width."""

    segments: list[_Segment]

    @classmethod
    def of(cls, accounting: Accounting) -> _Axis:
        runs = accounting.history.runs
        if not runs:
            return cls([_Segment(0.0, 1.0, _LEFT, _LEFT + _PLOT, False)])
        gaps = sum(1 for a, b in pairwise(runs) if b.start > a.end)
        total = sum(max(r.end - r.start, 1e-6) for r in runs)
        scale = (_PLOT - gaps * _GAP) / total
        segments, x = [], float(_LEFT)
        for before, run in zip([None, *runs], runs, strict=False):
            if before is not None and run.start > before.end:
                segments.append(_Segment(before.end, run.start, x, x + _GAP, True))
                x += _GAP
            width = max(run.end - run.start, 1e-6) * scale
            segments.append(_Segment(run.start, run.end, x, x + width, False))
            x += width
        return cls(segments)

    def x(self, t: float) -> float:
        for s in self.segments:
            if t <= s.t1:
                return s.x0 if t <= s.t0 else s.x0 + (t - s.t0) / (s.t1 - s.t0) * (s.x1 - s.x0)
        return self.segments[-1].x1


def _timeline(accounting: Accounting) -> str:
    axis = _Axis.of(accounting)
    attempts = accounting.history.attempts
    every = _nice_step(max([s for a in attempts for _, s in a.samples] + [1]) / 4)
    top = every * 4
    chart_top, chart_h, lane_y, lane_h = 20, 220, 262, 26
    height = lane_y + lane_h + 44

    def y(step: float) -> float:
        return chart_top + chart_h - max(step, 0) / top * chart_h

    parts = [f"<svg class='timeline' viewBox='0 0 {_W} {height}' role='img'>"]
    parts.append(f"<title>{_e('progress and time of each attempt')}</title>")
    for value in (every * i for i in range(5)):
        yy = y(value)
        parts.append(
            f"<line class='grid' x1='{_LEFT}' x2='{_LEFT + _PLOT}' y1='{yy:.1f}' y2='{yy:.1f}'/>"
        )
        parts.append(
            f"<text class='ax' x='{_LEFT - 6}' y='{yy + 4:.1f}' text-anchor='end'>"
            f"{value:,.0f}</text>"
        )
    middle = chart_top + chart_h / 2
    parts.append(
        f"<text class='ax' x='12' y='{middle}' transform='rotate(-90 12 {middle})' "
        "text-anchor='middle'>step</text>"
    )
    parts.append(
        f"<text class='ax' x='{_LEFT - 6}' y='{lane_y + lane_h / 2 + 4}' text-anchor='end'>"
        "time</text>"
    )
    for gap in (s for s in axis.segments if s.gap):
        parts.append(
            f"<rect class='offline' x='{gap.x0:.1f}' y='{chart_top}' width='{_GAP}' "
            f"height='{lane_y + lane_h - chart_top}'><title>offline {_duration(gap.t1 - gap.t0)} "
            f"(no daemon)</title></rect>"
        )
    for attempt in attempts:
        parts += _progress_lines(attempt, accounting.spans, axis, y)
    for s in accounting.spans:
        x0, x1 = axis.x(s.start), axis.x(s.end)
        parts.append(
            f"<rect x='{x0:.2f}' y='{lane_y}' width='{max(x1 - x0, 0.4):.2f}' "
            f"height='{lane_h}' fill='{COLORS[s.kind]}'><title>{LABELS[s.kind]}: "
            f"{_duration(s.seconds)} ({_clock(s.start)} to {_clock(s.end)})</title></rect>"
        )
    parts += _markers(accounting, axis, y, lane_y)
    parts += _time_ticks(axis, lane_y + lane_h)
    parts.append("</svg>")
    return "".join(parts)


def _progress_lines(attempt: Attempt, spans: tuple[Span, ...], axis: _Axis, y: Any) -> list[str]:
    """Steps over time: kept up to the last kept save (exact steps), then what was lost."""
    resumed = attempt.resume_step if attempt.resume_step is not None else -1
    productive = [s.end for s in spans if s.attempt == attempt.index and s.kind == "productive"]
    samples = sorted(attempt.samples)
    kept: list[tuple[float, int]] = []
    kept_at = attempt.launched
    if productive:
        kept_at = max(productive)
        kept = [(first_step_time(attempt), resumed + 1)]
        for save in attempt.saves:  # flat while a save stalls training
            if save.committed and save.step is not None and save.started <= kept_at:
                kept += [(save.started, save.step), (save.ended or save.started, save.step)]
        reached = max([s for t, s in samples if t <= kept_at] + [s for _, s in kept])
        if kept_at > kept[-1][0]:
            kept.append((kept_at, reached))
    start = kept[-1] if kept else (attempt.launched, resumed)
    rest = [start] + [(t, s) for t, s in samples if t > kept_at]
    if len(rest) > _MAX_POINTS // 4:
        rest = rest[:: len(rest) // (_MAX_POINTS // 4) + 1] + rest[-1:]
    tail = "unsaved" if attempt.live else "lost"
    out = []
    for part, cls in ((kept, "kept"), (rest, tail)):
        if len(part) > 1:
            coords = " ".join(f"{axis.x(t):.1f},{y(s):.1f}" for t, s in part)
            out.append(f"<polyline class='progress {cls}' points='{coords}'/>")
    return out


def _markers(accounting: Accounting, axis: _Axis, y: Any, lane_y: float) -> list[str]:
    out = []
    for attempt in accounting.history.attempts:
        for save in attempt.saves:
            if save.ended is None:
                continue
            cls = "ckpt" if save.committed else "ckpt-failed"
            what = "checkpoint" if save.committed else "failed save"
            step = save.step if save.step is not None else 0
            out.append(
                f"<circle class='{cls}' cx='{axis.x(save.ended):.1f}' cy='{y(step):.1f}' r='3.2'>"
                f"<title>{what} step {save.step} at {_clock(save.ended)}, "
                f"{_duration(save.ended - save.started)}</title></circle>"
            )
        for record in attempt.records:
            event, t = record["event"], record["time"]
            if event == "checkpoint.requested" and not record.get("coalesced_into"):
                out.append(
                    f"<path class='request' d='M{axis.x(t):.1f},{lane_y - 9} l-4,-7 h8 z'>"
                    f"<title>checkpoint requested ({_e(str(record.get('reason')))}) "
                    f"at {_clock(t)}</title></path>"
                )
            elif event == "preemption.noticed":
                x = axis.x(t)
                out.append(
                    f"<path class='preempt' d='M{x:.1f},{lane_y - 22} l6,8 l-6,8 l-6,-8 z'>"
                    f"<title>preemption notice ({_e(str(record.get('provider')))} "
                    f"{_e(str(record.get('kind')))}) at {_clock(t)}</title></path>"
                )
            elif event == "job.hung":
                out.append(
                    f"<text class='hang' x='{axis.x(t):.1f}' y='{lane_y - 8}' text-anchor='middle'>"
                    f"&#8987;<title>hang detected at {_clock(t)}</title></text>"
                )
        if not attempt.live and attempt.ended_by_failure:
            last = max((s for _, s in attempt.samples), default=0)
            x, yy = axis.x(attempt.end), y(attempt.exit_step or last)
            out.append(
                f"<path class='crash' d='M{x - 4:.1f},{yy - 4:.1f} l8,8 m0,-8 l-8,8'>"
                f"<title>{_e(_ending(attempt))} at {_clock(attempt.end)}</title></path>"
            )
    return out


def _time_ticks(axis: _Axis, baseline: float) -> list[str]:
    out, previous = [], -1e9
    for segment in axis.segments:
        width = segment.x1 - segment.x0
        if segment.gap or width < 60:
            continue
        count = max(1, int(width // 140))
        for i in range(count + 1):
            t = segment.t0 + (segment.t1 - segment.t0) * i / count
            x = axis.x(t)
            if x - previous < 90:
                continue  # labels of two runs' edges would overlap
            previous = x
            out.append(
                f"<line class='tick' x1='{x:.1f}' x2='{x:.1f}' "
                f"y1='{baseline}' y2='{baseline + 5}'/>"
            )
            anchor = "end" if x > _LEFT + _PLOT - 30 else "middle"
            out.append(
                f"<text class='ax' x='{x:.1f}' y='{baseline + 18}' text-anchor='{anchor}'>"
                f"{_clock(t, segment.t1 - segment.t0 > 86400)}</text>"
            )
    return out


def _legend() -> str:
    items = [
        f"<span><span class='swatch' style='background:{COLORS[k]}'></span>{LABELS[k]}</span>"
        for k in KINDS
    ]
    items += [
        "<span><span class='swatch offline'></span>offline</span>",
        "<span><span class='dot'></span>checkpoint</span>",
        "<span class='sym req'>&#9660;</span> request",
        "<span class='sym pre'>&#9670;</span> preemption notice",
        "<span class='sym crash'>&#10005;</span> crash / hang / lost daemon",
        "<span class='line-lost'></span> steps trained, then lost",
    ]
    return f"<div class='legend'>{' '.join(items)}</div>"


# -- attempts ---------------------------------------------------------------------------------


def _attempt_json(attempt: Attempt, spans: tuple[Span, ...]) -> dict[str, Any]:
    mine = [s for s in spans if s.attempt == attempt.index]
    steps = [s for _, s in attempt.samples]
    return {
        "index": attempt.index,
        "launched": round(attempt.launched, 3),
        "resume_step": attempt.resume_step,
        "last_step": max(steps) if steps else None,
        "checkpoints": sum(1 for s in attempt.saves if s.committed),
        "ended": _ending(attempt),
        **{kind: round(sum(s.seconds for s in mine if s.kind == kind), 3) for kind in KINDS},
    }


def _ending(attempt: Attempt) -> str:
    if attempt.live:
        return "running"
    if attempt.hung:
        return "hung, killed"
    if attempt.exited is None:
        return "lost with the daemon"
    if attempt.finished_ok:
        return "finished"
    exited = next((r for r in attempt.records if r["event"] == "job.exited"), {})
    preempted = any(r["event"] == "preemption.noticed" for r in attempt.records)
    if attempt.stopped_on_request:
        return "preempted, final save" if preempted else "stopped on request"
    return f"crashed ({exited.get('status', 'exited')})"


def _attempt_table(attempts: list[dict[str, Any]]) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in ("#", "launched", "resumed at", "last step", "saves", "ended", "kept", "lost")
    )
    rows = []
    for a in attempts:
        lost = a["lost"] + a["unsaved"]
        rows.append(
            f"<tr><td>{a['index']}</td><td>{_clock(a['launched'], True)}</td>"
            f"<td class='r'>{'fresh' if a['resume_step'] is None else a['resume_step']}</td>"
            f"<td class='r'>{'-' if a['last_step'] is None else a['last_step']}</td>"
            f"<td class='r'>{a['checkpoints']}</td><td>{_e(a['ended'])}</td>"
            f"<td class='r'>{_duration(a['productive'])}</td>"
            f"<td class='r{' bad' if lost > 0 else ''}'>{_duration(lost)}</td></tr>"
        )
    return (
        f"<section><h2>Attempts</h2><table class='attempts'><tr>{head}</tr>"
        f"{''.join(rows)}</table></section>"
    )


def _nice_step(raw: float) -> float:
    """1, 2, 2.5 or 5 times a power of ten, at least ``raw``."""
    power = 10 ** math.floor(math.log10(max(raw, 1e-9)))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


# -- formatting -------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    if seconds < 86400 * 2:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    return f"{seconds / 86400:.1f} days"


def _clock(t: float | None, with_date: bool = False) -> str:
    if t is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S", time.localtime(t))
    except (ValueError, OverflowError, OSError):  # read_events keeps times a clock can show
        return "-"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
