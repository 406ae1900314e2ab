"""The report's metric charts: one SVG per curve of :mod:`ckptd.reporting.curves`, over steps.

Every chart shares the step axis, so a rollback (``job.rolled_back``, a dashed blue line)
or a divergence (``job.diverged``, a red line) is at the same x in each. A curve that goes
back in steps (the job was sent back) is drawn as one line per branch, the abandoned ones
faded. A loss that was not finite is a red triangle at the top; the best checkpoint is a
ring. The y axis turns logarithmic when a positive curve spans two decades or more.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ckptd.reporting.curves import Curves, Point
from ckptd.reporting.style import escape

__all__ = ["metric_section"]

WIDTH, LEFT, RIGHT = 1100, 70, 20
_TOP, _HEIGHT = 12, 120
_DOTS = 200  # a checkpoint curve with up to this many points shows each as a dot

Scale = Callable[[float], float]


def metric_section(curves: Curves) -> str:
    """The "Metrics" section: the loss chart, one chart per checkpoint metric, the legend."""
    span = curves.steps()
    if span is None:
        return (
            "<section class='metrics'><h2>Metrics</h2><p class='sub'>No loss was reported "
            "(<code>ck.step(n, loss=value)</code>) and no checkpoint carried metrics.</p>"
            "</section>"
        )
    low, high = span
    high = max(high, low + 1)

    def x(step: float) -> float:
        return LEFT + (step - low) / (high - low) * (WIDTH - LEFT - RIGHT)

    charts = []
    if curves.loss:
        charts.append(_chart("loss (reported)", "loss", curves.loss, curves, x, low, high))
    for name, points in curves.metrics.items():
        charts.append(_chart(f"{name} (checkpoints)", name, points, curves, x, low, high))
    if not charts:
        charts.append(_chart("rollbacks and divergences", "", (), curves, x, low, high))
    thinned = curves.counts["loss"] > len(curves.loss)
    note = (
        f"<p class='sub'>{len(curves.loss):,} of {curves.counts['loss']:,} loss samples drawn "
        "(the lowest and highest of each stretch).</p>"
        if thinned
        else ""
    )
    return f"<section class='metrics'><h2>Metrics</h2>{''.join(charts)}{note}{_legend()}</section>"


def _chart(
    title: str,
    name: str,
    points: Sequence[Point],
    curves: Curves,
    x: Scale,
    low: int,
    high: int,
) -> str:
    finite = [p.value for p in points if isinstance(p.value, float)]
    y, ticks = _value_scale(finite)
    bottom = _TOP + _HEIGHT
    parts = [
        f"<svg class='curve' viewBox='0 0 {WIDTH} {bottom + 30}' role='img' "
        f"data-metric='{escape(name)}'><title>{escape(title)} over steps</title>",
        f"<text class='ax name' x='{LEFT}' y='{_TOP - 2}'>{escape(title)}</text>",
    ]
    for value in ticks:
        yy = y(value)
        parts.append(
            f"<line class='grid' x1='{LEFT}' x2='{WIDTH - RIGHT}' y1='{yy:.1f}' y2='{yy:.1f}'/>"
            f"<text class='ax' x='{LEFT - 6}' y='{yy + 4:.1f}' text-anchor='end'>"
            f"{value:.3g}</text>"
        )
    for step, anchor in ((low, "start"), ((low + high) // 2, "middle"), (high, "end")):
        parts.append(
            f"<text class='ax' x='{x(step):.1f}' y='{bottom + 16}' text-anchor='{anchor}'>"
            f"step {step:,}</text>"
        )
    for mark in curves.rollbacks:
        parts.append(
            _rule("rollback", x(mark["step"]), bottom, f"went back to step {mark['step']}")
        )
    for mark in curves.divergences:
        loss = mark["loss"]
        said = f", loss {loss:.4g}" if isinstance(loss, float) else f", loss {loss}"
        parts.append(
            _rule(
                "diverged",
                x(mark["step"]),
                bottom,
                f"diverged at step {mark['step']} ({escape(str(mark['rule']))}{said})",
            )
        )
    branches = _branches(points)
    for index, branch in enumerate(branches):
        coords = [(x(p.step), y(p.value)) for p in branch if isinstance(p.value, float)]
        faded = " superseded" if index < len(branches) - 1 else ""
        if len(coords) > 1:
            joined = " ".join(f"{a:.1f},{b:.1f}" for a, b in _one_per_pixel(coords))
            parts.append(f"<polyline class='curve{faded}' points='{joined}'/>")
    dots = name in curves.metrics and len(points) <= _DOTS
    for p in points:
        if not isinstance(p.value, float):
            xx = x(p.step)
            parts.append(
                f"<path class='nonfinite' d='M{xx - 4:.1f},{_TOP:.1f} h8 l-4,7 z'>"
                f"<title>{escape(name)} {p.value} at step {p.step:,}</title></path>"
            )
        elif dots:
            parts.append(
                f"<circle class='metric-dot' cx='{x(p.step):.1f}' cy='{y(p.value):.1f}' r='2.5'>"
                f"<title>step {p.step:,}: {escape(name)} {p.value:.6g}</title></circle>"
            )
    best = curves.best
    if best is not None and best.metric == name and name in curves.metrics:
        parts.append(
            f"<circle class='best' cx='{x(best.step):.1f}' cy='{y(best.value):.1f}' r='6'>"
            f"<title>best checkpoint: step {best.step:,}, {escape(name)} {best.value:.6g} "
            f"({best.mode})</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _rule(kind: str, xx: float, bottom: float, title: str) -> str:
    return (
        f"<line class='{kind}' x1='{xx:.1f}' x2='{xx:.1f}' y1='{_TOP}' y2='{bottom}'>"
        f"<title>{title}</title></line>"
    )


def _branches(points: Sequence[Point]) -> list[list[Point]]:
    """The points cut where the step goes back: each piece is one line of descent."""
    out: list[list[Point]] = []
    for p in points:
        if not out or p.step < out[-1][-1].step:
            out.append([])
        out[-1].append(p)
    return out


def _value_scale(values: list[float]) -> tuple[Scale, list[float]]:
    """Where a value is drawn and the values of the grid lines (linear, or log10 when every
    value is positive and they span two decades or more)."""
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    logarithmic = low > 0 and high / low >= 100
    if logarithmic:
        low, high = math.log10(low), math.log10(high)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    bottom = _TOP + _HEIGHT

    def y(value: float) -> float:
        v = math.log10(value) if logarithmic and value > 0 else value
        share = (v - low) / (high - low)
        return bottom - min(max(share, 0.0), 1.0) * (_HEIGHT - 8)

    steps = [low + (high - low) * i / 4 for i in range(5)]
    return y, [10**v for v in steps] if logarithmic else steps


def _one_per_pixel(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    kept: list[tuple[float, float]] = []
    for point in points:
        if kept and round(kept[-1][0]) == round(point[0]) and round(kept[-1][1]) == round(point[1]):
            continue
        kept.append(point)
    if points and kept[-1] != points[-1]:
        kept.append(points[-1])
    return kept


def _legend() -> str:
    return (
        "<div class='legend'>"
        "<span><span class='line-curve'></span> value over steps</span>"
        "<span><span class='line-curve superseded'></span> a branch the job went back from</span>"
        "<span><span class='line-rollback'></span> went back (rollback, --resume-from)</span>"
        "<span><span class='line-diverged'></span> divergence</span>"
        "<span><svg class='sym' viewBox='-8 -9 16 18' aria-hidden='true'>"
        "<circle class='best' cx='0' cy='0' r='6'/></svg>best checkpoint</span>"
        "<span><svg class='sym' viewBox='-8 -9 16 18' aria-hidden='true'>"
        "<path class='nonfinite' d='M-4,-3.5 h8 l-4,7 z'/></svg>NaN / infinite</span>"
        "</div>"
    )
