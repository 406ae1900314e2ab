"""Sharded saves through torch.distributed.checkpoint: two ranks under torchrun, save and load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ckptd_client.store import inspect

from conftest import FAKES, Job

pytest.importorskip("torch", reason="DCP needs torch")


def torchrun(*script_args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "--max-restarts=0",
        str(FAKES / "ddp_trainer.py"),
        *script_args,
    ]


def digests(rows: list[dict]) -> dict[int, str]:
    return {row["rank"]: row["digest"] for row in rows if row["event"] == "done"}


def test_sharded_saves_commit_dcp_files_and_load_back_bit_exact(job: Job, tmp_path: Path) -> None:
    """DCP saves (sync, then async after a resume) hold every rank's shard and reload exactly."""
    reference = tmp_path / "reference"
    reference.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPTD_")}
    subprocess.run(
        torchrun("--record", str(reference / "r.jsonl"), "--steps", "15", "--sleep", "0"),
        cwd=reference,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    rows = [json.loads(line) for line in (reference / "r.jsonl").read_text().splitlines()]
    expected = digests(rows)
    assert set(expected) == {0, 1}

    options = ("--restart-delay", "0", "--keep-last", "5")
    common = ("--record", str(job.record), "--sleep", "0.01")
    job.start(torchrun(*common, "--format", "dcp", "--save-every", "5", "--steps", "12"), *options)
    assert job.wait() == 0
    saved = job.checkpoint_dir / "step-00000009"
    assert inspect(saved, full=True).valid
    files = {e["path"] for e in json.loads((saved / "ckptd.json").read_text())["files"]}
    assert {".metadata", "__0_0.distcp", "__1_0.distcp"} <= files

    job.start(torchrun(*common, "--format", "dcp-async", "--save-every", "3", "--steps", "15"))
    assert job.wait() == 0
    resumed = [r for r in job.records("start") if r["resume_step"] is not None]
    assert {r["rank"]: r["resume_step"] for r in resumed} == {0: 9, 1: 9}
    for step in (11, 14):
        assert inspect(job.checkpoint_dir / f"step-{step:08d}", full=True).valid
    assert digests(job.records()) == expected
