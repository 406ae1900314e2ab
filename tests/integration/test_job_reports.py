"""What the daemon hears from a job at its edges: a save that cannot begin, the last step."""

from __future__ import annotations

import signal

from conftest import Job


def test_a_checkpoint_directory_that_cannot_be_written_gives_checkpoint_failed(job: Job) -> None:
    """A save whose directory cannot be made is `checkpoint.failed`; the job goes on training."""
    job.start_fake(options=("--restart-delay", "0"))
    job.wait_event("client.connected")
    aside = job.base / "ckpt-aside"
    job.checkpoint_dir.rename(aside)
    job.checkpoint_dir.write_text("a file where the checkpoint directory was")
    (job.run_dir / "CHECKPOINT").touch()
    failed = job.wait_event("checkpoint.failed")
    assert failed["request_id"] is not None and "Error" in failed["error"]
    job.wait_record("save_failed")
    job.checkpoint_dir.unlink()
    aside.rename(job.checkpoint_dir)
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    assert job.events("job.stopped")[-1]["final_checkpoint"] is True


def test_job_exited_carries_the_last_step(job: Job) -> None:
    """A job that trains 300 quick steps and ends: `job.exited` says step 299, not a stale one."""
    job.start_fake("--steps", "300", "--step-time", "0.001")
    assert job.wait() == 0
    assert job.records("done")
    assert job.events("job.exited")[-1]["step"] == 299
