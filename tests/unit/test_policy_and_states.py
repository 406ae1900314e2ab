"""Pure pieces: restart policy, retention plan, state transitions, periodic timer."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from ckptd.process.restart_policy import ExitStatus, RestartPolicy
from ckptd.sources.timer import PeriodicTimer
from ckptd.storage.retention import RetentionRules, plan
from ckptd.supervisor.states import JobState, TransitionError, check_transition
from ckptd_client.store import Checkpoint


def test_restart_modes() -> None:
    """on-failure restarts failures only; always restarts everything; never nothing."""
    ok, bad, killed = ExitStatus(code=0), ExitStatus(code=1), ExitStatus(signal=9)
    assert not RestartPolicy("on-failure").wants_restart(ok)
    assert RestartPolicy("on-failure").wants_restart(bad)
    assert RestartPolicy("on-failure").wants_restart(killed)
    assert RestartPolicy("always").wants_restart(ok)
    assert not RestartPolicy("never").wants_restart(bad)
    assert killed.shell_code == 137 and str(killed) == "killed by SIGKILL"


def test_max_restarts_counts_restarts_without_progress() -> None:
    """With max_restarts = 5 the sixth restart in a row is refused."""
    policy = RestartPolicy(max_restarts=5)
    assert not policy.exhausted(5)
    assert policy.exhausted(6)
    assert RestartPolicy(max_restarts=0).exhausted(1)


def test_backoff_doubles_with_jitter_up_to_the_ceiling() -> None:
    """Delays double from restart_delay, stay within +-20%, and never pass restart_delay_max."""
    policy = RestartPolicy(delay=1.0, delay_max=10.0)
    rng = random.Random(7)
    for n, nominal in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)]:
        assert nominal * 0.8 <= policy.backoff(n, rng) <= nominal * 1.2
    assert all(policy.backoff(n, rng) <= 10.0 for n in range(5, 200))
    assert RestartPolicy(delay=0.0).backoff(3, rng) == 0.0


def _ck(step: int, valid: bool = True, metrics: dict | None = None, t: float = 0.0) -> Checkpoint:
    return Checkpoint(Path(f"/c/step-{step:08d}"), step, t or float(step), 1, metrics or {}, valid)


def test_retention_keeps_last_best_and_protected() -> None:
    """keep_last, keep_best and protected checkpoints survive; the rest is planned for deletion."""
    found = [
        _ck(s, metrics={"loss": {1: 0.1, 2: 0.9, 3: 0.8, 4: 0.7, 5: 0.6}[s]}) for s in range(1, 6)
    ]
    rules = RetentionRules(keep_last=2, keep_best=1, best_metric="loss")
    doomed = plan(found, rules, protect=[Path("/c/step-00000002")])
    assert [c.step for c in doomed] == [3]


def test_retention_never_deletes_newest_valid_and_cleans_old_invalid() -> None:
    """Invalid dirs older than the newest valid go; newer invalid ones stay for inspection."""
    found = [_ck(1, valid=False), _ck(2), _ck(3, valid=False), _ck(4), _ck(5, valid=False)]
    doomed = plan(found, RetentionRules(keep_last=1))
    assert [c.step for c in doomed] == [1, 2, 3]
    assert plan([_ck(1)], RetentionRules(keep_last=1)) == []


def test_retention_keep_every_keeps_one_per_interval() -> None:
    """keep_every keeps the first checkpoint of each interval."""
    found = [_ck(s, t=100.0 * s) for s in range(1, 7)]  # times 100..600
    doomed = plan(found, RetentionRules(keep_last=1, keep_every=250.0))
    assert [c.step for c in doomed] == [2, 4]  # kept: 1 (bucket 0), 3 (1), 5 (2), 6 newest


def test_state_transitions() -> None:
    """The arbiter may only move along the documented diagram."""
    assert check_transition(JobState.RUNNING, JobState.STOPPING) is JobState.STOPPING
    assert check_transition(JobState.BACKOFF, JobState.STARTING) is JobState.STARTING
    with pytest.raises(TransitionError):
        check_transition(JobState.EXITED, JobState.RUNNING)
    with pytest.raises(TransitionError):
        check_transition(JobState.STOPPING, JobState.RUNNING)


def test_periodic_timer() -> None:
    """The timer is due `every` seconds after its last reset and not while paused."""
    timer = PeriodicTimer(10.0)
    timer.reset(100.0)
    assert not timer.is_due(109.9) and timer.is_due(110.0)
    timer.pause()
    assert not timer.is_due(1000.0)
    assert PeriodicTimer(None).next_due() is None
