"""Documented behaviours (docs/), end to end with real processes: standalone requests, SIGHUP,
`--job` lookup, TCP event publishing, the atexit flush, stop_signal and cwd."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from conftest import DEADLINE, FAKES, Job, plain_trainer, read_jsonl, wait_for

# -- standalone: no daemon, the client's own request sources ------------------------------


class Standalone:
    """The fake trainer run plainly (no CKPTD_ENDPOINT), with CKPTD_RUN_DIR for signal files."""

    def __init__(self, base: Path, *fake_args: str) -> None:
        self.base = base
        self.record = base / "record.jsonl"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CKPTD_")}
        env["CKPTD_RUN_DIR"] = str(base)
        argv = [sys.executable, str(FAKES / "trainer.py"), "--record", str(self.record)]
        self.process = subprocess.Popen([*argv, *fake_args], cwd=base, env=env)

    def records(self, name: str) -> list[dict]:
        return [r for r in read_jsonl(self.record) if r["event"] == name]

    def wait_record(self, name: str, count: int = 1) -> dict:
        return wait_for(
            lambda: len(self.records(name)) >= count and self.records(name)[count - 1],
            f"record {name} x{count}",
        )

    def wait(self) -> int:
        return self.process.wait(timeout=DEADLINE)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Callable[..., Standalone]]:
    started: list[Standalone] = []

    def start(*fake_args: str) -> Standalone:
        run = Standalone(tmp_path, *fake_args)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill()


def test_standalone_stop_file_saves_and_stops(standalone) -> None:
    """Standalone, a STOP file in the run dir: a final checkpoint at the current step, exit 0."""
    run = standalone()
    run.wait_record("step", count=3)
    (run.base / "STOP").touch()
    assert run.wait() == 0
    stop = run.records("stop")
    assert len(stop) == 1
    assert run.records("saved")[-1]["step"] == stop[0]["step"] == run.records("step")[-1]["step"]
    assert not (run.base / "STOP").exists()


def test_standalone_sigusr1_checkpoints_and_training_goes_on(standalone) -> None:
    """Standalone, SIGUSR1 to the script is a checkpoint request; training continues after it."""
    run = standalone()
    run.wait_record("step", count=3)
    run.process.send_signal(signal.SIGUSR1)
    saved = run.wait_record("saved")
    wait_for(lambda: run.records("step")[-1]["step"] > saved["step"] + 2, "training after the save")
    assert not run.records("stop")
    run.process.send_signal(signal.SIGINT)
    assert run.wait() == 0
    assert len(run.records("saved")) == 2  # the request, then the final one on SIGINT


def test_standalone_second_sigterm_acts_as_the_default(standalone) -> None:
    """Standalone, a second SIGTERM during the final save kills the script as SIGTERM would."""
    run = standalone("--save-time", "600")
    run.wait_record("step", count=3)
    run.process.send_signal(signal.SIGTERM)
    wait_for(lambda: list(run.base.glob("checkpoints/.tmp-step-*/payload.bin")), "the final save")
    run.process.send_signal(signal.SIGTERM)
    assert run.wait() == -signal.SIGTERM
    assert not run.records("saved") and not run.records("stop")


# -- under ckptd ----------------------------------------------------------------------------


def test_atexit_flushes_the_last_acknowledgement(job: Job) -> None:
    """A script that commits and exits without close() still has its commit reported."""
    job.start_fake("--save-every", "4", "--exit-after-save", options=("--restart", "never"))
    assert job.wait() == 0
    assert (job.checkpoint_dir / "step-00000004" / "ckptd.json").exists()
    committed = job.events("checkpoint.committed")
    assert [e["step"] for e in committed] == [4], job.log_tail()


def test_sighup_is_a_final_checkpoint_and_a_stop(job: Job) -> None:
    """SIGHUP to ckptd: a final checkpoint at the current step, the job stops, exit 0."""
    # Under nohup (SIGHUP ignored, and inherited so) ckptd rightly keeps ignoring hangups.
    ignored = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        job.start_fake()
    finally:
        signal.signal(signal.SIGHUP, ignored)
    job.wait_record("step", count=10)
    job.signal(signal.SIGHUP)
    assert job.wait() == 0
    assert len(job.records("start")) == 1, "the job was restarted"
    last_step = job.records("step")[-1]["step"]
    assert job.records("stop")[0]["step"] == last_step
    assert job.records("saved")[-1]["step"] == last_step
    stopped = job.events("job.stopped")
    assert stopped and stopped[0]["final_checkpoint"] is True


@pytest.fixture
def system_run_dir() -> Iterator[Path]:
    """A run directory under /var/lib/ckptd (removed afterwards); skipped where not writable."""
    path = Path("/var/lib/ckptd") / f"ckptd-test-{uuid.uuid4().hex[:8]}"
    made_parent = not path.parent.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    except OSError as exc:
        pytest.skip(f"cannot create {path}: {exc.strerror} (needs root)")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if made_parent:
            shutil.rmtree(path.parent, ignore_errors=True)


def test_job_name_falls_back_to_var_lib_ckptd(job: Job, system_run_dir: Path) -> None:
    """`--job NAME` with no ./.ckptd/NAME finds /var/lib/ckptd/NAME (the systemd layout)."""
    job.run_dir = system_run_dir
    name = system_run_dir.name
    job.start_fake(options=("--name", name))
    job.wait_event("client.connected")
    assert not (job.base / ".ckptd").exists()
    status = subprocess.run(
        [sys.executable, "-m", "ckptd", "status", "--job", name, "--json"],
        cwd=job.base,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["job"] == name
    job.signal(signal.SIGTERM)
    assert job.wait() == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_tcp_publish_reaches_a_sub_socket(job: Job) -> None:
    """With [control] publish, a plain ZeroMQ SUB socket over TCP receives the job's events."""
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    config = job.base / "ckptd.toml"
    config.write_text(f'[control]\npublish = "{endpoint}"\nallow_unauthenticated = true\n')
    job.start_fake(options=("--config", str(config)))
    job.wait_event("client.connected")
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"checkpoint.committed")
    sub.connect(endpoint)
    try:
        received = None
        for _ in range(int(DEADLINE)):
            # A subscriber misses what is published before it has joined: ask until one arrives.
            (job.run_dir / "CHECKPOINT").touch()
            if sub.poll(1000):
                received = sub.recv_multipart()
                break
        assert received is not None, f"no event over TCP; log tail: {job.log_tail()}"
        topic, body = received
        event = json.loads(body)
        assert topic == b"checkpoint.committed" and event["event"] == "checkpoint.committed"
        assert event["step"] >= 0 and Path(event["path"]).is_dir()
    finally:
        sub.close()
        context.term()
    job.signal(signal.SIGTERM)
    assert job.wait() == 0


def test_stop_signal_and_cwd_reach_a_job_without_the_client(job: Job, tmp_path: Path) -> None:
    """A plain job runs in `cwd` and, on stop, gets `stop_signal` (here SIGINT), not SIGTERM."""
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    pids, signals, cwd = tmp_path / "pids.json", tmp_path / "signals.txt", tmp_path / "cwd.txt"
    command = plain_trainer(
        pids,
        "--record-signals",
        str(signals),
        "--exit-on",
        "SIGINT",
        "--exit-on",
        "SIGTERM",
        "--record-cwd",
        str(cwd),
    )
    job.start(command, "--stop-signal", "SIGINT", "--cwd", str(workdir), "--grace", "30s")
    wait_for(pids.exists, "the job to start")
    assert cwd.read_text() == str(workdir)
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    assert signals.read_text() == "SIGINT\n"
    signalled = job.events("job.signalled")
    assert [e["signal"] for e in signalled] == ["SIGINT"]
