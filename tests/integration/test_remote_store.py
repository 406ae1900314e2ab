"""The remote store against a real S3 API (moto's server, through s3fs) and file://."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
from remote_fixtures import MotoServer, make_checkpoint, moto, tree

from ckptd.config import StorageConfig
from ckptd.storage.remote.lease import LEASE_NAME, Fenced, Lease
from ckptd.storage.remote.resume import RemoteResume, RemoteUnusable, fetch_newer
from ckptd.storage.remote.store import (
    InvalidRemoteCheckpoint,
    RemoteError,
    RemoteStore,
    RemoteTimeout,
)
from ckptd.storage.remote.uploader import (
    Outcome,
    RemoteFenced,
    RemotePruned,
    Uploaded,
    Uploader,
    UploadFailed,
    UploadTimeoutShort,
    protected_locally,
)
from ckptd.storage.retention import RetentionRules
from ckptd.supervisor.remote_copy import RemoteCopy
from ckptd_client.store import scan

from conftest import wait_for

__all__ = ["moto"]  # the fixture, imported for pytest

MIB = 1 << 20


def _store(server: MotoServer, prefix: str = "run", **kwargs: object) -> RemoteStore:
    return RemoteStore(server.url(prefix), server.options, **kwargs)  # type: ignore[arg-type]


class Outcomes:
    """Collects what an uploader posts, for polling."""

    def __init__(self) -> None:
        self.seen: list[Outcome] = []

    def __call__(self, outcome: Outcome) -> None:
        self.seen.append(outcome)

    def of(self, kind: type) -> list[Outcome]:
        return [o for o in list(self.seen) if isinstance(o, kind)]


def test_upload_list_download_is_bit_exact(moto: MotoServer, tmp_path: Path) -> None:
    """An upload (a large file in multipart parts) lists, and downloads bit-exact elsewhere."""
    files = {"model.pt": os.urandom(12 * MIB), "sub/opt.bin": os.urandom(1000), "empty": b""}
    local = make_checkpoint(tmp_path / "a", 7, files)
    store = _store(moto, part_size=5 * MIB)
    result = store.upload(local, timeout=60)
    assert (result.step, result.bytes) == (
        7,
        sum(map(len, files.values())) + len((local / "ckptd.json").read_bytes()),
    )
    listed = store.list()
    assert [(c.step, c.valid, c.bytes) for c in listed] == [(7, True, 12 * MIB + 1000)]
    fresh = tmp_path / "fresh"
    got = store.download(7, fresh)
    assert got.path == fresh / "step-00000007" and got.valid
    assert tree(got.path) == tree(local)
    assert [p.name for p in fresh.iterdir()] == ["step-00000007"]


def test_ranged_parts_of_many_files_share_a_small_budget(moto: MotoServer, tmp_path: Path) -> None:
    """Four files of several parts each, two parts in flight in all: bit-exact, in time."""
    files = {f"shard{i}.bin": os.urandom(3 * MIB + i) for i in range(4)}
    local = make_checkpoint(tmp_path / "a", 8, files)
    _store(moto).upload(local, timeout=60)
    store = RemoteStore(moto.url(), {**moto.options, "max_concurrency": 2}, part_size=MIB)
    assert tree(store.download(8, tmp_path / "fresh", timeout=60).path) == tree(local)


def test_corrupt_remote_checkpoint_falls_back_to_older(moto: MotoServer, tmp_path: Path) -> None:
    """A remote file that does not match its digest is rejected and the next older one used."""
    store = _store(moto)
    for step in (1, 2):
        store.upload(make_checkpoint(tmp_path / "a", step), timeout=60)
    store.fs.pipe_file(store.path_of(2, "model.pt"), b"\0" * 4096)  # its size: listed as valid
    fresh = tmp_path / "fresh"
    with pytest.raises(InvalidRemoteCheckpoint, match=r"mismatch"):
        store.download(2, fresh)
    assert list(fresh.iterdir()) == []
    fetched = fetch_newer(store, fresh, newer_than=0)
    assert fetched.checkpoint is not None and fetched.checkpoint.step == 1
    assert [(c.step, c.valid) for c in fetched.rejected] == [(2, False)]
    assert (fetched.error, fetched.newest_remote_step) == (None, 2)
    assert [c.step for c in scan(fresh, full=True) if c.valid] == [1]
    assert fetch_newer(store, fresh, newer_than=1).checkpoint is None


def test_a_flipped_byte_or_a_missing_file_is_caught_while_downloading(
    moto: MotoServer, tmp_path: Path
) -> None:
    """A flipped byte, a longer, shorter or empty object, a missing file: invalid, nothing left."""
    model = os.urandom(12 * MIB)
    local = make_checkpoint(tmp_path / "a", 6, {"model.pt": model, "small": b"abc"})
    store = _store(moto, part_size=5 * MIB)
    store.upload(local, timeout=60)
    flipped = bytearray(model)
    flipped[11 * MIB] ^= 1  # in the last of three ranged parts, same size
    fresh = tmp_path / "fresh"
    for changed, error in (
        (bytes(flipped), "digest mismatch"),
        (model + b"!", "larger than the manifest says"),
        (model[: 7 * MIB], f"size {7 * MIB}, manifest says {12 * MIB}"),
        (b"", f"size 0, manifest says {12 * MIB}"),
    ):
        store.fs.pipe_file(store.path_of(6, "model.pt"), changed)
        with pytest.raises(InvalidRemoteCheckpoint, match=f"model.pt: {error}"):
            store.download(6, fresh)
        assert list(fresh.iterdir()) == []
    store.fs.pipe_file(store.path_of(6, "model.pt"), model)
    store.fs.rm_file(store.path_of(6, "small"))
    with pytest.raises(InvalidRemoteCheckpoint, match="missing file"):
        store.download(6, fresh)
    assert list(fresh.iterdir()) == []


def test_files_without_a_manifest_are_not_a_checkpoint(moto: MotoServer, tmp_path: Path) -> None:
    """A half-uploaded step (files, no manifest) is not listed; delete removes all of it."""
    store = _store(moto)
    local = make_checkpoint(tmp_path / "a", 3)
    store.fs.put_file(str(local / "model.pt"), store.path_of(3, "model.pt"))
    assert store.list() == []
    store.upload(local, timeout=60)
    assert [c.step for c in store.list()] == [3]
    store.delete(3)
    assert store.list() == [] and store.step_dirs() == []


def test_a_step_another_writer_completes_after_a_listing_is_seen(
    moto: MotoServer, tmp_path: Path
) -> None:
    """A step listed half-uploaded, then completed by another process (another node): the
    next listing reads its manifest from the store, never from a listing cached before."""
    import s3fs

    store = _store(moto)
    other = s3fs.S3FileSystem(skip_instance_cache=True, **moto.options)  # another process's view
    local = make_checkpoint(tmp_path / "a", 3)
    other.put_file(str(local / "model.pt"), store.path_of(3, "model.pt"))
    assert store.list() == []
    other.put(str(local) + "/", store.path_of(3), recursive=True)
    assert [(c.step, c.valid, c.reason) for c in store.list()] == [(3, True, "")]
    assert store.manifest(3).step == 3


def test_server_killed_during_an_upload(moto: MotoServer, tmp_path: Path) -> None:
    """The server dies mid-multipart: attempts fail with backoff, then succeed once it is back."""
    outcomes = Outcomes()
    uploader = Uploader(
        _store(moto, part_size=5 * MIB), outcomes, upload_timeout=30, backoff=0.1, backoff_max=0.5
    )
    local = make_checkpoint(tmp_path / "a", 5, {"model.pt": os.urandom(100 * MIB)})
    uploader.start()
    try:
        uploader.submit(local, 5)
        wait_for(lambda: moto.logged("step-00000005/model.pt?uploads"), "the multipart to begin")
        moto.kill()  # the parts are still on their way
        wait_for(lambda: outcomes.of(UploadFailed), "a failed attempt")
        assert uploader.backlog() == ([5], 100 * MIB) and uploader.newest_remote_step is None
        moto.start()
        uploaded = wait_for(lambda: outcomes.of(Uploaded), "the upload after the restart")[0]
        assert (uploaded.step, uploaded.bytes) == (
            5,
            100 * MIB + len((local / "ckptd.json").read_bytes()),
        )
        assert uploader.backlog() == ([], 0) and uploader.newest_remote_step == 5
        attempts = [o.upload_attempt for o in outcomes.of(UploadFailed)]
        assert attempts == list(range(1, len(attempts) + 1))
    finally:
        uploader.close()
    assert tree(_store(moto).download(5, tmp_path / "fresh").path) == tree(local)


def test_a_newer_commit_supersedes_pending_older_ones(moto: MotoServer, tmp_path: Path) -> None:
    """Steps queued behind a newer one are dropped: only the newest goes up."""
    outcomes = Outcomes()
    uploader = Uploader(_store(moto), outcomes)
    for step in (1, 2, 3):
        uploader.submit(make_checkpoint(tmp_path / "a", step), step)
    assert uploader.backlog()[0] == [1, 2, 3]
    uploader.start()
    try:
        assert uploader.flush(time.monotonic() + 60)
    finally:
        uploader.close()
    assert [o.step for o in outcomes.of(Uploaded)] == [3]
    assert uploader.backlog() == ([], 0) and [c.step for c in _store(moto).list()] == [3]


def test_every_attempt_is_bounded_by_the_upload_timeout(tmp_path: Path) -> None:
    """A remote that accepts connections and never answers costs upload_timeout per attempt."""
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(64)
        port = blackhole.getsockname()[1]
        store = RemoteStore(
            "s3://ckptd-test/run",
            {"endpoint_url": f"http://127.0.0.1:{port}", "key": "k", "secret": "s"},
        )
        local = make_checkpoint(tmp_path / "a", 1)
        started = time.monotonic()
        with pytest.raises(RemoteTimeout):
            store.upload(local, timeout=1.0)
        assert 0.9 < time.monotonic() - started < 5
        outcomes = Outcomes()
        uploader = Uploader(store, outcomes, upload_timeout=1.0, backoff=0.05, backoff_max=0.05)
        uploader.start()
        try:
            uploader.submit(local, 1)
            started = time.monotonic()
            wait_for(lambda: len(outcomes.of(UploadFailed)) >= 2, "two timed-out attempts")
            assert time.monotonic() - started < 2 * (1.0 + 0.05) + 3
            assert not uploader.flush(time.monotonic() + 1.0)
        finally:
            uploader.close()
        assert all("timed out" in o.error for o in outcomes.of(UploadFailed))


def test_a_second_owner_fences_the_first(moto: MotoServer, tmp_path: Path) -> None:
    """Once a newer daemon takes the lease, the old one uploads nothing more and reports it."""
    old_lease, new_lease = Lease(_store(moto), "old"), Lease(_store(moto), "new")
    assert old_lease.take() == 1
    outcomes = Outcomes()
    uploader = Uploader(_store(moto), outcomes, lease=old_lease, backoff=0.1)
    uploader.start()
    try:
        uploader.submit(make_checkpoint(tmp_path / "a", 1), 1)
        wait_for(lambda: outcomes.of(Uploaded), "the first upload")
        assert new_lease.take() == 2
        uploader.submit(make_checkpoint(tmp_path / "a", 2), 2)
        fenced = wait_for(lambda: outcomes.of(RemoteFenced), "the old uploader to be fenced")[0]
        assert fenced.step == 2 and "new" in fenced.error
        assert uploader.fenced and not uploader.flush(time.monotonic() + 1)
    finally:
        uploader.close()
    assert [c.step for c in _store(moto).list()] == [1]
    new_lease.check()
    with pytest.raises(Fenced):
        old_lease.check()
    store = _store(moto)
    with pytest.raises(Fenced):  # the check right before the manifest stops a late upload too
        store.upload(make_checkpoint(tmp_path / "a", 3), 60, before_manifest=old_lease.check)
    assert [c.step for c in store.list()] == [1] and 3 in store.step_dirs()


def test_a_recommitted_step_replaces_its_remote_copy(moto: MotoServer, tmp_path: Path) -> None:
    """Uploading a step again with other contents replaces it; the same contents are skipped."""
    store = _store(moto)
    first = make_checkpoint(tmp_path / "a", 4, {"w": b"one"})
    store.upload(first, 60)
    assert store.upload(first, 60).bytes == 0
    second = make_checkpoint(tmp_path / "b", 4, {"w": b"two", "x": b"new"})
    assert store.upload(second, 60).bytes > 0
    assert tree(store.download(4, tmp_path / "fresh").path) == tree(second)


def test_a_lease_deleted_under_its_owner_is_written_back(moto: MotoServer) -> None:
    """The highest generation wins even when the lease object vanished meanwhile."""
    store = _store(moto)
    lease = Lease(store, "a")
    lease.take()
    store.fs.rm_file(f"{store.root}/{LEASE_NAME}")
    lease.check()
    holder = lease.holder()
    assert holder is not None and (holder.owner, holder.generation) == ("a", 1)


def test_remote_retention_and_local_protection(moto: MotoServer, tmp_path: Path) -> None:
    """keep_remote N keeps the N newest remote; local ones newer than the newest remote stay."""
    outcomes = Outcomes()
    uploader = Uploader(_store(moto), outcomes, keep_remote=2, rules=RetentionRules(keep_last=9))
    uploader.start()
    try:
        for step in (1, 2, 3):
            uploader.submit(make_checkpoint(tmp_path / "a", step), step)
            assert uploader.flush(time.monotonic() + 60)
        wait_for(lambda: outcomes.of(RemotePruned), "a remote prune")
    finally:
        uploader.close()
    assert [c.step for c in _store(moto).list()] == [2, 3]
    assert [o.step for o in outcomes.of(RemotePruned)] == [1]
    bandwidth = uploader.measured_bandwidth
    assert bandwidth is not None and bandwidth > 0
    local = scan(tmp_path / "a")
    assert protected_locally(local, 2) == [c.path for c in local if c.step == 3]
    assert protected_locally(local, None) == [c.path for c in local]


def test_file_url_is_the_generic_path(tmp_path: Path) -> None:
    """file:// works end to end: upload, list, fencing, verified download, delete."""
    store = RemoteStore(f"file://{tmp_path / 'bucket'}")
    lease = Lease(store, "a")  # taken by the first upload
    outcomes = Outcomes()
    uploader = Uploader(store, outcomes, lease=lease)
    uploader.start()
    try:
        local = make_checkpoint(tmp_path / "a", 4, {"w.bin": os.urandom(20 * MIB)})
        uploader.submit(local, 4)
        assert uploader.flush(time.monotonic() + 60)
    finally:
        uploader.close()
    assert [c.step for c in store.list()] == [4] and lease.generation == 1
    got = store.download(4, tmp_path / "fresh")
    assert tree(got.path) == tree(local)
    assert Lease(store, "b").take() == 2
    with pytest.raises(Fenced):
        lease.check()
    store.delete(4)
    assert store.list() == []


