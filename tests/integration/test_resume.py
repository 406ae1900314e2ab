"""Resuming: a script run plainly (standalone) and the bundled example across interruptions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import EXAMPLES, FAKES, Job, read_jsonl, wait_for


def test_standalone_client_saves_on_sigterm_and_resumes(tmp_path: Path) -> None:
    """Without ckptd, SIGTERM to the script itself saves a final checkpoint; a rerun resumes."""
    record = tmp_path / "record.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPTD_")}
    command = [sys.executable, str(FAKES / "trainer.py"), "--record", str(record)]
    first = subprocess.Popen(command, cwd=tmp_path, env=env)
    try:
        wait_for(
            lambda: len([r for r in read_jsonl(record) if r["event"] == "step"]) >= 5, "five steps"
        )
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0
    finally:
        first.kill()
        first.wait()
    saved = [r for r in read_jsonl(record) if r["event"] == "saved"]
    assert len(saved) == 1
    assert (tmp_path / "checkpoints" / f"step-{saved[0]['step']:08d}" / "ckptd.json").exists()
    second = subprocess.Popen(
        [*command, "--steps", str(saved[0]["step"] + 3)], cwd=tmp_path, env=env
    )
    assert second.wait(timeout=60) == 0
    starts = [r for r in read_jsonl(record) if r["event"] == "start"]
    assert starts[1]["resume_step"] == saved[0]["step"]


def test_standalone_checkpoint_file(tmp_path: Path) -> None:
    """Standalone, a CHECKPOINT file in CKPTD_RUN_DIR is a request and is removed after it."""
    record = tmp_path / "record.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPTD_")}
    env["CKPTD_RUN_DIR"] = str(tmp_path)
    process = subprocess.Popen(
        [sys.executable, str(FAKES / "trainer.py"), "--record", str(record)], cwd=tmp_path, env=env
    )
    try:
        wait_for(lambda: any(r["event"] == "step" for r in read_jsonl(record)), "a step")
        (tmp_path / "CHECKPOINT").touch()
        wait_for(lambda: any(r["event"] == "saved" for r in read_jsonl(record)), "a save")
        wait_for(lambda: not (tmp_path / "CHECKPOINT").exists(), "CHECKPOINT to be removed")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        process.wait()


def _example(job: Job, out: Path, steps: int) -> list[str]:
    return [
        sys.executable,
        str(EXAMPLES / "train.py"),
        "--steps",
        str(steps),
        "--step-time",
        "0.002",
        "--print-every",
        "1000000",
        "--out",
        str(out),
    ]


def test_example_resumes_to_exactly_the_uninterrupted_result(
    make_job: Callable[..., Job], tmp_path: Path
) -> None:
    """SIGKILL of the job, SIGTERM of ckptd, a new ckptd run: same parameters as one clean run."""
    steps = 4000
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    clean_out = clean_dir / "params.json"
    reference = subprocess.run(
        _example(make_job(), clean_out, steps),
        cwd=clean_dir,
        env={k: v for k, v in os.environ.items() if not k.startswith("CKPTD_")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "params.json"
    job = make_job("first")
    job.start(_example(job, out, steps), "--every", "1s", "--restart-delay", "0")
    job.wait_event("checkpoint.committed")
    child = job.wait_event("job.started")["pid"]
    os.kill(child, signal.SIGKILL)
    job.wait_event("job.started", count=2)
    job.wait_event("checkpoint.committed", count=3)
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    assert not out.exists(), "interrupted too late: the run finished"
    stopped_at = job.events("checkpoint.committed")[-1]["step"]

    again = make_job("again")
    again.start(_example(again, out, steps))
    assert again.wait() == 0
    resumed = again.events("job.started")[-1]
    assert resumed["resume_step"] == stopped_at
    assert json.loads(out.read_text()) == json.loads(clean_out.read_text())


def test_list_and_verify_commands(job: Job) -> None:
    """`ckptd list` shows checkpoints with validity; `ckptd verify` exits 1 on a damaged one."""
    job.start_fake("--save-every", "2", "--steps", "5", options=("--keep-last", "5"))
    assert job.wait() == 0

    def ckptd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ckptd", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=job.base,
        )

    listed = json.loads(ckptd("list", "--run-dir", str(job.run_dir), "--json").stdout)
    assert [c["step"] for c in listed] == [2, 4] and all(c["valid"] for c in listed)
    table = ckptd("list", str(job.checkpoint_dir)).stdout
    assert "step-00000004" in table and "loss=" in table
    newest = job.checkpoint_dir / "step-00000004"
    assert ckptd("verify", str(newest)).returncode == 0
    (newest / "payload.bin").write_bytes(b"tampered")
    result = ckptd("verify", str(newest))
    assert result.returncode == 1 and "size" in result.stdout
    listed = json.loads(ckptd("list", str(job.checkpoint_dir), "--json").stdout)
    assert [c["valid"] for c in listed] == [True, False]
