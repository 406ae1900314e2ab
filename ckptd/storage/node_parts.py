"""What a checkpoint directory holds of a multi-node job: whole-job steps and nodes' parts.

A manifest written by ranks of several nodes records the ``ranks`` whose parts it holds, of
``world_size``. A step is a checkpoint of the whole job when every rank's part is in one
place (a shared directory, or the bucket's manifest); a node's own directory otherwise
holds its ranks' part. ``ckptd list`` and ``ckptd status`` show both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ckptd_client.manifest import Manifest, ManifestError, read_manifest
from ckptd_client.store import Checkpoint, scan

__all__ = ["describe", "missing_nodes", "part_of", "summary"]


def part_of(checkpoint: Checkpoint) -> dict[str, Any] | None:
    """``{ranks, world_size, complete, missing}`` of a valid checkpoint of ranks; else None."""
    if not checkpoint.valid:
        return None
    try:
        return describe(read_manifest(checkpoint.path))
    except (OSError, ManifestError):
        return None


def describe(manifest: Manifest) -> dict[str, Any] | None:
    if manifest.ranks is None or manifest.world_size is None:
        return None
    held = set(manifest.ranks)
    missing = [rank for rank in range(manifest.world_size) if rank not in held]
    return {
        "ranks": sorted(held),
        "world_size": manifest.world_size,
        "complete": not missing,
        "missing": missing,
    }


def missing_nodes(present: list[list[int]], missing: list[int]) -> list[int]:
    """The nodes whose parts are missing, when every node runs as many ranks as each part
    present holds (torchrun numbers a node's ranks in a row); [] when that cannot be told."""
    sizes = {len(ranks) for ranks in present if ranks}
    if len(sizes) != 1:
        return []
    per_node = sizes.pop()
    return sorted({rank // per_node for rank in missing})


def summary(checkpoint_dir: Path) -> dict[str, Any] | None:
    """The newest step here and what it holds, and the newest whole-job step here; None when
    no checkpoint here records ranks (not a multi-node job, or none yet)."""
    newest: tuple[Checkpoint, dict[str, Any]] | None = None
    whole: int | None = None
    for checkpoint in reversed(scan(checkpoint_dir)):
        part = part_of(checkpoint)
        if part is None:
            continue
        newest = newest or (checkpoint, part)
        if part["complete"]:
            whole = checkpoint.step
            break
    if newest is None:
        return None
    checkpoint, part = newest
    return {"newest_step": checkpoint.step, **part, "newest_whole_step": whole}
