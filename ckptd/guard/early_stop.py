"""Early stopping on the metrics of committed checkpoints: pure.

``monitor`` names a metric every checkpoint's manifest may carry, ``mode`` says whether
lower (``min``) or higher (``max``) is better, and after ``patience`` checkpoints in a row
without an improvement of more than ``min_delta`` the job is to stop (with a final save).
A checkpoint without the metric does not count either way; a non-finite value counts as no
improvement. The state can be rebuilt from the checkpoints on disk after a restart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EarlyStopRule:
    monitor: str
    mode: str = "min"
    patience: int = 3
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {self.mode!r}")
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1, not {self.patience}")
        if not (math.isfinite(self.min_delta) and self.min_delta >= 0):
            raise ValueError(f"min_delta must be a non-negative number, not {self.min_delta!r}")

    def improves(self, value: float, best: float | None) -> bool:
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        if self.mode == "min":
            return value < best - self.min_delta
        return value > best + self.min_delta


@dataclass(frozen=True)
class EarlyStopState:
    """The best value so far, its step, and checkpoints since it without improvement."""

    best: float | None = None
    best_step: int | None = None
    since_best: int = 0
    seen: int = 0


@dataclass(frozen=True)
class EarlyStopDecision:
    stop: bool
    state: EarlyStopState
    reason: str = ""


class EarlyStop:
    """Folds committed checkpoints' metrics, in step order, into a stop decision."""

    def __init__(self, rule: EarlyStopRule, state: EarlyStopState | None = None) -> None:
        self.rule = rule
        self.state = state or EarlyStopState()

    @classmethod
    def from_history(
        cls, rule: EarlyStopRule, checkpoints: Iterable[tuple[int, Mapping[str, Any]]]
    ) -> EarlyStop:
        """The state after the given ``(step, metrics)`` (any order: sorted by step here)."""
        watch = cls(rule)
        for step, metrics in sorted(checkpoints, key=lambda pair: pair[0]):
            watch.observe(step, metrics)
        return watch

    def observe(self, step: int, metrics: Mapping[str, Any]) -> EarlyStopDecision:
        """Count one committed checkpoint; stop once ``patience`` passed without improving."""
        state = self.state
        value = _number(metrics.get(self.rule.monitor))
        if value is None:
            return EarlyStopDecision(False, state)
        if self.rule.improves(value, state.best):
            state = EarlyStopState(value, step, 0, state.seen + 1)
        else:
            state = EarlyStopState(
                state.best, state.best_step, state.since_best + 1, state.seen + 1
            )
        self.state = state
        if state.since_best >= self.rule.patience:
            best = (
                "no finite value yet"
                if state.best is None
                else f"best {state.best:.6g} at step {state.best_step}"
            )
            reason = (
                f"{self.rule.monitor} has not improved for {state.since_best} checkpoints"
                f" ({best}, patience {self.rule.patience})"
            )
            return EarlyStopDecision(True, state, reason)
        return EarlyStopDecision(False, state)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
