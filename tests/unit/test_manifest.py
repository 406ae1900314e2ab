"""The commit protocol and verification of checkpoint directories."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ckptd_client import manifest, store


def _commit(root: Path, step: int, files: dict[str, bytes]) -> Path:
    temp = manifest.new_temp_dir(root, step)
    for rel, data in files.items():
        (temp / rel).parent.mkdir(parents=True, exist_ok=True)
        (temp / rel).write_bytes(data)
    path, _ = manifest.commit(temp, step, {"loss": 0.5})
    return path


def test_commit_writes_manifest_with_sizes_and_hashes(tmp_path: Path) -> None:
    """A commit renames the temp dir to step-N and lists every file with size and digest."""
    path = _commit(tmp_path, 12, {"model.pt": b"abc", "opt/state.bin": b"x" * 5000})
    assert path.name == "step-00000012"
    read = manifest.read_manifest(path)
    assert read.step == 12 and read.metrics == {"loss": 0.5}
    assert {(f.path, f.size) for f in read.files} == {("model.pt", 3), ("opt/state.bin", 5000)}
    assert manifest.verify(path).ok
    assert not list(tmp_path.glob(".tmp-*"))


def test_large_file_is_hashed_in_a_stream(tmp_path: Path) -> None:
    """Files larger than the hashing chunk verify and their size is exact."""
    data = os.urandom(3 * (1 << 20) + 17)
    path = _commit(tmp_path, 1, {"big.bin": data})
    assert manifest.read_manifest(path).files[0].size == len(data)
    assert manifest.verify(path, full=True).ok


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: (p / "model.pt").write_bytes(b"abd"), "mismatch"),
        (lambda p: (p / "model.pt").write_bytes(b"abcd"), "size"),
        (lambda p: (p / "model.pt").unlink(), "missing"),
        (lambda p: (p / "extra").write_bytes(b""), "not in manifest"),
        (lambda p: (p / "ckptd.json").unlink(), "no manifest"),
        (lambda p: (p / "ckptd.json").write_text("{"), "not JSON"),
        (lambda p: os.symlink("/etc/passwd", p / "link"), "symlink"),
    ],
)
def test_damaged_checkpoints_do_not_verify(tmp_path: Path, damage, reason: str) -> None:
    """Any difference from the manifest makes a directory invalid, with the reason."""
    path = _commit(tmp_path, 3, {"model.pt": b"abc"})
    damage(path)
    result = manifest.verify(path)
    assert not result.ok and reason in result.reason


def test_manifest_paths_cannot_escape_the_directory(tmp_path: Path) -> None:
    """A manifest naming ../ or absolute paths is rejected before any file is read."""
    path = _commit(tmp_path, 3, {"model.pt": b"abc"})
    text = (path / "ckptd.json").read_text().replace('"model.pt"', '"../model.pt"')
    (path / "ckptd.json").write_text(text)
    assert "unsafe path" in manifest.verify(path).reason


def test_failed_commit_leaves_previous_checkpoint_newest(tmp_path: Path) -> None:
    """A commit that fails (a symlink in the temp dir) removes its temp dir and changes nothing."""
    _commit(tmp_path, 1, {"a": b"1"})
    temp = manifest.new_temp_dir(tmp_path, 2)
    os.symlink("/etc/passwd", temp / "evil")
    with pytest.raises(manifest.CommitError):
        manifest.commit(temp, 2)
    assert not temp.exists()
    assert store.newest_valid(tmp_path).step == 1


def test_recommitting_a_step_replaces_it(tmp_path: Path) -> None:
    """Saving the same step again replaces the old directory with the new content."""
    _commit(tmp_path, 5, {"a": b"old"})
    path = _commit(tmp_path, 5, {"a": b"new"})
    assert (path / "a").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000005"]


def test_remove_temporaries_restores_an_orphaned_trash_dir(tmp_path: Path) -> None:
    """Leftover .tmp- dirs go; a .trash- dir whose step vanished is put back."""
    path = _commit(tmp_path, 5, {"a": b"x"})
    trash = tmp_path / ".trash-step-00000005-abcd1234"
    os.rename(path, trash)
    temp = manifest.new_temp_dir(tmp_path, 6)
    assert manifest.remove_temporaries(tmp_path) == [temp]
    assert manifest.verify(path).ok and not trash.exists()


def test_newest_valid_skips_invalid_and_reports_them(tmp_path: Path) -> None:
    """newest_valid falls back past corrupted checkpoints and tells which it rejected."""
    _commit(tmp_path, 1, {"a": b"1"})
    newest = _commit(tmp_path, 2, {"a": b"2"})
    (newest / "a").write_bytes(b"3")
    (tmp_path / "step-00000009").mkdir()  # torn: no manifest
    rejected: list[store.Checkpoint] = []
    assert store.newest_valid(tmp_path, rejected=rejected).step == 1
    assert [c.step for c in rejected] == [9, 2]


def test_sha256_fallback_and_old_manifests_verify(tmp_path: Path, monkeypatch) -> None:
    """Without xxhash, commits use sha256; format-1 manifests (sha256 entries) still verify."""
    from ckptd_client import _digest

    monkeypatch.setattr(_digest, "xxhash", None)
    path = _commit(tmp_path, 4, {"a": b"abc"})
    written = manifest.read_manifest(path)
    assert written.hash == "sha256" and manifest.verify(path).ok
    old = json.loads((path / "ckptd.json").read_text())
    old["format"] = 1
    del old["hash"]
    old["files"] = [
        {"path": f["path"], "size": f["size"], "sha256": f["digest"]} for f in old["files"]
    ]
    (path / "ckptd.json").write_text(json.dumps(old))
    assert manifest.verify(path).ok


def test_fast_digest_is_recorded_and_checked(tmp_path: Path) -> None:
    """With xxhash installed the manifest records xxh3_128, and tampering is still caught."""
    from ckptd_client import _digest

    if _digest.xxhash is None:
        pytest.skip("xxhash is not installed")
    path = _commit(tmp_path, 4, {"a": b"abc" * 1000, "b": b"x"})
    assert manifest.read_manifest(path).hash == "xxh3_128"
    (path / "a").write_bytes(b"abd" * 1000)
    assert "xxh3_128 mismatch" in manifest.verify(path).reason


def test_files_written_through_create_are_not_read_back(tmp_path: Path, monkeypatch) -> None:
    """ckptd_client.create digests while writing; the commit then only fsyncs that file."""
    import ckptd_client
    from ckptd_client import _digest

    read_back: list[str] = []
    original = _digest.digest_file
    monkeypatch.setattr(
        _digest,
        "digest_file",
        lambda path, algorithm: read_back.append(path.name) or original(path, algorithm),
    )
    temp = manifest.new_temp_dir(tmp_path, 7)
    with ckptd_client.create(temp / "streamed.bin") as handle:
        for _ in range(4):
            handle.write(os.urandom(100_000))
    (temp / "plain.bin").write_bytes(b"written the ordinary way")
    with ckptd_client.create(temp / "changed.bin") as handle:
        handle.write(b"short")
    (temp / "changed.bin").write_bytes(b"rewritten afterwards, longer")
    path, _ = manifest.commit(temp, 7)
    assert sorted(read_back) == ["changed.bin", "plain.bin"]
    assert manifest.verify(path).ok


def test_same_size_rewrite_after_create_is_hashed_again(tmp_path: Path) -> None:
    """A file rewritten in place at the same size after create() closed it gets a fresh digest."""
    import ckptd_client

    temp = manifest.new_temp_dir(tmp_path, 8)
    target = temp / "same-size.bin"
    with ckptd_client.create(target) as handle:
        handle.write(b"A" * 4096)
    before = target.stat()
    with open(target, "r+b") as handle:  # same size, same inode, new bytes
        handle.write(b"B" * 4096)
    # The clock moved on since create() closed it, as it does between two real writes
    # (two writes within one kernel tick share an mtime; no identity can tell those apart).
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    path, _ = manifest.commit(temp, 8)
    assert manifest.verify(path, full=True).ok


def test_file_replaced_after_create_is_hashed_again(tmp_path: Path) -> None:
    """A file replaced (another inode) by one of the same size and mtime gets a fresh digest."""
    import ckptd_client

    temp = manifest.new_temp_dir(tmp_path, 9)
    target = temp / "replaced.bin"
    with ckptd_client.create(target) as handle:
        handle.write(b"A" * 4096)
    before = target.stat()
    (temp / "next.bin").write_bytes(b"B" * 4096)
    os.utime(temp / "next.bin", ns=(before.st_atime_ns, before.st_mtime_ns))
    os.rename(temp / "next.bin", target)
    assert target.stat().st_ino != before.st_ino
    path, _ = manifest.commit(temp, 9)
    assert manifest.verify(path, full=True).ok


def test_temp_dir_names_its_writer(tmp_path: Path) -> None:
    """new_temp_dir encodes this host and pid; older names parse as writer unknown."""
    temp = manifest.new_temp_dir(tmp_path, 12)
    assert temp.name.startswith(".tmp-step-00000012-")
    assert manifest.temp_dir_writer(temp.name) == (manifest._HOST_ID, os.getpid())
    assert manifest.temp_dir_writer(".tmp-step-00000012-abcd1234") is None


def _temp_named(root: Path, host: str, pid: int, age: float = 0.0) -> Path:
    path = root / f".tmp-step-00000001-{host}-{pid}-{os.urandom(4).hex()}"
    path.mkdir()
    (path / "part.bin").write_bytes(b"x")
    if age:
        stamp = time.time() - age
        os.utime(path, (stamp, stamp))
    return path


def test_remove_temporaries_spares_live_writers(tmp_path: Path) -> None:
    """only_dead_writers removes the .tmp- dirs of gone writers and keeps the others."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(gone.stdout)
    me = os.getpid()
    live = _temp_named(tmp_path, manifest._HOST_ID, me)
    dead = _temp_named(tmp_path, manifest._HOST_ID, dead_pid)
    reused = _temp_named(tmp_path, manifest._HOST_ID, me, age=3 * 3600)  # older than this process
    other_host = _temp_named(tmp_path, "0badc0de", dead_pid)
    unknown = tmp_path / ".tmp-step-00000001-abcd1234"
    unknown.mkdir()
    stale = _temp_named(tmp_path, "0badc0de", me, age=2 * 86400)
    removed = manifest.remove_temporaries(tmp_path, only_dead_writers=True)
    assert sorted(removed) == sorted([dead, reused, stale])
    assert live.is_dir() and other_host.is_dir() and unknown.is_dir()
    assert sorted(manifest.remove_temporaries(tmp_path)) == sorted([live, other_host, unknown])


