"""The training guard's pure parts: loss rules, rollback plans, skip windows, early stopping."""

from __future__ import annotations

import math

import pytest

from ckptd.guard import (
    NONFINITE,
    SPIKE,
    EarlyStop,
    EarlyStopRule,
    LossWatch,
    RollbackPlan,
    RollbackRefused,
    SkipSteps,
    SkipWindow,
    WatchRules,
    format_skip_steps,
    parse_skip_steps,
    plan_rollback,
    repeats_at,
    same_place,
)
from ckptd_client import skip_steps


def _feed(watch: LossWatch, losses: list[float], start: int = 0):
    for offset, loss in enumerate(losses):
        found = watch.observe(start + offset, loss)
        if found is not None:
            return found
    return None


@pytest.mark.parametrize(
    ("rules", "losses", "expected"),
    [
        (WatchRules(), [2.0, 1.9, float("nan")], (2, NONFINITE, 1)),
        (WatchRules(), [float("inf")], (0, NONFINITE, None)),
        (WatchRules(), [2.0, -float("inf")], (1, NONFINITE, 0)),
        (WatchRules(nonfinite=False), [2.0, float("nan"), 1.0], None),
        (WatchRules(spike=None), [1.0] * 5 + [1e9], None),
        (WatchRules(spike=3.0, window=4), [1.0, 1.1, 0.9, 1.0, 5.0], (4, SPIKE, 3)),
        (WatchRules(spike=3.0, window=4), [1.0, 1.1, 0.9, 1.0, 1.2], None),
        (WatchRules(spike=3.0, window=4), [1.0, 1.1, 0.9, 5.0], None),  # window not full yet
        (WatchRules(spike=6.0, window=3), [1.0, 1.0, 1.0, 1.0001], None),  # flat: sigma floor
        (WatchRules(spike=6.0, window=3), [1.0, 1.0, 1.0, 1.01], (3, SPIKE, 2)),
        (WatchRules(spike=2.0, window=3), [5.0, 4.0, 3.0, 2.0, 1.0, 0.5], None),  # falling
    ],
    ids=[
        "nan",
        "inf-first",
        "minus-inf",
        "nonfinite-off",
        "spike-off",
        "spike",
        "no-spike",
        "warming-up",
        "flat-noise",
        "flat-jump",
        "falling",
    ],
)
def test_loss_rules(rules: WatchRules, losses: list[float], expected) -> None:
    """Each rule trips exactly where the table says, naming the step, rule and last good step."""
    found = _feed(LossWatch(rules), losses)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert (found.step, found.rule, found.last_good) == expected
        assert found.detail


def test_a_spike_does_not_raise_the_threshold_it_is_judged_by() -> None:
    """A tripped loss stays out of the window; reset() forgets the window and the last good step."""
    watch = LossWatch(WatchRules(spike=3.0, window=4))
    assert _feed(watch, [1.0, 1.1, 0.9, 1.0]) is None
    assert watch.observe(4, 9.0) is not None
    assert watch.observe(5, 9.0) is not None
    assert watch.last_good == 3
    watch.reset()
    assert watch.last_good is None
    assert watch.observe(6, 9.0) is None  # the window is empty again


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"spike": 0.0}, "positive"), ({"spike": math.nan}, "positive"), ({"window": 1}, "at least")],
)
def test_bad_watch_rules_are_refused(kwargs: dict, message: str) -> None:
    """A non-positive spike factor or a window under 2 is a ValueError saying which."""
    with pytest.raises(ValueError, match=message):
        WatchRules(**kwargs)


@pytest.mark.parametrize(
    ("steps", "diverged", "repeats", "last_good", "previous", "resume", "skip"),
    [
        ([100, 200, 300], 350, 0, 340, None, 300, (341, 350)),
        ([100, 200, 300], 350, 0, None, None, 300, (301, 350)),
        ([100, 200, 300], 300, 0, 290, None, 200, (291, 300)),  # its own step's save is suspect
        ([100, 200, 300, 310], 350, 0, 305, None, 300, (306, 350)),  # after the last good loss
        ([100, 200, 300], 360, 1, 355, SkipWindow(341, 350), 200, (341, 360)),
        ([100, 200, 300], 360, 3, 355, SkipWindow(201, 350), None, (201, 360)),
        ([], 50, 0, 40, None, None, (41, 50)),
        ([100], 50, 0, None, None, None, (0, 50)),
    ],
    ids=[
        "newest-before",
        "no-good-loss",
        "not-the-diverged-step",
        "bounded-by-good-loss",
        "again-one-further",
        "past-oldest-fresh-start",
        "no-checkpoint",
        "only-later-checkpoint",
    ],
)
def test_rollback_plans(steps, diverged, repeats, last_good, previous, resume, skip) -> None:
    """The checkpoint to resume and the window to skip, for each situation in the table."""
    plan = plan_rollback(
        steps, diverged, repeats, last_good=last_good, previous_skip=previous, limit=None
    )
    assert plan == RollbackPlan(resume, SkipWindow(*skip), repeats)


def test_rollbacks_stop_at_the_limit_and_past_the_start() -> None:
    """Past rollback_limit, or going back further than a fresh start, the plan is refused."""
    refused = plan_rollback([100], 150, 0, rollbacks_done=2, limit=2)
    assert isinstance(refused, RollbackRefused) and "rollback_limit = 2" in refused.reason
    assert isinstance(plan_rollback([100], 150, 0, rollbacks_done=1, limit=2), RollbackPlan)
    beyond = plan_rollback([100], 150, 2)
    assert isinstance(beyond, RollbackRefused) and "start" in beyond.reason


