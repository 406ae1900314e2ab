"""The memory tier's directory in RAM: where it is, what it keeps, whether a save still fits.

:func:`find_place` runs once at start (on the main thread) and decides where memory-tier
checkpoints live: the ``memory_dir`` the user chose, whatever filesystem it is on (a
disk-backed one is used as told, and reported), or else a private per-job directory on the
first RAM-backed filesystem found (``/dev/shm``, then ``$XDG_RUNTIME_DIR``). ckptd never
picks a disk-backed directory by itself: without a RAM filesystem and without
``memory_dir`` the memory tier is a start error. The per-job directory's name depends only
on the job's name and its ``checkpoint_dir``, so that the next ``ckptd run`` of the same job
(after a daemon crash) finds the same copies.

The rest (:func:`prune`, :func:`clear`) runs on the background worker; whether a save still
fits in RAM is :func:`ckptd_client.ram.room_for`.
Nothing here follows a symlink: a directory in the way that is a link, or not ours, is an
error.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ckptd_client._group_parts import DIRECTORY_ID
from ckptd_client._mapped import RAM_FILESYSTEMS
from ckptd_client._spare import SPARE_DIR, spare_name
from ckptd_client.manifest import (
    MANIFEST_NAME,
    TMP_PREFIX,
    ManifestError,
    checkpoint_name,
    read_manifest_bytes,
    remove_temporaries,
)
from ckptd_client.store import Checkpoint, inspect, is_checkpoint_name, scan

_ROOT_DIR = "ckptd-{uid}"  # below a world-writable RAM root: one private directory per user


class MemoryPlaceError(ValueError):
    """The memory tier cannot have a directory; the message names ``memory_dir``."""


@dataclass(frozen=True)
class MemoryPlace:
    """Where the memory tier of one job lives."""

    path: Path
    filesystem: str  # the type of the mount it is on ("tmpfs", "ext4", "?" when unknown)
    explicit: bool  # memory_dir was given: ckptd used it as told

    @property
    def in_ram(self) -> bool:
        return self.filesystem in RAM_FILESYSTEMS


def default_roots() -> list[Path]:
    roots = [Path("/dev/shm")]
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        roots.append(Path(runtime))
    return roots


def find_place(
    name: str,
    checkpoint_dir: Path,
    explicit: Path | None,
    roots: Iterable[Path] | None = None,
) -> MemoryPlace:
    """The memory tier's directory, created private (0700) and checked to be ours.

    Raises MemoryPlaceError when the chosen directory cannot be made or used, or when no
    RAM-backed filesystem is there to choose one on.
    """
    if explicit is not None:
        _private_dir(explicit, parents=True)
        return MemoryPlace(explicit, filesystem_of(explicit), explicit=True)
    searched = list(roots if roots is not None else default_roots())
    path = expected_path(name, checkpoint_dir, None, searched)
    if path is not None:
        try:
            _private_dir(path.parent)
            _private_dir(path)
        except MemoryPlaceError:  # the per-user directory went with another job's clear()
            _private_dir(path.parent)
            _private_dir(path)
        return MemoryPlace(path, filesystem_of(path), explicit=False)
    where = ", ".join(str(root) for root in searched) or "nowhere"
    raise MemoryPlaceError(
        f"memory_dir: no RAM-backed filesystem (tmpfs) found ({where}); "
        "set memory_dir to the directory the memory tier should use"
    )


def expected_path(
    name: str,
    checkpoint_dir: Path,
    explicit: Path | None,
    roots: Iterable[Path] | None = None,
) -> Path | None:
    """Where :func:`find_place` puts the memory tier of this job (nothing is created); None
    when no RAM-backed filesystem is there. ``ckptd list`` reads RAM from it."""
    if explicit is not None:
        return explicit
    for root in roots if roots is not None else default_roots():
        if root.is_dir() and filesystem_of(root) in RAM_FILESYSTEMS:
            tag = hashlib.sha256(str(checkpoint_dir).encode()).hexdigest()[:8]
            return root / _ROOT_DIR.format(uid=os.geteuid()) / f"{name}-{tag}"
    return None


def filesystem_of(path: Path) -> str:
    """The filesystem type of the mount ``path`` is on (from /proc/self/mountinfo), or "?"."""
    try:
        target = os.path.realpath(path)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return "?"
    best, kind = "", "?"
    for line in lines:
        fields = line.split(" ")
        if "-" not in fields:
            continue
        mount_point = _unescape(fields[4])
        fstype = fields[fields.index("-") + 1]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, kind = mount_point, fstype
    return kind


def _unescape(text: str) -> str:
    """mountinfo writes a space as \\040 (and tab, newline, backslash likewise)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        text = text.replace(code, char)
    return text


