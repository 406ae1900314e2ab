"""`ckptd list` and `ckptd verify` on an s3:// URL, against moto's S3 server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from remote_fixtures import MotoServer, make_checkpoint, moto

from ckptd.storage.remote.store import RemoteStore

__all__ = ["moto"]  # the fixture, imported for pytest


def _ckptd(server: MotoServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ckptd", *args],
        env={**os.environ, **server.env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_list_and_verify_a_bucket(moto: MotoServer, tmp_path: Path) -> None:
    """list shows a listed size unlike the manifest's as invalid; verify checks digests."""
    store = RemoteStore(moto.url(), moto.options)
    for step in (10, 20, 30, 40):
        store.upload(make_checkpoint(tmp_path / "a", step), timeout=60)
    store.fs.pipe_file(store.path_of(20, "model.pt"), b"not the model")
    manifest = json.loads(store.fs.cat_file(store.path_of(30, "ckptd.json")))
    for entry in manifest["files"]:
        entry["size"] = 10**15  # a 1 PB claim for a few bytes
    store.fs.pipe_file(store.path_of(30, "ckptd.json"), json.dumps(manifest).encode())
    store.fs.pipe_file(store.path_of(40, "model.pt"), b"\0" * 4096)  # same size: only digests tell

    listed = _ckptd(moto, "list", moto.url(), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [(c["step"], c["valid"], c["reason"]) for c in json.loads(listed.stdout)]
    assert rows == [
        (10, True, ""),
        (20, False, "model.pt: size 13, manifest says 4096"),
        (30, False, f"model.pt: size 4096, manifest says {10**15}"),
        (40, True, ""),
    ]
    checked = _ckptd(moto, "list", moto.url(), "--verify")
    assert checked.returncode == 0, checked.stderr
    assert "step-00000010" in checked.stdout and "NO (model.pt: size 13" in checked.stdout
    assert "NO (model.pt: digest mismatch)" in checked.stdout

    good = _ckptd(moto, "verify", f"{moto.url()}/step-00000010")
    assert (good.returncode, good.stdout.split()[0]) == (0, "ok:"), good.stderr
    bad = _ckptd(moto, "verify", f"{moto.url()}/step-00000020")
    assert (bad.returncode, bad.stdout.split()[0]) == (1, "invalid:"), bad.stderr


def test_unreachable_or_unknown_remotes_are_one_line_errors(moto: MotoServer) -> None:
    """A remote that is down, or a protocol nobody knows, is one line on stderr, exit 2."""
    moto.stop()
    down = _ckptd(moto, "verify", f"{moto.url()}/step-00000001")
    unknown = _ckptd(moto, "list", "nope://bucket/prefix")
    for result, what in ((down, moto.url()), (unknown, "nope://bucket/prefix")):
        assert result.returncode == 2 and result.stdout == ""
        assert len(result.stderr.strip().splitlines()) == 1 and what in result.stderr


def test_list_and_verify_say_they_take_a_bucket_url() -> None:
    """`ckptd list --help` and `ckptd verify --help` say a remote URL (s3://...) is taken."""
    for command in ("list", "verify"):
        shown = subprocess.run(
            [sys.executable, "-m", "ckptd", command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0 and "s3://" in shown.stdout, shown.stdout
