"""What ckptd guarantees (docs/guarantees.md): what is never deleted, what a stop promises, the end.

Each test here failed on the code before the fix it guards (issue 8).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ckptd_client.manifest import commit, new_temp_dir

from conftest import FAKES, Job, wait_for

FAST = ("--restart-delay", "0", "--kill-timeout", "1s")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ckptd", *args], capture_output=True, text=True, timeout=60
    )


def _checkpoint(directory: Path, step: int, payload: bytes = b"x" * 4096) -> Path:
    temp = new_temp_dir(directory, step)
    (temp / "payload.bin").write_bytes(payload)
    path, _ = commit(temp, step)
    return path


def test_directories_ckptd_did_not_create_are_never_pruned_or_resumed(job: Job) -> None:
    """User copies (keep-me, step-N.bak of a higher step) survive keep_last; resume skips them."""
    real = _checkpoint(job.checkpoint_dir, 3)
    shutil.copytree(real, job.checkpoint_dir / "keep-me")
    bak = job.checkpoint_dir / "step-00000187.bak"
    shutil.copytree(real, bak)
    manifest = json.loads((bak / "ckptd.json").read_text())
    (bak / "ckptd.json").write_text(json.dumps({**manifest, "step": 187}))
    job.start_fake("--save-every", "2", "--steps", "12", options=("--keep-last", "1", *FAST))
    assert job.wait() == 0
    assert job.records("start")[0]["resume_step"] == 3
    assert (job.checkpoint_dir / "keep-me" / "payload.bin").exists()
    assert (bak / "payload.bin").exists()
    assert not any(
        ".bak" in e["path"] or "keep-me" in e["path"] for e in job.events("checkpoint.pruned")
    )


def test_corrupt_newest_checkpoint_is_moved_aside_and_never_outranks_new_ones(job: Job) -> None:
    """keep_last = 1 and a corrupt step 500: it is quarantined at resume; new commits survive."""
    corrupt = _checkpoint(job.checkpoint_dir, 500)
    with open(corrupt / "payload.bin", "r+b") as handle:
        handle.seek(100)
        handle.write(b"y")  # same size: only the full hash can tell
    job.start_fake("--save-every", "3", "--steps", "11", options=("--keep-last", "1", *FAST))
    assert job.wait() == 0
    assert job.records("start")[0]["resume_step"] is None
    invalid = job.events("checkpoint.invalid")
    assert invalid and invalid[0]["step"] == 500 and invalid[0]["moved_to"]
    assert not corrupt.exists() and Path(invalid[0]["moved_to"]).exists()
    names = sorted(p.name for p in job.checkpoint_dir.glob("step-*") if "." not in p.name)
    assert names == ["step-00000009"], names
    pruned = {e["step"] for e in job.events("checkpoint.pruned")}
    assert pruned == {3, 6}, pruned  # reported only for what was deleted
    assert _cli("verify", str(job.checkpoint_dir / "step-00000009")).returncode == 0


def test_a_second_job_on_the_same_checkpoint_dir_is_refused(
    make_job: Callable[..., Job], tmp_path: Path
) -> None:
    """Another run dir, same checkpoint_dir: one line naming the holder's run dir, pid; exit 2."""
    first = make_job()
    first.start_fake()
    first.wait_record("step", count=3)
    second = Job(tmp_path / "other", "second")
    second.base.mkdir()
    second.checkpoint_dir = first.checkpoint_dir
    second.start_fake()
    try:
        assert second.wait() == 2
    finally:
        second.kill()
    message = second.stderr.read_text().strip()
    assert len(message.splitlines()) == 1, message
    assert str(first.run_dir) in message and f"pid {first.pid}" in message
    assert not second.records("start"), "the refused job was launched"
    first.signal(signal.SIGTERM)
    assert first.wait() == 0