def test_a_file_url_download_checks_every_byte(tmp_path: Path) -> None:
    """file://: a flipped byte or a longer file is invalid and leaves nothing behind."""
    store = RemoteStore(f"file://{tmp_path / 'bucket'}")
    model = os.urandom(3 * MIB)
    store.upload(make_checkpoint(tmp_path / "a", 2, {"w.bin": model}), timeout=60)
    remote = tmp_path / "bucket" / "step-00000002" / "w.bin"
    fresh = tmp_path / "fresh"
    for changed, error in ((b"\0" + model[1:], "digest mismatch"), (model + b"!", "larger")):
        remote.write_bytes(changed)
        with pytest.raises(InvalidRemoteCheckpoint, match=error):
            store.download(2, fresh)
        assert list(fresh.iterdir()) == []
    remote.write_bytes(model)
    assert store.download(2, fresh).valid


def test_a_file_url_upload_never_writes_through_a_symlink(tmp_path: Path) -> None:
    """file://: a symlink planted where a file goes up fails the upload; its target is intact."""
    store = RemoteStore(f"file://{tmp_path / 'bucket'}")
    local = make_checkpoint(tmp_path / "a", 3, {"w.bin": os.urandom(MIB)})
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "bucket" / "step-00000003").mkdir(parents=True)
    (tmp_path / "bucket" / "step-00000003" / "w.bin").symlink_to(victim)
    with pytest.raises(RemoteError, match="symbolic links"):
        store.upload(local, timeout=60)
    assert victim.read_bytes() == b"keep" and store.list() == []


