"""The checkpoint-directory lock: one job, or the nodes of one multi-node job, per directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ckptd.run_dir import RunDirError
from ckptd.storage import retention
from ckptd.storage.job_identity import multi_node, node_group
from ckptd.storage.lock import CheckpointDirLock
from ckptd_client.manifest import commit, new_temp_dir


def test_a_second_job_is_refused_with_the_holders_run_dir(tmp_path: Path) -> None:
    """A job on one node holds the directory alone: any other daemon gets one line naming it."""
    first = CheckpointDirLock(tmp_path)
    first.acquire("train", tmp_path / "run-a")
    try:
        for group in (None, "rdzv:x"):
            with pytest.raises(RunDirError) as refused:
                CheckpointDirLock(tmp_path).acquire("train", tmp_path / "run-b", group)
            message = str(refused.value)
            assert "is in use by job 'train'" in message and str(tmp_path / "run-a") in message
    finally:
        first.release()
    CheckpointDirLock(tmp_path).acquire("other", tmp_path / "run-b")  # free once released


def test_the_nodes_of_one_job_share_it_and_every_other_job_is_refused(tmp_path: Path) -> None:
    """Same name and node group: shared; another group, name or a one-node job: refused."""
    nodes = [CheckpointDirLock(tmp_path) for _ in range(3)]
    for index, lock in enumerate(nodes):
        lock.acquire("train", tmp_path / f"run-{index}", "rdzv:42")
    assert nodes[1].shared_with is not None and nodes[1].shared_with["pid"] is not None
    for job, group in (("train", "rdzv:43"), ("other", "rdzv:42"), ("train", None)):
        with pytest.raises(RunDirError, match=r"in use by job 'train', nodes rdzv:42"):
            CheckpointDirLock(tmp_path).acquire(job, tmp_path / "run-x", group, "; HINT")
    nodes[0].release()  # the first node's record stays for the others
    with pytest.raises(RunDirError, match=r"HINT$"):
        CheckpointDirLock(tmp_path).acquire("train", tmp_path / "run-x", None, "; HINT")
    late = CheckpointDirLock(tmp_path)
    late.acquire("train", tmp_path / "run-3", "rdzv:42")
    late.release()
    for lock in nodes[1:]:
        lock.release()
    CheckpointDirLock(tmp_path).acquire("other", tmp_path / "run-y")


def config(*command: str, job_id: str | None = None) -> tuple[str | None, list[str]]:
    return job_id, list(command)


@pytest.mark.parametrize(
    ("command", "group"),
    [
        (["torchrun", "--nnodes", "2", "--rdzv-id", "77", "train.py"], "rdzv:77"),
        (["torchrun", "--nnodes=1:4", "--rdzv_id=abc", "train.py", "--rdzv-id", "x"], "rdzv:abc"),
        (["python", "-m", "torch.distributed.run", "--nnodes", "2", "--rdzv-id=9", "t"], "rdzv:9"),
        (["torchrun", "--nnodes", "2", "train.py"], None),  # torchrun's default id "none"
        (["torchrun", "--nnodes", "1", "--rdzv-id", "77", "train.py"], None),
        (["torchrun", "--standalone", "--nproc-per-node", "8", "train.py"], None),
        (["python", "train.py", "--nnodes", "2", "--rdzv-id", "5"], None),
    ],
)  # fmt: skip
def test_the_node_group_is_torchruns_rendezvous_id_on_several_nodes(
    command: list[str], group: str | None
) -> None:
    """Nodes of one job: torchrun's --rdzv-id when --nnodes may exceed 1 (script args ignored)."""
    assert node_group(*config(*command), env={}) == group


def test_an_explicit_job_id_wins_and_multi_node_without_an_id_is_told() -> None:
    """[job] job_id names the node group of any command; --nnodes 2 alone is multi-node."""
    assert node_group(*config("bash", "launch.sh", job_id="j1"), env={}) == "j1"
    assert multi_node(*config("torchrun", "--nnodes", "2", "train.py"), env={})
    assert not multi_node(*config("python", "train.py"), env={})
    assert node_group(*config("torchrun", "t.py"), env={"PET_NNODES": "2", "PET_RDZV_ID": "e"}) == (
        "rdzv:e"
    )


def test_two_nodes_pruning_one_shared_directory_do_not_report_each_others_deletions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint the other node's daemon pruned first is no failed deletion."""
    for step in (1, 2, 3):
        temp = new_temp_dir(tmp_path, step)
        (temp / "w.bin").write_bytes(b"x")
        commit(temp, step)
    seen = retention.scan(tmp_path)
    shutil.rmtree(tmp_path / "step-00000001")  # the other node got there first
    monkeypatch.setattr(retention, "scan", lambda directory, full=False: seen)
    pruned = retention.prune(tmp_path, retention.RetentionRules(keep_last=1))
    assert [c.step for c in pruned.deleted] == [2] and pruned.failed == []
