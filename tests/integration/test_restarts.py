"""Restarts: crash loops, progress between crashes, hangs, and what a restart resumes from."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from conftest import Job, wait_for

FAST = ("--restart-delay", "0", "--kill-timeout", "1s")


def test_crash_loop_without_progress_gives_up_after_max_restarts(job: Job) -> None:
    """max_restarts = 5 and a job that crashes at once: 6 launches, then a non-zero exit."""
    job.start_fake("--crash-at", "0", options=("--max-restarts", "5", *FAST))
    assert job.wait() == 3
    assert len(job.records("start")) == 6
    assert [r["attempt"] for r in job.records("start")] == list(range(6))
    assert job.events("job.gave_up")


def test_crashes_with_progress_in_between_are_never_given_up(job: Job) -> None:
    """A job that commits a checkpoint before each crash is restarted past max_restarts."""
    job.start_fake(
        "--save-every",
        "3",
        "--crash-after-save",
        "--steps",
        "20",
        options=("--max-restarts", "1", *FAST),
    )
    assert job.wait() == 0
    starts = job.records("start")
    assert len(starts) == 7  # six crashes (steps 3, 6, ..., 18), then a run to the end
    assert [s["resume_step"] for s in starts] == [None, 3, 6, 9, 12, 15, 18]
    assert job.records("done")


def test_backoff_doubles_between_restarts(job: Job) -> None:
    """restart_delay doubles per restart without progress (with jitter), up to the ceiling."""
    job.start_fake(
        "--crash-at",
        "0",
        options=("--max-restarts", "3", "--restart-delay", "0.1s", "--restart-delay-max", "0.3s"),
    )
    assert job.wait() == 3
    delays = [e["delay"] for e in job.events("job.restarting")]
    assert len(delays) == 3
    assert 0.08 <= delays[0] <= 0.12
    assert 0.16 <= delays[1] <= 0.24
    assert delays[2] <= 0.3


def test_restart_never_returns_the_job_status(job: Job) -> None:
    """restart = "never": the job's own exit status becomes ckptd's."""
    job.start_fake("--crash-at", "2", options=("--restart", "never"))
    assert job.wait() == 1
    assert len(job.records("start")) == 1


def test_hung_job_is_killed_and_restarted(job: Job) -> None:
    """No step progress for hang_timeout: the job is stopped and relaunched, and it resumes."""
    job.start_fake(
        "--save-every",
        "3",
        "--hang-at",
        "5",
        "--steps",
        "10",
        options=("--hang-timeout", "1s", *FAST),
    )
    assert job.wait() == 0
    assert job.events("job.hung")
    starts = job.records("start")
    assert len(starts) == 2 and starts[1]["resume_step"] == 3
    assert job.records("done")


def test_sigkill_during_a_save_never_resumes_from_the_torn_directory(job: Job) -> None:
    """SIGKILL of the job mid-save leaves a .tmp- directory that is removed, never resumed."""
    job.start_fake("--save-every", "3", "--save-time", "600", "--payload", "100000", options=FAST)
    started = job.wait_record("step", count=4)
    temp = wait_for(
        lambda: [p for p in job.checkpoint_dir.glob(".tmp-*") if p.is_dir()], "a save in progress"
    )
    os.kill(started["pid"], signal.SIGKILL)
    job.wait_record("start", count=2)
    second = job.records("start")[1]
    assert second["resume_step"] is None  # no checkpoint ever committed
    assert not temp[0].exists()
    assert job.events("checkpoint.temporary_removed")
    job.signal(signal.SIGTERM)
    job.wait()


def test_corrupted_checkpoint_falls_back_to_the_previous_one(make_job) -> None:
    """A committed checkpoint whose file was altered is rejected; the one before is resumed."""
    job = make_job()
    job.start_fake("--save-every", "3", "--steps", "8")
    assert job.wait() == 0
    newest = job.checkpoint_dir / "step-00000006" / "payload.bin"
    data = bytearray(newest.read_bytes())
    data[0] ^= 0xFF  # same size: only the hash can tell
    newest.write_bytes(bytes(data))
    again = make_job("again")
    again.start_fake("--steps", "8")
    assert again.wait() == 0
    assert again.records("start")[-1]["resume_step"] == 3
    invalid = again.events("checkpoint.invalid")
    assert invalid and "mismatch" in invalid[0]["why"]


def test_resume_environment_contract(job: Job, tmp_path: Path) -> None:
    """The job sees CKPTD_* variables: endpoint, directories, attempt, resume point."""
    dump = tmp_path / "env.txt"
    script = (
        "import json, os, sys; open(sys.argv[1], 'a').write(json.dumps({k: v for k, v in"
        " os.environ.items() if k.startswith('CKPTD_')}) + '\\n'); sys.exit(1)"
    )
    job.start(
        [sys.executable, "-c", script, str(dump)],
        "--name",
        "envjob",
        "--max-restarts",
        "1",
        "--restart-delay",
        "0",
    )
    assert job.wait() == 3
    first, second = (json.loads(line) for line in dump.read_text().splitlines())
    assert first["CKPTD_ATTEMPT"] == "0" and second["CKPTD_ATTEMPT"] == "1"
    assert first["CKPTD_ENDPOINT"].startswith("ipc://")
    assert first["CKPTD_CHECKPOINT_DIR"] == str(job.checkpoint_dir)
    assert first["CKPTD_RUN_DIR"] == str(job.run_dir)
    assert first["CKPTD_RESUME_FROM"] == "" and first["CKPTD_RESUME_STEP"] == ""
    assert first["CKPTD_JOB"] == "envjob"


def test_sigkill_during_a_background_write_leaves_no_valid_torn_checkpoint(job: Job) -> None:
    """A job killed while checkpoint_async writes: the half-written save is never resumed."""
    job.start_fake(
        "--background",
        "--save-every",
        "3",
        "--save-time",
        "600",
        "--payload",
        "100000",
        options=FAST,
    )
    job.wait_record("save_started")
    temp = wait_for(
        lambda: [p for p in job.checkpoint_dir.glob(".tmp-*") if p.is_dir()],
        "a background save in progress",
    )
    first = job.records("start")[0]
    started = job.records("save_started")[0]["step"]
    job.wait_record("step", count=len([r for r in job.records("step") if r["step"] <= started]) + 3)
    os.kill(first["pid"], signal.SIGKILL)
    second = job.wait_record("start", count=2)
    assert second["resume_step"] is None
    assert not temp[0].exists()
    job.signal(signal.SIGTERM)
    job.wait()
