"""The Hugging Face Trainer callback on two nodes x one rank (torchrun --nnodes 2, gloo on
loopback), each node a ``ckptd run`` with its own run directory and one shared checkpoint
directory: the Trainer writes the model and optimizer on global rank 0 only, so a shared
directory is what holds every rank's files in one step; with a directory per node only global
rank 0's node has the model."""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_fixtures import FAST, free_port

from ckptd_client.store import inspect

from conftest import EXAMPLES, Job, wait_for

pytestmark = [
    pytest.mark.torch,
    pytest.mark.skipif(
        importlib.util.find_spec("torch") is None
        or importlib.util.find_spec("transformers") is None,
        reason="needs torch and transformers (pip install -e '.[frameworks]')",
    ),
]

SLOW_START = 120.0  # two ranks importing transformers on a loaded 2-core machine
ENV = {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _said(node: Job, what: str) -> list[tuple[int, int]]:
    """(global step, rank) the example printed after ``what`` on ``node``."""
    text = node.stdout.read_text(errors="replace") if node.stdout.exists() else ""
    found = re.findall(rf"{re.escape(what)}:? global step (\d+) \(rank (\d+)\)", text)
    return [(int(step), int(rank)) for step, rank in found]


def _start(nodes: list[Job], rdzv_id: str) -> list[Job]:
    """Start the example on both nodes around one fresh rendezvous."""
    endpoint = f"127.0.0.1:{free_port()}"
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
            f"--rdzv-id={rdzv_id}",
            "--max-restarts=0",
            str(EXAMPLES / "train_hf.py"),
            "--steps",
            "100000",
            "--step-time",
            "0.03",
        ]
        node.start(command, *FAST, env=ENV)
    return nodes


@pytest.fixture
def hf_nodes(tmp_path: Path) -> Iterator[list[Job]]:
    shared = tmp_path / "shared"
    nodes = []
    for index in (0, 1):
        (tmp_path / f"node{index}").mkdir()
        node = Job(tmp_path / f"node{index}", f"node{index}")
        node.checkpoint_dir = shared
        nodes.append(node)
    yield _start(nodes, tmp_path.name)
    for node in nodes:
        node.kill()


def test_hf_trainer_on_two_nodes_commits_one_shared_step_and_stops_together(
    hf_nodes: list[Job], tmp_path: Path
) -> None:
    """HF, 2 nodes x 1 rank, shared dir: a touched request is one committed step with both
    ranks' files; SIGTERM to one node's daemon: one final save at one step, both exit 0."""
    a, b = hf_nodes
    for node in hf_nodes:
        wait_for(lambda n=node: _said(n, "first step of this process"), "a rank", SLOW_START)

    (b.run_dir / "CHECKPOINT").touch()
    committed = [node.wait_event("checkpoint.committed", 1, SLOW_START) for node in hf_nodes]
    step = committed[0]["step"]
    assert [c["step"] for c in committed] == [step, step]
    expected = str(tmp_path / "shared" / f"step-{step:08d}")
    assert committed[0]["path"] == committed[1]["path"] == expected
    _files(Path(committed[0]["path"]), step)

    a.signal(signal.SIGTERM)
    assert [node.wait(SLOW_START) for node in hf_nodes] == [0, 0]
    stopped = sorted(said for node in hf_nodes for said in _said(node, "stopped at"))
    final = stopped[0][0]
    assert stopped == [(final, 0), (final, 1)] and final > step
    finals = [node.events("checkpoint.committed")[-1] for node in hf_nodes]
    assert [c["step"] for c in finals] == [final, final]
    _files(Path(finals[0]["path"]), final)
    assert a.events("job.stopped")[0]["final_checkpoint"] is True


def _files(path: Path, step: int) -> None:
    """``path`` verifies in full and holds both ranks' files of the Trainer's save of ``step``."""
    checked = inspect(path, full=True)
    assert checked.valid, checked.reason
    saved = path / f"checkpoint-{step}"
    names = {p.name for p in saved.iterdir()}
    assert {"rng_state_0.pth", "rng_state_1.pth", "model.safetensors", "optimizer.pt"} <= names
    assert json.loads((saved / "trainer_state.json").read_text())["global_step"] == step


@pytest.fixture
def hf_local_nodes(tmp_path: Path) -> Iterator[list[Job]]:
    nodes = []
    for index in (0, 1):
        (tmp_path / f"node{index}").mkdir()
        nodes.append(Job(tmp_path / f"node{index}", f"node{index}"))
    yield _start(nodes, tmp_path.name)
    for node in nodes:
        node.kill()


def test_hf_trainer_with_a_directory_per_node_saves_and_stops_but_the_model_is_on_one_node(
    hf_local_nodes: list[Job],
) -> None:
    """HF, a directory per node: one step per request and one final save on both nodes, both
    exit 0; the Trainer writes the model on global rank 0 only, so the other node's step holds
    just its RNG state (not a resume point there: see docs/frameworks.md)."""
    nodes = hf_local_nodes
    for node in nodes:
        wait_for(lambda n=node: _said(n, "first step of this process"), "a rank", SLOW_START)
    (nodes[0].run_dir / "CHECKPOINT").touch()
    committed = [node.wait_event("checkpoint.committed", 1, SLOW_START) for node in nodes]
    assert committed[0]["step"] == committed[1]["step"]
    nodes[1].signal(signal.SIGTERM)
    assert [node.wait(SLOW_START) for node in nodes] == [0, 0]
    stopped = sorted(said for node in nodes for said in _said(node, "stopped at"))
    final = stopped[0][0]
    assert stopped == [(final, 0), (final, 1)]
    for node in nodes:
        last = node.events("checkpoint.committed")[-1]
        assert last["step"] == final
        checked = inspect(Path(last["path"]), full=True)
        assert checked.valid, checked.reason
        rank = last["rank"]
        names = {p.name for p in (Path(last["path"]) / f"checkpoint-{final}").iterdir()}
        assert f"rng_state_{rank}.pth" in names
        assert ("model.safetensors" in names) == (rank == 0), names
