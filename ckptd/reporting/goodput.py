"""Goodput: where each second of a job's wall time went, accounted from its event log.

Every second some daemon ran on the run directory is one of:

- ``productive``: training whose steps ended up in a kept checkpoint (or in the result of a
  job that finished on its own);
- ``saving``: training stalled by a save (a synchronous save from ``checkpoint.started`` to
  its commit or failure; a background save only for the ``stall`` it reports);
- ``lost``: training never saved before a crash, a hang or a preemption (and a save the job
  died in);
- ``restarting``: from an exit (or the daemon's start) to the next launch's first step,
  backoff excepted, and from a final commit to the exit;
- ``idle``: backoff delays, and the daemon waiting with no job after it ended;
- ``unsaved``: training since the last checkpoint of a job that is still running (at risk,
  not yet lost).

Time between daemon runs (the machine was gone) is ``offline`` and not part of the wall
time. ``ratio`` is productive over settled time (wall minus unsaved), so it does not dip
between two checkpoints of a live job. The first step's time comes from ``job.progress``
when the daemon logs it, else it is extrapolated from the step rate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

from ckptd.reporting.history import Attempt, History, Record, Run

__all__ = ["KINDS", "Accounting", "Goodput", "Span", "account", "goodput_of"]

KINDS = ("productive", "saving", "lost", "restarting", "idle", "unsaved")


@dataclass(frozen=True)
class Span:
    start: float
    end: float
    kind: str  # one of KINDS
    attempt: int | None  # index over the whole log, None between attempts

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Goodput:
    """Seconds per kind of time, the counts behind them, and ``ratio`` (0..1)."""

    productive: float
    saving: float
    lost: float
    restarting: float
    idle: float
    unsaved: float
    offline: float
    wall: float
    ratio: float
    attempts: int
    failures: int
    preemptions: int
    checkpoints: int
    daemon_runs: int
    start: float | None
    end: float | None

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Accounting:
    history: History
    spans: tuple[Span, ...]
    goodput: Goodput


def goodput_of(records: Iterable[Record], now: float | None = None) -> Goodput:
    """The breakdown of ``records`` (an ``events.jsonl``); ``now`` when the job is live."""
    return account(records, now).goodput


def account(records: Iterable[Record], now: float | None = None) -> Accounting:
    """Classify every second of the log (see the module); ``now`` marks the last run live."""
    history = History.from_records(records, now)
    spans: list[Span] = []
    attempts = history.attempts
    for i, attempt in enumerate(attempts):
        later = [a.resume_step for a in attempts[i + 1 :] if not a.adopted]
        limit = min((-1 if r is None else r for r in later), default=None)
        successor = later[0] if later else None
        spans += _attempt_spans(attempt, limit, successor)
    for run in history.runs:
        spans += _gap_spans(run)
    spans = _merged(sorted((s for s in spans if s.end > s.start), key=lambda s: s.start))
    totals = {kind: sum(s.seconds for s in spans if s.kind == kind) for kind in KINDS}
    wall = sum(totals.values())
    settled = wall - totals["unsaved"]
    offline = sum(
        max(0.0, later.start - earlier.end)
        for earlier, later in pairwise(history.runs)
        if not later.adopts_previous
    )
    goodput = Goodput(
        **totals,
        offline=offline,
        wall=wall,
        ratio=totals["productive"] / settled if settled > 0 else 0.0,
        attempts=len(attempts),
        failures=history.failures,
        preemptions=history.preemptions,
        checkpoints=sum(1 for a in attempts for s in a.saves if s.committed),
        daemon_runs=len(history.runs),
        start=history.runs[0].start if history.runs else None,
        end=history.runs[-1].end if history.runs else None,
    )
    return Accounting(history, tuple(spans), goodput)


def first_step_time(attempt: Attempt) -> float:
    """When the attempt's first step was reported (the end of launch, imports, loading)."""
    resumed = attempt.resume_step if attempt.resume_step is not None else -1
    trained = sorted((t, s) for t, s in attempt.samples if s > resumed and t > attempt.launched)
    if not trained:
        return attempt.end  # never trained
    t1, s1 = trained[0]
    first = t1
    if not attempt.progress_events and len(trained) > 1:
        t2, s2 = trained[-1]
        if s2 > s1:
            per_step = (t2 - t1 - _stalled(attempt, t1, t2)) / (s2 - s1)
            first = t1 - (s1 - resumed - 1) * per_step
    return min(t1, max(first, attempt.launched, attempt.connected or attempt.launched))


