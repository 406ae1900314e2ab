"""The report's attempts: each launch as JSON, how it ended, and the table that lists them.

A long history is summarized, not listed: past ``LISTED`` attempts the table shows the
first and the last ``SHOWN`` rows, one row that sums up those in between, and a line above
it that counts how all of them ended. The page's JSON keeps every attempt.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ckptd.reporting.goodput import KINDS, Span
from ckptd.reporting.history import Attempt
from ckptd.reporting.style import clock, duration, escape

__all__ = ["LISTED", "SHOWN", "attempt_json", "attempt_table", "ending"]

LISTED = 30  # up to this many attempts, every one has its row
SHOWN = 10  # beyond, the first and the last this many


def attempt_json(attempt: Attempt, spans: tuple[Span, ...]) -> dict[str, Any]:
    mine = [s for s in spans if s.attempt == attempt.index]
    steps = [s for _, s in attempt.samples]
    return {
        "index": attempt.index,
        "launched": round(attempt.launched, 3),
        "resume_step": attempt.resume_step,
        "last_step": max(steps) if steps else None,
        "checkpoints": sum(1 for s in attempt.saves if s.committed),
        "in_ram": sum(1 for s in attempt.saves if s.committed and s.tier == "memory"),
        "ended": ending(attempt),
        **{kind: round(sum(s.seconds for s in mine if s.kind == kind), 3) for kind in KINDS},
    }


def ending(attempt: Attempt) -> str:
    """How the attempt ended, in a few words ("crashed (exit status 1)", "hung, killed")."""
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


def attempt_table(attempts: list[dict[str, Any]]) -> str:
    """The attempts section: every row, or the first and last rows and a summary between."""
    head = "".join(
        f"<th>{h}</th>"
        for h in ("#", "launched", "resumed at", "last step", "saves", "ended", "kept", "lost")
    )
    summary = ""
    if len(attempts) > LISTED:
        hidden = attempts[SHOWN:-SHOWN]
        rows = [_row(a) for a in attempts[:SHOWN]]
        rows.append(_summary_row(hidden))
        rows += [_row(a) for a in attempts[-SHOWN:]]
        summary = (
            f"<p class='attempts-summary' data-key='attempts-summary'>{len(attempts)} attempts: "
            f"{_endings(attempts)}. The first and the last {SHOWN} are listed.</p>"
        )
    else:
        rows = [_row(a) for a in attempts]
    return (
        f"<section><h2>Attempts</h2>{summary}<table class='attempts'><tr>{head}</tr>"
        f"{''.join(rows)}</table></section>"
    )


def _row(a: dict[str, Any]) -> str:
    lost = a["lost"] + a["unsaved"]
    return (
        f"<tr><td>{a['index']}</td><td>{clock(a['launched'], True)}</td>"
        f"<td class='r'>{'fresh' if a['resume_step'] is None else a['resume_step']}</td>"
        f"<td class='r'>{'-' if a['last_step'] is None else a['last_step']}</td>"
        f"<td class='r'>{_saves(a)}</td><td>{escape(a['ended'])}</td>"
        f"<td class='r'>{duration(a['productive'])}</td>"
        f"<td class='r{' bad' if lost > 0 else ''}'>{duration(lost)}</td></tr>"
    )


def _saves(a: dict[str, Any]) -> str:
    in_ram = a["in_ram"]
    return f"{a['checkpoints']} ({in_ram} in RAM)" if in_ram else str(a["checkpoints"])


def _summary_row(hidden: list[dict[str, Any]]) -> str:
    saves = sum(a["checkpoints"] for a in hidden)
    kept = sum(a["productive"] for a in hidden)
    lost = sum(a["lost"] + a["unsaved"] for a in hidden)
    return (
        f"<tr class='skipped' data-hidden='{len(hidden)}'><td colspan='8'>"
        f"&hellip; {len(hidden)} more attempts (#{hidden[0]['index']} to "
        f"#{hidden[-1]['index']}): {_endings(hidden)}; {saves:,} saves; kept "
        f"{duration(kept)}, lost {duration(lost)} &hellip;</td></tr>"
    )


def _endings(attempts: list[dict[str, Any]]) -> str:
    """How many ended each way, the most frequent first: "250 crashed, 12 hung, killed"."""
    kinds = Counter(a["ended"].split(" (")[0] for a in attempts)
    return ", ".join(f"{count} {escape(kind)}" for kind, count in kinds.most_common())
