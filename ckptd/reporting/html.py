"""``ckptd report``: one self-contained HTML page of a job's history and its goodput.

Inline CSS and SVG only: no script runs, nothing is fetched, so the page opens the same
from a laptop, a mail attachment or an air-gapped cluster. The numbers are also embedded
as JSON (``<script type="application/json" id="goodput">``) for tools, the metric curves
(``curves``: :mod:`ckptd.reporting.curves`) included.
"""

from __future__ import annotations

import time
from typing import Any

from ckptd import strict_json
from ckptd.reporting.attempts import attempt_json, attempt_table
from ckptd.reporting.curve_chart import metric_section
from ckptd.reporting.curves import curves_of
from ckptd.reporting.goodput import KINDS, Accounting
from ckptd.reporting.history import Save
from ckptd.reporting.markers import legend
from ckptd.reporting.style import COLORS, LABELS, STYLE, clock, duration, escape
from ckptd.reporting.timeline import timeline

__all__ = ["render"]


def render(
    accounting: Accounting,
    job: str,
    generated: float | None = None,
    every: Any = None,
    best: tuple[str, str] | None = None,
) -> str:
    """The page for ``accounting`` (see :func:`ckptd.reporting.goodput.account`) of job ``job``.

    ``every``: the job's ``every`` setting as ``job.json`` recorded it (the advice does
    not recommend ``"auto"`` to a job that uses it). ``best``: the ``(metric, mode)`` that
    ranks checkpoints (see :func:`ckptd.reporting.curves.curves_of`).
    """
    g = accounting.goodput
    generated = time.time() if generated is None else generated
    attempts = [attempt_json(a, accounting.spans) for a in accounting.history.attempts]
    curves = curves_of((r for run in accounting.history.runs for r in run.records), best)
    data = {
        "job": job,
        "generated": round(generated, 3),
        "goodput": g.to_json(),
        "attempts": attempts,
        "curves": curves.to_json(),
    }
    # No "<" at all inside the script element: nothing in the log can end it or open a comment.
    embedded = strict_json.dumps(data, indent=1).replace("<", "\\u003c").replace(">", "\\u003e")
    title = f"ckptd report: {job}"
    span = "no events"
    if g.start is not None and g.end is not None:
        span = f"{clock(g.start, True)} to {clock(g.end, True)}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
            f"<header><h1>{escape(job)}</h1><p class='sub'>{escape(span)} &middot; "
            f"{g.daemon_runs} daemon run(s) &middot; generated {clock(generated, True)}</p>"
            "</header>",
            _headline(g.to_json()),
            _advice(accounting, every),
            _breakdown(g.to_json()),
            "<section><h2>Timeline</h2>",
            timeline(accounting),
            legend(),
            "</section>",
            metric_section(curves),
            attempt_table(attempts),
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
        f"<div class='card'><div class='num' data-key='wall'>{duration(g['wall'])}</div>"
        "<div>wall time supervised</div></div>"
        f"{small}</section>"
    )


def _advice(accounting: Accounting, every: Any) -> str:
    """A sentence or two on the biggest wastes and what would reduce them.

    Nothing is recommended that the job already does: ``every = "auto"`` (from ``every``
    or, without a job.json, a ``checkpoint.interval`` record) or background saves.
    """
    g = accounting.goodput
    wall = g.wall or 1.0
    committed = [s for a in accounting.history.attempts for s in a.saves if s.committed]
    failures = g.failures + g.preemptions
    auto = every == "auto" or (
        every is None
        and any(r["event"] == "checkpoint.interval" for run in accounting.history.runs
                for r in run.records)
    )  # fmt: skip
    per_failure = duration(g.lost / max(failures, 1))
    if auto:
        lost = (
            f"Lost work cost {duration(g.lost)} (about {per_failure} per failure) with "
            '<code>every = "auto"</code> already choosing the interval from the measured save '
            "cost and failure rate: fewer failures, or cheaper saves (the interval shortens "
            "with them), are what would reduce it."
        )
    else:
        lost = (
            f"Lost work cost {duration(g.lost)} (about {per_failure} per failure): checkpoint "
            'more often; <code>every = "auto"</code> picks the interval from the save cost and '
            "failure rate measured here."
        )
    each = duration(g.saving / max(len(committed), 1))
    in_ram = [s for s in committed if s.tier == "memory"]
    if in_ram:
        on_disk = [s for s in committed if s.tier != "memory"]

        def each_of(saves: list[Save]) -> str:
            return duration(sum(s.stall for s in saves) / len(saves))

        saving = (
            f"Saves stalled training for {duration(g.saving)}: {len(in_ram)} in RAM (memory "
            f"tier, {each_of(in_ram)} each, persisted to disk by ckptd) and {len(on_disk)} to "
            "disk" + (f" ({each_of(on_disk)} each)." if on_disk else ".")
        )
    elif committed and all(s.background for s in committed):
        saving = (
            f"Saves stalled training for {duration(g.saving)} ({each} each) although they "
            "run in the background: the snapshot taken before training resumes is the cost."
        )
    else:
        saving = (
            f"Saves stalled training for {duration(g.saving)} ({each} each): save less "
            "often, or in the background (<code>save_async</code>)."
        )
    notes = [
        (g.lost, lost),
        (g.saving, saving),
        (
            g.restarting,
            f"Restarts cost {duration(g.restarting / max(g.attempts, 1))} per launch "
            "(start-up to the first step): imports, data loading and compilation are worth "
            "trimming.",
        ),
        (
            g.idle,
            f"Backoff waited {duration(g.idle)} over {failures} failure(s): see how the "
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
                f"<span class='tip'>{LABELS[kind]}: {duration(seconds)}</span></div>"
            )
        rows.append(
            f"<tr><td><span class='swatch' style='background:{COLORS[kind]}'></span>"
            f"{LABELS[kind]}</td><td class='r' data-key='{kind}' data-seconds='{seconds}'>"
            f"{duration(seconds)}</td><td class='r'>{share * 100:.1f}%</td></tr>"
        )
    rows.append(
        "<tr class='muted'><td><span class='swatch offline'></span>offline (no daemon; "
        f"not counted)</td><td class='r' data-key='offline' data-seconds='{g['offline']}'>"
        f"{duration(g['offline'])}</td><td></td></tr>"
    )
    return (
        "<section><h2>Where the time went</h2>"
        f"<div class='bar'>{''.join(bar)}</div>"
        f"<table class='breakdown'>{''.join(rows)}</table></section>"
    )
