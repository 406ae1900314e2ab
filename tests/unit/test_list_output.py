"""`ckptd list`: the human table of a checkpoint directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptd.cli import main as cli
from ckptd_client import manifest


def test_metrics_are_shown_at_a_readable_precision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Float metrics print with six significant digits; integers and text as they are."""
    directory = manifest.new_temp_dir(tmp_path, 7)
    (directory / "state.bin").write_bytes(b"x")
    metrics = {"loss": 0.017000032112345678, "lr": 3.0000000000000004e-05, "epoch": 3, "tag": "a"}
    manifest.commit(directory, 7, metrics)
    assert cli.main(["list", str(tmp_path)]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert row.endswith("  epoch=3 loss=0.017 lr=3e-05 tag=a"), row
