"""Goodput accounting from event logs: synthetic jobs whose every second is known."""

from __future__ import annotations

import json
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from fakes.event_log import SimulatedJob, spot_schedule

from ckptd.reporting.goodput import KINDS, account, goodput_of
from ckptd.reporting.goodput_watch import GoodputWatch
from ckptd.reporting.history import History, read_events

from conftest import wait_for


def _check(job: SimulatedJob, tolerance: float = 0.01) -> None:
    found = goodput_of(job.records)
    wall = sum(job.truth.values())
    assert found.ratio == pytest.approx(job.ratio(), abs=tolerance)
    assert found.wall == pytest.approx(wall, rel=0.001)
    for kind in ("productive", "saving", "lost", "restarting", "idle"):
        assert getattr(found, kind) == pytest.approx(job.truth[kind], abs=0.01 * wall), kind
    for count in ("attempts", "failures", "preemptions", "checkpoints", "daemon_runs"):
        assert getattr(found, count) == job.counts[count], count


def test_goodput_matches_a_spot_schedule_with_progress_events() -> None:
    """Crashes, a preemption, a lost machine: every kind of time within 1 % of the truth."""
    _check(spot_schedule(SimulatedJob()))


def test_goodput_without_progress_events_extrapolates_the_first_step() -> None:
    """Without job.progress or ckptd.started, the first step is found from the step rate."""
    job = spot_schedule(SimulatedJob(progress=None, daemon_started_event=False))
    _check(job)


def test_goodput_of_frequent_saves_and_short_steps() -> None:
    """Saves every minute of a 2 s save, 0.1 s steps, several crashes: within 1 %."""
    job = SimulatedJob(step=0.1, save=2.0, every=60.0, startup=5.0, backoff=1.0)
    job.daemon()
    job.launch()
    for crash_at in (400.0, 1000.0, 1100.0, 2000.0):
        job.train_until(crash_at)
        job.crash(0.05)
    job.train_until(3000.0)
    job.stop()
    _check(job)


def _record(time: float, event: str, attempt: int | None = 0, step: int | None = None, **f: Any):
    return {"time": time, "event": event, "job": "j", "attempt": attempt, "step": step, **f}


def test_a_job_that_finishes_keeps_all_its_training() -> None:
    """A job that exits 0 on its own: its result is the kept work, nothing lost."""
    records = [
        _record(0, "ckptd.started"),
        _record(1, "job.started", resume_step=None),
        _record(11, "job.progress", step=0),
        _record(101, "job.exited", step=900, exit_code=0),
        _record(101, "job.finished", step=900, exit_code=0),
        _record(102, "ckptd.exiting", step=900, exit_code=0),
    ]
    found = goodput_of(records)
    assert (found.productive, found.lost, found.restarting, found.idle) == (90, 0, 11, 1)
    assert found.ratio == pytest.approx(90 / 102)
    assert found.failures == 0


def test_work_above_an_invalid_checkpoint_is_lost() -> None:
    """A relaunch that resumes from an older checkpoint makes the newer one's work lost."""
    records = [
        _record(0, "job.started", resume_step=None),
        _record(10, "job.progress", step=0),
        _record(50, "checkpoint.started", step=40),
        _record(51, "checkpoint.committed", step=40),
        _record(90, "checkpoint.started", step=80),
        _record(91, "checkpoint.committed", step=80),
        _record(100, "job.exited", step=89, exit_code=1),
        _record(100, "job.restarting", delay=0),
        _record(100, "checkpoint.invalid", attempt=1, path="step-80", why="digest"),
        _record(100, "job.started", attempt=1, resume_step=40),
    ]
    spans = account(records).spans
    kept_until = max(s.end for s in spans if s.kind == "productive" and s.attempt == 0)
    assert kept_until == pytest.approx(50)  # the state of step 40 was taken at 50
    found = goodput_of(records)
    assert found.lost == pytest.approx((90 - 51) + (100 - 91))
    assert found.saving == pytest.approx(2)


