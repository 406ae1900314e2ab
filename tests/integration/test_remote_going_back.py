"""Going back with a bucket: the remote's newer checkpoints move to its .branches/ too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from remote_fixtures import (
    MotoServer,
    fake,
    machines,
    make_checkpoint,
    moto,
    storage_config,
    tree,
)

from ckptd.storage.remote.branches import set_aside_newer_remote
from ckptd.storage.remote.store import RemoteStore
from ckptd_client.manifest import MANIFEST_NAME, checkpoint_name

from conftest import Job

__all__ = ["machines", "moto"]  # the fixtures, imported for pytest

pytest.importorskip("s3fs", reason="needs the s3 extra (s3fs) and moto[server]")


def _branch_steps(store: RemoteStore, branch: str) -> list[str]:
    """The checkpoints (with their manifest) in a remote branch."""
    found = store.fs.find(branch)
    return sorted(p.split("/")[-2] for p in found if p.endswith(f"/{MANIFEST_NAME}"))


@pytest.mark.parametrize("where", ["s3", "file"])
def test_the_newer_remote_checkpoints_move_whole_into_a_branch(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Steps above 10 are copied byte for byte under .branches/<stamp>/ and gone from the
    prefix (invalid ones too); a second call finds nothing to move."""
    if where == "s3":
        server: MotoServer = request.getfixturevalue("moto")
        store = RemoteStore(server.url("run"), server.options)
    else:
        store = RemoteStore(f"file://{tmp_path / 'bucket'}")
    local = tmp_path / "ckpt"
    for step in (5, 10, 15, 20):
        store.upload(make_checkpoint(local, step, lineage="L"), 60)
    store.fs.rm_file(store.path_of(20, "model.pt"))  # an invalid one of the branch
    aside = set_aside_newer_remote(store, 10, 60, stamp="T")
    assert aside.steps == [15, 20] and aside.branch == f"{store.root}/.branches/T"
    assert [c.step for c in store.list()] == [5, 10]
    copy = tmp_path / "copy"
    store.fs.get(f"{aside.branch}/{checkpoint_name(15)}", str(copy), recursive=True)
    assert tree(copy) == tree(local / checkpoint_name(15))
    assert _branch_steps(store, aside.branch) == [checkpoint_name(15), checkpoint_name(20)]
    assert set_aside_newer_remote(store, 10, 60).steps == []


