"""every = "auto": Young/Daly from the measured save stall and the observed failure rate."""

from __future__ import annotations

import math

import pytest

from ckptd.progress.interval import FailureHistory, choose_interval, estimate_mtbf, young_daly

HOUR = 3600.0


def _choose(history: FailureHistory, **bounds: float):
    settings = {"prior_mtbf": 6 * HOUR, "every_min": 60.0, "every_max": 2 * HOUR, **bounds}
    return choose_interval(history, **settings)


def test_young_daly_minimises_the_expected_waste() -> None:
    """sqrt(2CM) is where save overhead C/t plus expected rework t/2M is smallest."""
    cost, mtbf = 0.5, 6 * HOUR
    best = min(range(10, 2000), key=lambda t: cost / t + t / (2 * mtbf))
    assert young_daly(cost, mtbf) == pytest.approx(best, abs=1)
    assert young_daly(0.5, 6 * HOUR) == pytest.approx(math.sqrt(21600))


def test_a_fresh_job_uses_the_prior_and_saves_early_to_measure() -> None:
    """No history: MTBF is the prior, and every_min until a save was measured."""
    choice = _choose(FailureHistory())
    assert choice.mtbf == 6 * HOUR
    assert (choice.every, choice.bound, choice.optimum) == (60.0, "every_min", None)
    measured = _choose(FailureHistory().with_save(2.0))
    assert measured.every == pytest.approx(math.sqrt(2 * 2.0 * 6 * HOUR))
    assert measured.bound is None and measured.save_cost == 2.0


def test_observed_failures_pull_the_mtbf_from_the_prior() -> None:
    """Ten failures in ten hours: (6 h + 10 h) / 11, and the interval shrinks with it."""
    assert estimate_mtbf(10, 10 * HOUR, 6 * HOUR) == pytest.approx(16 * HOUR / 11)
    calm = _choose(FailureHistory(0, 10 * HOUR, (5.0,)))
    stormy = _choose(FailureHistory(10, 10 * HOUR, (5.0,)))
    assert stormy.every < calm.every
    assert stormy.every == pytest.approx(math.sqrt(2 * 5.0 * 16 * HOUR / 11))


def test_running_time_counts_as_exposure() -> None:
    """Time supervised since the history was read lengthens the MTBF."""
    history = FailureHistory(2, HOUR, (1.0,))
    assert _choose(history, running=HOUR).mtbf > _choose(history).mtbf


def test_bounds_and_the_background_write_time() -> None:
    """every_min and every_max bound the choice; a background save is never overlapped."""
    assert _choose(FailureHistory(stalls=(0.001,))).bound == "every_min"
    assert _choose(FailureHistory(stalls=(600.0,)), every_max=HOUR).every == HOUR
    background = FailureHistory().with_save(0.0, seconds=90.0)
    choice = _choose(background)
    assert (choice.every, choice.bound) == (180.0, "write_time")


def test_one_slow_save_does_not_swing_the_interval() -> None:
    """The cost is the median of the last five stalls."""
    history = FailureHistory()
    for stall in (9.0, 1.0, 1.0, 1.0, 1.0, 50.0):
        history = history.with_save(stall)
    assert history.stalls == (1.0, 1.0, 1.0, 1.0, 50.0)
    assert _choose(history).save_cost == 1.0


def test_history_from_an_event_log() -> None:
    """A crash is a failure, a preemption whose final save landed is not; a synchronous
    save's span is its stall."""

    def record(time: float, event: str, attempt: int = 0, step: int | None = None, **f: object):
        return {"time": time, "event": event, "attempt": attempt, "step": step, **f}

    records = [
        record(0, "ckptd.started"),
        record(0, "job.started", resume_step=None),
        record(10, "job.progress", step=0),
        record(100, "checkpoint.started", step=90),
        record(103, "checkpoint.committed", step=90, seconds=3.0),
        record(200, "job.exited", step=180, exit_code=1),
        record(200, "job.restarting", delay=0),
        record(200, "job.started", attempt=1, resume_step=90),
        record(300, "preemption.noticed", attempt=1, step=190),
        record(300, "job.stopping", attempt=1, kind="stop"),
        record(301, "checkpoint.started", attempt=1, step=191),
        record(302, "checkpoint.committed", attempt=1, step=191, seconds=1.0),
        record(302, "preemption.final", attempt=1, step=191, final_checkpoint="/c/step-191"),
        record(302, "job.exited", attempt=1, step=191, exit_code=0),
        record(302, "ckptd.exiting", attempt=1, step=191),
    ]
    history = FailureHistory.from_records(records)
    assert history.failures == 1
    unsaved = [
        {**r, "final_checkpoint": None} if r["event"] == "preemption.final" else r for r in records
    ]
    assert FailureHistory.from_records(unsaved).failures == 2
    assert history.exposure == pytest.approx(302)
    assert history.stalls == pytest.approx((3.0, 1.0))
    assert history.with_failure().failures == 2


def test_nonsense_inputs_are_refused() -> None:
    """A zero prior or inverted bounds are errors, not a silent interval."""
    with pytest.raises(ValueError):
        estimate_mtbf(0, 0, 0)
    with pytest.raises(ValueError):
        young_daly(1.0, 0)
    with pytest.raises(ValueError):
        _choose(FailureHistory(), every_min=100.0, every_max=10.0)
