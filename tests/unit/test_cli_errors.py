"""Every error of every ckptd command is one line: even a bug says so in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# A real ckptd process whose report command hits a bug (injected: render raises).
BUGGY_REPORT = """
import sys
import ckptd.cli.report
def broken(*args, **kwargs):
    raise KeyError("a bug\\nspanning lines")
ckptd.cli.report.render = broken
from ckptd.cli.main import main
sys.exit(main(["report", "--run-dir", sys.argv[1], "-o", "-"]))
"""


def _run(run_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BUGGY_REPORT, str(run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_an_internal_error_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """No traceback for the user: the command, the error's type and its first line; exit 1."""
    (tmp_path / "events.jsonl").write_text('{"time": 1.0, "event": "ckptd.started"}\\n')
    done = _run(tmp_path)
    assert done.returncode == 1
    assert done.stderr.count("\\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("ckptd report: internal error: KeyError: 'a bug")
    assert "CKPTD_TRACEBACK=1" in done.stderr


def test_the_traceback_is_there_when_asked_for(tmp_path: Path) -> None:
    """CKPTD_TRACEBACK=1 shows where the bug is."""
    (tmp_path / "events.jsonl").write_text('{"time": 1.0, "event": "ckptd.started"}\\n')
    done = _run(tmp_path, CKPTD_TRACEBACK="1")
    assert done.returncode == 1 and "Traceback" in done.stderr and "broken" in done.stderr