def test_a_remote_down_at_launch_is_reported_not_raised(moto: MotoServer, tmp_path: Path) -> None:
    """fetch_newer with the remote down returns the error: the job resumes from local."""
    store = _store(moto)
    moto.stop()
    started = time.monotonic()
    fetched = fetch_newer(store, tmp_path / "fresh", list_timeout=1.0)
    assert fetched.checkpoint is None and fetched.error and fetched.rejected == []
    assert time.monotonic() - started < 5


def test_a_missing_bucket_is_unusable_and_a_fresh_prefix_is_empty(moto: MotoServer) -> None:
    """No such bucket is a configuration error; a prefix nobody wrote to yet is just empty."""
    with pytest.raises(RemoteUnusable, match="s3://no-such-bucket/run"):
        fetch_newer(RemoteStore("s3://no-such-bucket/run", moto.options), Path("/nonexistent"))
    fetched = fetch_newer(_store(moto, "fresh"), Path("/nonexistent"))
    assert fetched == RemoteResume()


def test_a_fresh_machine_resumes_from_the_bucket(moto: MotoServer, tmp_path: Path) -> None:
    """What one machine uploads, a replacement with an empty disk downloads bit-exact."""
    storage = StorageConfig(moto.url(), 60.0, 0, moto.options)
    first = RemoteCopy(storage, RetentionRules(keep_last=3), Outcomes())
    assert first.prepare(tmp_path / "a", None) == RemoteResume()
    first.follow("first", None, [])
    first.start()
    try:
        for step in (1, 2):
            first.submit(make_checkpoint(tmp_path / "a", step), step)
        assert first.flush(time.monotonic() + 60)
        status = first.status()
        assert (status.newest_remote_step, status.backlog_steps, status.fenced) == (2, [], False)
        assert first.protected(scan(tmp_path / "a")) == []
    finally:
        first.close()
    second = RemoteCopy(storage, RetentionRules(keep_last=3), Outcomes())
    resumed = second.prepare(tmp_path / "b", None).checkpoint
    assert resumed is not None and resumed.path == tmp_path / "b" / "step-00000002"
    assert tree(resumed.path) == tree(tmp_path / "a" / "step-00000002")
    second.follow("first", resumed.step, scan(tmp_path / "b"))
    assert second.status().newest_remote_step == 2 and second.status().backlog_steps == []
    assert second.prepare(tmp_path / "b", resumed) == RemoteResume(newest_remote_step=2)
    with pytest.raises(Fenced):
        first.lease.check()


