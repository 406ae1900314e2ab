"""The control plane: commands over the control socket, the CLI on top, the event stream."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ckptd_client.control import ControlError, Controller, ControlTimeout

from conftest import Job, job_pids, plain_trainer, read_jsonl, wait_for


def ckptd(job: Job, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ckptd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=job.base,
    )


@pytest.fixture
def running(job: Job) -> Job:
    job.start_fake()
    job.wait_event("client.connected")
    return job


def test_checkpoint_wait_prints_the_committed_path(running: Job) -> None:
    """`ckptd checkpoint --wait` returns once the checkpoint committed and shows where."""
    result = ckptd(running, "checkpoint", "--wait", "--run-dir", str(running.run_dir))
    assert result.returncode == 0, result.stderr
    committed = running.events("checkpoint.committed")[-1]
    assert committed["path"] in result.stdout
    assert Path(committed["path"], "ckptd.json").is_file()
    as_json = json.loads(
        ckptd(running, "checkpoint", "--wait", "--json", "--run-dir", str(running.run_dir)).stdout
    )
    assert as_json["step"] > committed["step"] and as_json["request_id"]
    assert ckptd(running, "stop", "--wait", "--run-dir", str(running.run_dir)).returncode == 0
    assert running.wait() == 0


def test_status_reports_state_and_unsaved_work(running: Job) -> None:
    """status: state, pid, attempt, step, last checkpoint, unsaved steps and seconds."""
    with Controller(run_dir=running.run_dir) as control:
        control.checkpoint(wait=True)
        status = control.status()
        assert status["state"] == "running" and status["attempt"] == 0
        assert status["pid"] == running.events("job.started")[0]["pid"]
        assert status["last_checkpoint"]["step"] <= status["step"]
        assert status["unsaved_steps"] == status["step"] - status["last_checkpoint"]["step"]
        # Just after a commit, the work at risk is the time since that commit.
        assert abs(status["unsaved_seconds"] - status["last_checkpoint"]["age"]) < 1.0
        assert status["restarts_left"] == 10
        assert control.call("config")["keep_last"] == 3
        assert [c["valid"] for c in control.call("list")] == [True]
        assert control.ping()["endpoints"]["events"].startswith("ipc://")
        human = ckptd(running, "status", "--run-dir", str(running.run_dir)).stdout
        assert "state" in human and "running" in human and "unsaved" in human
        control.stop(wait=True, timeout=60)
    assert running.wait() == 0


def test_events_stream_follows_a_checkpoint(running: Job, tmp_path: Path) -> None:
    """`ckptd events --json` prints checkpoint.requested/started/committed with the request id."""
    out = tmp_path / "events.out"
    with open(out, "w") as handle:
        follower = subprocess.Popen(
            [sys.executable, "-m", "ckptd", "events", "--json", "--run-dir", str(running.run_dir)],
            stdout=handle,
            cwd=running.base,
        )
    try:
        with Controller(run_dir=running.run_dir) as control:
            # A subscriber misses what is published before it has joined: ask until one shows.
            wait_for(
                lambda: (
                    control.checkpoint(wait=True)
                    and sum(e["event"] == "checkpoint.committed" for e in read_jsonl(out)) >= 2
                ),
                "an event",
                30,
            )
            control.stop(wait=True, timeout=60)
        assert follower.wait(timeout=60) == 0  # ends on ckptd.exiting
    finally:
        follower.kill()
        follower.wait()
    events = read_jsonl(out)
    lifecycles: dict[str, list[str]] = {}
    for event in events:
        if event["event"].startswith("checkpoint.") and event.get("request_id"):
            lifecycles.setdefault(event["request_id"], []).append(event["event"])
    # The first request may have been published before the subscriber joined; the later are whole.
    complete = ["checkpoint.requested", "checkpoint.started", "checkpoint.committed"]
    assert complete in lifecycles.values(), lifecycles
    assert all({"time", "job", "attempt", "step"} <= set(e) for e in events)
    assert events[-1]["event"] == "ckptd.exiting"
    assert running.wait() == 0


def test_concurrent_waiters_share_one_checkpoint(job: Job) -> None:
    """Checkpoint requests while one is in flight coalesce; every waiter gets its result."""
    job.start_fake("--save-time", "1.0")
    job.wait_event("client.connected")
    results: list[dict[str, Any]] = []

    def wait_for_checkpoint() -> None:
        with Controller(run_dir=job.run_dir) as control:
            results.append(control.checkpoint(wait=True, timeout=60))

    threads = [threading.Thread(target=wait_for_checkpoint) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert len(results) == 5
    assert (
        len({r["path"] for r in results}) <= 2
    )  # those that came during the save may need one more
    paths = {r["path"] for r in results}
    # The trainer notes "saved" just after its commit was acknowledged: wait for the note.
    wait_for(lambda: len(job.records("saved")) >= len(paths), "the trainer's notes of its saves")
    assert len(job.records("saved")) == len(paths)
    with Controller(run_dir=job.run_dir) as control:
        control.stop(wait=True, timeout=60)
    assert job.wait() == 0


def test_failed_checkpoint_is_reported_to_the_waiter(job: Job) -> None:
    """A save that raises makes `checkpoint --wait` exit 1 with a one-line reason."""
    job.start_fake("--fail-save")
    job.wait_event("client.connected")
    result = ckptd(job, "checkpoint", "--wait", "--run-dir", str(job.run_dir))
    assert result.returncode == 1
    assert "disk full" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (
        ckptd(job, "stop", "--no-checkpoint", "--wait", "--run-dir", str(job.run_dir)).returncode
        == 0
    )
    assert job.wait() == 0


def test_stop_without_checkpoint_and_restart(job: Job) -> None:
    """restart: final save and relaunch from it; stop --no-checkpoint: no final save."""
    job.start_fake()
    job.wait_event("client.connected")
    with Controller(run_dir=job.run_dir) as control:
        assert control.restart() == {"restarting": True}
        second = job.wait_record("start", count=2)
        assert second["resume_step"] == job.records("saved")[-1]["step"]
        job.wait_event("client.connected", count=2)
        saved = len(job.records("saved"))
        result = control.stop(checkpoint=False, wait=True, timeout=60)
    assert result["final_checkpoint"] is False
    assert job.wait() == 0
    assert len(job.records("saved")) == saved
    assert not job.events("job.gave_up") and len(job.records("start")) == 2


def test_stop_without_checkpoint_drops_a_pending_request(job: Job) -> None:
    """A request the job has not acted on yet is not saved when stop --no-checkpoint follows it."""
    job.start_fake("--step-time", "3")
    job.wait_event("client.connected")
    step = job.wait_record("step")["step"]  # the next check of the flags is 3 s away
    with Controller(run_dir=job.run_dir) as control:
        control.checkpoint()
        result = control.stop(checkpoint=False, wait=True, timeout=60)
    assert result["final_checkpoint"] is False
    assert job.wait() == 0
    assert [r["step"] for r in job.records("stop")] == [step + 1]
    assert not job.records("saved") and not job.events("checkpoint.committed")
    assert not [p for p in job.checkpoint_dir.iterdir() if p.name.startswith("step-")]


def test_commands_during_a_file_s_stop_are_decided_as_requests(job: Job) -> None:
    """During a STOP file's stop, `stop` joins it (already; its waiter gets the end) and
    `checkpoint` and `restart` are refused with not_running."""
    job.start_fake("--save-time", "10", options=("--grace", "600s"))  # the stop outlasts the calls
    job.wait_event("client.connected")
    (job.run_dir / "STOP").touch()
    job.wait_event("checkpoint.started")
    with Controller(run_dir=job.run_dir) as control:
        for name in ("checkpoint", "restart"):
            with pytest.raises(ControlError) as refused:
                control.call(name)
            assert refused.value.code == "not_running"
        assert control.stop() == {"stopping": True, "already": True}
        result = control.stop(wait=True, timeout=60)
    assert result == {"stopped": True, "final_checkpoint": True, "exit_code": 0}
    assert job.wait() == 0
    assert [e["reason"] for e in job.events("job.stopping")] == ["STOP file"]


def test_request_racing_the_job_s_own_end_is_not_running(job: Job, tmp_path: Path) -> None:
    """A waited-for request still held when the job finishes on its own: not_running, exit 2."""
    pids, signals = tmp_path / "pids.json", tmp_path / "signals.txt"
    command = plain_trainer(pids, "--record-signals", str(signals), "--exit-on", "SIGUSR2")
    job.start(command, "--restart", "never")
    pid = job_pids(pids)["pid"]
    waiting = subprocess.Popen(
        [sys.executable, "-m", "ckptd", "checkpoint", "--wait", "--run-dir", str(job.run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    job.wait_event("checkpoint.held")  # no client: the request waits for one
    os.kill(pid, signal.SIGUSR2)  # the job ends by itself, exit 0
    _, err = waiting.communicate(timeout=60)
    assert job.wait() == 0
    assert waiting.returncode == 2 and err.count("\n") == 1
    assert "[not_running]" in err and "ckptd is exiting" in err


def test_errors_are_one_line_with_exit_codes(job: Job, tmp_path: Path) -> None:
    """No daemon: exit 2; a wait that cannot finish in time: exit 3; bad arguments: an error."""
    result = ckptd(job, "status", "--run-dir", str(tmp_path))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    job.start_fake("--save-time", "600", options=("--grace", "1s", "--kill-timeout", "1s"))
    job.wait_event("client.connected")
    result = ckptd(job, "checkpoint", "--wait", "--timeout", "0.5", "--run-dir", str(job.run_dir))
    assert result.returncode == 3 and "no answer" in result.stderr
    with Controller(run_dir=job.run_dir) as control:
        with pytest.raises(ControlError) as bad:
            control.call("checkpoint", wait="yes")
        assert bad.value.code == "bad_arguments"
        with pytest.raises(ControlError) as unknown:
            control.call("explode")
        assert unknown.value.code == "unknown_command"
        with pytest.raises(ControlTimeout):
            control.call("checkpoint", timeout=0.2, wait=True)
        assert control.ping()["pong"] is True
        stopped = control.stop(checkpoint=False, wait=True, timeout=math.inf)
    assert stopped["exit_code"] == 1  # stuck in its save: killed at the deadline
    assert job.wait() == 1


def test_job_lookup_by_name(make_job: Callable[..., Job]) -> None:
    """`--job NAME` finds ./.ckptd/NAME, the default run directory of a job named NAME."""
    job = make_job()
    job.run_dir = job.base / ".ckptd" / "named"
    job.start_fake(options=("--name", "named"))
    job.wait_event("client.connected")
    result = ckptd(job, "status", "--job", "named", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["job"] == "named"
    assert ckptd(job, "stop", "--job", "named", "--wait").returncode == 0
    assert job.wait() == 0
