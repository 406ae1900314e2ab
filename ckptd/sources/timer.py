"""The periodic checkpoint timer: due ``every`` seconds after the last commit (or launch)."""

from __future__ import annotations


class PeriodicTimer:
    """Pure bookkeeping on monotonic times; the arbiter asks when it is due and resets it."""

    def __init__(self, every: float | None) -> None:
        self.every = every
        self._due: float | None = None

    def reset(self, now: float) -> None:
        """Start a new period at ``now`` (a launch, or a commit from any source)."""
        self._due = None if self.every is None else now + self.every

    def retime(self, every: float, now: float) -> None:
        """A new interval: it applies from the next reset, and sooner when it is shorter."""
        self.every = every
        if self._due is not None:
            self._due = min(self._due, now + every)

    def pause(self) -> None:
        self._due = None

    def next_due(self) -> float | None:
        return self._due

    def is_due(self, now: float) -> bool:
        return self._due is not None and now >= self._due
