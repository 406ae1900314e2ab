"""Secrets in the configuration never leave the daemon; the job still gets its environment."""

from __future__ import annotations

import json
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import zmq

from ckptd_client.control import Controller, endpoints_of

from conftest import DEADLINE, Job

ENV_SECRET = "planted-wandb-key-8d1f0c"
PLAIN_VALUE = "planted-plain-value-77a1"
STORAGE_SECRET = "planted-storage-secret-41bd"
NESTED_SECRET = "planted-session-token-9c2e"
PLANTED = (ENV_SECRET, PLAIN_VALUE, STORAGE_SECRET, NESTED_SECRET)

# A job whose first save fails with an error that quotes its credential, as a library might.
JOB = """
import os, sys, time
import ckptd_client
open(sys.argv[1], "w").write(os.environ["WANDB_API_KEY"] + " " + os.environ["PLAIN_VAR"])
ck = ckptd_client.connect()
step = failed = 0
while not ck.should_stop():
    time.sleep(0.01)
    step += 1
    ck.step(step)
    if ck.should_checkpoint():
        try:
            with ck.checkpoint(step) as d:
                if not failed:
                    raise PermissionError("wandb refused key " + os.environ["WANDB_API_KEY"])
                (d / "model.pt").write_text("weights")
        except PermissionError:
            failed = 1
"""


def _leaks(text: str) -> list[str]:
    return [secret for secret in PLANTED if secret in text]


def _run_dir_files(run_dir: Path) -> dict[str, str]:
    """Every regular file of the run directory, as text."""
    return {
        str(path): path.read_text(errors="replace")
        for path in run_dir.rglob("*")
        if stat.S_ISREG(path.lstat().st_mode)
    }


def test_planted_secrets_reach_the_job_and_no_output(job: Job, tmp_path: Path) -> None:
    """Env and storage secrets reach the job, and no reply, event, log line or run-dir file."""
    config = tmp_path / "ckptd.toml"
    config.write_text(
        f'[storage]\nremote = "file://{tmp_path / "bucket"}"\n'
        f'[storage.options]\nsecret = "{STORAGE_SECRET}"\nendpoint_url = "http://127.0.0.1:9"\n'
        f'client_kwargs = {{ aws_session_token = "{NESTED_SECRET}" }}\n'
    )
    seen = tmp_path / "seen.txt"
    job.start(
        [sys.executable, "-c", JOB, str(seen)],
        "--name",
        "secrets",
        "--config",
        str(config),
        "--env",
        f"WANDB_API_KEY={ENV_SECRET}",
        "--env",
        f"PLAIN_VAR={PLAIN_VALUE}",
    )
    job.wait_event("client.connected")
    assert seen.read_text() == f"{ENV_SECRET} {PLAIN_VALUE}"  # the job gets its env unchanged

    with Controller(run_dir=job.run_dir) as control:
        shown = control.call("config")
        streamed = _failed_events(job)
        status = control.status()
    job.signal(signal.SIGTERM)
    assert job.wait() == 0

    assert shown["env"] == {"WANDB_API_KEY": "<redacted>", "PLAIN_VAR": "<redacted>"}
    assert shown["storage"]["options"]["secret"] == "<redacted>"
    assert shown["storage"]["options"]["client_kwargs"]["aws_session_token"] == "<redacted>"
    assert shown["storage"]["options"]["endpoint_url"] == "http://127.0.0.1:9"  # not a secret
    failed = [e for e in streamed if e.get("event") == "checkpoint.failed"]
    assert failed and "wandb refused key <redacted>" in failed[0]["error"]
    outputs = {
        "config reply": json.dumps(shown),
        "status reply": json.dumps(status),
        "event stream": json.dumps(streamed),
        "ckptd stderr": job.stderr.read_text(errors="replace"),
        "ckptd stdout": job.stdout.read_text(errors="replace"),
        **_run_dir_files(job.run_dir),
    }
    assert "job.json" in " ".join(outputs) and "events.jsonl" in " ".join(outputs)
    leaked = {where: found for where, text in outputs.items() if (found := _leaks(text))}
    assert not leaked, f"secrets leaked: {leaked}"


def _failed_events(job: Job) -> list[dict[str, Any]]:
    """Events of the stream up to a checkpoint.failed, asking until the subscriber has joined."""
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoints_of(job.run_dir)["events"])
    received: list[dict[str, Any]] = []
    try:
        for _ in range(int(DEADLINE)):
            # A subscriber misses what is published before it has joined: ask until one arrives.
            (job.run_dir / "CHECKPOINT").touch()
            while sub.poll(1000):
                received.append(json.loads(sub.recv_multipart()[-1]))
                if received[-1]["event"] == "checkpoint.failed":
                    return received
        raise AssertionError(f"no checkpoint.failed on the stream; log: {job.log_tail()}")
    finally:
        sub.close()
        context.term()
