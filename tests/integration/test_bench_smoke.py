"""The benchmark suite runs end to end (tiny sizes); its figures are not judged here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_bench_quick_fills_every_row(tmp_path: Path) -> None:
    """`python -m bench --quick` prints the table and writes results.json and benchmarks.md."""
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reproduce: python -m bench --quick" in result.stdout
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    figures = [row["figure"] for row in rows]
    for expected in (
        "touch CHECKPOINT",
        "ZeroMQ",
        "SIGUSR1",
        "SIGTERM -> final",
        "crash ->",
        "daemon CPU",
        "steps/s",
        "client cost",
        "commit of",
        "resume:",
        "save_async",
    ):
        assert any(expected in figure for figure in figures), expected
    assert all(row["ckptd"] and row["baseline"] for row in rows)
    markdown = (tmp_path / "benchmarks.md").read_text()
    assert "python -m bench --quick" in markdown and "| figure |" in markdown
