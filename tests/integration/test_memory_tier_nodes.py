"""The memory tier on two nodes (two ``ckptd run`` around ``torchrun --nnodes 2``, gloo on
loopback): with a checkpoint directory per node, each node's ranks save their part in that
node's RAM and each node's ckptd persists its own part; nodes that share a checkpoint
directory save to it (one step with every rank), with ``checkpoint.tier_fallback``."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_fixtures import Nodes, complete, reference_digests

from conftest import Job, wait_for

pytest.importorskip("torch", reason="the multi-node tests run torchrun, which needs torch")

MEMORY = ("--memory-every", "1s")


def ram_of(node: Job) -> Path:
    return Path(node.wait_event("memory.ready")["dir"])


def memory_commits(node: Job) -> dict[int, dict]:
    return {e["step"]: e for e in node.events("checkpoint.committed") if e.get("tier") == "memory"}


def remove_ram(nodes: Nodes) -> None:
    for node in nodes.nodes:
        for ready in node.events("memory.ready"):
            shutil.rmtree(ready["dir"], ignore_errors=True)


@pytest.fixture
def ram_nodes(tmp_path: Path) -> Iterator[Nodes]:
    """A checkpoint directory per node, RAM saves every second, each persisted at once."""
    nodes = Nodes(tmp_path, None, MEMORY)
    yield nodes
    nodes.kill()
    remove_ram(nodes)


def test_each_node_saves_its_part_in_its_own_ram_and_persists_it(
    ram_nodes: Nodes, tmp_path: Path
) -> None:
    """Every memory round puts each node's part in that node's RAM, committed there with that
    node's rank; each ckptd persists its part to its own disk; a SIGTERM to one node ends
    both with the final step persisted on both disks (exit 0) and RAM empty; the next run
    resumes there, bit-exact."""
    a, b = ram_nodes.nodes
    ram_nodes.start()
    rams = [ram_of(node) for node in (a, b)]
    assert rams[0] != rams[1]
    both = wait_for(
        lambda: sorted(set(memory_commits(a)) & set(memory_commits(b))), "a RAM step on both"
    )
    step = both[0]
    ranks = {node.records("start")[0]["rank"]: node for node in (a, b)}
    for rank, node in ranks.items():
        path = Path(memory_commits(node)[step]["path"])
        assert path.parent == rams[(a, b).index(node)]
        complete(path, {f"rank-{rank}.pt"}, [rank])
        wait_for(lambda n=node: (n.checkpoint_dir / f"step-{step:08d}").is_dir(), "persisted")
        complete(node.checkpoint_dir / f"step-{step:08d}", {f"rank-{rank}.pt"}, [rank])
    assert not a.events("checkpoint.tier_fallback") and not b.events("checkpoint.tier_fallback")

    a.signal(signal.SIGTERM)
    assert [node.wait() for node in (a, b)] == [0, 0]
    stops = {row["rank"]: row["step"] for row in ram_nodes.records("stop")}
    assert set(stops) == {0, 1} and len(set(stops.values())) == 1, stops
    final = stops[0]
    for rank, node in ranks.items():
        assert final in memory_commits(node), "the final save went to RAM"
        complete(node.checkpoint_dir / f"step-{final:08d}", {f"rank-{rank}.pt"}, [rank])
        assert node.events("job.stopped")[0]["final_checkpoint"] is True
        assert node.events("memory.cleared")
    assert not any(ram.exists() and any(ram.iterdir()) for ram in rams)

    steps = final + 20
    ram_nodes.start("--steps", str(steps), "--sleep", "0")
    assert [node.wait() for node in (a, b)] == [0, 0]
    moved = [node.records("start")[1]["rank"] for node in (a, b)] != [
        node.records("start")[0]["rank"] for node in (a, b)
    ]
    expected = None if moved else final  # ranks moved: no node holds its ranks' parts
    assert [node.records("start")[1]["resume_step"] for node in (a, b)] == [expected] * 2
    done = {row["rank"]: row["digest"] for row in ram_nodes.records("done")}
    assert done == reference_digests(tmp_path / "reference", steps)


def test_both_nodes_killed_the_next_run_persists_their_ram_parts_and_resumes_there(
    tmp_path: Path,
) -> None:
    """RAM saves every second, the disk tier not within the test: every ckptd and rank is
    SIGKILLed; the next run's daemons find their node's RAM part, persist it before the
    launch and every rank resumes from the newest step both nodes have, bit-exact."""
    nodes = Nodes(tmp_path, None, (*MEMORY, "--every", "1h"))
    try:
        a, b = nodes.nodes
        nodes.start()
        both = wait_for(
            lambda: sorted(set(memory_commits(a)) & set(memory_commits(b))), "a RAM step on both"
        )
        newest = [max(memory_commits(node)) for node in (a, b)]
        before = [node.records("start")[0]["rank"] for node in (a, b)]
        a.kill()
        b.kill()
        assert not list(a.checkpoint_dir.glob("step-*"))
        assert not list(b.checkpoint_dir.glob("step-*"))

        steps = max(newest) + 30
        nodes.start("--steps", str(steps), "--sleep", "0")
        assert [node.wait() for node in (a, b)] == [0, 0]
        persisted = []
        for node in (a, b):
            early = [e for e in node.events("checkpoint.persisted") if e["why"] != "at exit"]
            assert early and early[0]["why"] == "before the launch", early
            persisted.append(early[0]["step"])
        resumed = [node.records("start")[1]["resume_step"] for node in (a, b)]
        after = [node.records("start")[1]["rank"] for node in (a, b)]
        agreed = min(persisted)
        assert agreed >= both[-1]  # the newest step both had before the kill
        assert resumed == [None if after != before else agreed] * 2, (resumed, persisted)
        done = {row["rank"]: row["digest"] for row in nodes.records("done")[-2:]}
        assert done == reference_digests(tmp_path / "reference", steps)
    finally:
        nodes.kill()
        remove_ram(nodes)


def test_nodes_sharing_a_checkpoint_directory_save_memory_rounds_there(tmp_path: Path) -> None:
    """A shared checkpoint directory holds one step with every rank's part, which two nodes'
    RAM cannot: their memory rounds go to that directory, each node says why once per round."""
    shared = tmp_path / "shared"
    nodes = Nodes(tmp_path, shared, MEMORY)
    try:
        a, b = nodes.nodes
        nodes.start()
        for node in (a, b):
            fallback = node.wait_event("checkpoint.tier_fallback")
            assert "share" in fallback["why"] and str(shared) in fallback["why"], fallback
        committed = a.wait_event("checkpoint.committed")
        assert committed.get("tier", "disk") == "disk"
        assert Path(committed["path"]).parent == shared
        complete(Path(committed["path"]), {"rank-0.pt", "rank-1.pt"}, [0, 1])
        assert not memory_commits(a) and not memory_commits(b)
        a.signal(signal.SIGTERM)
        assert [node.wait() for node in (a, b)] == [0, 0]
    finally:
        nodes.kill()
        remove_ram(nodes)
