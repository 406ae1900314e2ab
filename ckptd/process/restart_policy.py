"""When a finished job is launched again, and after how long. Pure: no clocks, no processes."""

from __future__ import annotations

import random
import signal
from dataclasses import dataclass

_JITTER = 0.2


@dataclass(frozen=True)
class ExitStatus:
    """How a job process ended: ``code`` when it exited, ``signal`` when a signal killed it."""

    code: int | None = None
    signal: int | None = None

    @classmethod
    def from_returncode(cls, returncode: int) -> ExitStatus:
        return cls(signal=-returncode) if returncode < 0 else cls(code=returncode)

    @property
    def success(self) -> bool:
        return self.code == 0

    @property
    def shell_code(self) -> int:
        """The status a shell would report: the code, or 128 + the signal number."""
        return self.code if self.code is not None else 128 + (self.signal or 0)

    def __str__(self) -> str:
        if self.code is None and self.signal is None:
            return "exit status unknown"
        if self.signal is not None:
            try:
                return f"killed by {signal.Signals(self.signal).name}"
            except ValueError:
                return f"killed by signal {self.signal}"
        return f"exit code {self.code}"


@dataclass(frozen=True)
class RestartPolicy:
    """``mode`` is "on-failure", "always" or "never".

    ``max_restarts`` bounds restarts *without progress*: the count resets whenever
    a newer checkpoint commits, so a job that crashes now and then but keeps
    checkpointing in between is never given up on.
    """

    mode: str = "on-failure"
    max_restarts: int = 10
    delay: float = 1.0
    delay_max: float = 60.0

    def wants_restart(self, status: ExitStatus) -> bool:
        if self.mode == "never":
            return False
        return self.mode == "always" or not status.success

    def exhausted(self, restarts_without_progress: int) -> bool:
        """True when restart number ``restarts_without_progress`` would exceed the budget."""
        return restarts_without_progress > self.max_restarts

    def backoff(self, restarts_without_progress: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before restart number ``restarts_without_progress`` (1-based).

        Doubles from ``delay`` for each restart without progress, with +-20% jitter
        so that many jobs crashing together do not relaunch in lockstep, capped
        at ``delay_max``.
        """
        if self.delay <= 0 or restarts_without_progress <= 0:
            return 0.0
        exponent = min(restarts_without_progress - 1, 62)
        raw = self.delay * (2.0**exponent)
        jitter = 1.0 + _JITTER * (2.0 * (rng or random).random() - 1.0)
        return min(self.delay_max, raw * jitter)
