"""Persisting a memory-tier checkpoint: its copy to ``checkpoint_dir``, verified and atomic.

Runs on the daemon's background worker, never on the loop and never in the trainer. The
copy is the client's commit protocol done by the daemon: every file read once (opened
below the source without following a link, component by component), hashed while it is
copied and compared with the manifest, fsynced; the manifest bytes as read are written
last; the directories fsynced; the ``.tmp-`` directory renamed to ``step-N``; the parent
fsynced. A source whose files do not match its manifest is not copied
(:class:`PersistError` with ``corrupt``) and the partial copy is removed. The daemon never
unpickles anything: bytes in, the same bytes out.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ckptd_client import _digest
from ckptd_client.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    checkpoint_name,
    fsync_dir,
    move_into_place,
    new_temp_dir,
    read_manifest_bytes,
    verify,
)
from ckptd_client.store import Checkpoint, scan

_CHUNK = 8 << 20
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class PersistError(RuntimeError):
    """A memory checkpoint was not persisted; nothing is left of the attempt on disk.

    ``corrupt``: the source itself is bad (it will never persist); otherwise the
    destination failed (a full or read-only disk) and a later attempt may work.
    """

    def __init__(self, message: str, *, corrupt: bool = False) -> None:
        super().__init__(message)
        self.corrupt = corrupt


@dataclass(frozen=True)
class Persisted:
    """A memory checkpoint now also on disk."""

    step: int
    source: Path
    path: Path
    bytes: int
    seconds: float
    copied: bool = True  # False: a valid checkpoint of that step was on disk already


@dataclass(frozen=True)
class Skipped:
    """A memory checkpoint that did not verify: never resumed from, removed from RAM."""

    path: Path
    step: int
    why: str


@dataclass
class Pickup:
    """What persisting the newest memory checkpoint newer than the disk's found and did."""

    persisted: Persisted | None = None
    skipped: list[Skipped] = field(default_factory=list)
    error: str | None = None  # the destination failed: the RAM copy is kept for a retry
    older: list[Persisted] = field(default_factory=list)  # with ``every_newer``, newest first


def persist(
    source: Path, checkpoint_dir: Path, mode: int | None = None, deadline: float | None = None
) -> Persisted:
    """Copy memory checkpoint ``source`` to ``checkpoint_dir/step-N``; raise PersistError.

    ``mode``: the mode of the new directory (its files: without the x bits); None keeps
    the umask's. The same checkpoint already on disk (its manifest byte for byte) is left
    as it is; another one of that step (a step the nodes passed over, saved again since)
    is replaced.
    ``deadline`` (monotonic): a copy still going then is given up (PersistError, not
    ``corrupt``: the RAM copy stays for a later run).
    """
    began = time.monotonic()
    try:
        raw = read_manifest_bytes(source)
        manifest = Manifest.from_json(raw)
    except (OSError, ManifestError) as exc:
        raise PersistError(f"{source}: {exc}", corrupt=True) from None
    checked = verify(source, full=False)  # files listed = files present, sizes, no links
    if not checked.ok:
        raise PersistError(f"{source}: {checked.reason}", corrupt=True)
    if not _digest.available(manifest.hash):
        raise PersistError(f"{source}: cannot check {manifest.hash} here", corrupt=True)
    final = checkpoint_dir / checkpoint_name(manifest.step)
    if os.path.lexists(final):
        if os.path.islink(final) or not os.path.isdir(final):
            raise PersistError(f"{final} exists and is not a checkpoint directory")
        if _same_manifest(final, raw) and verify(final, full=False).ok:
            return Persisted(manifest.step, source, final, manifest.size, 0.0, copied=False)
    try:
        temp = new_temp_dir(checkpoint_dir, manifest.step)
    except OSError as exc:
        raise PersistError(f"{checkpoint_dir}: {exc.strerror or exc}") from None
    try:
        if mode is not None:
            os.chmod(temp, mode)
        for entry in manifest.files:
            digest = _copy_file(source, temp, entry.path, manifest.hash, mode, deadline)
            if digest != entry.digest:
                why = f"{source}: {entry.path}: {manifest.hash} mismatch"
                raise PersistError(why, corrupt=True)
        _write_new(temp / MANIFEST_NAME, raw, mode)
        for directory in _directories(temp):
            fsync_dir(directory)
        move_into_place(temp, final)
    except PersistError:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        corrupt = exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR)  # the source changed
        raise PersistError(f"step {manifest.step}: {exc}", corrupt=corrupt) from None
    return Persisted(manifest.step, source, final, manifest.size, time.monotonic() - began)


