"""Going back to an older checkpoint: the newer ones are set aside, never deleted.

``checkpoint_dir/.branches/<UTC time>/step-N`` holds the checkpoints that were newer than the
one a run went back to (``ckptd run --resume-from``, ``ckptd rollback``). Nothing there is
resumed from automatically, pruned or cleaned: only ``step-N`` directories directly in the
checkpoint directory are checkpoints to those. A checkpoint in a branch is brought back by
naming it to ``--resume-from``. Renames only (atomic, same file system); no link followed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ckptd_client.manifest import fsync_dir
from ckptd_client.store import Checkpoint, is_checkpoint_name, scan

BRANCHES_DIR = ".branches"


class GoBackError(ValueError):
    """The checkpoint to go back to cannot be used; nothing was moved."""


@dataclass(frozen=True)
class SetAside:
    """Where the newer checkpoints went (``branch`` None when there were none)."""

    branch: Path | None = None
    moved: list[Path] = field(default_factory=list)


def target_of(checkpoint_dir: Path, value: str) -> Path:
    """``--resume-from`` / ``rollback``'s argument: a step number or a checkpoint's path."""
    text = value.strip()
    if text.isdigit():
        return checkpoint_dir / f"step-{int(text):08d}"
    path = Path(text).expanduser()
    return path if path.is_absolute() else Path.cwd() / path


def check_target(path: Path) -> None:
    """GoBackError unless ``path`` is a ``step-N`` directory (not a link) in its place."""
    if path.is_symlink() or not path.is_dir():
        raise GoBackError(f"no checkpoint at {path}")
    if not is_checkpoint_name(path.name):
        raise GoBackError(f"{path} is not a checkpoint directory (step-NNNNNNNN)")


def set_aside_newer(
    checkpoint_dir: Path, step: int, stamp: str | None = None, before: float | None = None
) -> SetAside:
    """Move every ``step-N`` with N above ``step`` into a new ``.branches/<stamp>/`` (default:
    the UTC time; a suffix when that exists). ``before`` (wall clock): only those committed
    earlier (a manifest without a time counts as earlier)."""
    newer = [
        c.path
        for c in scan(checkpoint_dir)
        if (c.step > step or _named_step(c.path.name) > step)
        and (before is None or c.time is None or c.time < before)
    ]
    if not newer:
        return SetAside()
    stamp = stamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    branch = checkpoint_dir / BRANCHES_DIR / stamp
    suffix = 1
    while branch.exists():
        suffix += 1
        branch = checkpoint_dir / BRANCHES_DIR / f"{stamp}-{suffix}"
    branch.mkdir(parents=True)
    moved = []
    for path in sorted(newer):
        os.rename(path, branch / path.name)
        moved.append(branch / path.name)
    fsync_dir(checkpoint_dir)
    return SetAside(branch, moved)


def bring_back(path: Path, checkpoint_dir: Path) -> Path:
    """A checkpoint in a branch moves back into ``checkpoint_dir``; others stay where they are."""
    branches = checkpoint_dir / BRANCHES_DIR
    if path.parent.parent != branches:
        return path
    home = checkpoint_dir / path.name
    if home.exists():
        raise GoBackError(f"{home} exists: cannot bring {path} back over it")
    os.rename(path, home)
    fsync_dir(checkpoint_dir)
    return home


def branch_checkpoints(checkpoint_dir: Path, *, full: bool = False) -> list[tuple[str, Checkpoint]]:
    """``(branch name, checkpoint)`` for every checkpoint set aside, oldest branch first."""
    root = checkpoint_dir / BRANCHES_DIR
    try:
        branches = sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []
    return [(name, c) for name in branches for c in scan(root / name, full=full)]


def _named_step(name: str) -> int:
    digits = name.removeprefix("step-")
    return int(digits) if digits.isdigit() else -1
