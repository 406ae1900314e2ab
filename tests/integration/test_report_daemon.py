"""ckptd report on the event log of a real daemon run: a crash, a restart, a final stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from ckptd.reporting.goodput import goodput_of
from ckptd.reporting.history import read_events

from conftest import Job


def test_report_of_a_real_run_counts_what_happened(job: Job) -> None:
    """Two launches, one failure, every commit, and a wall time that is the daemon's."""
    job.start_fake("--step-time", "0.01", "--save-every", "20", options=("--restart-delay", "0"))
    first = job.wait_event("job.started")
    job.wait_event("checkpoint.committed", 2)
    os.kill(first["pid"], signal.SIGKILL)
    job.wait_event("job.started", 2)
    job.wait_event("checkpoint.committed", 4)
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    done = subprocess.run(
        [sys.executable, "-m", "ckptd", "report", "--run-dir", str(job.run_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    records = read_events(job.run_dir / "events.jsonl")
    commits = [r for r in records if r["event"] == "checkpoint.committed" and not r.get("reused")]
    assert (found["attempts"], found["failures"], found["daemon_runs"]) == (2, 1, 1)
    assert found["checkpoints"] == len(commits)
    assert found["wall"] == pytest.approx(records[-1]["time"] - records[0]["time"], abs=0.002)
    assert found["productive"] > 0 and found["saving"] > 0 and found["restarting"] > 0
    assert 0 < found["ratio"] <= 1
    assert found == {"job": "trainer", **goodput_of(records).to_json()}


def test_report_draws_the_loss_a_real_job_reported(job: Job) -> None:
    """The loss of ck.step(n, loss=...) is sampled onto job.progress; the report's curves
    hold it and every checkpoint's metrics, and the page draws a chart for each."""
    job.start_fake("--step-time", "0.01", "--save-every", "20")
    job.wait_event("checkpoint.committed", 2)
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    sampled = [r for r in job.events("job.progress") if "loss" in r]
    assert sampled, job.events("job.progress")  # the first loss is recorded at once
    step = sampled[0].get("loss_step", sampled[0]["step"])
    assert sampled[0]["loss"] == pytest.approx(1.0 / (step + 1))
    done = subprocess.run(
        [sys.executable, "-m", "ckptd", "report", "--run-dir", str(job.run_dir), "-o", "-"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    page = done.stdout
    assert "data-metric='loss'" in page and "loss (checkpoints)" in page
    block = page.split('id="goodput">', 1)[1].split("</script>", 1)[0]
    curves = json.loads(block)["curves"]
    commits = [r for r in job.events("checkpoint.committed") if not r.get("reused")]
    assert [p[0] for p in curves["metrics"]["loss"]] == [r["step"] for r in commits]
    assert curves["best"]["metric"] == "loss" and curves["best"]["step"] == commits[-1]["step"]
