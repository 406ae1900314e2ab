"""``every = "auto"``: the checkpoint interval chosen from the numbers, and kept up to date.

The Young/Daly optimum (:mod:`ckptd.progress.interval`) from the measured stall of the recent
saves and the failure rate in this run directory's history (``events.jsonl``, all
daemon runs), with the ``mtbf`` prior for a fresh job, bounded by ``every_min`` and
``every_max``. Recomputed after each save and each failure; owned by the arbiter.
"""

from __future__ import annotations

import time
from pathlib import Path

from ckptd.config import JobConfig
from ckptd.progress.interval import FailureHistory, IntervalChoice, choose_interval
from ckptd.reporting.history import read_events

_CHANGE = 0.05  # a new choice is announced when it moves by more than this fraction


class AutoInterval:
    def __init__(self, config: JobConfig, events: Path) -> None:
        self.config = config
        try:
            self.history = FailureHistory.from_records(read_events(events))
        except (OSError, ValueError):
            self.history = FailureHistory()
        self._since = time.monotonic()
        self.choice = self._choose()

    def saved(self, stall: float, seconds: float | None) -> IntervalChoice | None:
        """A save committed; return the new choice when it changed noticeably."""
        self.history = self.history.with_save(stall, seconds)
        return self._update()

    def failed(self) -> IntervalChoice | None:
        """A crash, a hang or a preemption; return the new choice when it changed noticeably."""
        self.history = self.history.with_failure()
        return self._update()

    def _update(self) -> IntervalChoice | None:
        before, self.choice = self.choice, self._choose()
        if abs(self.choice.every - before.every) > _CHANGE * before.every:
            return self.choice
        return None

    def _choose(self) -> IntervalChoice:
        return choose_interval(
            self.history,
            prior_mtbf=self.config.mtbf,
            every_min=self.config.every_min,
            every_max=self.config.every_max,
            running=time.monotonic() - self._since,
        )
