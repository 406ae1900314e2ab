"""`ckptd verify --key` and `ckptd list --verify --key` on checkpoints in a bucket (s3://)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from remote_fixtures import MotoServer, make_checkpoint, moto

from ckptd.storage.remote.store import RemoteStore
from ckptd_client.manifest import SIGNATURE_NAME, checkpoint_name

from conftest import Job

__all__ = ["moto"]  # the fixture, imported for pytest

pytest.importorskip("s3fs", reason="needs the s3 extra (s3fs) and moto[server]")
pytest.importorskip("model_signing", reason="needs the signing extra")

from test_signatures import _keys, _signed_run  # after the skips: it needs cryptography


def _ckptd(moto: MotoServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ckptd", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **moto.env},
        check=False,
    )


def test_remote_signatures_are_checked_on_a_download(
    moto: MotoServer, make_job: Callable[..., Job], tmp_path: Path
) -> None:
    """Signed checkpoints in the bucket are signed-ok; an unsigned one and one whose model.sig
    belongs to another step are not, and `verify` exits 1 for them; nothing is left behind."""
    private, public = _keys(tmp_path)
    saved = _signed_run(make_job("signer"), private, public)
    store = RemoteStore(moto.url("run"), moto.options)
    local = tmp_path / "ckpt"
    for step in saved[-3:]:
        store.upload(local / checkpoint_name(step), 60)
    unsigned = saved[-1] + 5
    store.upload(make_checkpoint(tmp_path / "other", unsigned), 60)
    swapped = saved[-3]  # its signature replaced by the next one's: a mismatch
    other = (local / checkpoint_name(saved[-2]) / SIGNATURE_NAME).read_bytes()
    store.fs.pipe_file(store.path_of(swapped, SIGNATURE_NAME), other)
    before = set(os.listdir(tmp_path))

    good = _ckptd(moto, "verify", f"{moto.url('run')}/{checkpoint_name(saved[-1])}",
                  "--key", str(public))  # fmt: skip
    assert good.returncode == 0, good.stderr
    assert "ok:" in good.stdout and "signed-ok by" in good.stdout
    bad = _ckptd(moto, "verify", f"{moto.url('run')}/{checkpoint_name(unsigned)}",
                 "--key", str(public), "--json")  # fmt: skip
    assert bad.returncode == 1, bad.stderr
    assert json.loads(bad.stdout)["signature"]["status"] == "unsigned"

    listed = _ckptd(moto, "list", moto.url("run"), "--verify", "--key", str(public), "--json")
    assert listed.returncode == 0, listed.stderr
    status = {c["step"]: c["signature"]["status"] for c in json.loads(listed.stdout)}
    assert status == {
        swapped: "mismatch", saved[-2]: "signed-ok", saved[-1]: "signed-ok", unsigned: "unsigned",
    }  # fmt: skip
    text = _ckptd(moto, "list", moto.url("run"), "--key", str(public))
    assert text.returncode == 0 and "SIGNATURE" in text.stdout and "mismatch" in text.stdout
    assert set(os.listdir(tmp_path)) == before
