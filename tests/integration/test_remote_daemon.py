"""`ckptd run --remote`: uploads after commits, the final one before exit, resume on a fresh VM."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from remote_fixtures import (
    MotoServer,
    fake,
    machines,
    moto,
    storage_config,
    tree,
)

from ckptd import exit_codes
from ckptd.storage.remote.store import RemoteStore

from conftest import Job, wait_for

__all__ = ["machines", "moto"]  # the fixtures, imported for pytest

pytest.importorskip("s3fs", reason="needs the s3 extra (s3fs) and moto[server]")


def test_a_replacement_vm_resumes_from_the_bucket_bit_exact(
    moto: MotoServer,
    tmp_path: Path,
    machines: Callable[[str], Job],
) -> None:
    """Stop uploads the final checkpoint (exit 0); an empty machine downloads and resumes it."""
    config = storage_config(tmp_path / "storage.toml", moto.url("spot"), moto.options)
    first = machines("vm1")
    first.start(fake(first, "--payload", "300000"), "--config", str(config), "--every", "1s")
    first.wait_event("remote.uploaded")
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    final = first.events("checkpoint.committed")[-1]
    assert first.events("remote.final")[-1]["uploaded"] is True
    assert first.events("job.stopped")[-1]["final_remote"] is True
    local = first.checkpoint_dir / f"step-{final['step']:08d}"

    second = machines("vm2")  # a fresh disk
    second.start(fake(second, "--steps", str(final["step"] + 3)), "--config", str(config))
    assert second.wait() == 0
    assert second.records("start")[0]["resume_step"] == final["step"]
    assert second.events("remote.downloaded")[0]["step"] == final["step"]
    assert tree(second.checkpoint_dir / local.name) == tree(local)


def test_a_job_that_ends_on_its_own_waits_for_its_newest_upload(
    moto: MotoServer,
    tmp_path: Path,
    machines: Callable[[str], Job],
) -> None:
    """A job that finishes by itself: ckptd exits 0 only once its newest checkpoint is up."""
    config = storage_config(tmp_path / "storage.toml", moto.url("done"), moto.options)
    job = machines("vm")
    trainer = fake(job, "--steps", "41", "--save-every", "20", "--payload", "100000000")
    job.start(trainer, "--config", str(config))
    assert job.wait(timeout=120) == 0
    assert job.events("checkpoint.committed")[-1]["step"] == 40
    assert max(c.step for c in RemoteStore(moto.url("done"), moto.options).list()) == 40
    assert job.events("remote.final")[-1]["uploaded"] is True


def test_a_stop_whose_upload_cannot_land_exits_1_with_the_reason(
    tmp_path: Path, machines: Callable[[str], Job]
) -> None:
    """A remote that never answers: training is not slowed, the stop is bounded, exit 1."""
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(64)
        port = blackhole.getsockname()[1]
        options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "k", "secret": "s"}
        config = storage_config(tmp_path / "storage.toml", "s3://ckptd-test/run", options, "2s")
        job = machines("vm")
        job.start(fake(job), "--config", str(config), "--grace", "3s", "--kill-timeout", "1s")
        job.wait_event("client.connected", timeout=90)
        job.wait_record("step", count=20)
        job.signal(signal.SIGTERM)
        assert job.wait(timeout=90) == 1
    final = job.events("remote.final")[-1]
    assert final["uploaded"] is False and "local only" in final["why"]
    stopped = job.events("job.stopped")[-1]
    assert stopped["final_checkpoint"] is True and stopped["final_remote"] is False
    assert job.events("remote.unreachable") or job.events("remote.failed")


def test_a_missing_bucket_is_one_line_exit_2(
    moto: MotoServer,
    tmp_path: Path,
    machines: Callable[[str], Job],
) -> None:
    """A remote whose bucket does not exist: one line naming the URL, exit 2, nothing launched."""
    config = storage_config(tmp_path / "storage.toml", "s3://no-such-bucket/run", moto.options)
    job = machines("vm")
    job.start(fake(job), "--config", str(config))
    assert job.wait() == 2
    assert not job.records("start")
    assert "no-such-bucket" in job.stderr.read_text()


def test_a_final_checkpoint_left_local_goes_up_when_ckptd_runs_again(
    moto: MotoServer,
    tmp_path: Path,
    machines: Callable[[str], Job],
) -> None:
    """A final checkpoint left local goes up at the next ckptd run on that disk."""
    config = storage_config(tmp_path / "storage.toml", moto.url("again"), moto.options, "2s")
    job = machines("vm")
    job.start(
        fake(job), "--config", str(config), "--every", "1s", "--grace", "4s", "--kill-timeout", "1s"
    )
    uploaded = job.wait_event("remote.uploaded")["step"]
    moto.freeze()
    wait_for(
        lambda: any(e["step"] > uploaded for e in job.events("checkpoint.committed")),
        "a checkpoint after the bucket froze",
    )
    job.signal(signal.SIGTERM)
    assert job.wait(timeout=90) == exit_codes.FAILED
    assert job.events("remote.final")[-1]["uploaded"] is False
    final = job.events("checkpoint.committed")[-1]["step"]
    moto.thaw()

    job.start(fake(job), "--config", str(config))  # the same disk; no periodic checkpoints
    assert job.wait_record("start", count=2)["resume_step"] == final
    wait_for(
        lambda: [e for e in job.events("remote.uploaded") if e["step"] == final],
        f"step {final} to go up",
    )
    remote = job.status()["remote"]
    assert (remote["newest_remote_step"], remote["backlog_steps"]) == (final, [])
    assert final in [c.step for c in RemoteStore(moto.url("again"), moto.options).list()]
    job.signal(signal.SIGTERM)
    assert job.wait() == 0


def test_a_fenced_daemon_stops_its_job_and_says_so(
    moto: MotoServer,
    tmp_path: Path,
    machines: Callable[[str], Job],
) -> None:
    """A fenced daemon stops its job (final save kept locally), exits 4, says fenced."""
    config = storage_config(tmp_path / "storage.toml", moto.url("taken"), moto.options, "5s")
    first = machines("vm1")
    first.start(fake(first), "--config", str(config), "--every", "1s")
    first.wait_event("remote.uploaded")
    second = machines("vm2")
    second.start(fake(second), "--config", str(config))
    assert first.wait(timeout=90) == exit_codes.FENCED
    assert first.events("remote.fenced")
    stopped = first.events("job.stopped")[-1]
    assert (stopped["why"], stopped["final_checkpoint"], stopped["exit_code"]) == (
        "fenced",
        True,
        4,
    )
    assert first.records("stop")  # the job saved and ended instead of training on
    final = first.events("checkpoint.committed")[-1]
    assert (first.checkpoint_dir / f"step-{final['step']:08d}").is_dir()
    last_words = first.events("remote.final")[-1]
    assert last_words["uploaded"] is False and last_words["why"].startswith("fenced")
    assert "in time" not in last_words["why"]
    second.wait_record("start")
    second.signal(signal.SIGTERM)
    assert second.wait() == 0
