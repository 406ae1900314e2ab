"""The command line's output to a pipe whose reader goes away (`ckptd list | head`)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from ckptd_client import _digest, manifest

NOTE = "n" * 1000  # a long metric makes every row ~1 KiB, so the output overflows a pipe


def _fake_checkpoints(root: Path, count: int) -> None:
    """Valid checkpoint directories written directly (no fsync): a long listing, quickly."""
    for step in range(count):
        path = root / manifest.checkpoint_name(step)
        path.mkdir(parents=True)
        (path / "a").write_bytes(b"x")
        digest, size = _digest.digest_file(path / "a", "sha256")
        written = manifest.Manifest(
            step=step,
            time=1.0,
            files=(manifest.FileEntry("a", size, digest),),
            metrics={"note": NOTE},
            hash="sha256",
        )
        (path / manifest.MANIFEST_NAME).write_text(written.to_json())


def test_list_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`ckptd list DIR | head -1`: no BrokenPipeError traceback, the status of a SIGPIPE death."""
    _fake_checkpoints(tmp_path / "ckpt", 400)  # ~400 KiB of rows: far more than a pipe holds
    listing = subprocess.Popen(
        [sys.executable, "-m", "ckptd", "list", str(tmp_path / "ckpt")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert listing.stdout is not None and listing.stderr is not None
    first = listing.stdout.readline()
    listing.stdout.close()  # as `head -1` does once it has its line
    errors = listing.stderr.read().decode(errors="replace")
    listing.stderr.close()
    status = listing.wait(timeout=60)
    assert first.startswith(b"NAME")
    assert "Traceback" not in errors and "BrokenPipeError" not in errors, errors
    assert errors == ""
    assert status == 128 + signal.SIGPIPE
