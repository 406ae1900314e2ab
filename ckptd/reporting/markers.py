"""The report's markers: SVG shapes for checkpoints, requests, notices, hangs and failures.

Shapes, never font glyphs (a system may lack them), drawn by the same code in the chart
and in the legend. Markers of one kind that fall into the same bin of a few pixels are
drawn once, titled with their count, time range and steps; a failure marker standing for
several shows their number, so 300 crashes over a month read as a row of counts, not as a
wall of crosses.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ckptd.reporting.attempts import ending
from ckptd.reporting.goodput import KINDS, Accounting
from ckptd.reporting.style import COLORS, LABELS, clock, duration, escape

__all__ = ["DOT_BIN", "MARK_BIN", "Mark", "binned", "dot_marks", "event_marks", "legend"]

DOT_BIN = 6.0  # px: checkpoints closer than this are one marker
MARK_BIN = 16.0  # px: requests, failures, hangs and preemption notices

Scale = Callable[[float], float]


def _shape(kind: str, x: float, y: float) -> tuple[str, str]:
    """The element and its geometry for a marker of ``kind``."""
    if kind in ("ckpt", "ckpt-ram", "ckpt-failed"):
        return "circle", f"cx='{x:.1f}' cy='{y:.1f}' r='3.2'"
    paths = {
        "request": f"M{x - 4:.1f},{y - 3.5:.1f} h8 l-4,7 z",
        "preempt": f"M{x:.1f},{y - 8:.1f} l6,8 l-6,8 l-6,-8 z",
        "crash": f"M{x - 4:.1f},{y - 4:.1f} l8,8 m0,-8 l-8,8",
        "hang": f"M{x - 4:.1f},{y - 6:.1f} h8 l-8,12 h8 z",
    }
    return "path", f"d='{paths[kind]}'"


def _marker(kind: str, x: float, y: float, title: str = "") -> str:
    tag, geometry = _shape(kind, x, y)
    inside = f"<title>{title}</title>" if title else ""
    return f"<{tag} class='{kind}' {geometry}>{inside}</{tag}>"


@dataclass(frozen=True)
class Mark:
    """One thing to show on the timeline; :func:`binned` may draw several as one."""

    kind: str  # the shape
    x: float
    y: float
    t: float
    title: str  # for this mark alone (already escaped)
    noun: str  # "checkpoint", "failure": what a bin of them counts
    lost: float = 0.0  # seconds of training it lost (failures)
    step: int | None = None


def binned(marks: Iterable[Mark], width: float) -> list[str]:
    """One marker per kind and bin of ``width`` px; a bin of several says how many."""
    bins: dict[tuple[str, int], list[Mark]] = defaultdict(list)
    for mark in marks:
        bins[(mark.kind, int(mark.x // width))].append(mark)
    out = []
    for (kind, _), group in sorted(bins.items(), key=lambda item: item[1][0].t):
        last = max(group, key=lambda m: m.t)
        if len(group) == 1:
            out.append(_marker(kind, last.x, last.y, last.title))
            continue
        first = min(group, key=lambda m: m.t)
        title = f"{len(group)} {last.noun}s from {clock(first.t, True)} to {clock(last.t, True)}"
        steps = [m.step for m in group if m.step is not None]
        if steps:
            title += f", steps {min(steps):,} to {max(steps):,}"
        lost = sum(m.lost for m in group)
        if lost > 0:
            title += f", {duration(lost)} of training lost"
        out.append(_marker(kind, last.x, last.y, title))
        if kind == "crash":
            out.append(
                f"<text class='count' x='{last.x + 5:.1f}' y='{last.y - 5:.1f}'>{len(group)}</text>"
            )
    return out


def dot_marks(accounting: Accounting, x: Scale, y: Scale) -> Iterable[Mark]:
    """Saves, on the progress line; those of the memory tier say when ckptd persisted them."""
    persisted = {  # from the whole log: a copy made once the job is gone is in no attempt
        record.get("step"): record["time"]
        for run in accounting.history.runs
        for record in run.records
        if record["event"] == "checkpoint.persisted"
    }
    for attempt in accounting.history.attempts:
        for save in attempt.saves:
            if save.ended is None:
                continue
            in_ram = save.committed and save.tier == "memory"
            what = "checkpoint in RAM" if in_ram else "checkpoint"
            what = what if save.committed else "failed save"
            title = (
                f"{what} step {save.step} at {clock(save.ended)}, "
                f"{duration(save.ended - save.started)}"
            )
            if in_ram:
                copied = persisted.get(save.step)
                title += (
                    f", persisted to disk at {clock(copied)}"
                    if copied is not None
                    else ", not persisted to disk"
                )
            step = save.step if save.step is not None else 0
            kind = ("ckpt-ram" if in_ram else "ckpt") if save.committed else "ckpt-failed"
            yield Mark(kind, x(save.ended), y(step), save.ended, title, what, 0, save.step)


def event_marks(accounting: Accounting, x: Scale, y: Scale, lane_y: float) -> Iterable[Mark]:
    """Requests, preemption notices and hangs (above the lane), failures (where progress
    ended)."""
    lost: dict[int | None, float] = defaultdict(float)
    for span in accounting.spans:
        if span.kind == "lost":
            lost[span.attempt] += span.seconds
    for attempt in accounting.history.attempts:
        for record in attempt.records:
            event, t = record["event"], record["time"]
            if event == "checkpoint.requested" and not record.get("coalesced_into"):
                title = f"checkpoint requested ({escape(str(record.get('reason')))}) at {clock(t)}"
                yield Mark("request", x(t), lane_y - 12.5, t, title, "checkpoint request")
            elif event == "preemption.noticed":
                title = (
                    f"preemption notice ({escape(str(record.get('provider')))} "
                    f"{escape(str(record.get('kind')))}) at {clock(t)}"
                )
                yield Mark("preempt", x(t), lane_y - 14, t, title, "preemption notice")
            elif event == "job.hung":
                title = f"hang detected at {clock(t)}"
                yield Mark("hang", x(t), lane_y - 14, t, title, "hang")
        if not attempt.live and attempt.ended_by_failure:
            last = max((s for _, s in attempt.samples), default=0)
            step = attempt.exit_step or last
            title = f"{escape(ending(attempt))} at {clock(attempt.end)}"
            yield Mark(
                "crash", x(attempt.end), y(step), attempt.end, title, "failure",
                lost[attempt.index], step,
            )  # fmt: skip


def legend() -> str:
    """What each colour and shape means; shapes drawn by the code that draws the chart's."""

    def symbol(kind: str) -> str:
        return (
            f"<svg class='sym' viewBox='-8 -9 16 18' aria-hidden='true'>{_marker(kind, 0, 0)}</svg>"
        )

    items = [
        f"<span><span class='swatch' style='background:{COLORS[k]}'></span>{LABELS[k]}</span>"
        for k in KINDS
    ]
    items += [
        "<span><span class='swatch offline'></span>offline</span>",
        f"<span>{symbol('ckpt')}checkpoint</span>",
        f"<span>{symbol('ckpt-ram')}checkpoint in RAM (memory tier)</span>",
        f"<span>{symbol('ckpt-failed')}failed save</span>",
        f"<span>{symbol('request')}request</span>",
        f"<span>{symbol('preempt')}preemption notice</span>",
        f"<span>{symbol('hang')}hang detected</span>",
        f"<span>{symbol('crash')}crash / hang / lost daemon (a number: how many)</span>",
        "<span><span class='line-lost'></span> steps trained, then lost</span>",
    ]
    return f"<div class='legend'>{' '.join(items)}</div>"
