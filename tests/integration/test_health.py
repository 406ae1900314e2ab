"""Hangs found from learned timeouts (with every thread's stack), stragglers, every = "auto"."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

from conftest import Job, wait_for

LEARN = ("--hang-min", "1s", "--restart-delay", "0", "--kill-timeout", "1s")


def test_a_hang_is_found_from_the_learned_step_time_with_stacks_and_restarted(job: Job) -> None:
    """hang_timeout "auto": a job that stops reporting is dumped, killed, relaunched; learned
    timeouts carry over to the next attempt (which hangs before it could learn anything)."""
    job.start_fake(
        "--step-time", "0.02", "--hang-at", "400", "--hang-attempts", "2", "--steps", "420",
        "--save-every", "100", options=LEARN,
    )  # fmt: skip
    first = job.wait_event("job.hung", timeout=60)
    assert first["phase"] == "step" and first["since_step"] >= 390
    assert 1.0 <= first["timeout"] < 30, first  # learned from ~0.1 s step reports, floor hang_min
    stacks = (job.run_dir / "stacks-0.txt").read_text()
    assert "Thread" in stacks and "trainer.py" in stacks and "main" in stacks, stacks
    assert "job.stacks" in job.stderr.read_text()
    second = job.wait_event("job.hung", count=2, timeout=60)  # attempt 1 hangs at step 400 too
    assert second["timeout"] < 30, "the learned budget was not reused after the restart"
    assert job.wait() == 0
    assert len(job.records("start")) == 3 and job.records("done")
    assert json.loads((job.run_dir / "hang_budget.json").read_text())["step"] < 30


def test_a_hang_holding_the_gil_still_gives_its_stacks(job: Job) -> None:
    """A hang inside a C call that holds the GIL: faulthandler still dumps every thread."""
    job.start_fake(
        "--step-time", "0.02", "--hang-at", "400", "--hang-gil", "--steps", "405", options=LEARN
    )
    job.wait_event("job.hung", timeout=60)
    stacks = (job.run_dir / "stacks-0.txt").read_text()
    assert "trainer.py" in stacks and "Current thread" in stacks, stacks
    assert job.wait() == 0
    assert len(job.records("start")) == 2


def test_a_save_longer_than_the_learned_step_timeout_is_not_a_hang(
    job: Job, tmp_path: Path
) -> None:
    """With learned budgets, a save lasting twice the step timeout is left alone, then commits."""
    release = tmp_path / "release-the-save"
    job.start_fake("--step-time", "0.02", "--save-until", str(release), options=LEARN)
    job.wait_event("client.connected")
    learned = wait_for(
        lambda: (budget := job.status()["hang_timeouts"])["step"] < 1800 and budget,
        "the step budget to be learned (warm-up and samples)",
    )
    (job.run_dir / "CHECKPOINT").touch()
    started = job.wait_event("checkpoint.started")["time"]
    wait_for(
        lambda: time.time() - started > 2 * learned["step"], "the save to outlast two step budgets"
    )
    assert not job.events("job.hung")
    release.touch()
    job.wait_event("checkpoint.committed")
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    assert len(job.records("start")) == 1 and not job.events("job.hung")


def test_every_auto_measures_a_save_then_chooses_from_the_numbers(job: Job) -> None:
    """every = "auto": a first save at every_min measures the cost; status shows the inputs."""
    job.start_fake("--save-time", "0.2", options=("--every", "auto", "--every-min", "1s"))
    job.wait_event("checkpoint.committed", timeout=60)
    interval = job.wait_event("checkpoint.interval", timeout=60)
    assert interval["save_cost"] > 0.1 and interval["mtbf"] > 0
    status = job.status()["interval"]
    assert status["every"] == interval["every"] and status["optimum"] is not None
    assert job.status()["goodput"] is not None
    human = job.cli("status").stdout
    assert re.search(r"^goodput .*, as of [0-9.]+ \w+ ago\)$", human, re.MULTILINE), human
    job.signal(signal.SIGTERM)
    assert job.wait() == 0


def test_every_auto_counts_only_the_stall_of_a_background_save(job: Job) -> None:
    """A background save of 1 s costs training only its snapshot: the interval's save cost."""
    job.start_fake(
        "--save-time", "1.0", "--background",
        options=("--every", "auto", "--every-min", "1s"),
    )  # fmt: skip
    interval = job.wait_event("checkpoint.interval", timeout=60)
    committed = job.events("checkpoint.committed")[0]
    assert committed["seconds"] >= 1.0
    assert interval["save_cost"] < 0.5, interval  # not the whole save
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
