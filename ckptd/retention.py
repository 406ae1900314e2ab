"""Which checkpoints to delete after a commit. ``plan`` is pure; ``prune`` applies it."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ckptd_client.store import Checkpoint, scan


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
    from, the one just committed). Invalid directories are deleted only when they
    are older than the newest valid checkpoint; unrecognisable ones never.
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


def prune(
    checkpoint_dir: Path, rules: RetentionRules, protect: Iterable[Path] = ()
) -> list[Checkpoint]:
    """Delete what :func:`plan` says; return what was deleted."""
    doomed = plan(scan(checkpoint_dir, full=False), rules, protect)
    for checkpoint in doomed:
        shutil.rmtree(checkpoint.path, ignore_errors=True)
    return doomed


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