def test_a_stop_during_a_restart_finishes_the_save_and_relaunches_nothing(job: Job) -> None:
    """`ckptd restart`, then SIGTERM while the restart's checkpoint is written: saved, exit 0."""
    job.start_fake("--save-time", "2", options=FAST)
    job.wait_event("client.connected")
    assert _cli("restart", "--run-dir", str(job.run_dir)).returncode == 0
    job.wait_event("checkpoint.started")
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    assert len(job.records("start")) == 1, "relaunched after a stop"
    stopped = job.events("job.stopped")[-1]
    assert stopped["final_checkpoint"] is True and stopped["superseded"] == ["restart"]
    assert job.records("saved")[-1]["step"] == job.records("step")[-1]["step"]


def test_a_stop_file_during_a_restart_counts(job: Job) -> None:
    """A STOP file touched while a restart's checkpoint is written turns the restart into a stop."""
    job.start_fake("--save-time", "2", options=FAST)
    job.wait_event("client.connected")
    assert _cli("restart", "--run-dir", str(job.run_dir)).returncode == 0
    job.wait_event("checkpoint.started")
    (job.run_dir / "STOP").touch()
    assert job.wait() == 0
    assert len(job.records("start")) == 1
    assert not (job.run_dir / "STOP").exists()


def test_a_stop_during_orphan_adoption_stops(make_job: Callable[..., Job]) -> None:
    """SIGTERM while an adopted orphan writes its final save: it commits, nothing relaunches."""
    first = make_job()
    first.start_fake("--save-time", "2")
    orphan = first.wait_record("start")
    first.wait_record("step", count=5)
    os.kill(first.pid, signal.SIGKILL)
    first.process.wait()
    second = make_job("second")
    second.start_fake("--save-time", "2")
    second.wait_event("job.adopted")
    wait_for(lambda: [r for r in second.records("step") if r["pid"] == orphan["pid"]], "steps")
    second.wait_event("checkpoint.started")
    second.signal(signal.SIGTERM)
    assert second.wait() == 0
    assert len(second.records("start")) == 1, "relaunched after a stop"
    assert second.events("job.stopped")[-1]["final_checkpoint"] is True


def test_a_stop_during_backoff_ends_at_once(job: Job) -> None:
    """SIGTERM while waiting 30 s to relaunch a crashed job: exit 0 at once, no relaunch."""
    job.start_fake("--crash-at", "0", options=("--restart-delay", "30s", "--kill-timeout", "1s"))
    job.wait_event("job.restarting")
    job.signal(signal.SIGTERM)
    assert job.wait(timeout=15) == 0
    assert len(job.records("start")) == 1


def test_a_command_that_cannot_start_exits_127_at_once(job: Job, tmp_path: Path) -> None:
    """Not found, or not executable: exit 127 without a single restart."""
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\n")
    for command in ([str(tmp_path / "no-such-program")], [str(script)]):
        job.start(command, "--restart", "always", "--restart-delay", "0")
        assert job.wait(timeout=30) == 127
    failures = job.events("job.launch_failed")
    assert len(failures) == 2 and not job.events("job.restarting")


def test_a_slow_save_is_not_a_hang(job: Job) -> None:
    """hang_timeout 1s and a save of 3 s: the save commits, nothing is killed."""
    job.start_fake("--save-time", "3", options=("--hang-timeout", "1s", *FAST))
    job.wait_event("client.connected")
    (job.run_dir / "CHECKPOINT").touch()
    job.wait_event("checkpoint.committed")
    assert not job.events("job.hung")
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    assert len(job.records("start")) == 1


def _fake(job: Job) -> list[str]:
    return [sys.executable, str(FAKES / "trainer.py"), "--record", str(job.record)]


def _slurm_config(tmp_path: Path, command: list[str]) -> Path:
    config = tmp_path / "slurm.toml"
    config.write_text(
        f'[slurm]\nrequeue_signal = "SIGUSR2"\nrequeue_command = {json.dumps(command)}\n'
    )
    return config


def test_the_loop_answers_while_the_requeue_command_runs(job: Job, tmp_path: Path) -> None:
    """A slow requeue command runs off the loop: `ckptd status` answers meanwhile; then exit 0."""
    mark = tmp_path / "requeue-started"
    config = _slurm_config(tmp_path, ["sh", "-c", f"touch {mark}; sleep 6"])
    job.start(_fake(job), "--config", str(config), env={"SLURM_JOB_ID": "42"})
    job.wait_event("client.connected")
    job.signal(signal.SIGUSR2)
    wait_for(mark.exists, "the requeue command to start")
    status = _cli("status", "--run-dir", str(job.run_dir), "--json", "--timeout", "3")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "stopping"
    assert job.wait() == 0
    assert job.events("job.requeued")


