"""Kill the daemon and the job at random points of a save/commit/prune cycle (seeded).

After every kill: the newest *verified* checkpoint never went backwards, and never
more than one trainer runs (a new daemon stops an orphaned job before it launches).
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable
from pathlib import Path

import psutil

from ckptd_client.store import newest_valid

from conftest import FAKES, Job, alive, wait_for

_SEED = 20261123
_ROUNDS = 8


def _trainers(record: Path) -> list[psutil.Process]:
    """Live processes of the fake trainer writing ``record`` (zombies do not count)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        is_trainer = cmdline[1:2] == [str(FAKES / "trainer.py")]  # not the daemon naming it
        if is_trainer and str(record) in cmdline and alive(process.pid):
            found.append(process)
    return found


def _newest_verified_step(job: Job) -> int:
    newest = newest_valid(job.checkpoint_dir)
    return newest.step if newest else -1


def test_random_kills_never_lose_a_verified_checkpoint_nor_run_two_trainers(
    make_job: Callable[..., Job],
) -> None:
    """Seeded SIGKILLs of the daemon, the job or both, mid-save: no regression, one trainer."""
    rng = random.Random(_SEED)
    job = make_job()
    fake = (
        "--save-every",
        "3",
        "--save-time",
        "0.05",
        "--payload",
        "300000",
        "--step-time",
        "0.01",
    )
    options = ("--keep-last", "2", "--restart-delay", "0", "--kill-timeout", "1s")
    newest = -1
    try:
        for _ in range(_ROUNDS):
            if job.process is None or job.process.poll() is not None:
                job.start_fake(*fake, options=options)
            steps = len(job.records("step"))
            job.wait_record("step", count=steps + rng.randint(2, 12))
            action = rng.choice(["job", "daemon", "both"])
            victims = _trainers(job.record)
            assert len(victims) <= 1, f"two trainers at once: {[p.pid for p in victims]}"
            if action in ("job", "both") and victims:
                victims[0].kill()
            if action in ("daemon", "both"):
                os.kill(job.pid, signal.SIGKILL)
                job.process.wait()  # type: ignore[union-attr]
            now = _newest_verified_step(job)
            assert now >= newest, f"newest verified went back from {newest} to {now} ({action})"
            newest = now
        launches = len(job.events("job.started")) + len(job.events("job.adopted"))
        if job.process is None or job.process.poll() is not None:
            job.start_fake(*fake, options=options)
            wait_for(
                lambda: len(job.events("job.started")) + len(job.events("job.adopted")) > launches,
                "the last daemon to take charge",
            )
        wait_for(lambda: len(_trainers(job.record)) == 1, "one trainer running again")
        job.signal(signal.SIGTERM)
        assert job.wait() == 0
        assert _newest_verified_step(job) >= newest
        assert not _trainers(job.record)
    finally:
        job.kill()
        for process in _trainers(job.record):
            process.kill()
