"""The torch example under ckptd (runs only where the `torch` extra is installed)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import EXAMPLES, Job

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="torch is not installed (pip install -e '.[torch]' to run the torch example tests)",
)


def _command(out: Path, steps: int) -> list[str]:
    return [
        sys.executable,
        str(EXAMPLES / "train_torch.py"),
        "--steps",
        str(steps),
        "--step-time",
        "0.005",
        "--print-every",
        "1000000",
        "--out",
        str(out),
    ]


def test_torch_example_survives_sigterm_and_resumes_exactly(
    make_job: Callable[..., Job], tmp_path: Path
) -> None:
    """SIGTERM mid-run saves model+optimizer; the rerun ends with the uninterrupted parameters."""
    steps = 400
    clean = tmp_path / "clean"
    clean.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPTD_")}
    reference = subprocess.run(
        _command(clean / "p.json", steps),
        cwd=clean,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "p.json"
    first = make_job("first")
    first.start(_command(out, steps))
    first.wait_event("client.connected", timeout=120)
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 0
    committed = first.events("checkpoint.committed")
    assert committed and (Path(committed[-1]["path"]) / "state.pt").is_file()
    assert not out.exists(), "interrupted too late: the run finished"

    second = make_job("second")
    second.start(_command(out, steps))
    assert second.wait(timeout=300) == 0
    assert second.events("job.started")[-1]["resume_step"] == committed[-1]["step"]
    assert json.loads(out.read_text()) == json.loads((clean / "p.json").read_text())
