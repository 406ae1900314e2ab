"""One lineage per remote prefix, against a bucket frozen (SIGSTOP) while the daemons start."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from remote_fixtures import MotoServer, fake, machines, make_checkpoint, moto, storage_config

from ckptd.storage.remote.store import RemoteStore

from conftest import Job

__all__ = ["machines", "moto"]  # the fixtures, imported for pytest

pytest.importorskip("s3fs", reason="needs the s3 extra (s3fs) and moto[server]")


def test_a_bucket_frozen_at_start_ends_with_one_lineage_per_prefix(
    moto: MotoServer,
    tmp_path: Path,
    machines: Callable[[str], Job],
) -> None:
    """Frozen at start: the job behind resumes from the remote; the one ahead prunes it."""
    behind_store = RemoteStore(moto.url("behind"), moto.options)
    behind_store.upload(make_checkpoint(tmp_path / "elsewhere", 9409, lineage="elsewhere"), 60)
    ahead_store = RemoteStore(moto.url("ahead"), moto.options)
    ahead_store.upload(make_checkpoint(tmp_path / "elsewhere", 5, lineage="elsewhere"), 60)
    behind, ahead = machines("behind"), machines("ahead")
    moto.freeze()
    for job in (behind, ahead):
        config = storage_config(
            job.base / "storage.toml", moto.url(job.base.name), moto.options, "2s"
        )
        job.start(fake(job), "--config", str(config), "--every", "1s")
    for job in (behind, ahead):
        job.wait_event("remote.unreachable")
        assert job.wait_record("start")["resume_step"] is None  # documented: from 0, at once
    failed = ahead.wait_event("remote.failed")  # a commit could not go up
    assert (failed["attempt"], failed["upload_attempt"]) == (0, 1)
    behind.wait_event("checkpoint.committed")  # a history of its own, on its disk only
    moto.thaw()

    noticed = behind.wait_event("remote.ahead", timeout=90)
    assert noticed["remote_step"] == 9409 and noticed["remote_lineage"] == "elsewhere"
    assert behind.wait_record("start", count=2)["resume_step"] == 9409
    behind.wait_event("remote.uploaded")
    assert {e.lineage for e in behind_store.catalog()} == {"elsewhere"}
    assert min(c.step for c in behind_store.list()) == 9409

    pruned = ahead.wait_event("remote.pruned", timeout=90)
    assert (pruned["step"], pruned["why"]) == (5, "other lineage")
    remote = ahead.status()["remote"]
    assert remote["other_lineage_steps"] == [] and remote["reached"] is True
    assert {e.lineage for e in ahead_store.catalog()} == {remote["lineage"]}
    for job in (behind, ahead):
        job.signal(signal.SIGTERM)
        assert job.wait() == 0
    assert len(ahead.records("start")) == 1  # the job ahead was never restarted
