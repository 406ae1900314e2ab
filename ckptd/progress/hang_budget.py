"""``hang_timeout = "auto"``: hang timeouts learned from the job, kept across runs.

After nvidia-resiliency-ext's fault tolerance (``TimeoutsCalc``): a timeout is a safety
factor (5) times the longest interval seen, the first few intervals after a launch
(warm-up) do not count, and a newly measured timeout is merged with the one learned in
earlier runs by an exponential moving average (alpha 0.5). There are three budgets:

- ``first_step``: launch to the first step report (imports, data loading, compilation);
- ``step``: between two step reports, once warmed up;
- ``save``: a save in progress (a slow save is not a hang).

Until a budget has been measured (in this run or an earlier one), ``fallback`` applies;
no learned budget is ever below ``minimum`` nor above ``maximum`` (a day). Within a run a
budget only grows (an interval seen once, such as an evaluation, stays allowed); across
runs the average lets it shrink again. Times are ``time.monotonic()`` values passed in by
the caller.

The file is input like any other: a value that is not a finite number of seconds between
0 and ``maximum`` (``Infinity``, ``NaN``, ``-5``, ``1e300``, a string) is ignored with a
warning (``load_problem``) and the file is rewritten with what is left, so no file can
switch hang detection off. A symlink, FIFO or other non-regular file there is refused
(:class:`~ckptd.run_dir.NotRegularFile`).
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckptd import strict_json
from ckptd.run_dir import NotRegularFile, read_regular, write_private

__all__ = ["BUDGET_FILE", "MAXIMUM", "Budgets", "HangBudget", "Phase"]

BUDGET_FILE = "hang_budget.json"
MAXIMUM = 86400.0  # no budget above a day: five times a 4.8-hour step, save or launch
_ALPHA = 0.5
_MOST_RUNS = 10**9


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
    def from_json(cls, data: Any, maximum: float = MAXIMUM) -> tuple[Budgets, list[str]]:
        """The budgets in ``data`` and the fields left out (not seconds in (0, ``maximum``]).

        A left-out field counts as not measured; a missing or null one is not a problem.
        """
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        rejected: list[str] = []

        def seconds(key: str) -> float | None:
            value = data.get(key)
            if value is None:
                return None
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not 0 < value <= maximum
            ):
                rejected.append(f"{key}={str(value)[:24]}")
                return None
            return float(value)

        runs = data.get("runs", 0)
        if isinstance(runs, bool) or not isinstance(runs, int) or not 0 <= runs <= _MOST_RUNS:
            rejected.append(f"runs={str(runs)[:24]}")
            runs = 0
        budgets = cls(seconds("first_step"), seconds("step"), seconds("save"), runs)
        return budgets, rejected


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
        maximum: float = MAXIMUM,
        fallback: float = 1800.0,
        slow_factor: float = 5.0,
    ) -> None:
        self.learned = learned or Budgets()
        self.safety, self.warmup, self.samples = safety, warmup, samples
        self.minimum, self.maximum, self.fallback = minimum, maximum, fallback
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
        """The budget learned in ``run_dir`` (fresh when none); ``load_problem`` says why not.

        A file with a problem is rewritten at once with what was usable in it. Raises
        :class:`~ckptd.run_dir.NotRegularFile` when a link, a FIFO or a directory is there.
        """
        path = run_dir / BUDGET_FILE
        learned, problem = Budgets(), None
        maximum = settings.get("maximum", MAXIMUM)
        try:
            learned, rejected = Budgets.from_json(strict_json.loads(read_regular(path)), maximum)
            if rejected:
                problem = f"{path}: ignored {', '.join(rejected)} (not seconds in (0, {maximum:g}])"
        except FileNotFoundError:
            pass
        except NotRegularFile:
            raise
        except (OSError, ValueError, RecursionError) as exc:
            problem = f"{path}: ignored ({exc}); learning again"
        budget = cls(learned, **settings)
        budget.load_problem = problem
        if problem is not None:
            try:
                budget.save(run_dir)
            except OSError:
                pass  # a full run directory: the values in memory are sane all the same
        return budget

    def save(self, run_dir: Path) -> Budgets:
        """Write :meth:`merged` to the run directory (atomically, 0600) and return it."""
        merged = self.merged()
        record = {**merged.to_json(), "saved": time.time()}
        write_private(run_dir / BUDGET_FILE, strict_json.dumps(record))
        return merged

    def merged(self) -> Budgets:
        """This run's measurements averaged with what earlier runs learned."""
        measured = self.measured()
        values: dict[str, float | None] = {}
        for phase in Phase:
            new, old = measured.of(phase), self.learned.of(phase)
            if new is not None and old is not None:
                new = _ALPHA * new + (1 - _ALPHA) * old
            new = new if new is not None else old
            values[phase.value] = None if new is None else min(new, self.maximum)
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

    def stepped(self, now: float, steps: int = 1) -> None:
        """The job reported a new step, ``steps`` past the one reported before.

        Reports are batched (one a second at most), so the time between two reports is the
        hang clock's measure, and that time per step advanced is the straggler watch's.
        """
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
            self._note_rate((now - self._last_step) / max(1, steps), self._last_step)
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
        return max(self.minimum, min(self.maximum, max(known))) if known else self.fallback

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
