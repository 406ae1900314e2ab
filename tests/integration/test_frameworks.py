"""Hugging Face, Lightning and Keras jobs under a real ckptd, on CPU (each needs its extra).

One job per framework walks through every promise of the callbacks: a request is
the framework's own save at the next step, committed as step-N with N its global
step; a SIGKILLed trainer is relaunched from the newest checkpoint that verifies
(a corrupted newer one is skipped) at that global step; SIGTERM saves at the
current step and ckptd exits 0. Framework imports are slow, so one job covers all.
"""

from __future__ import annotations

import importlib
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

from conftest import EXAMPLES, Job, wait_for

SLOW_START = 180.0  # importing a framework on a loaded 2-core machine takes a while


def _hf_step(path: Path) -> int:
    return int(json.loads((path / "trainer_state.json").read_text())["global_step"])


def _lightning_step(path: Path) -> int:
    import torch

    # The test's own file, written by Lightning in this test: safe to unpickle here.
    return int(torch.load(path / "model.ckpt", weights_only=False)["global_step"])


def _keras_step(path: Path) -> int:
    import h5py

    with h5py.File(path / "model.weights.h5", "r") as weights:
        return int(weights["optimizer/vars/0"][()])  # the optimizer's iterations


@dataclass(frozen=True)
class Framework:
    module: str
    extra: str
    example: str
    saved_step: Callable[[Path], int]  # the global step as the framework recorded it in its save
    own_saves: str = ""  # where the framework's own save lands before ckptd moves it (a glob)

    def __str__(self) -> str:
        return self.extra


FRAMEWORKS = [
    Framework("transformers", "transformers", "train_hf.py", _hf_step, "hf_output/checkpoint-*"),
    Framework("lightning", "lightning", "train_lightning.py", _lightning_step),
    Framework("keras", "keras", "train_keras.py", _keras_step),
]

ENV = {"HF_HUB_OFFLINE": "1", "KERAS_BACKEND": "torch", "PYTHONUNBUFFERED": "1"}


def _ckptd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ckptd", *args], capture_output=True, text=True, timeout=120
    )


def _said(job: Job, what: str) -> list[int]:
    """Global steps the example printed after ``what`` on ckptd's stdout."""
    text = job.stdout.read_text(errors="replace") if job.stdout.exists() else ""
    return [int(n) for n in re.findall(rf"{re.escape(what)}:? global step (\d+)", text)]


def _corrupt(checkpoint: Path) -> None:
    """Flip one byte in the middle of the largest file: same size, so only the digest tells."""
    biggest = max(
        (p for p in checkpoint.iterdir() if p.name != "ckptd.json"), key=lambda p: p.stat().st_size
    )
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.write_bytes(bytes(data))


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=str)
def test_framework_saves_on_request_resumes_after_kill_and_saves_on_sigterm(
    job: Job, framework: Framework
) -> None:
    """Request: own save at next step; SIGKILL: resume at newest valid; SIGTERM: final save."""
    if importlib.util.find_spec(framework.module) is None:
        pytest.skip(f"{framework.module} is not installed: pip install -e '.[{framework.extra}]'")
    command = [
        sys.executable,
        str(EXAMPLES / framework.example),
        "--steps",
        "100000",
        "--step-time",
        "0.03",
    ]
    job.start(command, "--restart-delay", "0", env=ENV)
    wait_for(lambda: _said(job, "first step of this process"), "the first step", SLOW_START)

    (job.run_dir / "CHECKPOINT").touch()
    wait_for(lambda: not (job.run_dir / "CHECKPOINT").exists(), "the requested checkpoint")
    first = job.wait_event("checkpoint.committed")
    assert framework.saved_step(Path(first["path"])) == first["step"]
    waited = _ckptd("checkpoint", "--wait", "--run-dir", str(job.run_dir))
    assert waited.returncode == 0, waited.stderr
    second = job.wait_event("checkpoint.committed", 2)
    assert framework.saved_step(Path(second["path"])) == second["step"] > first["step"]

    _corrupt(Path(second["path"]))
    os.kill(job.wait_event("job.started")["pid"], signal.SIGKILL)
    assert job.wait_event("job.started", 2, SLOW_START)["resume_step"] == first["step"]
    starts = wait_for(
        lambda: _said(job, "first step of this process")[1:],
        "the relaunch's first step",
        SLOW_START,
    )
    assert starts == [first["step"] + 1]

    job.signal(signal.SIGTERM)
    assert job.wait(timeout=SLOW_START) == 0
    stopped = _said(job, "stopped at")
    final = job.events("checkpoint.committed")[-1]
    assert stopped == [final["step"]]
    assert framework.saved_step(Path(final["path"])) == final["step"]
    if framework.own_saves:  # moved into the commits, not copied
        assert (job.base / framework.own_saves).parent.is_dir()
        assert not list(job.base.glob(framework.own_saves))
    listed = json.loads(_ckptd("list", str(job.checkpoint_dir), "--json", "--verify").stdout)
    validity = {c["step"]: c["valid"] for c in listed}
    assert validity[final["step"]] and validity[first["step"]]
    assert validity.get(second["step"]) is not True


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=str)
def test_framework_saves_nothing_on_stop_without_checkpoint(job: Job, framework: Framework) -> None:
    """stop --no-checkpoint: the callback saves nothing, the framework stops, ckptd exits 0."""
    if importlib.util.find_spec(framework.module) is None:
        pytest.skip(f"{framework.module} is not installed: pip install -e '.[{framework.extra}]'")
    command = [sys.executable, str(EXAMPLES / framework.example), "--steps", "100000"]
    job.start([*command, "--step-time", "0.03"], env=ENV)
    wait_for(lambda: _said(job, "first step of this process"), "the first step", SLOW_START)
    stopped = _ckptd("stop", "--no-checkpoint", "--wait", "--run-dir", str(job.run_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert "final checkpoint: no" in stopped.stdout
    assert job.wait(timeout=SLOW_START) == 0
    assert _said(job, "stopped at"), f"the framework did not stop cleanly: {job.log_tail()}"
    assert not job.events("checkpoint.committed")
    assert not list(job.checkpoint_dir.glob("step-*"))


@pytest.mark.parametrize("extra", ["transformers", "lightning", "keras"])
def test_missing_framework_names_the_extra(extra: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing a callback module without its framework is a one-line error naming the extra."""
    monkeypatch.setitem(sys.modules, extra, None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, f"ckptd_client.{extra}", raising=False)
    with pytest.raises(ImportError) as raised:
        importlib.import_module(f"ckptd_client.{extra}")
    assert str(raised.value) == (
        f"ckptd_client.{extra} needs {extra}, which is not installed: pip install 'ckptd[{extra}]'"
    )


def test_keras_callback_refuses_several_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keras under WORLD_SIZE > 1: CkptdCallback() and restore() raise a one-line error."""
    if importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed: pip install -e '.[keras]'")
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    monkeypatch.setenv("WORLD_SIZE", "2")
    callbacks = importlib.import_module("ckptd_client.keras")
    expected = (
        "ckptd_client.keras runs in one process only, not on 2 ranks (WORLD_SIZE): "
        "Keras' distribution API is not supported"
    )
    with pytest.raises(RuntimeError) as raised:
        callbacks.CkptdCallback()
    assert str(raised.value) == expected
    with pytest.raises(RuntimeError) as raised:
        callbacks.restore(None)  # refused before the model is looked at
    assert str(raised.value) == expected
