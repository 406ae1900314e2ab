"""Reading a checkpoint directory: listing, and the newest checkpoint that verifies."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .manifest import NAME_PREFIX, TMP_PREFIX, verify

_CHECKPOINT_NAME = re.compile(rf"^{NAME_PREFIX}(\d{{8,}})$")


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint directory as found on disk.

    ``valid`` is False for a directory without a manifest or whose files do not
    match it; ``reason`` then says why. ``step`` comes from the manifest, or from
    the directory name (``step-N``) when the manifest is unreadable; it is -1 for
    an invalid directory where neither tells, which :func:`scan` never lists.
    """

    path: Path
    step: int
    time: float | None = None
    bytes: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    valid: bool = True
    reason: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "step": self.step,
            "time": self.time,
            "bytes": self.bytes,
            "metrics": self.metrics,
            "valid": self.valid,
            "reason": self.reason,
        }


def is_checkpoint_name(name: str) -> bool:
    """``step-NNNNNNNN``: the only directories that are checkpoints (a copy such as
    ``step-00000187.bak`` or ``keep-me`` is the user's, never listed, resumed or pruned)."""
    return _CHECKPOINT_NAME.match(name) is not None


def scan(checkpoint_dir: Path, *, full: bool = False) -> list[Checkpoint]:
    """Every ``step-N`` directory, oldest step first; nothing else in the directory counts.

    Without ``full`` only manifests and file sizes are checked (cheap); with it,
    every file's hash too.
    """
    found: list[Checkpoint] = []
    try:
        entries = list(os.scandir(checkpoint_dir))
    except (FileNotFoundError, NotADirectoryError):
        return found
    for entry in entries:
        if not is_checkpoint_name(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        found.append(inspect(Path(entry.path), full=full))
    found.sort(key=lambda c: (c.step, c.name))
    return found


def inspect(path: Path, *, full: bool = True) -> Checkpoint:
    """Describe one directory, verifying it against its manifest."""
    result = verify(path, full=full)
    manifest = result.manifest
    if manifest is None:
        return Checkpoint(
            path=path, step=_step_from_name(path.name), valid=False, reason=result.reason
        )
    named = _step_from_name(path.name)
    if is_checkpoint_name(path.name) and named != manifest.step:
        return Checkpoint(
            path=path,
            step=named,
            time=manifest.time,
            valid=False,
            reason=f"named step {named} but its manifest says step {manifest.step}",
        )
    return Checkpoint(
        path=path,
        step=manifest.step,
        time=manifest.time,
        bytes=manifest.size,
        metrics=dict(manifest.metrics),
        valid=result.ok,
        reason=result.reason,
    )


def newest_valid(
    checkpoint_dir: Path, *, rejected: list[Checkpoint] | None = None
) -> Checkpoint | None:
    """The highest-step checkpoint whose manifest and every file's hash verify.

    Candidates are fully verified newest first; each one that fails is appended
    to ``rejected`` (when given) and the next older one is tried.
    """
    for candidate in reversed(scan(checkpoint_dir, full=False)):
        checked = inspect(candidate.path, full=True) if candidate.valid else candidate
        if checked.valid:
            return checked
        if rejected is not None:
            rejected.append(checked)
    return None


def bytes_in_progress(checkpoint_dir: Path) -> int:
    """Bytes written so far into in-progress (``.tmp-``) checkpoint directories."""
    total = 0
    try:
        entries = [e for e in os.scandir(checkpoint_dir) if e.name.startswith(TMP_PREFIX)]
    except OSError:
        return 0
    for entry in entries:
        for root, _, files in os.walk(entry.path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except OSError:
                    pass
    return total


def _step_from_name(name: str) -> int:
    digits = name[len(NAME_PREFIX) :]
    return int(digits) if name.startswith(NAME_PREFIX) and digits.isdigit() else -1
