"""A step of a multi-node job in the bucket: the parts merged into one manifest, one lease."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ckptd.storage.remote.lease import Fenced, Lease
from ckptd.storage.remote.listing import scan_remote
from ckptd.storage.remote.parts import merge, upload_part
from ckptd.storage.remote.store import RemoteStore, RemoteTimeout
from ckptd_client.manifest import (
    Lineage,
    Manifest,
    ManifestError,
    commit,
    new_temp_dir,
    read_manifest,
)


def part(directory: Path, step: int, ranks: list[int], world: int = 2) -> Path:
    temp = new_temp_dir(directory, step)
    for rank in ranks:
        (temp / f"rank-{rank}.pt").write_bytes(f"{step}/{rank}".encode())
    return commit(temp, step, {"loss": 0.5}, Lineage("job"), ranks, world)[0]


def test_the_parts_merge_once_every_rank_is_there_the_same_on_every_node(tmp_path: Path) -> None:
    """Two nodes' parts: one manifest of both, the same bytes whatever the order."""
    a = read_manifest(part(tmp_path / "a", 7, [0, 1], 4))
    b = read_manifest(part(tmp_path / "b", 7, [2, 3], 4))
    assert merge([a]) is None
    whole = merge([b, a])
    assert whole is not None and whole.to_json() == merge([a, b]).to_json()  # type: ignore[union-attr]
    assert (whole.ranks, whole.world_size, whole.complete) == ((0, 1, 2, 3), 4, True)
    assert [e.path for e in whole.files] == [f"rank-{r}.pt" for r in range(4)]
    with pytest.raises(ManifestError, match="same name"):
        merge([a, read_manifest(part(tmp_path / "c", 7, [1], 4)), b])  # rank 1 on two nodes
    with pytest.raises(ManifestError, match="world size"):
        merge([a, read_manifest(part(tmp_path / "d", 7, [2, 3], 8))])


def test_the_last_node_up_writes_the_manifest_through_a_file_url(tmp_path: Path) -> None:
    """Node a's part alone is no remote checkpoint; node b's completes it (file:// store)."""
    store = RemoteStore(f"file://{tmp_path / 'bucket'}")
    upload_part(store, part(tmp_path / "a", 3, [0]), 30.0)
    assert store.list() == []
    upload_part(store, part(tmp_path / "b", 3, [1]), 30.0)
    listed = store.list()
    assert [(c.step, c.valid) for c in listed] == [(3, True)]
    assert isinstance(store.manifest(3), Manifest) and store.manifest(3).ranks == (0, 1)
    got = store.download(3, tmp_path / "fresh")
    assert sorted(p.name for p in got.path.iterdir()) == ["ckptd.json", "rank-0.pt", "rank-1.pt"]


def test_the_nodes_of_one_job_share_the_lease_and_another_instance_fences_them(
    tmp_path: Path,
) -> None:
    """Same owner (node group), shared: one generation, no fencing; another group fences all."""
    store = RemoteStore(f"file://{tmp_path / 'bucket'}")
    nodes = [Lease(store, "nodes of rdzv:1", shared=True) for _ in range(2)]
    assert [lease.take() for lease in nodes] == [1, 1]
    for lease in nodes:
        lease.check()
    assert Lease(store, "nodes of rdzv:2", shared=True).take() == 2
    for lease in nodes:
        with pytest.raises(Fenced):
            lease.check()


def test_a_step_missing_a_nodes_part_is_listed_with_the_ranks_and_node_it_lacks(
    tmp_path: Path,
) -> None:
    """`ckptd list URL`: node 0's part alone is an invalid step naming ranks 2, 3 (node 1)."""
    url = f"file://{tmp_path / 'bucket'}"
    upload_part(RemoteStore(url), part(tmp_path / "a", 5, [0, 1], 4), 30.0)
    listed = scan_remote(url)
    assert [(c.step, c.valid) for c in listed] == [(5, False)]
    assert listed[0].reason == "incomplete: the parts of ranks 2, 3 (node 1) are missing"


def test_ckptd_list_of_a_nodes_directory_shows_the_ranks_each_step_holds(tmp_path: Path) -> None:
    """A node's own directory: RANKS says `0 of 2` for its part, `all 2` for a whole step."""
    part(tmp_path, 3, [0])
    part(tmp_path, 4, [0, 1])
    shown = subprocess.run(
        [sys.executable, "-m", "ckptd", "list", str(tmp_path)], capture_output=True, text=True
    )
    lines = shown.stdout.splitlines()
    assert "RANKS" in lines[0], shown
    assert "0 of 2" in lines[1] and "all 2" in lines[2], shown.stdout
    listed = json.loads(
        subprocess.run(
            [sys.executable, "-m", "ckptd", "list", str(tmp_path), "--json"],
            capture_output=True,
            check=True,
        ).stdout
    )
    assert listed[0]["part"] == {"ranks": [0], "world_size": 2, "complete": False, "missing": [1]}


def test_at_a_stop_a_part_counts_only_once_the_step_is_whole(tmp_path: Path) -> None:
    """A flush (``until`` set): node a's part waits for node b's, and names it at the deadline."""
    store = RemoteStore(f"file://{tmp_path / 'bucket'}")
    began = time.monotonic()
    with pytest.raises(RemoteTimeout, match=r"the parts of ranks 1 did not reach the bucket"):
        upload_part(store, part(tmp_path / "a", 8, [0]), 30.0, until=lambda: began + 0.5)
    assert store.list() == []
    upload_part(store, part(tmp_path / "b", 8, [1]), 30.0, until=lambda: time.monotonic() + 5)
    assert [c.step for c in store.list()] == [8]
