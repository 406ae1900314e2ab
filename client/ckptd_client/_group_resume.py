"""Where the ranks of several nodes resume: one step, complete for the whole job, on every rank.

Each node's daemon offers the newest checkpoint of its own checkpoint directory, verified
in full. With a directory per node, a node may lack a step another has (a crash between
two nodes' commits), and torchrun may hand a rank to another node after a relaunch, so a
node's directory may not hold the part of the rank it runs now. So every rank says, in
torchrun's rendezvous store, the steps whose manifest holds its part here (at most the
daemon's offer); every rank then takes the same one: the newest step every rank has.
A node's part of a sharded (DCP) step does not count: loading it reads every rank's shards.
Every rank verifies its part of that step in full (the daemon verified only its offer); a
part that fails takes the step out, and the ranks agree again on what is left.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._group import Group
from ._group_store import open_store
from .manifest import Manifest, ManifestError, read_manifest
from .store import Checkpoint, inspect, scan

_WAIT = 0.01
WARN_AFTER = 30.0


@dataclass(frozen=True)
class Incomplete:
    """The newest step some rank has but not every rank: ``missing`` ranks lack their part."""

    step: int
    missing: list[int]
    resume_step: int | None

    def message(self) -> dict[str, Any]:
        return {"step": self.step, "missing": self.missing, "resume_step": self.resume_step}


def agree(
    group: Group, checkpoint_dir: Path, offered: Checkpoint | None
) -> tuple[Checkpoint | None, Incomplete | None]:
    """The checkpoint every rank resumes from, and what was passed over on the way."""
    try:
        store = open_store(group, _warn, load_torch=True)
    except ImportError:
        store = None
    if store is None:
        raise RuntimeError(
            "ckptd_client: the ranks of several nodes agree on their resume step through "
            "torchrun's rendezvous store (MASTER_ADDR, MASTER_PORT), which could not be reached"
        )
    steps, here = usable_steps(checkpoint_dir, offered, group.rank)
    first: list[set[int]] | None = None
    anywhere: set[int] = set()
    attempt = 0
    while True:
        said = exchange(store, f"resume/{attempt}", group, json.dumps([steps, here]))
        lists = [json.loads(value) for value in said]
        have = [set(mine) for mine, _ in lists]
        if first is None:
            first, anywhere = have, {step for _, node in lists for step in node}
        agreed = max(set.intersection(*have), default=None)
        chosen = checked(checkpoint_dir, agreed, offered)
        good = chosen is not None or agreed is None
        verdicts = exchange(store, f"verified/{attempt}", group, "1" if good else "0")
        if all(verdict == b"1" for verdict in verdicts):
            return chosen, passed_over(first, anywhere, agreed)
        steps = [step for step in steps if step != agreed]
        attempt += 1


def usable_steps(
    checkpoint_dir: Path, offered: Checkpoint | None, rank: int
) -> tuple[list[int], list[int]]:
    """Steps here (none above ``offered``, newest first) whose manifest holds ``rank``'s part,
    and every step here, whoever's part it holds."""
    if offered is None:
        return [], []
    mine, here = [], []
    for candidate in reversed(scan(checkpoint_dir)):
        if not candidate.valid or candidate.step > offered.step:
            continue
        here.append(candidate.step)
        try:
            manifest = read_manifest(candidate.path)
        except (OSError, ManifestError):
            continue
        if manifest.holds(rank) and (manifest.complete or not sharded(manifest)):
            mine.append(candidate.step)
    return mine, here


def sharded(manifest: Manifest) -> bool:
    """A DCP checkpoint: loading it reads every rank's shards, so one node's part is no use."""
    return any(entry.path.endswith(".distcp") for entry in manifest.files)


def passed_over(have: list[set[int]], anywhere: set[int], agreed: int | None) -> Incomplete | None:
    """The newest step above ``agreed`` that some node has: which ranks lack their part."""
    above = {step for step in anywhere if agreed is None or step > agreed}
    if not above:
        return None
    step = max(above)
    return Incomplete(step, [rank for rank, steps in enumerate(have) if step not in steps], agreed)


def checked(
    checkpoint_dir: Path, step: int | None, offered: Checkpoint | None
) -> Checkpoint | None:
    """The checkpoint of ``step`` here, verified in full (the daemon's offer already is)."""
    if step is None:
        return None
    if offered is not None and offered.step == step:
        return offered
    found = inspect(checkpoint_dir / f"step-{step:08d}", full=True)
    return found if found.valid else None


def exchange(store: Any, key: str, group: Group, value: str) -> list[bytes]:
    """Say ``value`` under ``key``; every rank's value, once all have said theirs."""
    store.set(f"{key}/{group.rank}", value)
    keys = [f"{key}/{rank}" for rank in range(group.world_size)]
    began = time.monotonic()
    warned = False
    while not store.check(keys):
        if not warned and time.monotonic() - began > WARN_AFTER:
            warned = True
            _warn("waits for every rank's resume step; does every rank call connect()?")
        time.sleep(_WAIT)
    return [bytes(value) for value in store.multi_get(keys)]


def _warn(message: str) -> None:
    print(f"ckptd_client: {message}", file=sys.stderr, flush=True)
