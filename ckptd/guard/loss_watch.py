"""Watching the reported loss for a divergence: the ``nonfinite`` and ``spike`` rules.

Pure and single-threaded: the arbiter feeds it each ``(step, loss)`` the job's reports
carry (sampled by the client's report thread, so a window counts reports, not steps) and
acts on the :class:`Divergence` it returns. A loss that trips a rule never enters the
trailing window, so the threshold is not dragged up by the spike it is looking for.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

NONFINITE = "nonfinite"
SPIKE = "spike"
# A flat loss has no spread: sigma is at least this share of the mean's size, so that
# rounding noise on a plateau is not a spike.
_RELATIVE_SIGMA_FLOOR = 1e-3


@dataclass(frozen=True)
class WatchRules:
    """``nonfinite``: a NaN or infinite loss diverged. ``spike``: k, a loss above the mean
    plus k standard deviations of the last ``window`` reported losses diverged (None: off);
    the spike rule waits until the window is full."""

    nonfinite: bool = True
    spike: float | None = None
    window: int = 100

    def __post_init__(self) -> None:
        if self.spike is not None and not (math.isfinite(self.spike) and self.spike > 0):
            raise ValueError(f"spike must be a positive number of sigmas, not {self.spike!r}")
        if self.window < 2:
            raise ValueError(f"spike window must hold at least 2 losses, not {self.window}")

    @property
    def active(self) -> bool:
        return self.nonfinite or self.spike is not None


@dataclass(frozen=True)
class Divergence:
    """The loss at ``step`` broke ``rule``; ``last_good`` is the step of the newest loss
    before it that broke none (None when there was none this attempt)."""

    step: int
    loss: float
    rule: str
    detail: str
    last_good: int | None = None


class LossWatch:
    """The trailing window of good losses and the rules they are judged by."""

    def __init__(self, rules: WatchRules) -> None:
        self.rules = rules
        self._window: deque[float] = deque(maxlen=rules.window)
        self.last_good: int | None = None

    def observe(self, step: int, loss: float) -> Divergence | None:
        """Judge one reported loss; the divergence it shows, or None."""
        if not math.isfinite(loss):
            if not self.rules.nonfinite:
                return None
            return Divergence(step, loss, NONFINITE, f"loss {loss} at step {step}", self.last_good)
        if self.rules.spike is not None and len(self._window) == self._window.maxlen:
            mean, sigma = _mean_and_sigma(self._window)
            threshold = mean + self.rules.spike * sigma
            if loss > threshold:
                detail = (
                    f"loss {loss:.6g} at step {step} above {threshold:.6g}"
                    f" (mean {mean:.6g} + {self.rules.spike:g} sigma {sigma:.3g}"
                    f" of the last {len(self._window)} reports)"
                )
                return Divergence(step, loss, SPIKE, detail, self.last_good)
        self._window.append(loss)
        self.last_good = step
        return None

    def reset(self) -> None:
        """Forget the window (a relaunch starts judging afresh)."""
        self._window.clear()
        self.last_good = None


def _mean_and_sigma(values: deque[float]) -> tuple[float, float]:
    mean = math.fsum(values) / len(values)
    variance = math.fsum((v - mean) ** 2 for v in values) / len(values)
    return mean, max(math.sqrt(variance), _RELATIVE_SIGMA_FLOOR * abs(mean), 1e-12)
