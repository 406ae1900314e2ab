"""The report's timeline: steps over time per attempt, the time lane, the axes.

One SVG for a 1100 px wide page. What is denser than its pixels is aggregated, so a month
of a busy job reads as well as an hour of it:

- markers (:mod:`ckptd.reporting.markers`) of one kind in one bin of a few pixels are one;
- the time lane, when it has more spans than a quarter of its pixels, is drawn as 2 px
  columns that stack each kind's share of the column's time;
- progress lines keep one point per pixel.

The step axis ends at most one tick above the highest step; time labels never overlap.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

from ckptd.reporting.goodput import KINDS, Accounting, Span, first_step_time
from ckptd.reporting.history import Attempt
from ckptd.reporting.markers import DOT_BIN, MARK_BIN, binned, dot_marks, event_marks
from ckptd.reporting.style import COLORS, LABELS, clock, duration

__all__ = ["step_scale", "timeline"]

WIDTH, LEFT, RIGHT = 1100, 70, 20
PLOT = WIDTH - LEFT - RIGHT
_GAP = 28  # px for a stretch with no daemon running, whatever its length
_MAX_POINTS = 3000
_CHART_TOP, _CHART_H, _LANE_Y, _LANE_H = 20, 220, 262, 26
_COLUMN = 2.0  # px of one lane column when the lane is aggregated
_CHAR = 6.6  # px per character of an 11 px axis label, generously
_LABEL_SPACE = 12.0  # px between two time labels, at least

Y = Callable[[float], float]


# -- axes ---------------------------------------------------------------------------------------


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
            return cls([_Segment(0.0, 1.0, LEFT, LEFT + PLOT, False)])
        gaps = sum(1 for a, b in pairwise(runs) if b.start > a.end)
        total = sum(max(r.end - r.start, 1e-6) for r in runs)
        scale = (PLOT - gaps * _GAP) / total
        segments, x = [], float(LEFT)
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

    def t(self, x: float) -> float:
        """The time at ``x`` (the inverse of :meth:`x`)."""
        for s in self.segments:
            if x <= s.x1:
                share = 0.0 if x <= s.x0 else (x - s.x0) / max(s.x1 - s.x0, 1e-9)
                return s.t0 + share * (s.t1 - s.t0)
        return self.segments[-1].t1


def step_scale(highest: float) -> tuple[float, float]:
    """``(tick, top)``: at most five ticks of 1, 2, 2.5 or 5 times a power of ten up to
    ``top``, the first multiple of ``tick`` at or above ``highest``."""
    highest = max(highest, 1.0)
    tick = _nice(highest / 5)
    return tick, math.ceil(highest / tick - 1e-9) * tick


def _nice(raw: float) -> float:
    """1, 2, 2.5 or 5 times a power of ten, at least ``raw``."""
    power = 10 ** math.floor(math.log10(max(raw, 1e-9)))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))


def _count_label(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{round(value / size, 6):g}{suffix}"
    return f"{value:g}"


def _time_ticks(axis: _Axis, baseline: float) -> list[str]:
    """Ticks at about every 140 px of each daemon run; a label that would touch the one
    before it (by its estimated width and its anchor) is left out."""
    out, right_of_last = [], -math.inf
    for segment in axis.segments:
        width = segment.x1 - segment.x0
        if segment.gap or width < 60:
            continue
        long = segment.t1 - segment.t0 > 86400
        count = max(1, int(width // 140))
        for i in range(count + 1):
            t = segment.t0 + (segment.t1 - segment.t0) * i / count
            x = axis.x(t)
            text = clock(t, layout="%m-%d %H:%M" if long else "%H:%M:%S")
            half = len(text) * _CHAR / 2
            anchor, left, right = "middle", x - half, x + half
            if right > WIDTH - 2:
                anchor, left, right = "end", x - 2 * half, x
            elif left < 2:
                anchor, left, right = "start", x, x + 2 * half
            if left < right_of_last + _LABEL_SPACE:
                continue
            right_of_last = right
            out.append(
                f"<line class='tick' x1='{x:.1f}' x2='{x:.1f}' y1='{baseline}' "
                f"y2='{baseline + 5}'/>"
                f"<text class='ax time' x='{x:.1f}' y='{baseline + 18}' text-anchor='{anchor}'>"
                f"{text}</text>"
            )
    return out


# -- the chart ----------------------------------------------------------------------------------


def timeline(accounting: Accounting) -> str:
    """The timeline's SVG element."""
    axis = _Axis.of(accounting)
    attempts = accounting.history.attempts
    tick, top = step_scale(max([s for a in attempts for _, s in a.samples] + [1]))
    height = _LANE_Y + _LANE_H + 44

    def y(step: float) -> float:
        return _CHART_TOP + _CHART_H - max(step, 0) / top * _CHART_H

    parts = [f"<svg class='timeline' viewBox='0 0 {WIDTH} {height}' role='img'>"]
    parts.append("<title>progress and time of each attempt</title>")
    for value in (tick * i for i in range(round(top / tick) + 1)):
        yy = y(value)
        parts.append(
            f"<line class='grid' x1='{LEFT}' x2='{LEFT + PLOT}' y1='{yy:.1f}' y2='{yy:.1f}'/>"
            f"<text class='ax step' x='{LEFT - 6}' y='{yy + 4:.1f}' text-anchor='end' "
            f"data-value='{value:g}'>{_count_label(value)}</text>"
        )
    middle = _CHART_TOP + _CHART_H / 2
    parts.append(
        f"<text class='ax' x='12' y='{middle}' transform='rotate(-90 12 {middle})' "
        "text-anchor='middle'>step</text>"
        f"<text class='ax' x='{LEFT - 6}' y='{_LANE_Y + _LANE_H / 2 + 4}' text-anchor='end'>"
        "time</text>"
    )
    for gap in (s for s in axis.segments if s.gap):
        parts.append(
            f"<rect class='offline' x='{gap.x0:.1f}' y='{_CHART_TOP}' width='{_GAP}' "
            f"height='{_LANE_Y + _LANE_H - _CHART_TOP}'><title>offline "
            f"{duration(gap.t1 - gap.t0)} (no daemon)</title></rect>"
        )
    for attempt in attempts:
        parts += _progress_lines(attempt, accounting.spans, axis, y)
    if len(accounting.spans) > PLOT / 4:
        parts += _lane_columns(accounting.spans, axis)
    else:
        parts += _lane_spans(accounting.spans, axis)
    parts += binned(dot_marks(accounting, axis.x, y), DOT_BIN)
    parts += binned(event_marks(accounting, axis.x, y, _LANE_Y), MARK_BIN)
    parts += _time_ticks(axis, _LANE_Y + _LANE_H)
    parts.append("</svg>")
    return "".join(parts)


