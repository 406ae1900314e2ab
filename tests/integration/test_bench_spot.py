"""The spot scenario runs end to end in a short schedule; its figures are not judged here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_bench_spot_quick_prints_every_contender() -> None:
    """`python -m bench.spot --quick --memory` prints a goodput for ckptd, the loop and ckptd
    with the memory tier, and leaves nothing behind (its RAM directory included)."""
    before = set(Path("/dev/shm").glob("ckptd-spot-*"))
    result = subprocess.run(
        [sys.executable, "-m", "bench.spot", "--minutes", "0.3", "--quick", "--memory"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for contender in ("ckptd every=auto", "bash loop, every 60 s", "ckptd + memory tier"):
        row = re.search(rf"^{re.escape(contender)}\s+(\d\.\d+)\s+(\d+)\s", result.stdout, re.M)
        assert row, f"no row for {contender}:\n{result.stdout}"
        assert 0 < float(row.group(1)) <= 1
    assert "ckptd report --json: goodput" in result.stdout
    assert "reproduce: python -m bench.spot --minutes 0.3 --quick --memory" in result.stdout
    assert "the disk-only Young/Daly bound" in result.stdout
    assert set(Path("/dev/shm").glob("ckptd-spot-*")) <= before
