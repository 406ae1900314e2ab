"""The preemption plan: its deadlines and the outcome it reports."""

from __future__ import annotations

import time

import pytest

from ckptd.sources.cloud_notices import Notice
from ckptd.supervisor.preemption import Preemption


def test_a_checkpoint_at_step_0_counts_as_the_last_commit_before_the_notice() -> None:
    """steps_saved counts from a commit at step 0, not from 'no commit' (step -1)."""
    plan = Preemption.plan(Notice("aws", "terminate", time.time() + 120), margin=5, grace=25)
    plan.committed_step_at_notice = 0
    outcome = plan.outcome({"step": 5, "path": "/c/step-00000005", "time": time.time()}, 5)
    assert outcome["steps_saved"] == 5
    assert outcome["steps_lost"] == 0


def test_without_a_commit_before_the_notice_every_step_up_to_the_final_one_is_saved() -> None:
    """No commit before the notice: a final checkpoint at step 5 saved steps 0..5."""
    plan = Preemption.plan(Notice("aws", "terminate", time.time() + 120), margin=5, grace=25)
    outcome = plan.outcome({"step": 5, "path": "/c/step-00000005", "time": time.time()}, 7)
    assert outcome["steps_saved"] == 6
    assert outcome["steps_lost"] == 2


def test_a_notice_without_a_time_gets_the_grace_period_and_a_margin_never_before_now() -> None:
    """GCE-like notices (no time) end after grace; a margin beyond the deadline means now."""
    before = time.time()
    plan = Preemption.plan(Notice("gcp", "preempted", None), margin=40, grace=25)
    assert plan.deadline == pytest.approx(before + 25, abs=1)
    assert plan.noticed <= plan.stop_by <= time.time()
