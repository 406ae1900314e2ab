"""``memory_every = "auto"``: the memory tier's interval, chosen from the numbers.

Young/Daly (:mod:`ckptd.progress.interval`) from the stall of the recent RAM saves and the
failure rate of this run directory's history, bounded by 1 s and ``every_min``. Owned by
the memory tier (:mod:`ckptd.supervisor.memory_copy`), on the arbiter's thread.
"""

from __future__ import annotations

import time
from pathlib import Path

from ckptd.config import JobConfig
from ckptd.progress.interval import FailureHistory, IntervalChoice, choose_interval
from ckptd.reporting.history import read_events

_MEMORY_MIN = 1.0
_CHANGE = 0.05  # a new choice is announced when it moves by more than this fraction


class MemoryInterval:
    """``memory_every = "auto"``: Young/Daly from the RAM saves' stall and the failures in this
    run directory's history (all daemon runs, as ``every = "auto"``; ``mtbf`` the prior),
    within [1s, every_min]; 1s until a RAM save is measured (the first one measures it)."""

    def __init__(self, config: JobConfig, events: Path | None = None) -> None:
        self.config = config
        self.history = FailureHistory()
        if events is not None:
            try:  # failures and exposure only: the saves recorded there may be disk saves
                known = FailureHistory.from_records(read_events(events))
                self.history = FailureHistory(known.failures, known.exposure)
            except (OSError, ValueError):
                pass
        self._since = time.monotonic()
        self.choice = self._choose()

    @property
    def every(self) -> float:
        return self.choice.every

    def saved(self, stall: float, seconds: float | None) -> IntervalChoice | None:
        before = self.every
        self.history = self.history.with_save(stall, seconds)
        self.choice = self._choose()
        return self.choice if abs(self.every - before) > _CHANGE * before else None

    def failed(self) -> None:
        self.history = self.history.with_failure()
        self.choice = self._choose()

    def _choose(self) -> IntervalChoice:
        return choose_interval(
            self.history,
            prior_mtbf=self.config.mtbf,
            every_min=_MEMORY_MIN,
            every_max=max(_MEMORY_MIN, self.config.every_min),
            running=time.monotonic() - self._since,
        )
