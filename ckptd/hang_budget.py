"""``hang_timeout = "auto"``: hang timeouts learned from the job, kept across runs.

After nvidia-resiliency-ext's fault tolerance (``TimeoutsCalc``): a timeout is a safety
factor (5) times the longest interval seen, the first few intervals after a launch
(warm-up) do not count, and a newly measured timeout is merged with the one learned in
earlier runs by an exponential moving average (alpha 0.5). There are three budgets:

- ``first_step``: launch to the first step report (imports, data loading, compilation);
- ``step``: between two step reports, once warmed up;
- ``save``: a save in progress (a slow save is not a hang).

Until a budget has been measured (in this run or an earlier one), ``fallback`` applies;
no learned budget is ever below ``minimum``. Within a run a budget only grows (an
interval seen once, such as an evaluation, stays allowed); across runs the average lets
it shrink again. Times are ``time.monotonic()`` values passed in by the caller.
"""

from __future__ import annotations

import enum
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .run_dir import write_private

__all__ = ["BUDGET_FILE", "Budgets", "HangBudget", "Phase"]

BUDGET_FILE = "hang_budget.json"
_ALPHA = 0.5


class Phase(enum.Enum):
    FIRST_STEP = "first_step"
    STEP = "step"
    SAVE = "save"


@dataclass(frozen=True)
class Budgets:
    """Learned timeouts in seconds (None: not measured yet); what the run directory keeps."""

    first_step: float | None = None
    step: float | None = None
    save: float | None = None
    runs: int = 0  # daemon runs that contributed

    def of(self, phase: Phase) -> float | None:
        value: float | None = getattr(self, phase.value)
        return value

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, **self.__dict__}

    @classmethod
    def from_json(cls, data: Any) -> Budgets:
        """Fields of the wrong type are left out (treated as not measured), never fatal."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")

        def seconds(key: str) -> float | None:
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                return None
            return float(value)

        runs = data.get("runs")
        return cls(
            seconds("first_step"),
            seconds("step"),
            seconds("save"),
            runs if isinstance(runs, int) and not isinstance(runs, bool) and runs >= 0 else 0,
        )


class HangBudget:
    """Learns the job's rhythm and says when silence means a hang (owned by the arbiter)."""

    def __init__(
        self,
        learned: Budgets | None = None,
        *,
        safety: float = 5.0,
        warmup: int = 5,
        samples: int = 10,
        minimum: float = 30.0,
        fallback: float = 1800.0,
        slow_factor: float = 5.0,
    ) -> None:
        self.learned = learned or Budgets()
        self.safety, self.warmup, self.samples = safety, warmup, samples
        self.minimum, self.fallback = minimum, fallback
        self.slow_factor = slow_factor
        self._typical: float | None = None  # smoothed step interval, slow ones left out
        self._slow_since: float | None = None
        self._slow_count = 0
        self.load_problem: str | None = None
        self._first_max = 0.0
        self._step_max = 0.0
        self._save_max = 0.0
        self._measured_steps = 0
        self._launched: float | None = None
        self._last_activity = 0.0
        self._last_step: float | None = None
        self._steps_since_launch = 0
        self._save_started: float | None = None
        self._save_between_steps = False

    # -- persistence ------------------------------------------------------------------------

    @classmethod
    def load(cls, run_dir: Path, **settings: Any) -> HangBudget:
        """The budget learned in ``run_dir`` (fresh when none); ``load_problem`` says why not."""
        learned, problem = Budgets(), None
        try:
            fd = os.open(run_dir / BUDGET_FILE, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, encoding="utf-8") as handle:
                learned = Budgets.from_json(json.load(handle))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            problem = f"{run_dir / BUDGET_FILE}: ignored ({exc}); learning again"
        budget = cls(learned, **settings)
        budget.load_problem = problem
        return budget

    def save(self, run_dir: Path) -> Budgets:
        """Write :meth:`merged` to the run directory (atomically, 0600) and return it."""
        merged = self.merged()
        write_private(run_dir / BUDGET_FILE, json.dumps({**merged.to_json(), "saved": time.time()}))
        return merged

    def merged(self) -> Budgets:
        """This run's measurements averaged with what earlier runs learned."""
        measured = self.measured()
        values: dict[str, float | None] = {}
        for phase in Phase:
            new, old = measured.of(phase), self.learned.of(phase)
            if new is not None and old is not None:
                values[phase.value] = _ALPHA * new + (1 - _ALPHA) * old
            else:
                values[phase.value] = new if new is not None else old
        contributed = any(measured.of(phase) is not None for phase in Phase)
        return Budgets(**values, runs=self.learned.runs + (1 if contributed else 0))

    # -- what the job does --------------------------------------------------------------------

    def launched(self, now: float) -> None:
        """A new attempt: the first-step budget runs; warm-up starts over."""
        self._launched = self._last_activity = now
        self._last_step = self._save_started = None
        self._steps_since_launch = 0
        self._save_between_steps = False
        self._slow_since, self._slow_count = None, 0

    def stepped(self, now: float) -> None:
        """The job reported a new step."""
        if self._launched is None:
            self.launched(now)
        launched = self._launched if self._launched is not None else now
        if self._steps_since_launch == 0:
            self._first_max = max(self._first_max, now - launched)
        elif (
            self._last_step is not None
            and not self._save_between_steps
            and self._steps_since_launch > self.warmup
        ):
            self._step_max = max(self._step_max, now - self._last_step)
            self._measured_steps += 1
            self._note_rate(now - self._last_step, self._last_step)
        self._steps_since_launch += 1
        self._last_step = self._last_activity = now
        self._save_between_steps = self._save_started is not None

    def _note_rate(self, interval: float, began: float) -> None:
        typical = self._typical
        if typical is not None and interval > self.slow_factor * typical:
            self._slow_since = began if self._slow_since is None else self._slow_since
            self._slow_count += 1
            return
        self._slow_since, self._slow_count = None, 0
        self._typical = interval if typical is None else typical + 0.05 * (interval - typical)

    def save_started(self, now: float) -> None:
        self._save_started = self._last_activity = now
        self._save_between_steps = True

    def save_ended(self, now: float) -> None:
        """The save committed or failed."""
        if self._save_started is not None:
            self._save_max = max(self._save_max, now - self._save_started)
        self._save_started = None
        self._last_activity = now

    def exited(self) -> None:
        """The attempt ended: nothing to watch until the next launch."""
        self._launched = None
        self._save_started = None

    # -- answers ---------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        if self._save_started is not None:
            return Phase.SAVE
        return Phase.FIRST_STEP if self._steps_since_launch == 0 else Phase.STEP

    def measured(self) -> Budgets:
        """Timeouts from this run alone (None where too little was seen)."""
        return Budgets(
            self.safety * self._first_max if self._first_max > 0 else None,
            self.safety * self._step_max if self._measured_steps >= self.samples else None,
            self.safety * self._save_max if self._save_max > 0 else None,
        )

    def timeout(self, phase: Phase) -> float:
        """The budget now in force for ``phase``, in seconds."""
        new, old = self.measured().of(phase), self.learned.of(phase)
        known = [v for v in (new, old) if v is not None]
        return max(self.minimum, max(known)) if known else self.fallback

    def current(self) -> dict[str, float]:
        """Every budget in force, for ``ckptd status`` and the metrics."""
        return {phase.value: self.timeout(phase) for phase in Phase}

    def deadline(self) -> float | None:
        """When the job counts as hung if nothing happens before (None: no job to watch)."""
        if self._launched is None:
            return None
        phase = self.phase
        if phase is Phase.FIRST_STEP:
            return self._launched + self.timeout(Phase.FIRST_STEP)
        step_deadline = self._last_activity + self.timeout(Phase.STEP)
        if phase is Phase.SAVE:
            assert self._save_started is not None
            return max(step_deadline, self._save_started + self.timeout(Phase.SAVE))
        return step_deadline

    def slow(self, now: float, window: float = 60.0) -> tuple[float, float] | None:
        """``(typical interval, seconds slow)`` when the job straggles, else None.

        Straggling: for at least ``window`` seconds, and three steps or more in a row, every
        step took ``slow_factor`` times the typical interval (a single long step, such as an
        evaluation, is not straggling). Reported, never killed.
        """
        if self._slow_since is None or self._slow_count < 3 or self._typical is None:
            return None
        if self._measured_steps < self.samples or now - self._slow_since < window:
            return None
        return self._typical, now - self._slow_since

    def overdue(self, now: float) -> tuple[Phase, float, float] | None:
        """``(phase, waited, timeout)`` when the deadline has passed, else None."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return None
        phase = self.phase
        since = self._save_started if phase is Phase.SAVE else self._last_activity
        if phase is Phase.FIRST_STEP:
            since = self._launched
        assert since is not None
        return phase, now - since, self.timeout(phase)