def _progress_lines(attempt: Attempt, spans: tuple[Span, ...], axis: _Axis, y: Y) -> list[str]:
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
        points = _one_per_pixel([(axis.x(t), y(s)) for t, s in part])
        if len(points) > 1:
            coords = " ".join(f"{x:.1f},{yy:.1f}" for x, yy in points)
            out.append(f"<polyline class='progress {cls}' points='{coords}'/>")
    return out


def _one_per_pixel(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Drop points that land on the pixel of the point before (the last one stays)."""
    kept: list[tuple[float, float]] = []
    for i, (x, y) in enumerate(points):
        if kept and round(kept[-1][0]) == round(x) and round(kept[-1][1]) == round(y):
            if i < len(points) - 1:
                continue
            kept.pop()
        kept.append((x, y))
    return kept


def _lane_spans(spans: tuple[Span, ...], axis: _Axis) -> list[str]:
    out = []
    for s in spans:
        x0, x1 = axis.x(s.start), axis.x(s.end)
        out.append(
            f"<rect x='{x0:.2f}' y='{_LANE_Y}' width='{max(x1 - x0, 0.4):.2f}' "
            f"height='{_LANE_H}' fill='{COLORS[s.kind]}'><title>{LABELS[s.kind]}: "
            f"{duration(s.seconds)} ({clock(s.start)} to {clock(s.end)})</title></rect>"
        )
    return out


def _lane_columns(spans: tuple[Span, ...], axis: _Axis) -> list[str]:
    """The lane as columns of each kind's share of their time (runs of equal ones merged)."""
    columns: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for s in spans:
        x0, x1 = axis.x(s.start), axis.x(s.end)
        column = int((x0 - LEFT) // _COLUMN)
        while x1 > x0:
            lo = LEFT + column * _COLUMN
            overlap = min(x1, lo + _COLUMN) - max(x0, lo)
            if overlap > 0:
                columns[column][s.kind] += overlap
            if lo + _COLUMN >= x1:
                break
            column += 1
    runs: list[tuple[int, int, tuple[int, ...]]] = []  # first, last column, px per kind
    for column in sorted(columns):
        heights = _apportion([columns[column].get(kind, 0.0) for kind in KINDS], _LANE_H)
        if runs and runs[-1][1] == column - 1 and runs[-1][2] == heights:
            runs[-1] = (runs[-1][0], column, heights)
        else:
            runs.append((column, column, heights))
    out = []
    for first, last, heights in runs:
        x0, x1 = LEFT + first * _COLUMN, LEFT + (last + 1) * _COLUMN
        shares = ", ".join(
            f"{kind} {h / _LANE_H:.0%}" for kind, h in zip(KINDS, heights, strict=True) if h
        )
        rects, top = [], float(_LANE_Y)
        for kind, h in zip(KINDS, heights, strict=True):
            if h:
                rects.append(
                    f"<rect x='{x0:.0f}' y='{top:.0f}' width='{x1 - x0:.0f}' height='{h}' "
                    f"fill='{COLORS[kind]}'/>"
                )
                top += h
        out.append(
            f"<g class='lane-column'><title>{clock(axis.t(x0), True)} to "
            f"{clock(axis.t(x1), True)}: {shares}</title>{''.join(rects)}</g>"
        )
    return out


def _apportion(weights: list[float], total: int) -> tuple[int, ...]:
    """Whole pixels in proportion to ``weights`` that add up to ``total`` (largest remainder)."""
    whole = sum(weights)
    exact = [w / whole * total for w in weights] if whole > 0 else [0.0] * len(weights)
    heights = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - heights[i], reverse=True)
    for i in by_remainder[: total - sum(heights)]:
        heights[i] += 1
    return tuple(heights)
