"""Checkpoint requests from every source of this release reach a real training process."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from conftest import Job, plain_trainer, wait_for


def test_touching_checkpoint_commits_and_removes_the_file(job: Job) -> None:
    """Touching CHECKPOINT makes the job commit a checkpoint; then the file disappears."""
    job.start_fake()
    job.wait_event("client.connected")
    request = job.run_dir / "CHECKPOINT"
    request.touch()
    committed = job.wait_event("checkpoint.committed")
    wait_for(lambda: not request.exists(), "CHECKPOINT to be removed")
    path = Path(committed["path"])
    assert path.parent == job.checkpoint_dir
    assert (path / "ckptd.json").is_file()
    assert job.records("saved")[0]["step"] == committed["step"]
    job.signal(signal.SIGTERM)
    assert job.wait() == 0


def test_checkpoint_file_present_at_start_counts_as_a_request(job: Job) -> None:
    """A CHECKPOINT file left before ckptd starts is delivered once the client connects."""
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "CHECKPOINT").touch()
    job.start_fake()
    job.wait_event("checkpoint.committed")
    wait_for(lambda: not (job.run_dir / "CHECKPOINT").exists(), "CHECKPOINT to be removed")
    job.signal(signal.SIGTERM)
    assert job.wait() == 0


def test_polling_watcher_sees_the_checkpoint_file(job: Job) -> None:
    """With watch = "poll" (network file systems) a touched file is still seen."""
    job.start_fake(options=("--watch", "poll", "--poll-interval", "0.1"))
    job.wait_event("client.connected")
    (job.run_dir / "CHECKPOINT").touch()
    job.wait_event("checkpoint.committed")
    job.signal(signal.SIGTERM)
    assert job.wait() == 0


def test_sigusr1_requests_a_checkpoint(job: Job) -> None:
    """SIGUSR1 to the daemon asks for a checkpoint without stopping the job."""
    job.start_fake()
    job.wait_event("client.connected")
    job.signal(signal.SIGUSR1)
    job.wait_event("checkpoint.committed")
    assert job.process is not None and job.process.poll() is None
    job.signal(signal.SIGTERM)
    assert job.wait() == 0


def test_periodic_checkpoints_and_retention(job: Job) -> None:
    """`every` checkpoints periodically; keep_last bounds what stays on disk."""
    job.start_fake(options=("--every", "1s", "--keep-last", "2"))
    job.wait_event("checkpoint.committed", count=4)
    job.wait_event("checkpoint.pruned", count=2)
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    names = sorted(p.name for p in job.checkpoint_dir.glob("step-*"))
    assert len(names) == 2, names
    assert all(e["reason"] == "every" for e in job.events("checkpoint.requested")[:3])


def test_request_signal_reaches_an_uninstrumented_job(job: Job, tmp_path: Path) -> None:
    """A job without the client gets request_signal on its main process for each request."""
    pids, received = tmp_path / "pids.json", tmp_path / "signals.txt"
    job.start(
        plain_trainer(pids, "--record-signals", str(received)),
        "--request-signal",
        "SIGUSR1",
        "--grace",
        "1s",
        "--kill-timeout",
        "1s",
    )
    wait_for(pids.exists, "the job to start")
    (job.run_dir / "CHECKPOINT").touch()
    wait_for(lambda: received.exists() and "SIGUSR1" in received.read_text(), "SIGUSR1 in the job")
    wait_for(lambda: not (job.run_dir / "CHECKPOINT").exists(), "CHECKPOINT to be removed")
    job.signal(signal.SIGTERM)
    assert job.wait() == 0


def test_garbage_on_the_job_channel_does_not_hurt_the_daemon(job: Job) -> None:
    """Malformed frames on the job socket are dropped; supervision and checkpoints go on."""
    import zmq

    job.start_fake()
    job.wait_event("client.connected")
    endpoint = json.loads((job.run_dir / "endpoints.json").read_text())["job"]
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    junk = [
        b"",
        b"\x00\xff",
        b"null",
        b"[1,2]",
        b'{"v":1}',
        b'{"v":1,"type":"nope"}',
        b'{"v":2,"type":"hello"}',
        b'{"v":1,"type":"committed","ids":"x","step":"y"}',
        b'{"v":1,"type":"step","step":-5}',
        b"x" * 200_000,
    ]
    try:
        for frame in junk * 20:
            sock.send(frame)
        sock.send_multipart([b"two", b"frames"])
    finally:
        sock.close()
        context.term()
    (job.run_dir / "CHECKPOINT").touch()
    job.wait_event("checkpoint.committed")
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
