"""Signed checkpoints with real daemons: signing after commits, refusing at resume, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from ckptd_client import manifest

from conftest import Job, wait_for

pytest.importorskip("model_signing", reason="needs the signing extra")

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def _keys(base: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = base / "sign.pem", base / "sign.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(private, 0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def _config(base: Path, **integrity: Path) -> Path:
    lines = ["[integrity]", *(f'{k} = "{v}"' for k, v in integrity.items())]
    path = base / "ckptd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _signed_run(job: Job, private: Path, public: Path, *extra: str) -> list[int]:
    """A run that saves every 5 steps up to step 30 and ends; the steps it committed."""
    config = _config(job.base, signing_key=private, verify_key=public)
    job.start_fake(
        "--steps", "31", "--save-every", "5", "--step-time", "0.005",
        options=("--config", str(config), "--keep-last", "0", *extra),
    )  # fmt: skip
    assert job.wait() == 0, job.log_tail()
    return sorted(r["step"] for r in job.records("saved"))


def _upstream_verify(public: Path, checkpoint: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "model_signing", "verify", "key", "--public_key", str(public)]
    return subprocess.run(
        [*command, "--signature", str(checkpoint / "model.sig"), str(checkpoint)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_commit_is_signed_off_the_job_and_the_upstream_tool_agrees(
    make_job: Callable[..., Job], tmp_path: Path
) -> None:
    """Each committed checkpoint gets model.sig (checkpoint.signed); model_signing verifies it;
    the key never appears in the job's environment."""
    private, public = _keys(tmp_path)
    job = make_job()
    config = _config(tmp_path, signing_key=private, verify_key=public)
    job.start_fake(
        "--steps", "31", "--save-every", "5", "--step-time", "0.02",
        options=("--config", str(config), "--keep-last", "0"),
    )  # fmt: skip
    first = job.wait_record("step")
    environment = psutil.Process(first["pid"]).environ()
    assert not [k for k, v in environment.items() if str(private) in v or "PRIVATE KEY" in v]
    assert job.wait() == 0, job.log_tail()
    saved = sorted(r["step"] for r in job.records("saved"))
    assert saved == [5, 10, 15, 20, 25, 30]
    signed = {e["step"]: e for e in job.events("checkpoint.signed")}
    assert sorted(signed) == saved and all(e["seconds"] >= 0 for e in signed.values())
    for step in saved:
        checkpoint = job.checkpoint_dir / manifest.checkpoint_name(step)
        assert manifest.verify(checkpoint).ok
    newest = job.checkpoint_dir / manifest.checkpoint_name(30)
    done = _upstream_verify(public, newest)
    assert done.returncode == 0 and "Verification succeeded" in done.stdout, done.stderr
    assert not list(job.checkpoint_dir.glob(".sig-*"))


def test_resume_moves_aside_forged_and_unsigned_checkpoints(
    make_job: Callable[..., Job], tmp_path: Path
) -> None:
    """With verify_key, a checkpoint with rewritten files and a recomputed manifest, and one
    without model.sig, are moved aside before the job starts; it resumes from the newest
    signed one."""
    private, public = _keys(tmp_path)
    saved = _signed_run(make_job("first"), private, public)
    ckpt = tmp_path / "ckpt"
    forged_step, unsigned_step, good_step = saved[-1], saved[-2], saved[-3]
    forged = ckpt / manifest.checkpoint_name(forged_step)
    temp = manifest.new_temp_dir(tmp_path / "forge", forged_step)
    (temp / "payload.bin").write_bytes(b"poisoned weights")
    rewritten, _ = manifest.commit(temp, forged_step, {"loss": 0.0})
    for name in ("payload.bin", "ckptd.json"):
        shutil.copyfile(rewritten / name, forged / name)
    assert manifest.verify(forged).ok  # consistent: only the signature can tell
    (ckpt / manifest.checkpoint_name(unsigned_step) / "model.sig").unlink()

    second = make_job("second")
    second.record = tmp_path / "second.jsonl"
    second.start_fake(
        "--steps", "1000000",
        options=("--config", str(_config(tmp_path, verify_key=public)), "--keep-last", "0"),
    )  # fmt: skip
    start = second.wait_record("start")
    assert start["resume_step"] == good_step
    invalid = {e["step"]: e for e in second.events("checkpoint.invalid")}
    assert invalid[forged_step]["why"].startswith("signature mismatch")
    assert "payload.bin" in invalid[forged_step]["why"]
    assert invalid[unsigned_step]["why"] == "signature unsigned: no model.sig"
    assert all(Path(invalid[s]["moved_to"]).is_dir() for s in (forged_step, unsigned_step))
    assert not forged.exists()
    second.signal(15)
    assert second.wait() == 0

    listed = second.cli("list", "--json", "--key", str(public))
    statuses = {c["step"]: c["signature"]["status"] for c in json.loads(listed.stdout)}
    assert statuses[good_step] == "signed-ok", listed.stderr
    moved = Path(invalid[forged_step]["moved_to"])
    refused = subprocess.run(
        [sys.executable, "-m", "ckptd", "verify", str(moved), "--key", str(public)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1 and "signature mismatch" in refused.stdout
    accepted = subprocess.run(
        [sys.executable, "-m", "ckptd", "verify", str(ckpt / manifest.checkpoint_name(good_step)),
         "--key", str(public)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert accepted.returncode == 0 and "signed-ok by sha256:" in accepted.stdout


def test_a_remote_copy_carries_model_sig_and_a_download_is_checked(
    make_job: Callable[..., Job], tmp_path: Path
) -> None:
    """model.sig is uploaded with the files (no later than ckptd.json); on a fresh machine the
    download brings it and verify_key accepts it."""
    private, public = _keys(tmp_path)
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    saved = _signed_run(make_job("first"), private, public, "--remote", f"file://{bucket}")
    newest = bucket / manifest.checkpoint_name(saved[-1])
    wait_for(lambda: (newest / "ckptd.json").exists(), "the newest upload")
    signature, remote_manifest = newest / "model.sig", newest / "ckptd.json"
    assert signature.exists()
    assert signature.stat().st_mtime_ns <= remote_manifest.stat().st_mtime_ns
    shutil.rmtree(tmp_path / "ckpt")

    second = make_job("second")
    second.record = tmp_path / "second.jsonl"
    config = _config(tmp_path, verify_key=public)
    second.start_fake(
        "--steps", "1000000",
        options=("--config", str(config), "--remote", f"file://{bucket}"),
    )  # fmt: skip
    downloaded = second.wait_event("remote.downloaded")
    assert downloaded["step"] == saved[-1]
    assert (Path(downloaded["path"]) / "model.sig").read_bytes() == signature.read_bytes()
    assert second.wait_event("job.started", count=2)["resume_step"] == saved[-1]
    second.signal(15)
    assert second.wait() == 0


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (lambda p: os.chmod(p, 0o644), "open to its group or others (mode 0644)"),
        (lambda p: p.write_text("not a key"), "is not a PEM private key"),
    ],
    ids=["readable", "garbage"],
)
def test_an_unusable_signing_key_stops_ckptd_at_start(
    make_job: Callable[..., Job], tmp_path: Path, prepare, message: str
) -> None:
    """A group-readable or broken signing key is a one-line config error (exit 2), nothing run."""
    private, _ = _keys(tmp_path)
    prepare(private)
    job = make_job()
    job.start_fake(options=("--signing-key", str(private)))
    assert job.wait() == 2
    error = job.stderr.read_text()
    assert "[integrity].signing_key" in error and message in error
    assert not job.record.exists()
