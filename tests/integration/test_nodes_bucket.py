"""Two nodes of one job, a checkpoint directory each and one bucket (moto's S3 on loopback)."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_fixtures import Nodes, reference_digests
from remote_fixtures import MotoServer, moto, storage_config

from ckptd.storage.remote.store import RemoteStore

from conftest import wait_for

__all__ = ["moto"]  # the fixture, imported for pytest

pytest.importorskip("torch", reason="the multi-node tests run torchrun, which needs torch")
pytest.importorskip("s3fs", reason="needs the s3 extra (s3fs) and moto[server]")


@pytest.fixture
def bucket_nodes(tmp_path: Path, moto: MotoServer) -> Iterator[Nodes]:
    config = storage_config(tmp_path / "storage.toml", moto.url("nodes"), moto.options)
    nodes = Nodes(tmp_path, None, ("--config", str(config)))
    yield nodes
    nodes.kill()


def test_nodes_share_one_prefix_and_a_wiped_node_resumes_from_the_bucket(
    bucket_nodes: Nodes, moto: MotoServer, tmp_path: Path
) -> None:
    """Sharded (DCP) saves: each node uploads its part, one manifest per step lists every
    shard, nobody is fenced; node b's disk wiped: both download the step, resume, bit-exact."""
    a, b = bucket_nodes.nodes
    remote = RemoteStore(moto.url("nodes"), moto.options)
    bucket_nodes.start("--format", "dcp")
    bucket_nodes.wait_connected()
    (a.run_dir / "CHECKPOINT").touch()
    wait_for(lambda: len(bucket_nodes.records("saved")) == 2, "both ranks saved")
    step = bucket_nodes.records("saved")[0]["step"]
    wait_for(lambda: step in [c.step for c in remote.list() if c.valid], f"step {step} remote")
    nodes = a.status()["nodes"]
    rank = a.records("start")[0]["rank"]
    assert (nodes["newest_step"], nodes["ranks"], nodes["missing"]) == (step, [rank], [1 - rank])
    assert nodes["newest_whole_step"] is None and nodes["complete"] is False
    assert f"step {step}: ranks {rank} of 2 here" in a.cli("status").stdout

    b.signal(signal.SIGTERM)
    assert [node.wait() for node in (a, b)] == [0, 0]
    final = b.records("stop")[0]["step"]
    listed = {c.step: c for c in remote.list()}
    assert listed[final].valid, listed
    whole = remote.manifest(final)
    assert (list(whole.ranks or ()), whole.world_size) == ([0, 1], 2)
    assert sorted(e.path for e in whole.files) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not [e for node in (a, b) for e in node.events("remote.fenced")]

    shutil.rmtree(b.checkpoint_dir)  # a replacement VM
    steps = final + 20
    bucket_nodes.start("--format", "dcp", "--steps", str(steps), "--sleep", "0")
    assert [node.wait() for node in (a, b)] == [0, 0]
    assert b.events("remote.downloaded")[0]["step"] == final
    assert [node.records("start")[1]["resume_step"] for node in (a, b)] == [final, final]
    done = {row["rank"]: row["digest"] for row in (node.records("done")[-1] for node in (a, b))}
    assert done == reference_digests(tmp_path / "reference", steps)


@pytest.mark.torch
def test_both_nodes_wiped_resume_from_the_bucket_at_the_final_step_bit_exact(
    bucket_nodes: Nodes, moto: MotoServer, tmp_path: Path
) -> None:
    """Both nodes' disks wiped after a stop (two new VMs): both download the final step from
    the bucket, every rank resumes at the step after it, and the result is bit-exact."""
    a, b = bucket_nodes.nodes
    remote = RemoteStore(moto.url("nodes"), moto.options)
    bucket_nodes.start()
    bucket_nodes.wait_connected()
    a.signal(signal.SIGTERM)
    assert [node.wait() for node in (a, b)] == [0, 0]
    stops = {row["rank"]: row["step"] for row in bucket_nodes.records("stop")}
    assert set(stops) == {0, 1} and len(set(stops.values())) == 1, stops
    final = stops[0]
    whole = remote.manifest(final)
    assert (list(whole.ranks or ()), whole.world_size) == ([0, 1], 2)

    for node in (a, b):
        shutil.rmtree(node.checkpoint_dir)
    steps = final + 20
    bucket_nodes.start("--steps", str(steps), "--sleep", "0")
    assert [node.wait() for node in (a, b)] == [0, 0]
    assert [node.events("remote.downloaded")[0]["step"] for node in (a, b)] == [final, final]
    assert [node.records("start")[1]["resume_step"] for node in (a, b)] == [final, final]
    done = {row["rank"]: row["digest"] for row in (node.records("done")[-1] for node in (a, b))}
    assert done == reference_digests(tmp_path / "reference", steps)
