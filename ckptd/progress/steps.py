"""The job's progress as its messages tell it, and what follows from it.

Owns the step, the save in flight, the hang clocks (:class:`~ckptd.progress.health.HangWatch`),
the periodic-checkpoint timer and, with ``every = "auto"``, its interval; updates the
metrics and now and then records ``job.progress`` (goodput's step timing, and the newest
loss the job reported since the last one: the report's loss curve). The arbiter
feeds it what the job says and asks it what is due; it never touches a process.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Protocol

from ckptd import log
from ckptd.config import JobConfig
from ckptd.events import EventLog
from ckptd.progress.auto_interval import AutoInterval
from ckptd.progress.health import HangWatch
from ckptd.progress.interval import IntervalChoice
from ckptd.reporting.prometheus import Metrics
from ckptd.sources.timer import PeriodicTimer

_PROGRESS_EVERY = 10.0  # seconds between job.progress events


class Saved(Protocol):
    """A committed save as the job reported it (the channel's ``Committed`` message)."""

    @property
    def step(self) -> int | None: ...
    @property
    def seconds(self) -> float | None: ...
    @property
    def reused(self) -> bool: ...


class Progress:
    def __init__(
        self, config: JobConfig, run_dir: Path, events: EventLog, metrics: Metrics | None
    ) -> None:
        self.events = events
        self.metrics = metrics
        self.health = HangWatch(config, run_dir)
        self.interval = AutoInterval(config, events.path) if config.every == "auto" else None
        every = config.every if isinstance(config.every, float) else None
        self.timer = PeriodicTimer(self.interval.choice.every if self.interval else every)
        if metrics is not None:
            metrics.set_interval(self.timer.every)
            metrics.set_hang_budgets(self.health.budgets())
        self.step: int | None = None
        self._saving_since: float | None = None
        self._snapshot: float | None = None
        self._saving_step: int | None = None
        self._noted = 0.0
        self._loss: tuple[int, float] | None = None  # reported since the last job.progress
        self._loss_noted = False

    def set_step(self, step: int | None) -> None:
        """The step every log line and event carries from now on."""
        self.step = step
        log.bind(step=step)

    def launched(
        self, now: float, attempt: int, resume_step: int | None, resume_time: float | None = None
    ) -> None:
        """A launch at ``now``, resuming from ``resume_step`` committed at ``resume_time``."""
        self.set_step(resume_step)
        self._saving_since = self._saving_step = self._snapshot = None
        self._noted = 0.0  # the first step of an attempt is recorded at once (goodput)
        self._loss = None
        self._loss_noted = False  # the first loss of an attempt is recorded at once too
        self.health.launched(now)
        self.timer.reset(now)
        if self.metrics is not None:
            self.metrics.job_started(attempt, resume_step, resume_time=resume_time)
            self._publish_budgets()

    def exited(self) -> None:
        self._saving_since = self._saving_step = self._snapshot = None
        self.health.exited()
        if self.metrics is not None:
            self.metrics.job_exited()
            self._publish_budgets()

    def reported(
        self, step: int | None, now: float, training_at: bool = True, loss: float | None = None
    ) -> bool:
        """Any message of a client: it is alive; a new ``step`` is progress (returns True).

        ``training_at`` False: the message names a checkpoint's step (a commit), which
        only tells where training is when it is ahead of what was reported. ``loss``: the
        loss reported with ``step``; the newest one rides on the next ``job.progress``, so
        the event history holds one loss sample per ``job.progress`` at most.
        """
        self.health.reported(now)
        if loss is not None and step is not None:
            self._loss = (step, loss)
        if step is None or step == self.step:
            return False
        if not training_at and self.step is not None and step < self.step:
            return False
        previous = self.step
        self.set_step(step)
        advanced = step - previous if previous is not None and step > previous else 1
        self.health.stepped(now, advanced)
        if self.metrics is not None:
            self.metrics.stepped(step)
            self._publish_budgets()  # a step can raise what the job is known to need
        first_loss = self._loss is not None and not self._loss_noted
        if now - self._noted >= _PROGRESS_EVERY or first_loss:
            self._noted = now
            self._loss_noted = self._loss_noted or self._loss is not None
            self.events.emit("job.progress", level="debug", **self._loss_fields())
        return True

    def _loss_fields(self) -> dict[str, float | str | int]:
        """``loss`` (``"nan"``, ``"inf"`` when not finite) and, when it was reported with
        another step than the current one, ``loss_step``; nothing without a new loss."""
        if self._loss is None:
            return {}
        step, loss = self._loss
        self._loss = None
        fields: dict[str, float | str | int] = {"loss": loss if math.isfinite(loss) else str(loss)}
        if step != self.step:
            fields["loss_step"] = step
        return fields

    def save_started(self, now: float, stall: float | None = None) -> None:
        """A save began; ``stall``: what a background save's snapshot held training up."""
        self._saving_since, self._saving_step, self._snapshot = now, self.step, stall
        self.health.save_started(now)

    def save_ended(
        self,
        now: float,
        committed: Saved | None,
        at: float | None = None,
        *,
        feeds_interval: bool = True,
    ) -> None:
        """A save committed (``committed``: the job's report; ``at``: when, wall time) or failed.

        ``feeds_interval`` False: a save of the memory tier, which is not what ``every``
        costs (its persistence is, :meth:`persisted`).
        """
        began, at_step, snapshot = self._saving_since, self._saving_step, self._snapshot
        self._saving_since = self._saving_step = self._snapshot = None
        self.health.save_ended(now)
        if self.metrics is not None:
            self._publish_budgets()
            if committed is None:
                self.metrics.failed()
            elif not committed.reused:
                self.metrics.committed(committed.step, committed.seconds, at)
        if self.interval is None or committed is None or committed.reused:
            return
        if not feeds_interval:
            return
        # A background save cost training only its snapshot, even when no step was reported
        # while it ran (slow steps); any other save stalled it when no step was reported.
        if snapshot is not None:
            stall = snapshot
        elif began is not None and self.step == at_step:
            stall = now - began
        else:
            stall = 0.0
        self._retime(self.interval.saved(stall, committed.seconds))

    def persisted(self, seconds: float) -> None:
        """A RAM checkpoint copied to disk in ``seconds``: with the memory tier, the cost that
        ``every = "auto"`` weighs (the copy's time; the trainer did not wait for it)."""
        if self.interval is not None:
            self._retime(self.interval.saved(seconds, seconds))

    def failure(self) -> None:
        """A crash, a hang or a preemption: the interval may shorten."""
        if self.interval is not None:
            self._retime(self.interval.failed())

    def _retime(self, choice: IntervalChoice | None) -> None:
        if choice is not None:
            self.events.emit("checkpoint.interval", **choice.to_json())
            self.timer.retime(choice.every, time.monotonic())
            if self.metrics is not None:
                self.metrics.set_interval(choice.every)

    def _publish_budgets(self) -> None:
        """The hang budgets in force, as ``ckptd status`` shows them, to the metrics."""
        assert self.metrics is not None
        self.metrics.set_hang_budgets(self.health.budgets())
