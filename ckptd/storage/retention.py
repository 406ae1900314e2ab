"""Which checkpoints to delete after a commit. ``plan`` is pure; ``prune`` applies it.

Only ckptd's own ``step-NNNNNNNN`` directories are ever candidates (``scan`` lists
nothing else). A doomed checkpoint is first renamed to ``.pruned-<name>-<id>`` (one
atomic step, after which it is no checkpoint at all) and then removed, so a crash in
the middle never leaves a half-deleted ``step-N`` behind; leftovers of such a crash
are swept at the next launch.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ckptd_client.store import Checkpoint, scan

PRUNED_PREFIX = ".pruned-"


@dataclass(frozen=True)
class RetentionRules:
    keep_last: int = 3  # 0 keeps every valid checkpoint
    keep_best: int = 0
    best_metric: str | None = None
    best_mode: str = "min"
    keep_every: float | None = None


def plan(
    checkpoints: Iterable[Checkpoint], rules: RetentionRules, protect: Iterable[Path] = ()
) -> list[Checkpoint]:
    """The checkpoints to delete.

    Never the newest valid one, nor any in ``protect`` (the one the job resumed
    from, the one just committed, the newest fully verified one). Invalid
    directories are deleted only when they are older than the newest valid
    checkpoint; anything that is not a ``step-N`` directory never.
    """
    found = sorted((c for c in checkpoints if c.step >= 0), key=lambda c: c.step)
    valid = [c for c in found if c.valid]
    if not valid:
        return []
    keep = {valid[-1].path, *protect}
    keep.update(c.path for c in (valid if rules.keep_last == 0 else valid[-rules.keep_last :]))
    keep.update(c.path for c in _best(valid, rules))
    keep.update(c.path for c in _one_per_interval(valid, rules.keep_every))
    newest_step = valid[-1].step
    doomed = [c for c in valid if c.path not in keep]
    doomed += [c for c in found if not c.valid and c.step < newest_step]
    return sorted(doomed, key=lambda c: c.step)


@dataclass(frozen=True)
class Pruned:
    """What one prune did: the checkpoints deleted, and the ones that could not be."""

    deleted: list[Checkpoint]
    failed: list[tuple[Checkpoint, str]]


def prune(checkpoint_dir: Path, rules: RetentionRules, protect: Iterable[Path] = ()) -> Pruned:
    """Delete what :func:`plan` says; report only the deletions that happened."""
    deleted: list[Checkpoint] = []
    failed: list[tuple[Checkpoint, str]] = []
    for checkpoint in plan(scan(checkpoint_dir, full=False), rules, protect):
        trash = checkpoint.path.with_name(
            f"{PRUNED_PREFIX}{checkpoint.name}-{secrets.token_hex(4)}"
        )
        try:
            os.rename(checkpoint.path, trash)
        except FileNotFoundError:
            continue  # gone already: another node's daemon pruned the shared directory
        except OSError as exc:
            failed.append((checkpoint, exc.strerror or str(exc)))
            continue
        deleted.append(checkpoint)
        shutil.rmtree(trash, ignore_errors=True)
    return Pruned(deleted, failed)


def sweep_pruned(checkpoint_dir: Path) -> list[Path]:
    """Remove what an interrupted prune left (``.pruned-`` directories); return them."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(checkpoint_dir))
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(PRUNED_PREFIX) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def _best(valid: list[Checkpoint], rules: RetentionRules) -> list[Checkpoint]:
    if not rules.keep_best or not rules.best_metric:
        return []
    scored = []
    for checkpoint in valid:
        value = checkpoint.metrics.get(rules.best_metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            scored.append(
                (value if rules.best_mode == "min" else -value, -checkpoint.step, checkpoint)
            )
    scored.sort(key=lambda item: item[:2])
    return [checkpoint for *_, checkpoint in scored[: rules.keep_best]]


def _one_per_interval(valid: list[Checkpoint], interval: float | None) -> list[Checkpoint]:
    if not interval:
        return []
    first_in_bucket: dict[int, Checkpoint] = {}
    for checkpoint in valid:
        if checkpoint.time is not None:
            first_in_bucket.setdefault(int(checkpoint.time // interval), checkpoint)
    return list(first_in_bucket.values())
