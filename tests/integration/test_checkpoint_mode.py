"""Who can read the checkpoints: the umask by default, ``checkpoint_mode`` to lock them down."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAKES, Job

# Run as another user (nobody): try to read a file; exit 7 when that is refused.
OTHER_USER_READS = (
    "import os, sys\n"
    "os.setgid(65534); os.setuid(65534)\n"
    "try:\n    open(sys.argv[1], 'rb').read(1)\nexcept PermissionError:\n    sys.exit(7)\n"
)


def _modes(root: Path) -> dict[str, int]:
    return {
        str(path.relative_to(root)): stat.S_IMODE(path.lstat().st_mode)
        for path in [root, *root.rglob("*")]
    }


def test_checkpoint_mode_makes_checkpoints_private(job: Job) -> None:
    """checkpoint_mode "0700": the directory and each checkpoint 0700, files 0600; others fail."""
    job.start_fake(options=("--checkpoint-mode", "0700"))
    job.wait_event("client.connected")
    (job.run_dir / "CHECKPOINT").touch()
    committed = job.wait_event("checkpoint.committed")
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    assert stat.S_IMODE(job.checkpoint_dir.stat().st_mode) == 0o700
    checkpoint = Path(committed["path"])
    modes = _modes(checkpoint)
    assert modes.pop(".") == 0o700
    assert modes == {"payload.bin": 0o600, "ckptd.json": 0o600}
    if os.getuid() != 0:
        pytest.skip("modes checked; reading as another user (nobody) needs root")
    result = subprocess.run(
        [sys.executable, "-c", OTHER_USER_READS, str(checkpoint / "payload.bin")], timeout=60
    )
    assert result.returncode == 7, "another user could read the checkpoint"


def test_without_checkpoint_mode_the_umask_decides(job: Job) -> None:
    """By default checkpoints follow the umask: 0755 and 0644 under umask 022."""
    trainer = f"{sys.executable} {FAKES / 'trainer.py'} --record {job.record}"
    job.start(["sh", "-c", f"umask 022 && exec {trainer}"])
    job.wait_event("client.connected")
    (job.run_dir / "CHECKPOINT").touch()
    committed = job.wait_event("checkpoint.committed")
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    modes = _modes(Path(committed["path"]))
    assert modes == {".": 0o755, "payload.bin": 0o644, "ckptd.json": 0o644}


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("0644", "must leave the owner rwx"),
        ("04700", "expected an octal mode"),
        ("rwx", "expected an octal mode"),
    ],
)
def test_bad_checkpoint_mode_is_one_line(tmp_path: Path, given: str, message: str) -> None:
    """A mode that is not octal, has special bits or locks the owner out: exit 2, one line."""
    result = subprocess.run(
        [sys.executable, "-m", "ckptd", "run", "--checkpoint-mode", given, "--", "true"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--checkpoint-mode" in result.stderr and message in result.stderr