def test_resume_from_moves_the_remote_branch_aside_and_a_new_vm_resumes_the_chosen_one(
    moto: MotoServer, machines: Callable[[str], Job]
) -> None:
    """--resume-from 15 with a bucket holding 5-30: 20-30 move to <prefix>/.branches/<time>/
    (copied whole, manifests included), and a replacement VM with an empty disk resumes 15."""
    store = RemoteStore(moto.url("run"), moto.options)
    first = machines("first")
    for step in range(5, 31, 5):
        store.upload(make_checkpoint(first.checkpoint_dir, step, lineage="L"), 60)
    config = storage_config(first.base / "storage.toml", moto.url("run"), moto.options)
    first.start(fake(first, "--steps", "18"), "--config", str(config),
                "--resume-from", "15", "--keep-last", "0")  # fmt: skip
    assert first.wait() == 0, first.log_tail()
    assert first.records("start")[0]["resume_step"] == 15
    went = first.events("job.rolled_back")[-1]
    moved = [checkpoint_name(s) for s in (20, 25, 30)]
    assert went["set_aside"] == moved and went["remote_set_aside"] == moved
    assert went["remote_branch"].startswith(f"{store.root}/.branches/")
    assert [c.step for c in store.list()] == [5, 10, 15]
    assert _branch_steps(store, went["remote_branch"]) == moved
    assert went["remote_branch"].rsplit("/", 1)[1] == Path(went["branch"]).name
    # The uploader may compare before the launch (remote.ahead, then ignored: no job yet);
    # after going back, the bucket is never ahead and nothing is downloaded.
    assert not [e for e in first.events("remote.ahead") if e["time"] > went["time"]]
    assert not first.events("remote.downloaded")
    listed = subprocess.run(
        [sys.executable, "-m", "ckptd", "list", "--all", "--json", moto.url("run")],
        capture_output=True, text=True, timeout=120, env={**os.environ, **moto.env}, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    stamp = went["remote_branch"].rsplit("/", 1)[1]
    assert {c["step"]: c["branch"] for c in json.loads(listed.stdout)} == {
        5: None, 10: None, 15: None, 20: stamp, 25: stamp, 30: stamp,
    }  # fmt: skip

    second = machines("second")  # a replacement VM: nothing on its disk
    config = storage_config(second.base / "storage.toml", moto.url("run"), moto.options)
    second.start(fake(second, "--steps", "17"), "--config", str(config))
    assert second.wait() == 0, second.log_tail()
    assert second.records("start")[0]["resume_step"] == 15
    assert second.events("remote.downloaded")[0]["step"] == 15


def test_rollback_of_a_running_job_moves_the_remote_branch_aside(
    moto: MotoServer, machines: Callable[[str], Job]
) -> None:
    """`ckptd rollback STEP` with a bucket: the final save and every newer remote checkpoint
    go to the bucket's .branches/; the relaunch uploads its own history, never the old one."""
    store = RemoteStore(moto.url("run"), moto.options)
    job = machines("job")
    config = storage_config(job.base / "storage.toml", moto.url("run"), moto.options)
    job.start(fake(job, "--save-every", "5", "--step-time", "0.05"),
              "--config", str(config), "--keep-last", "0")  # fmt: skip
    job.wait_event("remote.uploaded", 3)
    target = job.events("remote.uploaded")[0]["step"]
    done = job.cli("rollback", str(target))
    assert done.returncode == 0, done.stderr
    went = job.wait_event("job.rolled_back")
    restarted = job.wait_record("start", count=2)
    assert restarted["resume_step"] == target
    final = job.events("checkpoint.committed")[-1]
    assert checkpoint_name(final["step"]) in went["remote_set_aside"]
    assert _branch_steps(store, went["remote_branch"]) == went["remote_set_aside"]
    job.wait_event("remote.uploaded", len(job.events("remote.uploaded")) + 1)
    job.signal(signal.SIGTERM)
    assert job.wait() == 0, job.log_tail()
    assert not [e for e in job.events("remote.ahead") if e["time"] > went["time"]]
    assert [r["resume_step"] for r in job.records("start")] == [None, target]
    later = [r["step"] for r in job.events("remote.uploaded") if r["time"] > went["time"]]
    remote = [c.step for c in store.list() if c.step > target]
    assert set(remote) <= set(later), (remote, later)  # only the new branch's uploads
    assert Path(job.checkpoint_dir, checkpoint_name(target)).is_dir()


def test_a_divergence_with_a_bucket_rolls_back_there_too(
    moto: MotoServer, machines: Callable[[str], Job]
) -> None:
    """A NaN from step 60 with a bucket: the guard's relaunch moves the remote checkpoints past
    its resume step aside too; the job finishes and the bucket holds one branch."""
    job = machines("job")
    config = storage_config(job.base / "storage.toml", moto.url("run"), moto.options)
    with open(config, "a") as toml:
        toml.write('[guard]\nnonfinite = "rollback"\n')
    job.start(fake(job, "--steps", "200", "--save-every", "5", "--step-time", "0.02",
                   "--bad-data-at", "60"), "--config", str(config), "--keep-last", "0")  # fmt: skip
    assert job.wait() == 0, job.log_tail()
    diverged = job.events("job.diverged")[-1]
    went = job.events("job.rolled_back")[-1]
    assert went["step"] == diverged["resume_step"]
    store = RemoteStore(moto.url("run"), moto.options)
    assert went["remote_set_aside"]  # uploaded during the seconds from resume step to NaN
    assert _branch_steps(store, went["remote_branch"]) == went["remote_set_aside"]
    later = {r["step"] for r in job.events("remote.uploaded") if r["time"] > went["time"]}
    assert {c.step for c in store.list() if c.step > went["step"]} <= later
    assert job.records("done")[-1]["step"] == 199 and 60 not in job.records("done")[-1]["trained"]
