"""hang_timeout = "auto": budgets learned from step, save and first-step times, kept across runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ckptd.progress.hang_budget import BUDGET_FILE, Budgets, HangBudget, Phase
from ckptd.run_dir import NotRegularFile


def _budget(learned: Budgets | None = None) -> HangBudget:
    return HangBudget(learned, warmup=5, samples=10, minimum=0.5, fallback=1800.0)


def _steps(budget: HangBudget, start: float, intervals: list[float]) -> float:
    now = start
    for interval in intervals:
        now += interval
        budget.stepped(now)
    return now


def test_fallback_until_anything_is_learned() -> None:
    """A fresh job gets the fallback for its first step, and while the step budget warms up."""
    budget = _budget()
    budget.launched(100.0)
    assert budget.phase is Phase.FIRST_STEP
    assert budget.deadline() == 1900.0
    now = _steps(budget, 100.0, [20.0] + [1.0] * 12)  # first step, warm-up, 7 measured
    assert budget.phase is Phase.STEP
    assert budget.timeout(Phase.STEP) == 1800.0
    _steps(budget, now, [1.0] * 3)
    assert budget.timeout(Phase.STEP) == pytest.approx(5.0)


def test_five_times_the_longest_interval_after_warm_up() -> None:
    """Slow warm-up steps (compilation) do not count; the longest later interval does."""
    budget = _budget()
    budget.launched(0.0)
    now = _steps(budget, 0.0, [30.0, 60.0, 50.0, 40.0, 20.0, 10.0])  # first step + 5 warm-up
    now = _steps(budget, now, [1.0, 1.0, 2.0] + [1.0] * 9)
    assert budget.timeout(Phase.STEP) == pytest.approx(10.0)
    assert budget.timeout(Phase.FIRST_STEP) == pytest.approx(150.0)
    assert budget.deadline() == pytest.approx(now + 10.0)
    assert budget.overdue(now + 9.9) is None
    assert budget.overdue(now + 10.5) == (Phase.STEP, pytest.approx(10.5), pytest.approx(10.0))


def test_a_save_ten_times_longer_than_a_step_is_not_a_hang() -> None:
    """During a save the save budget applies; its interval does not teach the step budget."""
    budget = _budget(Budgets(save=100.0))
    budget.launched(0.0)
    now = _steps(budget, 0.0, [5.0] + [1.0] * 20)
    budget.save_started(now)
    assert budget.phase is Phase.SAVE
    assert budget.overdue(now + 50.0) is None  # a step budget of 5 s would have fired here
    budget.save_ended(now + 50.0)
    now = _steps(budget, now + 50.0, [1.0] * 3)
    assert budget.timeout(Phase.STEP) == pytest.approx(5.0)  # the 51 s gap was not a step
    assert budget.timeout(Phase.SAVE) == 250.0  # 5 x the 50 s save, above the learned 100
    budget.save_started(now)
    assert budget.overdue(now + 251.0) == (Phase.SAVE, pytest.approx(251.0), 250.0)


def test_a_relaunch_reuses_what_was_learned() -> None:
    """After a restart the first-step and step budgets from the earlier attempt apply."""
    budget = _budget()
    budget.launched(0.0)
    now = _steps(budget, 0.0, [10.0] + [1.0] * 20)
    budget.exited()
    assert budget.deadline() is None
    budget.launched(now + 5.0)
    assert budget.deadline() == pytest.approx(now + 5.0 + 50.0)
    budget.stepped(now + 15.0)
    assert budget.deadline() == pytest.approx(now + 15.0 + 5.0)


def test_budgets_persist_and_are_smoothed_across_runs(tmp_path: Path) -> None:
    """A new run starts from the file; what it saves averages its own measurement in."""
    first = _budget()
    first.launched(0.0)
    _steps(first, 0.0, [10.0] + [2.0] * 20)
    assert first.save(tmp_path) == Budgets(first_step=50.0, step=10.0, save=None, runs=1)
    second = HangBudget.load(tmp_path, warmup=5, samples=10, minimum=0.5)
    assert second.load_problem is None
    second.launched(0.0)
    assert second.deadline() == pytest.approx(50.0)  # learned, not the fallback
    _steps(second, 0.0, [4.0] + [1.0] * 20)
    assert second.timeout(Phase.STEP) == pytest.approx(10.0)  # within a run: never shrinks
    merged = second.save(tmp_path)
    assert (merged.step, merged.first_step, merged.runs) == (7.5, 35.0, 2)
    stored = json.loads((tmp_path / BUDGET_FILE).read_text())
    assert stored["step"] == 7.5 and stored["version"] == 1
    assert (tmp_path / BUDGET_FILE).stat().st_mode & 0o777 == 0o600


def test_minimum_bounds_a_learned_budget() -> None:
    """A job of 10 ms steps is not killed after 50 ms of silence."""
    budget = HangBudget(minimum=30.0, warmup=0, samples=3)
    budget.launched(0.0)
    _steps(budget, 0.0, [0.5, 0.01, 0.01, 0.01, 0.01])
    assert budget.timeout(Phase.STEP) == 30.0
    assert budget.measured().step == pytest.approx(0.05)


def test_a_bad_budget_file_is_ignored_with_a_reason(tmp_path: Path) -> None:
    """Garbage or wrong types: learn again and say why, never crash."""
    (tmp_path / BUDGET_FILE).write_text("{not json")
    budget = HangBudget.load(tmp_path)
    assert budget.learned == Budgets() and "ignored" in (budget.load_problem or "")
    (tmp_path / BUDGET_FILE).write_text(json.dumps({"step": "fast", "save": -1, "runs": True}))
    assert HangBudget.load(tmp_path).learned == Budgets()
    assert HangBudget.load(tmp_path / "missing").load_problem is None


@pytest.mark.parametrize(
    "poison",
    [
        '{"first_step": Infinity, "step": Infinity, "save": Infinity, "runs": 3}',
        '{"first_step": NaN, "step": 1e400, "save": -Infinity}',
        '{"first_step": -5, "step": 0, "save": 1e300, "runs": -1}',
        '{"first_step": 86401, "step": 1e12, "save": "forever", "runs": 100000000000000000000}',
    ],
)
def test_a_poisoned_budget_file_is_ignored_and_rewritten_sane(tmp_path: Path, poison: str) -> None:
    """Non-finite, negative or absurd budgets never switch hang detection off; the file is
    rewritten at once as strict JSON with only sane values."""
    (tmp_path / BUDGET_FILE).write_text(poison)
    budget = HangBudget.load(tmp_path, minimum=1.0)
    assert budget.load_problem is not None and "ignored" in budget.load_problem
    assert budget.learned == Budgets()
    budget.launched(0.0)
    assert budget.timeout(Phase.FIRST_STEP) == 1800.0  # the fallback: finite, so a hang is seen
    assert budget.overdue(1800.0) is not None
    text = (tmp_path / BUDGET_FILE).read_text()
    saved = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in {text}"))
    assert {saved[k] for k in ("first_step", "step", "save")} == {None} and saved["runs"] == 0
    assert HangBudget.load(tmp_path).load_problem is None  # sane from now on


def test_sane_values_survive_next_to_a_poisoned_one(tmp_path: Path) -> None:
    """Only the bad field is dropped: what was learned of the others is kept."""
    (tmp_path / BUDGET_FILE).write_text('{"first_step": 40.0, "step": -3, "save": 90, "runs": 2}')
    budget = HangBudget.load(tmp_path, minimum=1.0)
    assert budget.learned == Budgets(40.0, None, 90.0, 2)
    assert budget.load_problem is not None and "step=-3" in budget.load_problem


def test_no_budget_exceeds_a_day() -> None:
    """A learned budget (even from a day-long step) is capped, in force and when saved."""
    budget = HangBudget(Budgets(step=50000.0), warmup=0, samples=1, minimum=1.0)
    budget.launched(0.0)
    _steps(budget, 0.0, [1.0, 1.0, 30000.0, 1.0])
    assert budget.timeout(Phase.STEP) == 86400.0
    assert budget.merged().step == 86400.0


def test_a_linked_or_fifo_budget_file_is_refused(tmp_path: Path) -> None:
    """A symlink or a FIFO at hang_budget.json raises NotRegularFile at once (no wait)."""
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"step": 99.0}))
    os.symlink(target, tmp_path / BUDGET_FILE)
    with pytest.raises(NotRegularFile, match="symlink"):
        HangBudget.load(tmp_path)
    (tmp_path / BUDGET_FILE).unlink()
    os.mkfifo(tmp_path / BUDGET_FILE)
    with pytest.raises(NotRegularFile, match="FIFO"):
        HangBudget.load(tmp_path)


def test_a_collapsed_step_rate_is_straggling_and_one_long_step_is_not() -> None:
    """Steps five times slower for a minute are reported; one long evaluation step is not."""
    budget = _budget()
    budget.launched(0.0)
    now = _steps(budget, 0.0, [5.0] + [1.0] * 30)
    now = _steps(budget, now, [40.0, 1.0, 1.0])  # an evaluation, then back to normal
    assert budget.slow(now, window=30.0) is None
    now = _steps(budget, now, [6.0] * 12)  # 72 s of steps six times slower
    typical, since = budget.slow(now, window=60.0) or (0.0, 0.0)
    assert typical == pytest.approx(1.0) and since == pytest.approx(72.0)
    assert budget.slow(now, window=100.0) is None
    budget.stepped(now + 1.0)  # the rate recovers
    assert budget.slow(now + 1.0, window=1.0) is None


def test_straggling_is_seen_through_batched_step_reports() -> None:
    """Reports a second apart that carry ten times fewer steps are a collapsed step rate."""
    budget = _budget()
    budget.launched(0.0)
    now = 0.0
    for _ in range(31):  # 0.1 s steps, reported once a second: ten steps per report
        now += 1.0
        budget.stepped(now, 10)
    assert budget.slow(now, window=1.0) is None
    for _ in range(70):  # 1 s steps: one per report, still one report a second
        now += 1.0
        budget.stepped(now, 1)
    typical, since = budget.slow(now, window=60.0) or (0.0, 0.0)
    assert typical == pytest.approx(0.1) and since >= 60.0
