"""A stop that arrives before the job runs: during the first launch's preparation, or a backoff.

The preparation is held up deterministically: a process of the test holds the run
directory's job lock, as a job left behind by an earlier daemon would, so the launch waits
for it (up to ``kill_timeout``) until the test lets go. A slow requeue command is held the
same way, by a file the test creates.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import FAKES, Job, wait_for

_IN_SLURM = {"SLURM_JOB_ID": "42"}

_HOLD_LOCK = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.fixture
def lock_holder(job: Job) -> Iterator[Callable[[], None]]:
    """Hold ``<run_dir>/lock`` until the returned function is called (or the test ends)."""
    job.run_dir.mkdir(mode=0o700, parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(job.run_dir / "lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"

    def release() -> None:
        if holder.poll() is None:
            assert holder.stdin is not None
            holder.stdin.close()
        holder.wait(timeout=30)

    yield release
    if holder.poll() is None:
        holder.kill()
    holder.wait()
    for stream in (holder.stdin, holder.stdout):
        if stream is not None:
            stream.close()


def _fake(job: Job) -> list[str]:
    return [sys.executable, str(FAKES / "trainer.py"), "--record", str(job.record)]


def _slurm(tmp_path: Path, release: Path) -> tuple[Path, Path]:
    """A [slurm] config whose requeue command runs until ``release`` exists; and its start mark."""
    mark = tmp_path / "requeue-started"
    script = f"touch {mark}; while [ ! -e {release} ]; do sleep 0.05; done"
    config = tmp_path / "slurm.toml"
    command = json.dumps(["sh", "-c", script])
    config.write_text(f'[slurm]\nrequeue_signal = "SIGUSR2"\nrequeue_command = {command}\n')
    return config, mark


def _stop_by_sigterm(job: Job) -> None:
    job.signal(signal.SIGTERM)


def _stop_by_file(job: Job) -> None:
    (job.run_dir / "STOP").touch()


def _stop_by_control(job: Job) -> None:
    result = job.cli("stop")
    assert result.returncode == 0, result.stderr


def _requeue_by_slurm(job: Job) -> None:
    job.signal(signal.SIGUSR2)


@pytest.mark.parametrize(
    "stop",
    [_stop_by_sigterm, _stop_by_file, _stop_by_control, _requeue_by_slurm],
    ids=["sigterm", "stop-file", "control", "slurm-requeue"],
)
def test_a_stop_during_the_first_preparation_never_launches_the_job(
    job: Job, tmp_path: Path, lock_holder: Callable[[], None], stop: Callable[[Job], None]
) -> None:
    """A stop of any kind while the first launch is being prepared: no launch, ckptd exits 0."""
    config, _ = _slurm(tmp_path, tmp_path / "no-wait")
    (tmp_path / "no-wait").touch()
    job.start(_fake(job), "--config", str(config), "--kill-timeout", "300s", env=_IN_SLURM)
    wait_for(lambda: job.cli("status", "--json").returncode == 0, "the loop to answer")
    assert job.status()["state"] == "starting"
    stop(job)
    job.wait_event("job.stopping")
    lock_holder()  # the preparation can finish now
    assert job.wait() == 0
    assert not job.events("job.started"), job.events("job.started")
    assert not job.records("start")
    assert not job.events("job.abandoned")
    assert job.events("job.stopped")


def test_a_requeue_during_a_backoff_prepares_no_launch(job: Job, tmp_path: Path) -> None:
    """The SLURM warning signal during a restart backoff: when the backoff ends while the requeue
    command runs, no launch is prepared (no verify of the checkpoints), and ckptd exits 0."""
    release = tmp_path / "release"
    config, mark = _slurm(tmp_path, release)
    job.start(
        [*_fake(job), "--crash-at", "0"],
        "--config", str(config), "--restart-delay", "2s", "--restart-delay-max", "2s",
        env=_IN_SLURM,
    )  # fmt: skip
    restarting = job.wait_event("job.restarting")
    job.signal(signal.SIGUSR2)
    job.wait_event("job.stopping")
    wait_for(mark.exists, "the requeue command to start")
    # A checkpoint that does not verify: a launch's preparation would move it aside.
    corrupt = job.checkpoint_dir / "step-00000999"
    corrupt.mkdir(parents=True)
    (corrupt / "ckptd.json").write_text("{}")
    ends = restarting["time"] + restarting["delay"] + 0.5
    wait_for(lambda: time.time() > ends, "the backoff to end")
    first, second = job.status(), job.status()  # the loop checked its clocks in between
    assert first["state"] == second["state"] == "backoff"
    release.touch()
    assert job.wait() == 0
    assert job.events("job.requeued")
    assert len(job.records("start")) == 1
    assert corrupt.is_dir(), "a launch was prepared during the stop"
    assert not job.events("checkpoint.invalid")
