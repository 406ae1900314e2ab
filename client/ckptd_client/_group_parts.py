"""The parts of one group save on several nodes, and who commits each checkpoint directory.

Every node's ranks write their part of step N into ``.tmp-step-N-group-<run>`` of their own
checkpoint directory. Nodes may share that directory (NFS, Lustre: the usual SLURM set-up)
or keep their own. Once every node has written, each node's committer says in the
rendezvous store which directory it wrote into (:func:`directory_id`: a random id kept in the
directory, so the same directory mounted at different paths is still one) and which ranks
it runs. The lowest node of each directory commits it, recording every rank written
there; the other nodes of that directory wait for the word and report the same commit.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._group import Group

DIRECTORY_ID = ".ckptd-directory-id"
_WAIT = 0.005


class PartsFailed(RuntimeError):
    """Another node failed, or the store did: this node's part is not committed."""


def directory_id(checkpoint_dir: Path) -> str:
    """The id of ``checkpoint_dir``, made by the first node to ask (an exclusive create)."""
    path = checkpoint_dir / DIRECTORY_ID
    deadline = time.monotonic() + 5.0
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            text = _read(path)
            if text or time.monotonic() > deadline:
                return text or f"unreadable-{secrets.token_hex(8)}"
            time.sleep(_WAIT)  # its creator is writing it now
            continue
        token = secrets.token_hex(16)
        try:
            os.write(fd, token.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return token


def node_ranks(group: Group) -> list[int]:
    """The global ranks torchrun runs on this node (it numbers each node's ranks in a row)."""
    first = group.rank - group.local_rank
    return list(range(first, first + group.local_world_size))


def node_index(group: Group) -> int:
    return group.rank // max(1, group.local_world_size)


def node_count(group: Group) -> int:
    return max(1, group.world_size // max(1, group.local_world_size))


@dataclass(frozen=True)
class Plan:
    """What this node's committer does with its directory of one step."""

    commits: bool  # this node commits the directory; else ``committer`` does
    committer: int
    ranks: list[int]  # every rank whose part is in the directory
    key: str  # where the committer says how it went


def plan(store: Any, group: Group, step: int, directory: str, stop: Any) -> Plan:
    """Publish this node's part of ``step``, wait for every node's, decide who commits."""
    me = node_index(group)
    store.set(f"part/{step}/{me}", json.dumps({"dir": directory, "ranks": node_ranks(group)}))
    keys = [f"part/{step}/{node}" for node in range(node_count(group))]
    wait(store, keys, step, stop)
    parts = [json.loads(value) for value in store.multi_get(keys)]
    sharing = [node for node, part in enumerate(parts) if part["dir"] == directory]
    ranks = sorted(rank for node in sharing for rank in parts[node]["ranks"])
    return Plan(sharing[0] == me, sharing[0], ranks, f"committed/{step}/{directory}")


def announce(store: Any, key: str, error: str | None) -> None:
    """The committer's word to the other nodes of its directory: "" when committed."""
    store.set(key, "" if error is None else f"!{error}")


def hear(store: Any, plan: Plan, step: int, stop: Any) -> None:
    """Wait for the committer of this node's directory; raise PartsFailed when it failed."""
    wait(store, [plan.key], step, stop)
    word = bytes(store.get(plan.key)).decode(errors="replace")
    if word:
        raise PartsFailed(f"node {plan.committer} could not commit the directory: {word[1:]}")


def wait(store: Any, keys: list[str], step: int, stop: Any) -> None:
    """Until every key is set; PartsFailed when a node aborted ``step`` or ``stop()`` is true."""
    while not store.check(keys):
        if store.check([f"aborted/{step}"]):
            raise PartsFailed(bytes(store.get(f"aborted/{step}")).decode(errors="replace"))
        if stop():
            raise PartsFailed("the client was closed")
        time.sleep(_WAIT)


def _read(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return ""
    try:
        return os.read(fd, 256).decode(errors="replace").strip()
    finally:
        os.close(fd)