def test_a_commit_whose_acknowledgement_died_still_counts() -> None:
    """The next launch resumes from a step never acknowledged: that work was kept."""
    records = [
        _record(0, "job.started", resume_step=None),
        _record(10, "job.progress", step=0),
        _record(60, "job.progress", step=50),
        _record(110, "job.exited", step=100, exit_code=1),
        _record(110, "job.restarting", delay=0),
        _record(110, "job.started", attempt=1, resume_step=90),
    ]
    found = goodput_of(records)
    assert found.productive == pytest.approx(90)  # steps 1..90, one second each
    assert found.lost == pytest.approx(10)


def test_an_adopted_job_bridges_two_daemons() -> None:
    """A job left running by a killed daemon and stopped by the next: no offline time."""
    records = [
        _record(0, "job.started", resume_step=None),
        _record(10, "job.progress", step=0),
        _record(20, "job.progress", step=10),
        # the daemon is SIGKILLed; the job trains on; a new daemon adopts it at 50
        _record(50, "ckptd.started", attempt=0),
        _record(50, "job.adopted", step=None, pid=7),
        _record(51, "job.stopping", kind="restart", step=None),
        _record(52, "checkpoint.started", step=42),
        _record(53, "checkpoint.committed", step=42),
        _record(53.5, "job.exited", step=42, exit_code=None),
        _record(53.5, "job.restarting", delay=0, reason="orphan"),
        _record(54, "job.started", attempt=1, resume_step=42),
        _record(60, "job.exited", attempt=1, step=42, exit_code=0),
        _record(60, "job.finished", attempt=1, step=42, exit_code=0),
        _record(60, "ckptd.exiting", attempt=1, step=42),
    ]
    found = goodput_of(records)
    assert found.offline == 0
    assert found.productive == pytest.approx(42)
    assert found.lost == 0 and found.failures == 0
    assert found.daemon_runs == 2


def test_a_live_job_counts_its_tail_as_unsaved() -> None:
    """With ``now``, training since the last commit is unsaved and the ratio ignores it."""
    records = [
        _record(0, "ckptd.started"),
        _record(0, "job.started", resume_step=None),
        _record(10, "job.progress", step=0),
        _record(70, "checkpoint.started", step=60),
        _record(80, "checkpoint.committed", step=60),
        _record(100, "job.progress", step=80),
    ]
    found = goodput_of(records, now=130)
    assert found.unsaved == pytest.approx(50)
    assert found.ratio == pytest.approx(60 / 80)
    assert found.failures == 0
    dead = goodput_of(records)  # the daemon died: the tail up to its last record is lost
    assert dead.lost == pytest.approx(20) and dead.failures == 1


def test_a_background_save_costs_only_its_reported_stall() -> None:
    """Training goes on during a background save: only its stall is saving time."""
    records = [
        _record(0, "job.started", resume_step=None),
        _record(10, "job.progress", step=0),
        _record(50, "checkpoint.started", step=40),
        _record(55, "job.progress", step=45),
        _record(60, "checkpoint.committed", step=40, stall=0.5),
        _record(100, "job.exited", step=90, exit_code=0),
        _record(100, "job.finished", exit_code=0),
    ]
    found = goodput_of(records)
    assert found.saving == pytest.approx(0.5)
    assert found.productive == pytest.approx(89.5)
    unreported = [r for r in records if "stall" not in r] + [
        {**records[4], "stall": None}  # no stall field: the step moving tells it was background
    ]
    assert goodput_of(sorted(unreported, key=lambda r: r["time"])).saving == 0
    announced = [  # as the daemon logs it: the snapshot's stall on checkpoint.started
        {**r, "stall": 0.5} if r["event"] == "checkpoint.started" else r for r in unreported
    ]
    found = goodput_of(sorted(announced, key=lambda r: r["time"]))
    assert found.saving == pytest.approx(0.5)
    unseen = [r for r in announced if r["time"] != 55]  # no step report during the save
    assert goodput_of(sorted(unseen, key=lambda r: r["time"])).saving == pytest.approx(0.5)


