"""One job on two nodes (two ``ckptd run`` around ``torchrun --nnodes 2``, gloo on loopback).

Each "node" has its own run directory; the checkpoint directory is shared or its own.
"""

from __future__ import annotations

import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_fixtures import Nodes, complete, reference_digests

from conftest import Job, wait_for

pytest.importorskip("torch", reason="the multi-node tests run torchrun, which needs torch")


@pytest.fixture
def shared_nodes(tmp_path: Path) -> Iterator[Nodes]:
    nodes = Nodes(tmp_path, tmp_path / "shared")
    yield nodes
    nodes.kill()


def test_nodes_of_one_job_share_a_checkpoint_directory_and_stop_at_one_step(
    shared_nodes: Nodes, tmp_path: Path
) -> None:
    """Shared dir: one commit per step with both ranks' files; SIGTERM to one node stops both
    after one complete checkpoint (exit 0, 0); another job is refused; the resume is bit-exact."""
    shared = tmp_path / "shared"
    shared_nodes.start()
    shared_nodes.wait_connected()
    a, b = shared_nodes.nodes

    other = Job(tmp_path / "node0", "other")
    other.checkpoint_dir = shared
    other.run_dir = tmp_path / "other-run"
    other.start([sys.executable, "-c", "pass"], "--name", "other")
    assert other.wait() == 2
    refusal = other.stderr.read_text().strip()
    assert len(refusal.splitlines()) == 1 and "is in use by job 'ddp_trainer'" in refusal, refusal

    (b.run_dir / "CHECKPOINT").touch()
    wait_for(lambda: len(shared_nodes.records("saved")) == 2, "both ranks saved")
    saved = {row["rank"]: row["step"] for row in shared_nodes.records("saved")}
    assert set(saved) == {0, 1} and len(set(saved.values())) == 1, saved
    step = saved[0]
    wait_for(lambda: not (b.run_dir / "CHECKPOINT").exists(), "CHECKPOINT consumed")
    complete(shared / f"step-{step:08d}", {"rank-0.pt", "rank-1.pt"}, [0, 1])
    for node in (a, b):
        committed = node.wait_event("checkpoint.committed")
        assert committed["step"] == step and committed["path"] == str(shared / f"step-{step:08d}")

    a.signal(signal.SIGTERM)
    assert [node.wait() for node in (a, b)] == [0, 0]
    stops = {row["rank"]: row["step"] for row in shared_nodes.records("stop")}
    assert set(stops) == {0, 1} and len(set(stops.values())) == 1, stops
    final = stops[0]
    complete(shared / f"step-{final:08d}", {"rank-0.pt", "rank-1.pt"}, [0, 1])
    assert a.events("job.stopped")[0]["final_checkpoint"] is True
    assert not list(shared.glob(".tmp-*"))

    steps = final + 20
    shared_nodes.start("--steps", str(steps), "--sleep", "0")
    assert [node.wait() for node in (a, b)] == [0, 0]
    relaunched = [node.records("start")[1] for node in (a, b)]
    resumed = {row["rank"]: row["resume_step"] for row in relaunched}
    assert resumed == {0: final, 1: final}
    done = {row["rank"]: row["digest"] for row in shared_nodes.records("done")}
    assert done == reference_digests(tmp_path / "reference", steps)


@pytest.fixture
def local_nodes(tmp_path: Path) -> Iterator[Nodes]:
    nodes = Nodes(tmp_path, None)
    yield nodes
    nodes.kill()


def ranks_by_node(nodes: Nodes, launch: int) -> list[int]:
    """The rank each node ran in its ``launch``-th launch (torchrun may hand ranks around)."""
    return [node.records("start")[launch]["rank"] for node in nodes.nodes]


def test_a_node_whose_ranks_took_another_node_s_stop_stops_however_they_exit(
    local_nodes: Nodes,
) -> None:
    """SIGTERM to node a; node b's rank takes the stop at the same step, then its process ends
    with status 1 (gloo aborting in the teardown does that): b's ckptd counts a stop with its
    final checkpoint (exit 0), never a crash to relaunch into a rendezvous nobody joins."""
    a, b = local_nodes.nodes
    local_nodes.start("--exit-after-stop", "1")
    local_nodes.wait_connected()
    a.signal(signal.SIGTERM)
    assert [node.wait() for node in (a, b)] == [0, 0]
    stops = {row["rank"]: row["step"] for row in local_nodes.records("stop")}
    assert set(stops) == {0, 1} and len(set(stops.values())) == 1, stops
    stopping = b.events("job.stopping")
    assert [e["reason"] for e in stopping] == ["a stop on another node"]
    assert b.events("job.exited")[0]["exit_code"] == 1
    stopped = b.events("job.stopped")[0]
    assert stopped["final_checkpoint"] is True and stopped["exit_code"] == 0
    assert len(b.events("job.started")) == 1 and not b.events("job.restarting")