def test_local_checkpoints_newer_than_the_remote_are_queued_at_launch(
    moto: MotoServer, tmp_path: Path
) -> None:
    """A launch queues local checkpoints newer than the remote's newest; they go up."""
    local = tmp_path / "local"
    _store(moto).upload(make_checkpoint(local, 1, lineage="L"), 60)
    for step in (2, 3):
        make_checkpoint(local, step, lineage="L")
    copy = RemoteCopy(
        StorageConfig(moto.url(), 60.0, 0, moto.options), RetentionRules(), Outcomes()
    )
    assert copy.prepare(local, scan(local)[-1]).checkpoint is None
    copy.follow("L", 3, scan(local))
    status = copy.status().to_json()
    assert (status["newest_remote_step"], status["backlog_steps"], status["reached"]) == (
        1,
        [2, 3],
        True,
    )
    assert (status["fenced"], status["lineage"], status["upload_in_flight"]) == (False, "L", None)
    copy.start()
    try:
        assert copy.flush(time.monotonic() + 60)
        status = copy.status().to_json()
    finally:
        copy.close()
    assert [c.step for c in _store(moto).list()] == [1, 3]
    assert (status["newest_remote_step"], status["backlog_steps"], status["last_error"]) == (
        3,
        [],
        None,
    )
    assert status["last_upload"]["step"] == 3 and status["expected_upload_seconds"] is None


