"""An idle daemon sleeps: its loop wakes for messages, requests, signals and due moments only."""

from __future__ import annotations

import time

from conftest import Job, wait_for

WINDOW = 5.0  # seconds over which the loop's turns are counted


def _turns_over(job: Job, seconds: float) -> int:
    """Turns of the daemon's loop within ``seconds`` (the status requests add their own)."""
    first = job.status()["wakeups"]
    time.sleep(seconds)  # the measuring window itself, not a wait for a condition
    return int(job.status()["wakeups"]) - first


def test_nothing_pending_no_wake_ups(job: Job) -> None:
    """A connected job that does not step, with no clock due: the loop turns only for status."""
    job.start_fake("--step-time", "3600")
    job.wait_event("client.connected")
    turns = _turns_over(job, WINDOW)
    assert turns <= 3, f"{turns} turns in {WINDOW:g} s with nothing to do"


def test_a_fast_job_wakes_the_daemon_about_once_a_second(job: Job) -> None:
    """A job stepping every 10 ms (default hang watch): one step report, one wake-up, a second."""
    job.start_fake("--step-time", "0.01")
    job.wait_event("client.connected")
    wait_for(lambda: job.status()["step"] is not None, "the first step report")
    turns = _turns_over(job, WINDOW)
    assert turns <= WINDOW + 4, f"{turns} turns in {WINDOW:g} s for a report a second"
