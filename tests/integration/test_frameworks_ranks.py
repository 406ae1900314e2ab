"""Hugging Face and Lightning on 2 ranks (torchrun, DDP, gloo on CPU) under a real ckptd.

One job per framework: a touched request is one commit holding every rank's files at one
global step; after a second one is corrupted, SIGKILL of rank 1 relaunches the group from
the first on both ranks; SIGTERM is one final save at the same step on both ranks, and
ckptd exits 0. What that job checks after the resume is the global step on every rank
and the optimizer's own step count in the final checkpoint: Lightning's mid-epoch resume
of a shuffled loader does not replay the same batches (it says so), so it does not end
bit-exact. The Trainer does (it restores each rank's RNG state and skips the batches
seen): a job of its own compares the resumed group's weights with an uninterrupted run's.
And a save on rank 0 longer than the group's gloo timeout: rank 1 waits for it through
ckptd, not in a collective, so nothing times out.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ckptd_client.store import inspect

from conftest import EXAMPLES, FAKES, Job, wait_for

pytestmark = [
    pytest.mark.torch,
    pytest.mark.skipif(
        importlib.util.find_spec("torch") is None,
        reason="torch is not installed (pip install -e '.[frameworks]'): torchrun needs it",
    ),
]

SLOW_START = 180.0  # two ranks importing a framework on a loaded 2-core machine
ENV = {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _load(path: Path) -> dict:
    import torch

    # The test's own files, written by the framework in this test: safe to unpickle here.
    return torch.load(path, weights_only=False)


def _hf_files(checkpoint: Path, step: int) -> int:
    """Every rank's files of the Trainer's save; returns the optimizer's step count."""
    saved = checkpoint / f"checkpoint-{step}"
    names = {p.name for p in saved.iterdir()}
    assert {"rng_state_0.pth", "rng_state_1.pth", "model.safetensors", "optimizer.pt"} <= names
    assert json.loads((saved / "trainer_state.json").read_text())["global_step"] == step
    return int(_load(saved / "optimizer.pt")["state"][0]["step"])


def _lightning_files(checkpoint: Path, step: int) -> int:
    """Lightning's one file (rank 0 writes it under DDP); returns the optimizer's step count."""
    assert {p.name for p in checkpoint.iterdir()} == {"model.ckpt", "ckptd.json"}
    saved = _load(checkpoint / "model.ckpt")
    assert saved["global_step"] == step
    loop = saved["loops"]["fit_loop"]["epoch_loop.automatic_optimization.optim_progress"]
    return int(loop["optimizer"]["step"]["total"]["completed"])


@dataclass(frozen=True)
class Framework:
    module: str
    example: str
    files: Callable[[Path, int], int]  # checks a committed step, returns its optimizer steps

    def __str__(self) -> str:
        return self.module


FRAMEWORKS = [
    Framework("transformers", "train_hf.py", _hf_files),
    Framework("lightning", "train_lightning.py", _lightning_files),
]


