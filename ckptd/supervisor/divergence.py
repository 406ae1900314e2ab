"""The divergence guard in the daemon (``[guard]``): the reported loss, judged on the loop.

Fed by the ``loss`` of the job's step reports (sampled by the client's report thread). On
a divergence the arbiter stops the job without a final save (the diverged state is not
worth keeping) and relaunches it from the checkpoint :func:`plan_rollback` picks, with the
steps to skip in ``CKPTD_SKIP_STEPS``; past ``rollback_limit`` it stops for good.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ckptd.config import GuardConfig
from ckptd.guard import (
    NONFINITE,
    Divergence,
    LossWatch,
    RollbackPlan,
    RollbackRefused,
    WatchRules,
    format_skip_steps,
    plan_rollback,
    repeats_at,
)


@dataclass(frozen=True)
class GiveUp:
    reason: str


class DivergenceGuard:
    def __init__(self, config: GuardConfig) -> None:
        self.config = config
        self.watch = LossWatch(
            WatchRules(
                nonfinite=config.nonfinite != "off",
                spike=config.spike,
                window=config.spike_window,
            )
        )
        self.history: list[RollbackPlan] = []

    def observe(self, step: Any, loss: Any) -> Divergence | None:
        """A reported loss; anything but an int step and a number is ignored."""
        if not isinstance(step, int) or isinstance(step, bool):
            return None
        if not isinstance(loss, (int, float)) or isinstance(loss, bool):
            return None
        return self.watch.observe(step, float(loss))

    def decide(self, divergence: Divergence, steps: list[int]) -> RollbackPlan | GiveUp:
        """Where to go back to, or why the job stops instead."""
        if divergence.rule == NONFINITE and self.config.nonfinite == "stop":
            return GiveUp(f'{divergence.detail} (nonfinite = "stop")')
        plan = plan_rollback(
            steps,
            divergence.step,
            repeats_at(self.history, divergence.step),
            last_good=divergence.last_good,
            previous_skip=self.history[-1].skip if self.history else None,
            rollbacks_done=len(self.history),
            limit=self.config.rollback_limit,
        )
        if isinstance(plan, RollbackRefused):
            return GiveUp(plan.reason)
        if plan.resume_step is None:
            return GiveUp(f"{divergence.detail}; no checkpoint before it to go back to")
        self.history.append(plan)
        self.watch.reset()
        return plan

    @property
    def skip_text(self) -> str:
        """``CKPTD_SKIP_STEPS`` for the next launch: every window skipped in this run."""
        return format_skip_steps(plan.skip for plan in self.history)


def loss_field(loss: float) -> float | str:
    """A loss as an event carries it: ``"nan"``/``"inf"`` when it is not a finite number."""
    return loss if math.isfinite(loss) else str(loss)