def test_a_failing_requeue_command_makes_the_exit_non_zero(job: Job, tmp_path: Path) -> None:
    """requeue_command fails: job.requeue_failed, exit 1 although the final checkpoint landed."""
    config = _slurm_config(tmp_path, ["false"])
    job.start(_fake(job), "--config", str(config), env={"SLURM_JOB_ID": "42"})
    job.wait_event("client.connected")
    job.signal(signal.SIGUSR2)
    assert job.wait() == 1
    assert job.events("job.requeue_failed")[0]["returncode"] == 1
    assert job.events("job.stopped")[-1]["final_checkpoint"] is True


def test_a_lost_stderr_reader_does_not_end_supervision(job: Job) -> None:
    """ckptd's stderr reader goes away (EPIPE): requests, saves and the stop still work."""
    argv = [
        sys.executable, "-m", "ckptd", "run", "--run-dir", str(job.run_dir),
        "--checkpoint-dir", str(job.checkpoint_dir), "--",
        *_fake(job),
    ]  # fmt: skip
    job.process = subprocess.Popen(
        argv, cwd=job.base, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    assert job.process.stderr is not None
    job.process.stderr.readline()
    job.process.stderr.close()  # the reader is gone
    job.wait_event("client.connected")
    (job.run_dir / "CHECKPOINT").touch()
    job.wait_event("checkpoint.committed")
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    assert job.events("job.stopped")[-1]["final_checkpoint"] is True


def test_a_full_run_directory_does_not_end_supervision(job: Job, tmp_path: Path) -> None:
    """events.jsonl on a full tmpfs (ENOSPC): the job is still supervised, saved and stopped."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        import pytest

        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        job.run_dir = mount / "run"
        job.start_fake()
        job.wait_event("client.connected")
        filler = mount / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)

        def request_until_writes_fail() -> bool:
            # The events file's last page still has room: request until it is full.
            (job.run_dir / "CHECKPOINT").touch()
            wait_for(lambda: not (job.run_dir / "CHECKPOINT").exists(), "the request answered")
            return "events.write_failed" in job.stderr.read_text()

        wait_for(request_until_writes_fail, "event writes to fail")
        saved = len(job.records("saved"))

        def saved_while_full() -> bool:
            # A request that finds nothing trained since the last commit is answered by it.
            if not (job.run_dir / "CHECKPOINT").exists():
                (job.run_dir / "CHECKPOINT").touch()
            return len(job.records("saved")) > saved

        wait_for(saved_while_full, "a save while the run dir is full")
        filler.unlink()
        job.signal(signal.SIGTERM)
        assert job.wait() == 0
        lines = (job.run_dir / "events.jsonl").read_text().splitlines()
        assert all(json.loads(line) for line in lines), "a torn line in events.jsonl"
        assert lines and json.loads(lines[-1])["event"] == "ckptd.exiting"
        assert "events.write_failed" in job.stderr.read_text()
    finally:
        job.kill()
        deadline = time.monotonic() + 10
        while subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)


def test_several_ranks_one_commit_and_done_clears_the_others(job: Job) -> None:
    """Two connected processes: rank 0 commits the request; rank 1's flag is cleared by `done`."""
    job.start([sys.executable, str(FAKES / "two_ranks.py"), str(job.record)], *FAST)
    wait_for(lambda: len(job.events("client.connected")) == 2, "both ranks connected")
    (job.run_dir / "CHECKPOINT").touch()
    job.wait_record("saved")
    job.wait_record("flag_down")
    assert [r["event"] for r in job.records() if r.get("rank") == 1][:2] == ["flag_up", "flag_down"]
    assert {e["rank"] for e in job.events("client.connected")} == {0, 1}
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    assert {r["rank"] for r in job.records("stop")} == {0, 1}
