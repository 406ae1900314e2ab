"""Where to go back to after a divergence, and which steps to skip: pure.

The job resumes from the newest checkpoint from before the divergence began: before the
diverged step, and no later than the last step whose loss was still good (a NaN seen at a
sampled report may have started at any step since the previous report). The steps from
just after that good loss to the diverged one are the skip window: the data that led to
the divergence. A divergence again at the same place goes one checkpoint further back
each time (past the oldest one: a fresh start) and widens the window to cover both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ckptd_client.skip_steps import SkipWindow


@dataclass(frozen=True)
class RollbackPlan:
    """Resume from ``resume_step`` (None: a fresh start) and skip ``skip``."""

    resume_step: int | None
    skip: SkipWindow
    depth: int  # 0: the newest checkpoint before the divergence; 1: the one before that...


@dataclass(frozen=True)
class RollbackRefused:
    reason: str


def plan_rollback(
    steps: Iterable[int],
    diverged_at: int,
    repeats: int = 0,
    *,
    last_good: int | None = None,
    previous_skip: SkipWindow | None = None,
    rollbacks_done: int = 0,
    limit: int | None = None,
) -> RollbackPlan | RollbackRefused:
    """The rollback after a divergence at ``diverged_at``.

    ``steps``: the steps of the valid checkpoints. ``repeats``: how many times the job
    diverged at this place already (see :func:`same_place`); ``previous_skip`` the window
    skipped then. ``rollbacks_done`` of at most ``limit`` (None: no limit) in this run.
    """
    if limit is not None and rollbacks_done >= limit:
        return RollbackRefused(
            f"diverged at step {diverged_at} after {rollbacks_done} rollbacks"
            f" (rollback_limit = {limit})"
        )
    bound = diverged_at - 1 if last_good is None else min(diverged_at - 1, last_good)
    before = sorted({step for step in steps if step <= bound}, reverse=True)
    if repeats > len(before):
        return RollbackRefused(
            f"diverged at step {diverged_at} again after going back to the start {repeats} times"
        )
    resume = before[repeats] if repeats < len(before) else None
    first = (last_good + 1) if last_good is not None else (resume + 1 if resume is not None else 0)
    first = min(first, diverged_at)
    if repeats and previous_skip is not None:
        window = SkipWindow(min(first, previous_skip.first), max(diverged_at, previous_skip.last))
    else:
        window = SkipWindow(first, diverged_at)
    return RollbackPlan(resume, window, repeats)


def same_place(previous: RollbackPlan, diverged_at: int) -> bool:
    """Whether a divergence at ``diverged_at`` after ``previous`` is at the same place: no
    further past the skipped window than the window is long."""
    start = -1 if previous.resume_step is None else previous.resume_step
    return start < diverged_at <= previous.skip.last + previous.skip.length


def repeats_at(history: Iterable[RollbackPlan], diverged_at: int) -> int:
    """How many times the job diverged at this place already: the depth after the newest
    rollback plus one when it is the same place, else 0."""
    plans = list(history)
    if not plans or not same_place(plans[-1], diverged_at):
        return 0
    return plans[-1].depth + 1
