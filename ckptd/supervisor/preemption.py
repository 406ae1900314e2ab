"""A preemption notice turned into a plan: when to take the final save, and what it achieved."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

_SAVE_SAFETY = 2.0  # plan for a final save twice as slow as the last one measured
_SAVE_FLOOR = 1.0  # and never for less than this


@dataclass
class Preemption:
    """Times are Unix times (the notice's clock); ``stop_by`` is the deadline minus the margin."""

    reason: str
    provider: str
    noticed: float
    deadline: float
    stop_by: float
    notice: Any = None
    committed_step_at_notice: int | None = None

    @classmethod
    def plan(cls, notice: Any, margin: float, grace: float) -> Preemption:
        now = time.time()
        deadline = notice.deadline if notice.deadline is not None else now + grace
        return cls(
            f"{notice.provider} {notice.kind}",
            notice.provider,
            now,
            deadline,
            max(now, deadline - margin),
            notice,
        )

    def stop_by_monotonic(self) -> float:
        return time.monotonic() + max(0.0, self.stop_by - time.time())

    def final_at(self, save_seconds: float) -> float:
        """Monotonic time to ask for the final save so that it lands before ``stop_by``."""
        allowance = max(_SAVE_FLOOR, _SAVE_SAFETY * save_seconds)
        return self.stop_by_monotonic() - allowance

    def outcome(self, final: dict[str, Any] | None, step_at_exit: int | None) -> dict[str, Any]:
        """What the final checkpoint saved, what was lost, how close to the deadline it came."""
        final_step = final.get("step") if final else None
        saved = None
        if isinstance(final_step, int):
            before = self.committed_step_at_notice
            saved = final_step - (-1 if before is None else before)
        lost = None
        if isinstance(final_step, int) and step_at_exit is not None:
            lost = max(0, step_at_exit - final_step)
        return {
            "provider": self.provider,
            "final_checkpoint": final.get("path") if final else None,
            "final_step": final_step,
            "steps_saved": saved,
            "steps_lost": lost,
            "seconds_before_deadline": round(self.deadline - final["time"], 3) if final else None,
            "noticed_seconds_ahead": round(self.deadline - self.noticed, 3),
        }