def _private_dir(path: Path, *, parents: bool = False) -> None:
    """Make ``path`` (0700) unless it exists; refuse a link, a non-directory, another owner."""
    try:
        if parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise MemoryPlaceError(f"memory_dir: cannot create {path}: {exc.strerror}") from None
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise MemoryPlaceError(f"memory_dir: {path} is not a directory (a link is not followed)")
    if info.st_uid != os.geteuid():
        raise MemoryPlaceError(f"memory_dir: {path} belongs to another user (uid {info.st_uid})")
    if info.st_mode & 0o022:
        raise MemoryPlaceError(f"memory_dir: {path} is writable by others; make it 0700")
    if not os.access(path, os.W_OK | os.X_OK):
        raise MemoryPlaceError(f"memory_dir: {path} is not writable")


def held(memory_dir: Path) -> list[Checkpoint]:
    """The memory tier's checkpoints, oldest step first (manifests and sizes checked only)."""
    return scan(memory_dir)


def prune(memory_dir: Path, keep: int, protect: Iterable[Path] = ()) -> list[Path]:
    """Keep the newest ``keep`` valid checkpoints (and ``protect``); remove the rest.

    Also removes ``step-N`` directories that do not verify and ``.tmp-`` directories whose
    writer is gone. Returns what was removed. The caller makes sure nothing newer than the
    newest on disk is pruned before it is persisted.
    """
    kept = set(protect)
    found = scan(memory_dir)
    valid = [c for c in found if c.valid]
    kept.update(c.path for c in valid[-keep:] if keep > 0)
    removed = [c.path for c in found if c.path not in kept]
    recycled = [c.path for c in valid if c.path not in kept][-1:]  # the newest of them
    for path in recycled:
        _recycle(memory_dir, path)
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    removed += remove_temporaries(memory_dir, only_dead_writers=True)
    return removed


def _recycle(memory_dir: Path, checkpoint: Path) -> None:
    """The files of ``checkpoint`` (about to be removed) become the spare pool, in place of
    the pool's files: a later RAM save writes over their pages (see ``ckptd_client.ram``)."""
    pool = memory_dir / SPARE_DIR
    shutil.rmtree(pool, ignore_errors=True)
    try:
        os.mkdir(pool, 0o700)
    except OSError:
        return
    for root, _, files in os.walk(checkpoint):  # never into a linked directory
        for name in files:
            source = os.path.join(root, name)
            relative = os.path.relpath(source, checkpoint).replace(os.sep, "/")
            if relative == MANIFEST_NAME or not stat.S_ISREG(os.lstat(source).st_mode):
                continue
            try:
                os.rename(source, pool / spare_name(relative))
            except OSError:
                return


def drop_newer(memory_dir: Path, step: int, before: float | None = None) -> list[Path]:
    """Remove the RAM checkpoints newer than ``step`` (the job went back to it; ``before``:
    only those committed earlier, wall clock); return them."""
    gone = [
        c.path
        for c in scan(memory_dir)
        if c.step > step and (before is None or c.time is None or c.time < before)
    ]
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
    return gone


def ram_copy_of(resume: Checkpoint, memory_dir: Path) -> Checkpoint | None:
    """The RAM checkpoint of ``resume``'s step when its manifest is byte for byte the one of
    ``resume`` and it verifies in full; else None."""
    copy = memory_dir / checkpoint_name(resume.step)
    if copy.is_symlink() or not copy.is_dir():
        return None
    try:
        if read_manifest_bytes(copy) != read_manifest_bytes(resume.path):
            return None
    except (OSError, ManifestError):
        return None
    checked = inspect(copy, full=True)
    return checked if checked.valid else None


def clear(place: MemoryPlace) -> None:
    """Nothing of the job left in RAM: its checkpoints, its temporaries, its own directory."""
    try:
        entries = list(os.scandir(place.path))
    except OSError:
        return
    for entry in entries:
        if entry.name == DIRECTORY_ID and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)  # the ranks of several nodes name the directory so
        if entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
            continue
        ours = entry.name.startswith(TMP_PREFIX) or entry.name == SPARE_DIR
        if is_checkpoint_name(entry.name) or ours:
            shutil.rmtree(entry.path, ignore_errors=True)
    if not place.explicit:  # its directory, then the per-user one when no other job uses it
        for directory in (place.path, place.path.parent):
            try:
                os.rmdir(directory)
            except OSError:
                return  # something of the user's (or another job) is in it: left alone
