"""Ranks on several nodes agree through a real TCPStore: who commits, and where all resume."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ckptd_client import _group_parts, _group_resume, _group_store, protocol
from ckptd_client._group import Group
from ckptd_client._group_store import NEVER, StoreRounds
from ckptd_client.manifest import commit, new_temp_dir
from ckptd_client.store import inspect

from conftest import wait_for

torch = pytest.importorskip("torch", reason="the rendezvous store is torch.distributed's")


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """torchrun's rendezvous store on loopback, named by MASTER_ADDR/MASTER_PORT."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = torch.distributed.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    yield server
    del server


def rank(index: int, world: int = 2) -> Group:
    return Group(rank=index, world_size=world, local_rank=0, local_world_size=1, run_id="r")


def on_every_rank(world: int, work: Callable[[int], Any]) -> list[Any]:
    """``work(rank)`` on one thread per rank (they block on each other), results by rank."""
    results: list[Any] = [None] * world
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = work(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    return results


def part(directory: Path, step: int, ranks: list[int]) -> Path:
    temp = new_temp_dir(directory, step)
    for index in ranks:
        (temp / f"rank-{index}.pt").write_bytes(f"{step}/{index}".encode())
    return commit(temp, step, ranks=ranks, world_size=2)[0]


def test_ranks_resume_at_the_newest_step_every_rank_has_and_say_what_was_missing(
    store: Any, tmp_path: Path
) -> None:
    """Node 1 lacks step 20, node 0's step 10 is corrupt: every rank resumes at 5, and the
    incomplete step is step 20 with rank 1's part missing."""
    dirs = [tmp_path / "a", tmp_path / "b"]
    for index, directory in enumerate(dirs):
        for step in (5, 10) if index else (5, 10, 20):
            part(directory, step, [index])
    (dirs[0] / "step-00000010" / "rank-0.pt").write_bytes(b"10/X")  # same size, other bytes
    offered = [inspect(dirs[0] / "step-00000020"), inspect(dirs[1] / "step-00000010")]

    chosen = on_every_rank(2, lambda r: _group_resume.agree(rank(r), dirs[r], offered[r]))
    assert [c.path for c, _ in chosen] == [d / "step-00000005" for d in dirs]
    incomplete = chosen[0][1]
    assert (incomplete.step, incomplete.missing, incomplete.resume_step) == (20, [1], 5)


def test_ranks_that_moved_nodes_find_no_part_and_start_fresh(store: Any, tmp_path: Path) -> None:
    """Each node holds the other rank's parts: no step is complete, every rank starts fresh."""
    dirs = [tmp_path / "a", tmp_path / "b"]
    for index, directory in enumerate(dirs):
        part(directory, 7, [1 - index])
    offered = [inspect(d / "step-00000007") for d in dirs]
    chosen = on_every_rank(2, lambda r: _group_resume.agree(rank(r), dirs[r], offered[r]))
    assert [c for c, _ in chosen] == [None, None]
    assert (chosen[0][1].step, chosen[0][1].missing) == (7, [0, 1])


def test_the_lowest_node_of_a_shared_directory_commits_and_own_directories_each_commit(
    store: Any, tmp_path: Path
) -> None:
    """Nodes 0 and 2 share a directory (0 commits it, with ranks 0 and 2), node 1 has its own."""
    shared, own = tmp_path / "shared", tmp_path / "own"
    for directory in (shared, own):
        directory.mkdir()
    where = [shared, own, shared]

    def decide(r: int) -> _group_parts.Plan:
        directory = _group_parts.directory_id(where[r])
        return _group_parts.plan(store, rank(r, 3), 4, directory, lambda: False)

    plans = on_every_rank(3, decide)
    assert [(p.commits, p.committer, p.ranks) for p in plans] == [
        (True, 0, [0, 2]),
        (True, 1, [1]),
        (False, 0, [0, 2]),
    ]
    _group_parts.announce(store, plans[0].key, "OSError: disk full")
    with pytest.raises(_group_parts.PartsFailed, match=r"node 0 could not commit.*disk full"):
        _group_parts.hear(store, plans[2], 4, lambda: False)


def test_a_nodes_part_of_a_sharded_checkpoint_is_no_resume_point(tmp_path: Path) -> None:
    """DCP shards: a node's own part does not count (a load reads every shard); a whole one does."""
    temp = new_temp_dir(tmp_path, 4)
    (temp / "__0_0.distcp").write_bytes(b"shard")
    commit(temp, 4, ranks=[0], world_size=2)
    temp = new_temp_dir(tmp_path, 3)
    for name in (".metadata", "__0_0.distcp", "__1_0.distcp"):
        (temp / name).write_bytes(b"x")
    commit(temp, 3, ranks=[0, 1], world_size=2)
    offered = inspect(tmp_path / "step-00000004")
    assert _group_resume.usable_steps(tmp_path, offered, 0) == ([3], [4, 3])


def test_a_round_some_rank_will_never_answer_holds_nobody(store: Any, tmp_path: Path) -> None:
    """Rank 1 has closed its client (its loop is over; its process may be gone, and its
    watcher with it) when rank 0's daemon asks for a checkpoint: the round is agreed at
    NEVER at once, so rank 0 is not held at its last step (nor torchrun's exit barrier)."""
    sent: list[tuple[str, dict[str, Any]]] = []
    dirs = [tmp_path / "a", tmp_path / "b"]
    ranks = [
        StoreRounds(rank(r), lambda kind, **fields: sent.append((kind, fields)), lambda: 5,
                    checkpoint_dir=dirs[r])
        for r in (0, 1)
    ]  # fmt: skip
    ranks[1].close()  # never polled: no watcher, as when its process has exited
    first = ranks[0]
    try:
        first.on_request("r1", final=False, save=True, joins=None, memory_dir=None)
        first.poll()  # starts the watcher, as training's next call would
        wait_for(lambda: first._entries, "rank 0's watcher took the request")
        answer: list[tuple[bool, bool]] = []
        waiting = threading.Thread(target=lambda: answer.append(first.due(6)))
        waiting.start()
        waiting.join(20)
        assert answer == [(False, False)], "rank 0 was held by a round rank 1 cannot join"
        assert [entry.agreed for entry in first._entries.values()] == [NEVER]
    finally:
        first.close()
        # A closed client's watcher ends at the next request (the store has no "any key" wait).
        run = torch.distributed.PrefixStore("ckptd/r/0/", store)  # as open_store names it
        run.set("request/2", '{"id": "r2", "final": false, "save": true}')
        wait_for(lambda: not first._watcher or not first._watcher.is_alive(), "watcher ended")


def test_a_node_that_cannot_look_at_its_ram_saves_its_part_to_disk_and_nobody_waits(
    store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node 0's LOCAL_RANK 0 cannot read its RAM directory when a memory round opens: node 0's
    part goes to its checkpoint directory with the reason, node 1's to its RAM, and the round
    is agreed on both (before, the watcher died there and every rank waited for ever)."""
    rams = [tmp_path / "ram0", tmp_path / "ram1"]

    def newest_size(path: Path) -> int:
        if path == rams[0]:
            raise PermissionError(13, "Permission denied", str(path))
        return 0

    monkeypatch.setattr(_group_store, "newest_size", newest_size)
    ranks = []
    for index in (0, 1):
        rams[index].mkdir()
        (tmp_path / f"ck{index}").mkdir()
        monkeypatch.setenv(protocol.ENV_MEMORY_DIR, str(rams[index]))  # as each node's ckptd
        ranks.append(
            StoreRounds(rank(index), lambda kind, **fields: None, lambda: 5,
                        checkpoint_dir=tmp_path / f"ck{index}")
        )  # fmt: skip
    try:
        ranks[0].on_request("m1", final=False, save=True, joins=None, memory_dir=str(rams[0]))
        for rounds in ranks:
            rounds.poll()
        wait_for(
            lambda: all(
                r._entries and all(e.agreed is not None for e in r._entries.values()) for r in ranks
            ),
            "the memory round agreed on both nodes",
        )
        first, second = (next(iter(r._entries.values())) for r in ranks)
        assert first.memory_dir is None and "Permission denied" in (first.fallback or "")
        assert (second.memory_dir, second.fallback) == (str(rams[1]), None)
    finally:
        for rounds in ranks:
            rounds.close()
        run = torch.distributed.PrefixStore("ckptd/r/0/", store)
        run.set("request/2", '{"id": "r2", "final": false, "save": true}')
        for rounds in ranks:
            wait_for(lambda r=rounds: not r._watcher or not r._watcher.is_alive(), "watcher ended")