def persist_newest(
    memory_dir: Path,
    checkpoint_dir: Path,
    mode: int | None = None,
    deadline: float | None = None,
    *,
    every_newer: bool = False,
) -> Pickup:
    """Persist the newest memory checkpoint newer than every valid one on disk.

    Newest first: one that does not verify is skipped (and removed from RAM: it can never
    be used) and the next older one tried, down to the newest on disk. A destination
    failure ends the attempt with ``error`` and leaves the RAM copies as they are.
    ``every_newer``: the older ones newer than the disk's go too (``older``): a node of
    several, whose newest part another node may lack, resumes from an older step.
    """
    on_disk = [c.step for c in scan(checkpoint_dir) if c.valid]
    floor = max(on_disk) if on_disk else -1
    pickup = Pickup()
    for candidate in reversed(scan(memory_dir)):
        if candidate.step <= floor:
            break
        if not candidate.valid:
            pickup.skipped.append(_discard(candidate, candidate.reason))
            continue
        try:
            done = persist(candidate.path, checkpoint_dir, mode, deadline)
        except PersistError as exc:
            if not exc.corrupt:
                pickup.error = str(exc)
                return pickup
            pickup.skipped.append(_discard(candidate, str(exc)))
            continue
        if pickup.persisted is None:
            pickup.persisted = done
        else:
            pickup.older.append(done)
        if not every_newer:
            break
    return pickup


def _same_manifest(path: Path, raw: bytes) -> bool:
    try:
        return read_manifest_bytes(path) == raw
    except (OSError, ManifestError):
        return False


def _discard(candidate: Checkpoint, why: str) -> Skipped:
    shutil.rmtree(candidate.path, ignore_errors=True)
    return Skipped(candidate.path, candidate.step, why)


def _open_below(root: Path, relative: str) -> int:
    """A read descriptor of ``root/relative``, no component of which may be a link."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, flags | os.O_DIRECTORY)
    try:
        *parents, name = relative.split("/")
        for part in parents:
            inner = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(name, flags, dir_fd=fd)
    finally:
        os.close(fd)


def _copy_file(
    source: Path,
    temp: Path,
    relative: str,
    algorithm: str,
    mode: int | None,
    deadline: float | None,
) -> str:
    """Copy one file, hashing what was read; return its digest."""
    target = temp / relative
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755 if mode is None else mode)
    hasher = _digest.new_hasher(algorithm)
    src = _open_below(source, relative)
    try:
        dst = os.open(target, _NEW_FILE, _file_mode(mode))
        try:
            while chunk := os.read(src, _CHUNK):
                if deadline is not None and time.monotonic() > deadline:
                    raise PersistError("the deadline passed before the copy to disk ended")
                hasher.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view) :]
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    if mode is not None:
        os.chmod(target, _file_mode(mode))
    return str(hasher.hexdigest())


def _write_new(path: Path, data: bytes, mode: int | None) -> None:
    fd = os.open(path, _NEW_FILE, _file_mode(mode))
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if mode is not None:
        os.chmod(path, _file_mode(mode))


def _file_mode(mode: int | None) -> int:
    return 0o644 if mode is None else mode & 0o666


def _directories(root: Path) -> list[Path]:
    found = [root]
    for entry in os.scandir(root):
        if entry.is_dir(follow_symlinks=False):
            found += _directories(Path(entry.path))
    return found