def test_node_local_directories_resume_at_the_newest_step_every_rank_has(
    local_nodes: Nodes, tmp_path: Path
) -> None:
    """A directory per node, node b without the newest step (a crash between the two nodes'
    commits): every rank resumes at the older step all have, one checkpoint.incomplete line
    names the ranks whose part is missing, and the result is bit-exact."""
    a, b = local_nodes.nodes
    local_nodes.start("--steps", "25", "--save-every", "10", "--sleep", "0")
    assert [node.wait() for node in (a, b)] == [0, 0]
    before = ranks_by_node(local_nodes, 0)
    for node, rank in zip((a, b), before, strict=True):
        for step in (9, 19):
            complete(node.checkpoint_dir / f"step-{step:08d}", {f"rank-{rank}.pt"}, [rank])
    shutil.rmtree(b.checkpoint_dir / "step-00000019")

    local_nodes.start("--steps", "40", "--sleep", "0")
    assert [node.wait() for node in (a, b)] == [0, 0]
    after = ranks_by_node(local_nodes, 1)
    moved = after != before  # then no node holds the parts of the ranks it runs now
    expected = None if moved else 9
    assert [node.records("start")[1]["resume_step"] for node in (a, b)] == [expected, expected]
    missing = [0, 1] if moved else [after[1]]
    for node in (a, b):
        lines = node.events("checkpoint.incomplete")
        assert len(lines) == 1, lines
        assert (lines[0]["step"], lines[0]["missing"], lines[0]["resume_step"]) == (
            19,
            missing,
            expected,
        )
    done = {row["rank"]: row["digest"] for row in (node.records("done")[-1] for node in (a, b))}
    assert done == reference_digests(tmp_path / "reference", 40)


def test_two_ranks_on_each_of_two_nodes_commit_one_shared_step_and_stop_together(
    tmp_path: Path,
) -> None:
    """2 nodes x 2 ranks, shared dir: a request and a SIGTERM each give one step with all four
    ranks' files, committed once; both daemons exit 0."""
    nodes = Nodes(tmp_path, tmp_path / "shared", nproc=2)
    try:
        nodes.start()
        nodes.wait_connected(2)
        a, b = nodes.nodes
        (a.run_dir / "CHECKPOINT").touch()
        wait_for(lambda: len(nodes.records("saved")) == 4, "all four ranks saved")
        assert len({row["step"] for row in nodes.records("saved")}) == 1
        step = nodes.records("saved")[0]["step"]
        files = {f"rank-{rank}.pt" for rank in range(4)}
        complete(tmp_path / "shared" / f"step-{step:08d}", files, [0, 1, 2, 3], 4)
        b.signal(signal.SIGTERM)
        assert [node.wait() for node in (a, b)] == [0, 0]
        stops = {row["rank"]: row["step"] for row in nodes.records("stop")}
        assert set(stops) == {0, 1, 2, 3} and len(set(stops.values())) == 1, stops
        final = stops[0]
        complete(tmp_path / "shared" / f"step-{final:08d}", files, [0, 1, 2, 3], 4)
        assert len([e for n in (a, b) for e in n.events("checkpoint.committed")]) == 4
    finally:
        nodes.kill()


@pytest.mark.torch
def test_a_node_killed_between_the_two_nodes_commits_never_gives_a_mixed_resume(
    local_nodes: Nodes, tmp_path: Path
) -> None:
    """A directory per node; node b hangs in its commit of step 19 after node a committed it,
    then b's ckptd and trainer are SIGKILLed (and a's, the job relaunched): every rank
    resumes from the same step, the older one both nodes have, bit-exact."""
    a, b = local_nodes.nodes
    stall = f"{b.checkpoint_dir}:19"
    local_nodes.start("--save-every", "10", "--sleep", "0", "--stall-commit", stall)
    wait_for(lambda: b.records("committing"), "node b inside its commit of step 19")
    wait_for(lambda: (a.checkpoint_dir / "step-00000019").is_dir(), "node a committed step 19")
    b.kill()
    a.kill()
    before = ranks_by_node(local_nodes, 0)
    assert (b.checkpoint_dir / "step-00000009").is_dir()
    assert not (b.checkpoint_dir / "step-00000019").exists()

    local_nodes.start("--steps", "40", "--sleep", "0")
    assert [node.wait() for node in (a, b)] == [0, 0]
    after = ranks_by_node(local_nodes, 1)
    expected = None if after != before else 9  # ranks moved: no node holds its ranks' parts
    assert [node.records("start")[1]["resume_step"] for node in (a, b)] == [expected, expected]
    for node in (a, b):
        lines = node.events("checkpoint.incomplete")
        assert [(line["step"], line["resume_step"]) for line in lines] == [(19, expected)]
    # Passed over: node a's step 19 (and every step, when the ranks moved) goes to a branch,
    # so that a later save of step 19 on node b never makes a step 19 with a's old one.
    moved = a.wait_event("checkpoint.passed_over")["moved"]
    assert any(path.endswith("step-00000019") for path in moved), moved
    for node in (a, b):
        left = [int(path.name[5:]) for path in node.checkpoint_dir.glob("step-*")]
        assert all(expected is not None and step <= expected for step in left), left
    done = {row["rank"]: row["digest"] for row in (node.records("done")[-1] for node in (a, b))}
    assert done == reference_digests(tmp_path / "reference", 40)
