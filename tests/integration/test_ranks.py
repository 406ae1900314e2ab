"""Ranks under torchrun (gloo on CPU): one agreed step, one complete checkpoint, group restarts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ckptd_client.store import inspect

from conftest import FAKES, Job, wait_for

pytest.importorskip("torch", reason="the rank tests run torchrun, which needs torch")

FAST = ("--restart-delay", "0", "--grace", "60s")


def torchrun(*script_args: str, nproc: int = 2) -> list[str]:
    """torchrun (as ``python -m torch.distributed.run``) around the fake DDP trainer."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "--max-restarts=0",
        str(FAKES / "ddp_trainer.py"),
        *script_args,
    ]


def complete(path: Path, files: set[str]) -> None:
    """``path`` is a checkpoint that verifies in full and holds exactly ``files``."""
    checkpoint = inspect(path, full=True)
    assert checkpoint.valid, checkpoint.reason
    listed = json.loads((path / "ckptd.json").read_text())["files"]
    assert {entry["path"] for entry in listed} == files


def by_rank(job: Job, event: str) -> dict[int, list[dict]]:
    rows: dict[int, list[dict]] = {}
    for row in job.records(event):
        rows.setdefault(row["rank"], []).append(row)
    return rows


def test_request_and_stop_are_taken_by_both_ranks_at_one_step(job: Job) -> None:
    """A touched CHECKPOINT and then SIGTERM: both ranks save the same step into one checkpoint."""
    job.start(torchrun("--record", str(job.record)), *FAST)
    wait_for(lambda: len(job.events("client.connected")) == 2, "both ranks connected")
    (job.run_dir / "CHECKPOINT").touch()
    job.wait_record("saved", 2)
    saved = {row["rank"]: row["step"] for row in job.records("saved")}
    assert set(saved) == {0, 1} and len(set(saved.values())) == 1, saved
    step = saved[0]
    wait_for(lambda: not (job.run_dir / "CHECKPOINT").exists(), "CHECKPOINT consumed")
    complete(job.checkpoint_dir / f"step-{step:08d}", {"rank-0.pt", "rank-1.pt"})
    assert job.events("checkpoint.agreed")[0]["at_step"] == step
    assert len(job.events("checkpoint.committed")) == 1

    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "ckptd", "status", "--run-dir", str(job.run_dir), "--json"],
            capture_output=True,
            check=True,
        ).stdout
    )
    assert [(r["rank"], r["pid"]) for r in status["ranks"]] == [
        (row["rank"], row["pid"]) for row in sorted(job.records("start"), key=lambda r: r["rank"])
    ]
    human = subprocess.run(
        [sys.executable, "-m", "ckptd", "status", "--run-dir", str(job.run_dir)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for row in job.records("start"):
        assert f"rank {row['rank']}" in human and f"pid {row['pid']}" in human, human

    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    stops = {row["rank"]: row["step"] for row in job.records("stop")}
    assert set(stops) == {0, 1} and len(set(stops.values())) == 1, stops
    final = stops[0]
    assert final > step
    complete(job.checkpoint_dir / f"step-{final:08d}", {"rank-0.pt", "rank-1.pt"})
    assert job.events("job.stopped")[0]["final_checkpoint"] is True


def test_killed_rank_restarts_the_group_from_a_complete_checkpoint_bit_exact(
    job: Job, tmp_path: Path
) -> None:
    """SIGKILL of rank 1: the group resumes from the checkpoint both wrote and ends bit-exact."""
    steps = ("--steps", "150", "--sleep", "0.03")
    reference = tmp_path / "reference"
    reference.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPTD_")}
    subprocess.run(
        torchrun("--record", str(reference / "record.jsonl"), "--sleep", "0", steps[0], steps[1]),
        cwd=reference,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    expected = {
        row["rank"]: row["digest"]
        for row in map(json.loads, (reference / "record.jsonl").read_text().splitlines())
        if row["event"] == "done"
    }
    assert set(expected) == {0, 1}

    job.start(torchrun("--record", str(job.record), *steps), *FAST)
    wait_for(lambda: len(job.events("client.connected")) == 2, "both ranks connected")
    (job.run_dir / "CHECKPOINT").touch()
    job.wait_record("saved", 2)
    saved = job.records("saved")[0]["step"]
    os.kill(by_rank(job, "start")[1][0]["pid"], signal.SIGKILL)
    job.wait_event("job.started", 2)
    assert job.events("job.started")[1]["resume_step"] == saved
    job.wait_record("done", 2)
    assert job.wait() == 0
    restarts = by_rank(job, "start")
    assert [row["resume_step"] for row in restarts[0]] == [None, saved]
    assert [row["resume_step"] for row in restarts[1]] == [None, saved]
    assert {row["rank"]: row["digest"] for row in job.records("done")} == expected


def test_a_failing_rank_fails_the_save_on_every_rank_and_nothing_commits(job: Job) -> None:
    """Rank 1's save raises: both ranks get the error, no checkpoint commits; the next one does."""
    job.start(torchrun("--record", str(job.record), "--fail-rank", "1"), *FAST)
    wait_for(lambda: len(job.events("client.connected")) == 2, "both ranks connected")
    (job.run_dir / "CHECKPOINT").touch()
    job.wait_record("save_failed", 2)
    failed = {row["rank"]: row for row in job.records("save_failed")}
    assert "injected: disk full" in failed[1]["error"]
    assert "rank 1" in failed[0]["error"] and "injected: disk full" in failed[0]["error"]
    assert failed[0]["step"] == failed[1]["step"]
    wait_for(lambda: not (job.run_dir / "CHECKPOINT").exists(), "CHECKPOINT consumed")
    assert len(job.events("checkpoint.failed")) == 1
    assert not list(job.checkpoint_dir.glob("step-*"))
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    final = job.records("stop")[0]["step"]
    complete(job.checkpoint_dir / f"step-{final:08d}", {"rank-0.pt", "rank-1.pt"})
    assert not list(job.checkpoint_dir.glob(".tmp-*"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_two_nodes_fail_together_then_a_stop_on_one_saves_one_step_on_both(tmp_path: Path) -> None:
    """2 nodes x 1 rank on loopback: a failed part commits nowhere; a SIGTERM to one saves both."""
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = []
    for index in (0, 1):
        (tmp_path / f"node{index}").mkdir()
        nodes.append(Job(tmp_path / f"node{index}", f"node{index}"))
    try:
        for index, node in enumerate(nodes):
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={index}",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint={endpoint}",
                "--rdzv-id=ckptd-test",
                "--max-restarts=0",
                str(FAKES / "ddp_trainer.py"),
                "--record",
                str(node.record),
                "--fail-rank",
                "1",
            ]
            node.start(command, *FAST)
        for node in nodes:
            wait_for(lambda node=node: node.events("client.connected"), "each node's rank")
        (nodes[1].run_dir / "CHECKPOINT").touch()
        for node in nodes:
            node.wait_record("save_failed")
        failed = {row["rank"]: row for node in nodes for row in node.records("save_failed")}
        assert failed[0]["step"] == failed[1]["step"]
        assert "another node: rank 1: OSError: injected" in failed[0]["error"], failed
        assert not [path for node in nodes for path in node.checkpoint_dir.glob("step-*")]
        nodes[0].signal(signal.SIGTERM)
        assert [node.wait() for node in nodes] == [0, 0]
        stops = [node.records("stop")[0] for node in nodes]
        assert len({row["step"] for row in stops}) == 1, stops
        for node, row in zip(nodes, stops, strict=True):
            complete(node.checkpoint_dir / f"step-{row['step']:08d}", {f"rank-{row['rank']}.pt"})
        assert nodes[0].events("job.stopped")[0]["final_checkpoint"] is True
        taken = nodes[1].events("job.stopped")[0]  # another node's stop, taken by its rank
        assert (taken["reason"], taken["final_checkpoint"], taken["exit_code"]) == (
            "a stop on another node",
            True,
            0,
        )
    finally:
        for node in nodes:
            node.kill()
