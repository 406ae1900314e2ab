"""``every = "auto"``: the checkpoint interval chosen from the measured save cost and failure rate.

Young's optimum (refined by Daly) for the time between checkpoints is
``sqrt(2 * C * M)``: ``C`` what one save costs training (its stall: a synchronous save's
whole duration, a background save only its snapshot) and ``M`` the mean time between
failures. Shorter wastes time saving, longer loses more work per failure.

``M`` comes from the run directory's history (crashes, hangs, lost daemons and
preemptions whose final save did not land, over the time the job ran: a preemption
announced in time loses nothing that periodic saves would have kept) shrunk toward a
prior for a young job: with a prior ``P`` the estimate is ``(P + T) / (1 + n)`` for ``n``
failures in ``T`` seconds (the mean of a gamma posterior whose prior is one failure per
``P``), so a fresh job uses ``P`` and a long history its own rate. ``C`` is the median
stall of the last few saves, so one slow save does not swing the interval. Everything
here is pure.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from ckptd.reporting.goodput import account
from ckptd.reporting.history import Record

__all__ = ["FailureHistory", "IntervalChoice", "choose_interval", "estimate_mtbf", "young_daly"]

_RECENT_SAVES = 5
_WRITE_MARGIN = 2.0  # a background save must be written before the next one begins


@dataclass(frozen=True)
class FailureHistory:
    """What the interval is chosen from; the arbiter keeps one and replaces it as things happen."""

    failures: int = 0  # what lost work: crashes, hangs, lost daemons, unsaved preemptions
    exposure: float = 0.0  # seconds the job was supervised
    stalls: tuple[float, ...] = ()  # stalls of the recent saves, oldest first
    writes: tuple[float, ...] = ()  # their whole durations (for background saves)

    @classmethod
    def from_records(cls, records: Iterable[Record]) -> FailureHistory:
        """The history of an ``events.jsonl`` (all daemon runs in it)."""
        records = list(records)
        result = account(records)
        unsaved = sum(
            1 for r in records if r["event"] == "preemption.final" and not r.get("final_checkpoint")
        )
        saves = [s for a in result.history.attempts for s in a.saves if s.committed and s.ended][
            -_RECENT_SAVES:
        ]
        return cls(
            failures=result.history.failures + unsaved,
            exposure=result.goodput.wall,
            stalls=tuple(s.stall for s in saves),
            writes=tuple(s.seconds if s.seconds is not None else s.stall for s in saves),
        )

    def with_failure(self) -> FailureHistory:
        return replace(self, failures=self.failures + 1)

    def with_save(self, stall: float, seconds: float | None = None) -> FailureHistory:
        """A save committed: ``stall`` is what training waited, ``seconds`` its whole duration."""
        return replace(
            self,
            stalls=(*self.stalls, stall)[-_RECENT_SAVES:],
            writes=(*self.writes, stall if seconds is None else seconds)[-_RECENT_SAVES:],
        )


@dataclass(frozen=True)
class IntervalChoice:
    """The interval and what it was chosen from (shown in ``ckptd status`` and events)."""

    every: float
    optimum: float | None  # Young/Daly before the bounds; None until a save was measured
    save_cost: float | None
    mtbf: float
    failures: int
    exposure: float
    bound: str | None  # "every_min", "every_max" or "write_time" when one of them decided

    def to_json(self) -> dict[str, Any]:
        return {
            key: round(value, 3) if isinstance(value, float) else value
            for key, value in self.__dict__.items()
        }


def young_daly(save_cost: float, mtbf: float) -> float:
    """``sqrt(2 * save_cost * mtbf)``: the checkpoint interval that wastes the least time."""
    if save_cost < 0 or mtbf <= 0:
        raise ValueError("save_cost must be >= 0 and mtbf > 0")
    return math.sqrt(2.0 * save_cost * mtbf)


def estimate_mtbf(failures: int, exposure: float, prior: float) -> float:
    """Mean time between failures: ``(prior + exposure) / (1 + failures)``."""
    if prior <= 0 or failures < 0 or exposure < 0:
        raise ValueError("prior must be > 0, failures and exposure >= 0")
    return (prior + exposure) / (1 + failures)


def choose_interval(
    history: FailureHistory,
    *,
    prior_mtbf: float,
    every_min: float,
    every_max: float,
    running: float = 0.0,
) -> IntervalChoice:
    """The interval for the next checkpoint; ``running``: seconds supervised since ``history``.

    Until a save was measured the answer is ``every_min``: an early first checkpoint is
    what measures the cost. Never below the time a background save takes to be written.
    """
    if not 0 < every_min <= every_max:
        raise ValueError("need 0 < every_min <= every_max")
    exposure = history.exposure + running
    mtbf = estimate_mtbf(history.failures, exposure, prior_mtbf)
    cost = statistics.median(history.stalls) if history.stalls else None
    optimum = young_daly(cost, mtbf) if cost is not None else None
    every, bound = (optimum, None) if optimum is not None else (every_min, "every_min")
    if every < every_min:
        every, bound = every_min, "every_min"
    if every > every_max:
        every, bound = every_max, "every_max"
    write = max(history.writes[-1:], default=0.0) * _WRITE_MARGIN
    if every < write:
        every, bound = write, "write_time"
    return IntervalChoice(every, optimum, cost, mtbf, history.failures, exposure, bound)