def test_a_manifest_records_its_lineage_and_parent(tmp_path: Path) -> None:
    """A run inherits its resume point's lineage id and names it by step and digest."""
    fresh = manifest.lineage_after(None)
    assert (fresh.parent_step, fresh.parent_manifest) == (None, None) and fresh.id
    assert manifest.lineage_after(None).id != fresh.id
    temp = manifest.new_temp_dir(tmp_path, 4)
    (temp / "w").write_bytes(b"w")
    first, written = manifest.commit(temp, 4, {}, fresh)
    assert manifest.read_manifest(first).lineage == written.lineage == fresh
    raw = (first / "ckptd.json").read_bytes()
    after = manifest.lineage_after(first)
    digest = f"sha256:{hashlib.sha256(raw).hexdigest()}"
    assert after == manifest.Lineage(fresh.id, 4, digest)
    assert manifest.lineage_after(first, "given").id == "given"
    temp = manifest.new_temp_dir(tmp_path, 9)
    second, _ = manifest.commit(temp, 9, {}, after)
    assert json.loads((second / "ckptd.json").read_text())["lineage"] == {
        "id": fresh.id,
        "parent": {"step": 4, "manifest": digest},
    }


@pytest.mark.parametrize(
    "lineage",
    [
        "abc",
        {"parent": None},
        {"id": "a/b", "parent": None},
        {"id": "x" * 65},
        {"id": "ok", "parent": {"step": -1, "manifest": "sha256:" + "0" * 64}},
        {"id": "ok", "parent": {"step": 3, "manifest": "md5:abc"}},
    ],
)
def test_a_malformed_lineage_makes_the_manifest_invalid(tmp_path: Path, lineage: object) -> None:
    """A malformed lineage fails the manifest; a manifest without one still reads."""
    path = _commit(tmp_path, 2, {"w": b"w"})
    data = json.loads((path / "ckptd.json").read_text())
    assert manifest.read_manifest(path).lineage is None
    data["lineage"] = lineage
    (path / "ckptd.json").write_text(json.dumps(data))
    with pytest.raises(manifest.ManifestError, match="lineage"):
        manifest.read_manifest(path)


def test_an_unlisted_top_level_signature_is_not_an_extra_file(tmp_path: Path) -> None:
    """A model.sig added after the commit is ignored at the top level, and only there."""
    path = _commit(tmp_path, 3, {"model.pt": b"abc", "sub/x": b"y"})
    (path / manifest.SIGNATURE_NAME).write_bytes(b"{}")
    assert manifest.verify(path).ok
    (path / "sub" / manifest.SIGNATURE_NAME).write_bytes(b"{}")
    assert "not in manifest: sub/model.sig" in manifest.verify(path).reason


def test_a_signature_file_the_script_wrote_is_checked_like_any_file(tmp_path: Path) -> None:
    """A model.sig that the manifest lists is verified; removing or changing it fails."""
    path = _commit(tmp_path, 4, {"model.pt": b"abc", "model.sig": b"mine"})
    assert manifest.verify(path).ok
    (path / "model.sig").write_bytes(b"nope")
    assert "mismatch" in manifest.verify(path).reason
    (path / "model.sig").unlink()
    assert "missing file model.sig" in manifest.verify(path).reason