def _torchrun(script: Path, *args: str) -> list[str]:
    """``script`` on 2 ranks: torchrun (as ``python -m torch.distributed.run``), no restarts."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "--max-restarts=0",
        str(script),
        *args,
    ]


def _said(job: Job, what: str) -> dict[int, list[int]]:
    """Per rank, the global steps the example printed after ``what``."""
    text = job.stdout.read_text(errors="replace") if job.stdout.exists() else ""
    found: dict[int, list[int]] = {}
    for step, rank in re.findall(rf"{re.escape(what)}:? global step (\d+) \(rank (\d+)\)", text):
        found.setdefault(int(rank), []).append(int(step))
    return found


def _corrupt(checkpoint: Path) -> None:
    """Flip one byte in the middle of the largest file: same size, so only the digest tells."""
    biggest = max(
        (p for p in checkpoint.rglob("*") if p.is_file() and p.name != "ckptd.json"),
        key=lambda p: p.stat().st_size,
    )
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.write_bytes(bytes(data))


def _relaunched(job: Job) -> dict[int, int]:
    """Per rank, the first step of the relaunched group; empty until both ranks printed it."""
    starts = _said(job, "first step of this process")
    if sorted(starts) != [0, 1] or any(len(steps) < 2 for steps in starts.values()):
        return {}
    return {rank: steps[1] for rank, steps in starts.items()}


def _one_commit_at_one_step(job: Job, framework: Framework, count: int) -> dict:
    """The ``count``-th commit: both ranks started it at its step, and it verifies in full."""
    committed = job.wait_event("checkpoint.committed", count, SLOW_START)
    step = committed["step"]
    started = {e["rank"]: e["step"] for e in job.events("checkpoint.started") if e["step"] == step}
    assert started == {0: step, 1: step}, started
    path = Path(committed["path"])
    checked = inspect(path, full=True)
    assert checked.valid, checked.reason
    assert framework.files(path, step) == step
    return committed


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=str)
def test_two_ranks_save_one_step_resume_after_kill_and_stop_on_sigterm(
    job: Job, framework: Framework
) -> None:
    """2 ranks: one commit per request at one step; rank 1 killed: resume; SIGTERM: final save."""
    if importlib.util.find_spec(framework.module) is None:
        pytest.skip(f"{framework.module} is not installed: pip install -e '.[frameworks]'")
    command = _torchrun(EXAMPLES / framework.example, "--steps", "100000", "--step-time", "0.03")
    job.start(command, "--restart-delay", "0", "--grace", "60s", env=ENV)
    wait_for(lambda: len(_said(job, "first step of this process")) == 2, "both ranks", SLOW_START)

    (job.run_dir / "CHECKPOINT").touch()
    first = _one_commit_at_one_step(job, framework, 1)
    assert len(job.events("checkpoint.committed")) == 1
    waited = job.cli("checkpoint", "--wait")
    assert waited.returncode == 0, waited.stderr
    second = _one_commit_at_one_step(job, framework, 2)
    assert second["step"] > first["step"]
    _corrupt(Path(second["path"]))

    rank1 = next(e["pid"] for e in job.events("checkpoint.started") if e["rank"] == 1)
    os.kill(rank1, signal.SIGKILL)
    assert job.wait_event("job.started", 2, SLOW_START)["resume_step"] == first["step"]
    starts = wait_for(
        lambda: _relaunched(job), "both ranks' first step after the relaunch", SLOW_START
    )
    assert starts == {0: first["step"] + 1, 1: first["step"] + 1}

    job.signal(signal.SIGTERM)
    assert job.wait(timeout=SLOW_START) == 0
    final = job.events("checkpoint.committed")[-1]
    assert final["step"] > first["step"]
    _one_commit_at_one_step(job, framework, len(job.events("checkpoint.committed")))
    assert _said(job, "stopped at") == {0: [final["step"]], 1: [final["step"]]}
    assert job.events("job.stopped")[-1]["final_checkpoint"] is True


def test_hf_rank_waits_for_a_save_longer_than_the_gloo_timeout_through_ckptd(job: Job) -> None:
    """Rank 0 saves 3x longer than the gloo timeout: rank 1 waits via ckptd, no timeout, exit 0."""
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed: pip install -e '.[frameworks]'")
    command = _torchrun(FAKES / "hf_ranks.py", "--timeout", "5", "--delay", "15")
    job.start(command, "--restart-delay", "0", "--grace", "60s", env=ENV)
    wait_for(lambda: len(_said(job, "first step of this process")) == 2, "both ranks", SLOW_START)

    (job.run_dir / "CHECKPOINT").touch()
    first = _one_commit_at_one_step(job, FRAMEWORKS[0], 1)
    rank1 = next(e for e in job.events("checkpoint.started") if e["rank"] == 1)
    assert first["time"] - rank1["time"] > 10, "rank 1 was not held up by rank 0's save"
    job.signal(signal.SIGTERM)  # the final save comes after more training on both ranks
    assert job.wait(timeout=SLOW_START) == 0, job.log_tail()
    final = job.events("checkpoint.committed")[-1]
    assert final["step"] > first["step"]
    assert _said(job, "stopped at") == {0: [final["step"]], 1: [final["step"]]}
    assert len(job.events("job.started")) == 1  # nothing failed, nothing was relaunched
    output = job.stdout.read_text(errors="replace") + job.stderr.read_text(errors="replace")
    assert "Timed out" not in output


def test_hf_group_resumes_after_a_killed_rank_and_ends_bit_exact(job: Job, tmp_path: Path) -> None:
    """HF, 2 ranks: rank 1 SIGKILLed after a save; the resumed group ends with the same weights."""
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed: pip install -e '.[frameworks]'")
    command = _torchrun(FAKES / "hf_ranks.py", "--steps", "60", "--step-time", "0.1")
    reference = tmp_path / "reference"
    reference.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPTD_")}
    done = subprocess.run(
        command, cwd=reference, env={**env, **ENV}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    expected = set(re.findall(r"digest rank \d step 60 ([0-9a-f]{64})", done.stdout))
    assert len(expected) == 1, done.stdout[-2000:]

    job.start(command, "--restart-delay", "0", "--grace", "60s", env=ENV)
    wait_for(lambda: len(_said(job, "first step of this process")) == 2, "both ranks", SLOW_START)
    (job.run_dir / "CHECKPOINT").touch()
    first = _one_commit_at_one_step(job, FRAMEWORKS[0], 1)
    rank1 = next(e["pid"] for e in job.events("checkpoint.started") if e["rank"] == 1)
    os.kill(rank1, signal.SIGKILL)
    assert job.wait_event("job.started", 2, SLOW_START)["resume_step"] == first["step"]
    assert job.wait(timeout=SLOW_START) == 0, job.log_tail()
    assert _relaunched(job) == {0: first["step"] + 1, 1: first["step"] + 1}
    output = job.stdout.read_text(errors="replace")
    assert set(re.findall(r"digest rank (\d) step 60 ([0-9a-f]{64})", output)) == {
        ("0", *expected),
        ("1", *expected),
    }
