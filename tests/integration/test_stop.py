"""Stopping: the final save on SIGTERM, STOP files, deadlines and process trees."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from conftest import Job, alive, job_pids, plain_trainer, wait_for


def test_sigterm_saves_at_the_current_step_and_exits_zero(job: Job) -> None:
    """SIGTERM mid-training: the final checkpoint holds the last step trained; exit 0."""
    job.start_fake()
    job.wait_record("step", count=20)
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    stop = job.records("stop")
    assert len(stop) == 1
    last_step = job.records("step")[-1]["step"]
    assert stop[0]["step"] == last_step
    assert job.records("saved")[-1]["step"] == last_step, "work was lost on SIGTERM"
    committed = job.events("checkpoint.committed")[-1]
    assert committed["step"] == last_step
    assert job.events("job.stopped")[0]["final_checkpoint"] is True


def test_stop_file_stops_without_restart(job: Job) -> None:
    """Touching STOP: final checkpoint, then the job stops and is not restarted."""
    job.start_fake()
    job.wait_record("step", count=5)
    (job.run_dir / "STOP").touch()
    assert job.wait() == 0
    assert len(job.records("start")) == 1
    assert job.records("saved")[-1]["step"] == job.records("step")[-1]["step"]
    assert not (job.run_dir / "STOP").exists()


def test_stop_during_a_save_waits_for_it_and_loses_nothing(job: Job) -> None:
    """SIGTERM while a save is in flight: that save commits, no second one, nothing lost."""
    job.start_fake("--save-time", "1.0")
    job.wait_event("client.connected")
    (job.run_dir / "CHECKPOINT").touch()
    job.wait_event("checkpoint.started")
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    saved = job.records("saved")
    assert len(saved) == 1, saved
    assert saved[0]["step"] == job.records("step")[-1]["step"] == job.records("stop")[0]["step"]
    committed = job.events("checkpoint.committed")
    assert (
        len(committed) == 1 and len(committed[0]["request_ids"]) == 2
    )  # the request and the final one


def test_second_sigterm_stops_now(job: Job) -> None:
    """A second SIGTERM during a slow final save kills the job at once; exit is non-zero.

    The save it interrupted leaves no ``.tmp-`` directory behind once ckptd has exited.
    """
    job.start_fake("--save-time", "600", options=("--grace", "600s", "--kill-timeout", "1s"))
    job.wait_event("client.connected")
    job.signal(signal.SIGTERM)
    job.wait_event("checkpoint.started")
    assert list(job.checkpoint_dir.glob(".tmp-step-*"))  # the save in progress
    job.signal(signal.SIGTERM)
    assert job.wait() == 1
    assert job.events("job.terminating")
    assert not job.records("saved")
    assert not list(job.checkpoint_dir.glob(".tmp-*"))
    removed = job.events("checkpoint.temporary_removed")
    assert len(removed) == 1 and Path(removed[0]["path"]).name.startswith(".tmp-step-")


def test_failed_final_save_exits_non_zero_and_keeps_previous_checkpoint(make_job) -> None:
    """A final save that raises: exit 1, and the last good checkpoint is still the newest valid."""
    job = make_job()
    job.start_fake("--save-every", "5", "--steps", "8")
    assert job.wait() == 0
    good = sorted(p.name for p in job.checkpoint_dir.glob("step-*"))
    assert good == ["step-00000005"]
    again = make_job("again")
    again.start_fake("--fail-save", "--steps", "1000000")
    again.wait_event("client.connected", count=2)  # the same run dir: the second job's client
    again.signal(signal.SIGTERM)
    assert again.wait() == 1
    assert again.events("checkpoint.failed")
    assert sorted(p.name for p in job.checkpoint_dir.glob("step-*")) == good


def test_uninstrumented_job_ignoring_sigterm_is_killed_with_its_tree(
    job: Job, tmp_path: Path
) -> None:
    """A job ignoring SIGTERM is killed at the deadline, grandchildren (even setsid ones) too."""
    pids_file = tmp_path / "pids.json"
    command = plain_trainer(pids_file, "--ignore-term", "--grandchildren", "2")
    job.start(command, "--grace", "1s", "--kill-timeout", "1s")
    pids = job_pids(pids_file)
    everyone = [pids["pid"], *pids["children"]]
    assert all(alive(pid) for pid in everyone)
    began = time.monotonic()
    job.signal(signal.SIGTERM)
    assert job.wait() == 1
    assert time.monotonic() - began >= 1.0, "killed before the grace period ended"
    assert job.events("job.signalled")[0]["signal"] == "SIGTERM"
    wait_for(lambda: not any(alive(pid) for pid in everyone), "the whole tree to be gone", 10)


def test_uninstrumented_job_that_obeys_sigterm_stops_cleanly(job: Job, tmp_path: Path) -> None:
    """A job without the client gets stop_signal on its main process and ckptd exits 0."""
    pids_file = tmp_path / "pids.json"
    job.start(plain_trainer(pids_file))
    wait_for(pids_file.exists, "the job to start")
    job.signal(signal.SIGINT)
    assert job.wait() == 0


def test_workers_of_the_job_are_not_signalled_before_the_final_save(job: Job) -> None:
    """Forked data-loader-like workers keep running through the final save; SIGTERM comes after."""
    job.start_fake("--workers", "2", "--save-time", "0.5")
    job.wait_record("worker", count=2)
    workers = job.records("worker")
    assert all(w["inert"] for w in workers)
    job.wait_record("step", count=5)
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    stop = job.records("stop")[0]
    terms = job.records("worker_term")
    assert len(terms) == 2, "the leftover workers are stopped once the job has exited"
    assert all(t["t"] >= stop["t"] for t in terms), "a worker was signalled before the final save"
    assert not job.records("worker_saw_flag")


def test_a_stop_during_a_slow_relaunch_waits_for_its_client(job: Job, tmp_path: Path) -> None:
    """The trainer dies, its relaunch takes longer than CLIENT_WINDOW to connect (torchrun on a
    busy machine), SIGTERM meanwhile: ckptd waits for the client, which saves; exit 0."""
    from ckptd.supervisor.lifecycle import CLIENT_WINDOW

    go = tmp_path / "connect"
    job.start_fake("--connect-after", str(go), options=("--restart-delay", "0", "--grace", "60s"))
    job.wait_record("step", count=5)
    os.kill(job.records("start")[0]["pid"], signal.SIGKILL)
    relaunched = job.wait_event("job.started", 2)
    job.signal(signal.SIGTERM)
    job.wait_event("job.stopping")
    wait_for(lambda: time.time() > relaunched["time"] + CLIENT_WINDOW + 1, "the window's end")
    assert not job.events("job.signalled")
    go.touch()
    assert job.wait() == 0
    assert job.events("job.stopped")[0]["final_checkpoint"] is True
    assert job.records("stop")[0]["attempt"] == 1