def test_a_timeout_below_the_measured_upload_time_is_warned(
    moto: MotoServer, tmp_path: Path
) -> None:
    """remote.timeout_short when upload_timeout is below the time at the measured rate."""
    outcomes = Outcomes()
    uploader = Uploader(_store(moto), outcomes, upload_timeout=1.0, backoff=0.1, backoff_max=0.2)
    uploader.start()
    try:
        uploader.submit(make_checkpoint(tmp_path / "a", 1), 1)
        assert uploader.flush(time.monotonic() + 60)
        bandwidth = uploader.measured_bandwidth
        assert bandwidth is not None and not outcomes.of(UploadTimeoutShort)
        size = int(bandwidth * 4)  # four times what one attempt can move
        uploader.submit(make_checkpoint(tmp_path / "a", 2, {"w": os.urandom(size)}), 2)
        warned = wait_for(lambda: outcomes.of(UploadTimeoutShort), "the warning")[0]
    finally:
        uploader.close()
    assert (warned.step, warned.bytes, warned.upload_timeout) == (2, size, 1.0)
    assert warned.expected_seconds > 3.0 and "upload_timeout" in warned.why


def test_a_stop_gives_the_upload_in_flight_the_whole_deadline(
    moto: MotoServer, tmp_path: Path
) -> None:
    """At a stop the upload in flight is one attempt up to the stop's deadline."""
    outcomes = Outcomes()
    uploader = Uploader(_store(moto), outcomes, upload_timeout=1.0, backoff=0.1, backoff_max=0.2)
    flushed: list[bool] = []
    flusher = threading.Thread(target=lambda: flushed.append(uploader.flush(time.monotonic() + 60)))
    uploader.start()
    try:
        uploader.submit(make_checkpoint(tmp_path / "a", 1), 1)
        assert uploader.flush(time.monotonic() + 60)  # listed the remote, uploaded once
        moto.freeze()
        uploader.submit(make_checkpoint(tmp_path / "a", 2), 2)
        wait_for(lambda: uploader.in_flight == 2, "the upload of step 2 to begin")
        flusher.start()
        time.sleep(2.5)  # the stimulus: the network is stuck for longer than upload_timeout
        moto.thaw()
        flusher.join(60)
    finally:
        moto.thaw()
        uploader.close()
    assert flushed == [True]
    # Step 1 is the set-up: on a loaded machine its 1 s attempts may be cut and retried.
    assert [o for o in outcomes.of(UploadFailed) if o.step == 2] == []
    assert [o.step for o in outcomes.of(Uploaded)] == [1, 2]


def test_a_deleted_bucket_is_named_not_a_lost_race(moto: MotoServer) -> None:
    """A bucket deleted under the lease is named as such, not a race kept lost."""
    store = _store(moto)
    lease = Lease(store, "a", timeout=10)
    lease.take()
    store.fs.call_s3("delete_object", Bucket=moto.bucket, Key=f"run/{LEASE_NAME}")
    store.fs.call_s3("delete_bucket", Bucket=moto.bucket)
    for action in (lease.check, Lease(store, "b", timeout=10).take):
        with pytest.raises(RemoteError, match=f"the bucket '{moto.bucket}' does not exist") as got:
            action()
        assert "race" not in str(got.value)
