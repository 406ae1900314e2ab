"""The training guard (``[guard]``): divergence rules, rollback plans, early stopping.

Everything here is pure; the arbiter feeds it what the job reports and what commits, and
carries out the decisions (stop, relaunch from an older checkpoint with steps to skip).
"""

from __future__ import annotations

from ckptd_client.skip_steps import (
    ENV_SKIP_STEPS,
    SkipSteps,
    SkipWindow,
    format_skip_steps,
    parse_skip_steps,
)

from .early_stop import EarlyStop, EarlyStopDecision, EarlyStopRule, EarlyStopState
from .loss_watch import NONFINITE, SPIKE, Divergence, LossWatch, WatchRules
from .rollback_plan import RollbackPlan, RollbackRefused, plan_rollback, repeats_at, same_place

__all__ = [
    "ENV_SKIP_STEPS",
    "NONFINITE",
    "SPIKE",
    "Divergence",
    "EarlyStop",
    "EarlyStopDecision",
    "EarlyStopRule",
    "EarlyStopState",
    "LossWatch",
    "RollbackPlan",
    "RollbackRefused",
    "SkipSteps",
    "SkipWindow",
    "WatchRules",
    "format_skip_steps",
    "parse_skip_steps",
    "plan_rollback",
    "repeats_at",
    "same_place",
]
