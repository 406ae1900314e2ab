"""Hostile files in a run directory: a FIFO or a link never hangs a command, a poisoned
hang_budget.json never switches hang detection off, and no NaN reaches any JSON ckptd writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import DEADLINE, Job, wait_for

LEARN_HANGS = ("--hang-min", "1s", "--restart-delay", "0", "--kill-timeout", "1s")


def _strict(text: str) -> Any:
    """Parse as jq or JSON.parse would: NaN or Infinity anywhere fail the test."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in {text[:300]}"))


def _ckptd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ckptd", *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=cwd,
    )


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _plant(path: Path, kind: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        target = path.parent / "elsewhere"
        target.write_text("{}")
        os.symlink(target, path)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("events.jsonl", "fifo"),
        ("events.jsonl", "symlink"),
        ("hang_budget.json", "fifo"),
        ("hang_budget.json", "symlink"),
        ("daemon.lock", "fifo"),
        ("lock", "fifo"),
    ],
)
def test_ckptd_run_refuses_a_fifo_or_link_with_one_line(job: Job, name: str, kind: str) -> None:
    """`ckptd run` exits 2 at once with one line naming the file; the job never starts."""
    _plant(job.run_dir / name, kind)
    job.start_fake("--steps", "5")
    assert job.wait() == 2
    line = _one_line(job.stderr.read_text())
    assert name in line and ("FIFO" if kind == "fifo" else "symlink") in line, line
    assert not job.records("start")


def test_a_fifo_at_the_stacks_file_does_not_hang_the_job(job: Job) -> None:
    """The client's stack-dump file is a FIFO: the job runs and finishes (no dump, no wait)."""
    _plant(job.run_dir / "stacks-0.txt", "fifo")
    job.start_fake("--steps", "30")
    assert job.wait() == 0
    assert job.records("done")


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("events.jsonl", ("report", "--json")),
        ("job.json", ("report", "-o", "-")),
        ("daemon.lock", ("report", "--json")),
        ("endpoints.json", ("status",)),
        ("job.json", ("list",)),
    ],
)
def test_commands_refuse_a_fifo_in_the_run_dir(
    tmp_path: Path, name: str, command: tuple[str, ...]
) -> None:
    """report, status and list answer a FIFO with one line and exit 2, never wait on it."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    if name != "events.jsonl":
        record = {"time": 1.0, "event": "ckptd.started", "attempt": 0, "step": None}
        (run_dir / "events.jsonl").write_text(json.dumps(record) + "\n")
    _plant(run_dir / name, "fifo")
    done = _ckptd(*command, "--run-dir", str(run_dir))
    assert done.returncode == 2, done
    line = _one_line(done.stderr)
    assert name in line and "FIFO" in line, line


def test_a_poisoned_hang_budget_cannot_switch_hang_detection_off(job: Job) -> None:
    """Infinity in hang_budget.json is ignored with a warning and rewritten; a hang is found."""
    job.run_dir.mkdir(mode=0o700, parents=True)
    poison = '{"first_step": Infinity, "step": Infinity, "save": Infinity, "runs": 1}'
    (job.run_dir / "hang_budget.json").write_text(poison)
    job.start_fake("--step-time", "0.02", "--hang-at", "300", "--steps", "320",
                   options=LEARN_HANGS)  # fmt: skip
    ignored = job.wait_event("hang.budget_ignored")
    assert "hang_budget.json: ignored (Infinity is not JSON)" in ignored["why"], ignored
    rewritten = _strict((job.run_dir / "hang_budget.json").read_text())
    assert rewritten["step"] is None or rewritten["step"] < 86400
    hung = job.wait_event("job.hung", timeout=60)
    assert hung["phase"] == "step" and hung["timeout"] < 30, hung
    assert job.wait() == 0 and len(job.records("start")) == 2
    saved = _strict((job.run_dir / "hang_budget.json").read_text())
    assert saved["step"] < 30


def test_no_nan_reaches_any_json_ckptd_writes(make_job: Callable[..., Job]) -> None:
    """A job saving a NaN loss and an infinite norm: events.jsonl, the event stream, status
    --json, list --json, report --json and the run dir's files are strict JSON."""
    job = make_job()
    job.start_fake("--step-time", "0.02", "--nan-metrics")
    job.wait_event("client.connected")
    stream_out = job.base / "stream.jsonl"
    with open(stream_out, "w") as out:
        stream = subprocess.Popen(
            [sys.executable, "-m", "ckptd", "events", "--json", "--run-dir", str(job.run_dir)],
            stdout=out,
            stderr=subprocess.PIPE,
        )
    try:

        def committed_on_stream() -> bool:
            (job.run_dir / "CHECKPOINT").touch()
            return "checkpoint.committed" in stream_out.read_text()

        wait_for(committed_on_stream, "a commit seen by `ckptd events`", interval=0.5)
        status = job.cli("status", "--json")
        assert status.returncode == 0, status.stderr
        assert _strict(status.stdout)["last_checkpoint"]["metrics"] == {
            "loss": None,
            "grad_norm": None,
        }
        job.signal(signal.SIGTERM)
        assert job.wait() == 0
        stream.wait(timeout=DEADLINE)
    finally:
        if stream.poll() is None:
            stream.kill()
            stream.wait()
        assert stream.stderr is not None
        stream.stderr.close()
    committed = [r for r in map(_strict, stream_out.read_text().splitlines())
                 if r["event"] == "checkpoint.committed"]  # fmt: skip
    assert committed and committed[0]["metrics"] == {"loss": None, "grad_norm": None}
    for line in (job.run_dir / "events.jsonl").read_text().splitlines():
        _strict(line)
    assert "events.nonfinite" in job.stderr.read_text()
    for name in ("job.json", "endpoints.json", "hang_budget.json"):
        _strict((job.run_dir / name).read_text())
    listed = job.cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert _strict(listed.stdout)[0]["metrics"]["loss"] is None
    assert "metrics.loss" in _one_line(listed.stderr)
    report = job.cli("report", "--json")
    assert report.returncode == 0 and _strict(report.stdout)["checkpoints"] >= 1, report.stderr