def _attempt_spans(attempt: Attempt, limit: int | None, successor: int | None) -> list[Span]:
    first = first_step_time(attempt)
    kept_at, kept_step = _kept(attempt, first, limit, successor)
    resumed = attempt.resume_step if attempt.resume_step is not None else -1
    bar = kept_step if kept_step is not None else resumed
    advanced = any(t > kept_at and s > bar for t, s in attempt.samples)
    if attempt.exit_step is not None and attempt.exit_step > bar:
        advanced = True
    stalls = _stall_intervals(attempt)
    cuts = sorted(
        {first, attempt.end, kept_at}
        | {min(max(x, first), attempt.end) for interval in stalls for x in interval}
    )
    spans = [Span(attempt.launched, first, "restarting", attempt.index)]
    for lo, hi in pairwise(cuts):
        middle = (lo + hi) / 2
        if any(a <= middle < b for a, b in stalls):
            kind = "saving"
        elif middle < kept_at:
            kind = "productive"
        elif attempt.live:
            kind = "unsaved"
        elif attempt.hung or advanced:
            kind = "lost"
        else:
            kind = "restarting"  # after a final commit: the job is only exiting
        spans.append(Span(lo, hi, kind, attempt.index))
    return spans


def _kept(
    attempt: Attempt, first: float, limit: int | None, successor: int | None
) -> tuple[float, int | None]:
    """Up to when (and which step) the attempt's training was kept."""
    if attempt.finished_ok:
        return attempt.end, attempt.exit_step
    resumed = attempt.resume_step if attempt.resume_step is not None else -1
    committed = [s for s in attempt.saves if s.committed and s.step is not None]
    step = max((s.step for s in committed if s.step is not None), default=None)
    if successor is not None and successor > max(resumed, step if step is not None else -1):
        step = successor  # committed, but its acknowledgement died with the job
    if step is not None and limit is not None and step > limit:
        step = limit  # a later launch resumed from an older checkpoint: the rest was redone
    if step is None or step <= resumed:
        return first, None
    return max(first, _time_of_step(attempt, step)), step


def _time_of_step(attempt: Attempt, step: int) -> float:
    for save in reversed(attempt.saves):
        if save.committed and save.step == step:
            return save.started  # the state saved is the one training had at the save's start
    samples = sorted(attempt.samples)
    after = next(((t, s) for t, s in samples if s >= step), None)
    if after is None:
        return attempt.end
    before = [(t, s) for t, s in samples if t < after[0] and s < step]
    if not before:
        return after[0]
    (ta, sa), (tb, sb) = before[-1], after
    return ta + (step - sa) / (sb - sa) * (tb - ta)


def _stall_intervals(attempt: Attempt) -> list[tuple[float, float]]:
    intervals = []
    for save in attempt.saves:
        if save.ended is None or save.stall <= 0:
            continue
        if save.stall >= (save.ended - save.started) * 0.999:
            intervals.append((save.started, save.ended))
        else:  # a background save: the snapshot before it was announced
            intervals.append((save.started - save.stall, save.started))
    return intervals


def _stalled(attempt: Attempt, lo: float, hi: float) -> float:
    return sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in _stall_intervals(attempt))


def _gap_spans(run: Run) -> list[Span]:
    """Time of a run when no attempt ran: before the first launch, between and after them."""
    spans: list[Span] = []
    cursor, previous = run.start, None
    for attempt in run.attempts:
        launched = max(attempt.launched, run.start)
        if launched > cursor:
            spans += _between(cursor, launched, previous)
        cursor, previous = max(cursor, min(attempt.end, run.end)), attempt
    if run.end > cursor:
        spans += _between(cursor, run.end, previous, trailing=True)
    return spans


def _between(
    start: float, end: float, previous: Attempt | None, trailing: bool = False
) -> list[Span]:
    if previous is None:
        return [Span(start, end, "restarting", None)]
    restarting = previous.restarting_at()
    if restarting is None:
        return [Span(start, end, "idle" if trailing else "restarting", None)]
    at, delay = restarting
    at = min(max(at, start), end)
    return [
        Span(start, at, "restarting", None),
        Span(at, end, "idle" if delay > 0 or trailing else "restarting", None),
    ]


def _merged(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for span in spans:
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.kind == span.kind
            and last.attempt == span.attempt
            and abs(last.end - span.start) < 1e-9
        ):
            merged[-1] = Span(last.start, span.end, span.kind, span.attempt)
        else:
            merged.append(span)
    return merged