def test_a_divergence_near_the_last_window_is_the_same_place() -> None:
    """Same place: after the resume step and no further past the window than its length."""
    plan = RollbackPlan(300, SkipWindow(341, 350), 0)
    assert same_place(plan, 305) and same_place(plan, 360)
    assert not same_place(plan, 361) and not same_place(plan, 300)
    assert repeats_at([], 350) == 0
    assert repeats_at([plan], 355) == 1
    assert repeats_at([plan, RollbackPlan(200, SkipWindow(341, 360), 1)], 360) == 2
    assert repeats_at([plan], 5000) == 0
    fresh = RollbackPlan(None, SkipWindow(0, 10), 1)
    assert same_place(fresh, 0) and same_place(fresh, 21) and not same_place(fresh, 22)


@pytest.mark.parametrize(
    ("text", "windows", "canonical"),
    [
        ("", [], ""),
        ("  ", [], ""),
        ("341-350", [(341, 350)], "341-350"),
        ("77", [(77, 77)], "77"),
        ("10-20, 5-8", [(5, 8), (10, 20)], "5-8,10-20"),
        ("10-20,21-25,15-16", [(10, 25)], "10-25"),
        ("0-0", [(0, 0)], "0"),
    ],
)
def test_skip_steps_parse_and_format(text: str, windows, canonical: str) -> None:
    """CKPTD_SKIP_STEPS reads windows sorted and merged, and writes them back canonically."""
    parsed = parse_skip_steps(text)
    assert [(w.first, w.last) for w in parsed] == windows
    assert parsed.text() == canonical == format_skip_steps(parsed)
    assert parse_skip_steps(canonical) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a-b", "'a-b' is not a step"),
        ("5-3", "ends before"),
        ("1-2,", "'' is not"),
        ("-4", "'-4' is not"),
        ("1-2-3", "'1-2-3'"),
    ],
)
def test_bad_skip_steps_name_the_part(text: str, message: str) -> None:
    """A malformed CKPTD_SKIP_STEPS is a ValueError that names the variable and the part."""
    with pytest.raises(ValueError, match="CKPTD_SKIP_STEPS") as caught:
        parse_skip_steps(text)
    assert message in str(caught.value)


def test_skip_steps_membership_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`step in skips` is true inside any window only; the variable is read from the env."""
    skips = SkipSteps([SkipWindow(3, 4), SkipWindow(9, 9)])
    assert [s for s in range(12) if s in skips] == [3, 4, 9] == list(skips.steps())
    monkeypatch.setenv(skip_steps.ENV_SKIP_STEPS, "3-4,9")
    assert skip_steps.from_environment() == skips
    monkeypatch.delenv(skip_steps.ENV_SKIP_STEPS)
    assert skip_steps.from_environment() == SkipSteps()


@pytest.mark.parametrize(
    ("rule", "values", "stops_at"),
    [
        (EarlyStopRule("val", "min", 2), [3.0, 2.0, 2.5, 2.1], 3),
        (EarlyStopRule("val", "min", 2), [3.0, 2.0, 2.5, 1.9, 2.0, 2.0], 5),
        (EarlyStopRule("val", "max", 1), [0.5, 0.6, 0.6], 2),
        (EarlyStopRule("val", "min", 2, min_delta=0.5), [3.0, 2.8, 2.7], 2),
        (EarlyStopRule("val", "min", 3), [3.0, None, None, None, 2.9], None),
        (EarlyStopRule("val", "min", 2), [3.0, math.nan, math.inf], 2),
        (EarlyStopRule("val", "min", 1), [math.nan], 0),
    ],
    ids=["min", "improves-resets", "max", "min-delta", "missing-ignored", "nonfinite", "nan-first"],
)
def test_early_stopping(rule: EarlyStopRule, values: list, stops_at: int | None) -> None:
    """Stop after `patience` checkpoints without improvement; missing metrics do not count."""
    watch = EarlyStop(rule)
    stopped = None
    for index, value in enumerate(values):
        metrics = {} if value is None else {"val": value}
        decision = watch.observe(index * 10, metrics)
        if decision.stop:
            stopped = index
            assert rule.monitor in decision.reason and "patience" in decision.reason
            break
    assert stopped == stops_at


def test_early_stopping_state_is_rebuilt_from_checkpoints_in_step_order() -> None:
    """from_history sorts by step and ends where observing them one by one would."""
    history = [(30, {"val": 2.5}), (10, {"val": 3.0}), (20, {"val": 2.0}), (40, {"val": "x"})]
    watch = EarlyStop.from_history(EarlyStopRule("val", "min", 2), history)
    assert (watch.state.best, watch.state.best_step, watch.state.since_best) == (2.0, 20, 1)
    assert watch.observe(50, {"val": 2.2}).stop


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "up"}, "'min' or 'max'"),
        ({"patience": 0}, "at least 1"),
        ({"min_delta": -1.0}, "non-negative"),
    ],
)
def test_bad_early_stop_rules_are_refused(kwargs: dict, message: str) -> None:
    """A wrong mode, patience or min_delta is a ValueError that says which."""
    with pytest.raises(ValueError, match=message):
        EarlyStopRule("val", **kwargs)