def test_runs_are_split_without_ckptd_started() -> None:
    """Old logs: a new daemon is seen where the attempt counter starts over."""
    records = [
        _record(0, "job.started", resume_step=None),
        _record(5, "job.progress", step=0),
        _record(9, "job.progress", step=4),
        _record(100, "checkpoint.temporary_removed", path=".tmp-x"),
        _record(100, "job.started", resume_step=None),
        _record(105, "job.progress", step=0),
    ]
    history = History.from_records(records)
    assert len(history.runs) == 2 and history.runs[1].start == 100
    found = goodput_of(records)
    assert found.offline == pytest.approx(91)
    assert found.lost == pytest.approx(4) and found.failures == 2


def test_read_events_skips_torn_and_foreign_lines(tmp_path: Path) -> None:
    """A half-written last line or a stray text line never breaks the report."""
    path = tmp_path / "events.jsonl"
    good = {"time": 1.0, "event": "job.started", "attempt": 0, "step": None}
    path.write_text(json.dumps(good) + "\nnot json\n[1, 2]\n" + '{"time": 2.0, "ev')
    assert read_events(path) == [good]


def test_every_second_is_classified_once() -> None:
    """The spans of a schedule tile the wall time: no overlap, no hole inside a run."""
    job = spot_schedule(SimulatedJob())
    result = account(job.records)
    spans = result.spans
    assert all(s.kind in KINDS for s in spans)
    for before, after in pairwise(spans):
        assert after.start >= before.end - 1e-9
    assert sum(s.seconds for s in spans) == pytest.approx(result.goodput.wall)


def test_ranks_starting_one_save_count_it_once() -> None:
    """Two ranks announce the same save: one stall, from the first announcement."""
    records = [
        _record(0, "job.started", resume_step=None),
        _record(10, "job.progress", step=0),
        _record(50, "checkpoint.started", step=40, pid=1),
        _record(50.5, "checkpoint.started", step=40, pid=2),
        _record(53, "checkpoint.committed", step=40),
        _record(60, "job.exited", step=47, exit_code=0),
        _record(60, "job.finished", exit_code=0),
    ]
    history = History.from_records(records)
    assert [(s.started, s.ended) for s in history.attempts[0].saves] == [(50, 53)]
    assert goodput_of(records).saving == pytest.approx(3)


def test_the_watch_refreshes_goodput_off_the_loop(tmp_path: Path) -> None:
    """A thread recomputes goodput as the log grows, hands it over, and ends on close."""

    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(_record(time.time() - 100, "ckptd.started")) + "\n")
    seen: list[float] = []
    watch = GoodputWatch(path, every=0.05, on_result=lambda g: seen.append(g.wall))
    watch.start()
    try:
        wait_for(lambda: watch.latest is not None, "a first result")
        assert watch.latest is not None and watch.latest.wall >= 100  # live: up to now
        with open(path, "a") as handle:
            handle.write(json.dumps(_record(time.time() - 50, "job.started")) + "\n")
        wait_for(lambda: watch.latest and watch.latest.attempts == 1, "the new attempt counted")
        path.unlink()
        wait_for(lambda: watch.error, "the unreadable log reported")
    finally:
        watch.close()
    assert seen and watch.latest is not None


def test_the_watch_looks_often_while_the_job_is_young(tmp_path: Path) -> None:
    """With a 60 s period the second refresh still comes within seconds, not a minute."""
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(_record(time.time() - 1, "ckptd.started")) + "\n")
    watch = GoodputWatch(path, every=60.0)
    watch.start()
    try:
        wait_for(lambda: watch.latest is not None, "a first result")
        with open(path, "a") as handle:
            handle.write(json.dumps(_record(time.time(), "job.started")) + "\n")
        wait_for(lambda: watch.latest and watch.latest.attempts == 1, "a refresh", timeout=15)
    finally:
        watch.close()
