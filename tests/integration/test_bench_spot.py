"""The spot scenario runs end to end in a short schedule; its figures are not judged here."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT


def test_bench_spot_quick_prints_both_contenders() -> None:
    """`python -m bench.spot --quick` prints a goodput for ckptd and the loop, leaves nothing."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.spot", "--minutes", "0.3", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for contender in ("ckptd every=auto", "bash loop, every 60 s"):
        row = re.search(rf"^{re.escape(contender)}\s+(\d\.\d+)\s+(\d+)\s", result.stdout, re.M)
        assert row, f"no row for {contender}:\n{result.stdout}"
        assert 0 < float(row.group(1)) <= 1
    assert "ckptd report --json: goodput" in result.stdout
    assert "reproduce: python -m bench.spot --minutes 0.3 --quick" in result.stdout
