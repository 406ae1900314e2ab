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
        "memory-tier save",
        "memory tier vs disk",
        "first step again",
        "signing a",
    ):
        assert any(expected in figure for figure in figures), expected
    assert all(row["ckptd"] and row["baseline"] for row in rows)
    markdown = (tmp_path / "benchmarks.md").read_text()
    assert "python -m bench --quick" in markdown and "| figure |" in markdown
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert f"from a run of commit `{commit}`" in markdown
    spreads = {row["figure"]: row["spread"] for row in rows if row["ratio"] is not None}
    commit_row = next(spread for figure, spread in spreads.items() if "commit of" in figure)
    assert commit_row is not None and commit_row["ratios"], "interleaved pairs, not one ratio"
    assert "wake-ups/s" in next(row["ckptd"] for row in rows if "daemon CPU" in row["figure"])


def test_commit_probe_profiles_each_side(tmp_path: Path) -> None:
    """`python -m bench.commit_probe` times and profiles interleaved runs of each side."""
    out = tmp_path / "probe.json"
    probe = ["bench.commit_probe", "--size-mib", "8", "--rounds", "2", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", *probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "raw/ckptd per round" in result.stdout
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {"raw", "ckptd", "ckptd-nowb", "raw-wb"}
    for records in runs.values():
        assert len(records) == 2
        assert all(r["seconds"] > 0 and r["device_mib"] >= 0 for r in records)
