"""The checkpoint commit protocol and its verification.

A checkpoint is a directory ``step-NNNNNNNN`` holding whatever the training
script wrote plus ``ckptd.json``, the manifest, written last. Commit: hash and
fsync every file in a ``.tmp-`` directory (in parallel), write and fsync the
manifest, fsync the directory, rename it into place, fsync the parent. A
directory whose manifest is missing or whose files do not match it is not a
checkpoint. The digest algorithm is recorded in the manifest (see ``_digest``). A
top-level ``model.sig`` that the manifest does not list is a signature added after the
commit (see ``ckptd.integrity``): it is not part of the checkpoint's file list.

Each manifest also records its :class:`Lineage`: an id that every checkpoint of one run
history shares (a run inherits it from the checkpoint it resumed from; a fresh start gets
a new one) and that resume point's step and manifest digest, so that two histories
written to one place can be told apart.

Nothing here unpickles, imports or follows a symlink.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from . import _digest, protocol

MANIFEST_NAME = "ckptd.json"
# A detached signature the daemon may add beside the manifest after the commit (OpenSSF
# model-signing format); verification ignores it unless the script wrote one itself.
SIGNATURE_NAME = "model.sig"
FORMAT_VERSION = 2  # 1: entries carry "sha256"; 2: "digest", with the algorithm in "hash"
TMP_PREFIX = protocol.TMP_PREFIX
TRASH_PREFIX = ".trash-"
NAME_PREFIX = "step-"

_MAX_MANIFEST_BYTES = 16 << 20
STALE_AFTER = 86400.0  # a .tmp- directory untouched for a day has no writer left, whoever it was
_CLOCK_SLACK = 2.0  # /proc/stat's boot time has whole seconds
_HOST_ID = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TMP_NAME = re.compile(r"^\.tmp-step-\d+-([0-9a-f]{8})-(\d+)-[0-9a-f]+$")  # see new_temp_dir
_LINEAGE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MANIFEST_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class CommitError(RuntimeError):
    """A checkpoint could not be committed; the previous checkpoints are untouched."""


class ManifestError(ValueError):
    """A manifest that does not describe a checkpoint."""


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    digest: str


@dataclass(frozen=True)
class Lineage:
    """The run history a checkpoint belongs to.

    ``id`` is shared by every checkpoint of one history: a run that resumed from a
    checkpoint inherits its id, a fresh start (or a resume from a checkpoint written
    before lineages were recorded) gets a new one. ``parent_step`` and
    ``parent_manifest`` (``sha256:<hex>`` of its ``ckptd.json``) name the checkpoint the
    run resumed from; both None on a fresh start.
    """

    id: str
    parent_step: int | None = None
    parent_manifest: str | None = None

    def to_json(self) -> dict[str, Any]:
        parent = None
        if self.parent_step is not None:
            parent = {"step": self.parent_step, "manifest": self.parent_manifest}
        return {"id": self.id, "parent": parent}

    @classmethod
    def from_json(cls, raw: Any) -> Lineage:
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
            raise ManifestError("manifest lineage must be an object with an id")
        if not _LINEAGE_ID.match(raw["id"]):
            raise ManifestError(f"manifest lineage id {raw['id']!r} is not 1-64 letters or digits")
        parent = raw.get("parent")
        if parent is None:
            return cls(raw["id"])
        step, digest = (
            (parent.get("step"), parent.get("manifest"))
            if isinstance(parent, dict)
            else (None, None)
        )
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ManifestError(
                f"manifest lineage parent step {step!r} is not a non-negative integer"
            )
        if not isinstance(digest, str) or not _MANIFEST_DIGEST.match(digest):
            raise ManifestError("manifest lineage parent manifest is not a sha256 digest")
        return cls(raw["id"], step, digest)


@dataclass(frozen=True)
class Manifest:
    step: int
    time: float
    files: tuple[FileEntry, ...]
    metrics: dict[str, Any] = field(default_factory=dict)
    writer: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT_VERSION
    hash: str = "sha256"
    lineage: Lineage | None = None  # None: written before lineages were recorded
    # A save of torchrun ranks: the ranks whose parts this directory holds, of how many.
    # None: not a group save, or written before parts were recorded (then it holds all).
    ranks: tuple[int, ...] | None = None
    world_size: int | None = None

    @property
    def size(self) -> int:
        return sum(entry.size for entry in self.files)

    def holds(self, rank: int) -> bool:
        """This directory holds ``rank``'s part (one without a record holds every rank's)."""
        return self.ranks is None or rank in self.ranks

    @property
    def complete(self) -> bool:
        """Every rank's part is here: the checkpoint of the whole job, not one node's part."""
        return self.ranks is None or self.world_size is None or len(self.ranks) >= self.world_size

    def to_json(self) -> str:
        data = asdict(self)
        data["files"] = [asdict(entry) for entry in self.files]
        if self.lineage is None:
            del data["lineage"]
        else:
            data["lineage"] = self.lineage.to_json()
        for key in ("ranks", "world_size"):
            if data[key] is None:
                del data[key]
            elif key == "ranks":
                data[key] = list(data[key])
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            data = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ManifestError(f"manifest is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ManifestError("manifest is not a JSON object")
        version = data.get("format")
        if version not in (1, FORMAT_VERSION):
            raise ManifestError(f"unsupported manifest format {version!r}")
        algorithm = data.get("hash", "sha256") if version == FORMAT_VERSION else "sha256"
        if algorithm not in ("sha256", "xxh3_128"):
            raise ManifestError(f"unsupported hash algorithm {algorithm!r}")
        step, stamp = data.get("step"), data.get("time")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ManifestError(f"manifest step {step!r} is not a non-negative integer")
        if not isinstance(stamp, (int, float)) or isinstance(stamp, bool):
            raise ManifestError(f"manifest time {stamp!r} is not a number")
        metrics, writer = data.get("metrics", {}), data.get("writer", {})
        if not isinstance(metrics, dict) or not isinstance(writer, dict):
            raise ManifestError("manifest metrics and writer must be objects")
        lineage = data.get("lineage")
        ranks, world = data.get("ranks"), data.get("world_size")
        if ranks is not None and not (isinstance(ranks, list) and all(map(_count, ranks))):
            raise ManifestError("manifest ranks must be a list of non-negative integers")
        if world is not None and not (_count(world) and world > 0):
            raise ManifestError(f"manifest world_size {world!r} is not a positive integer")
        return cls(
            step=step,
            time=float(stamp),
            files=tuple(
                _parse_entry(raw, "digest" if version == FORMAT_VERSION else "sha256")
                for raw in _list_of(data.get("files"))
            ),
            metrics=metrics,
            writer=writer,
            hash=algorithm,
            lineage=None if lineage is None else Lineage.from_json(lineage),
            ranks=None if ranks is None else tuple(ranks),
            world_size=world,
        )


@dataclass(frozen=True)
class Verification:
    """Outcome of checking one directory against its manifest."""

    ok: bool
    reason: str = ""
    manifest: Manifest | None = None


def checkpoint_name(step: int) -> str:
    return f"{NAME_PREFIX}{step:08d}"


def new_temp_dir(checkpoint_dir: Path, step: int) -> Path:
    """Create a fresh, private in-progress directory for a checkpoint of ``step``.

    Its name, ``.tmp-step-NNNNNNNN-<host>-<pid>-<random>``, tells who writes it, so that
    a cleanup can leave the directories of writers that are still alive alone.
    """
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    name = f"{TMP_PREFIX}{checkpoint_name(step)}-{_HOST_ID}-{os.getpid()}-{secrets.token_hex(4)}"
    path = checkpoint_dir / name
    mode = checkpoint_mode()
    path.mkdir(mode=0o755 if mode is None else mode)  # the umask can only take bits away
    if mode is not None:
        os.chmod(path, mode)
    return path


def checkpoint_mode() -> int | None:
    """The mode ckptd asks checkpoint directories to have (files: the same without the x
    bits), from ``CKPTD_CHECKPOINT_MODE``; None leaves modes to the umask."""
    text = os.environ.get(protocol.ENV_CHECKPOINT_MODE, "")
    try:
        mode = int(text, 8)
    except ValueError:
        return None
    return mode if mode & 0o700 == 0o700 and mode <= 0o777 else None


def commit(
    temp_dir: Path,
    step: int,
    metrics: dict[str, Any] | None = None,
    lineage: Lineage | None = None,
    ranks: list[int] | None = None,
    world_size: int | None = None,
) -> tuple[Path, Manifest]:
    """Commit ``temp_dir`` as the checkpoint of ``step`` beside it; return its path and manifest.

    ``lineage`` is recorded in the manifest (see :func:`lineage_after`), and so are the
    ``ranks`` (of ``world_size``) whose parts a save of torchrun ranks holds. On failure the
    temporary directory is removed and :class:`CommitError` raised; committed checkpoints
    are never touched except a valid one of the same step, which is replaced atomically
    enough that a crash leaves one of the two.
    """
    checkpoint_dir = temp_dir.parent
    try:
        algorithm = _digest.default_algorithm()
        digests = _digest.hash_and_sync(temp_dir, _walk_files(temp_dir), algorithm)
        manifest = Manifest(
            step=step,
            time=time.time(),
            files=tuple(FileEntry(rel, size, hexd) for rel, (hexd, size) in digests.items()),
            metrics=dict(metrics or {}),
            writer={"name": "ckptd_client", "host": socket.gethostname(), "pid": os.getpid()},
            hash=algorithm,
            lineage=lineage,
            ranks=None if ranks is None else tuple(sorted(ranks)),
            world_size=world_size,
        )
        _write_synced(temp_dir / MANIFEST_NAME, manifest.to_json().encode())
        if (mode := checkpoint_mode()) is not None:
            _set_modes(temp_dir, mode)
        for directory in _walk_dirs(temp_dir):
            fsync_dir(directory)
        final = checkpoint_dir / checkpoint_name(step)
        move_into_place(temp_dir, final)
    except (OSError, ValueError) as exc:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise CommitError(f"checkpoint of step {step} not committed: {exc}") from exc
    return final, manifest


def verify(path: Path, *, full: bool = True) -> Verification:
    """Check a checkpoint directory; ``full`` also compares every file's hash."""
    try:
        if path.is_symlink() or not path.is_dir():
            return Verification(False, "not a directory")
        manifest = read_manifest(path)
        on_disk = set(_walk_files(path)) - {MANIFEST_NAME}
    except (OSError, ManifestError) as exc:
        return Verification(False, str(exc))
    listed = {entry.path for entry in manifest.files}
    if missing := sorted(listed - on_disk):
        return Verification(False, f"missing file {missing[0]}", manifest)
    if extra := sorted(on_disk - listed - {SIGNATURE_NAME}):
        return Verification(False, f"file not in manifest: {extra[0]}", manifest)
    try:
        for entry in manifest.files:
            size = (path / entry.path).lstat().st_size
            if size != entry.size:
                reason = f"{entry.path}: size {size}, manifest says {entry.size}"
                return Verification(False, reason, manifest)
        if full:
            if not _digest.available(manifest.hash):
                return Verification(
                    False, f"cannot check {manifest.hash} here (pip install xxhash)", manifest
                )
            digests = _digest.digest_all(path, (e.path for e in manifest.files), manifest.hash)
            for entry in manifest.files:
                if digests[entry.path][0] != entry.digest:
                    return Verification(False, f"{entry.path}: {manifest.hash} mismatch", manifest)
    except OSError as exc:
        return Verification(False, str(exc), manifest)
    return Verification(True, "", manifest)


def read_manifest(path: Path) -> Manifest:
    return Manifest.from_json(read_manifest_bytes(path))


def read_manifest_bytes(path: Path) -> bytes:
    """The raw ``ckptd.json`` of checkpoint ``path`` (never through a symlink)."""
    manifest_path = path / MANIFEST_NAME
    if manifest_path.is_symlink() or not manifest_path.is_file():
        raise ManifestError("no manifest")
    with _digest.open_nofollow(manifest_path) as handle:
        raw = handle.read(_MAX_MANIFEST_BYTES + 1)
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise ManifestError("manifest too large")
    return raw


def manifest_digest(raw: bytes) -> str:
    """How a lineage names a parent checkpoint: ``sha256:<hex>`` of its ``ckptd.json``."""
    return f"sha256:{hashlib.sha256(raw).hexdigest()}"


def new_lineage_id() -> str:
    return secrets.token_hex(8)


def lineage_after(resumed: Path | None, lineage_id: str | None = None) -> Lineage:
    """The lineage of the checkpoints a run writes after resuming from ``resumed``.

    The id is ``lineage_id`` when given (the daemon's ``CKPTD_LINEAGE``), else the one
    recorded in ``resumed``'s manifest, else a new one. Raises ManifestError or OSError
    when ``resumed`` has no readable manifest.
    """
    if resumed is None:
        return Lineage(lineage_id or new_lineage_id())
    raw = read_manifest_bytes(resumed)
    parsed = Manifest.from_json(raw)
    inherited = parsed.lineage.id if parsed.lineage is not None else None
    return Lineage(lineage_id or inherited or new_lineage_id(), parsed.step, manifest_digest(raw))


def remove_temporaries(checkpoint_dir: Path, only_dead_writers: bool = False) -> list[Path]:
    """Remove leftovers of interrupted commits; return what was removed.

    With ``only_dead_writers`` a ``.tmp-`` directory is removed only when its writer is
    known to be gone: a process of this host that no longer runs (or a later process
    that reuses its pid). Directories of other hosts, of live writers and of unknown
    writers (names from before writers were recorded) stay unless untouched for
    :data:`STALE_AFTER` seconds. Without it (the daemon, which holds its job down while
    cleaning) every ``.tmp-`` directory goes.

    A ``.trash-`` directory whose checkpoint is missing is the only copy of that
    step (a crash hit between the two renames of a replacement): it is restored.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(checkpoint_dir))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        if entry.name.startswith(TMP_PREFIX):
            if only_dead_writers and not _writer_gone(entry):
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        elif entry.name.startswith(TRASH_PREFIX):
            original = checkpoint_dir / entry.name[len(TRASH_PREFIX) :].rsplit("-", 1)[0]
            if original.exists():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
            else:
                os.rename(path, original)
    return removed


def temp_dir_writer(name: str) -> tuple[str, int] | None:
    """(host id, pid) of a ``.tmp-`` directory's writer; None for names from before they were."""
    match = _TMP_NAME.match(name)
    return (match.group(1), int(match.group(2))) if match else None


def _writer_gone(entry: os.DirEntry[str]) -> bool:
    try:
        changed = entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return False  # it is going away by itself
    if time.time() - changed > STALE_AFTER:
        return True
    writer = temp_dir_writer(entry.name)
    if writer is None or writer[0] != _HOST_ID:
        return False
    return not _process_started_before(writer[1], changed)


def _process_started_before(pid: int, moment: float) -> bool:
    """Whether process ``pid`` runs and already ran at ``moment`` (so it may be the writer)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    started = _process_start_time(pid)
    # A process that started after the directory was last changed cannot have written it:
    # its pid was reused (a restarted container's training process often gets the same one).
    return started is None or started <= moment + _CLOCK_SLACK


def _process_start_time(pid: int) -> float | None:
    """Wall-clock start of ``pid`` from /proc (Linux); None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith(b"btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None


def move_into_place(temp_dir: Path, final: Path) -> None:
    """Rename ``temp_dir`` to ``final``; a ``final`` already there goes through ``.trash-``."""
    parent = final.parent
    if not final.exists():
        os.rename(temp_dir, final)
        fsync_dir(parent)
        return
    trash = parent / f"{TRASH_PREFIX}{final.name}-{secrets.token_hex(4)}"
    os.rename(final, trash)
    os.rename(temp_dir, final)
    fsync_dir(parent)
    shutil.rmtree(trash, ignore_errors=True)


def _walk_files(root: Path, prefix: str = "") -> Iterator[str]:
    """Relative POSIX paths of the regular files below ``root``; links and specials are errors."""
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        rel = f"{prefix}{entry.name}"
        if entry.is_symlink():
            raise ManifestError(f"symlink in checkpoint: {rel}")
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_files(Path(entry.path), rel + "/")
        elif entry.is_file(follow_symlinks=False):
            yield rel
        else:
            raise ManifestError(f"not a regular file: {rel}")


def _walk_dirs(root: Path) -> Iterator[Path]:
    for entry in os.scandir(root):
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_dirs(Path(entry.path))
    yield root


def _set_modes(temp_dir: Path, mode: int) -> None:
    """Directories get ``mode``, files ``mode`` without the x bits (whoever created them)."""
    for relative in _walk_files(temp_dir):  # regular files only: a link is refused above
        os.chmod(temp_dir / relative, mode & 0o666)
    for directory in _walk_dirs(temp_dir):
        os.chmod(directory, mode)


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or removal in ``path`` durable (the daemon's moves use it too)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _list_of(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ManifestError("manifest files must be a list")
    return value


def _parse_entry(raw: Any, digest_key: str) -> FileEntry:
    if not isinstance(raw, dict):
        raise ManifestError("manifest file entry is not an object")
    rel, size, digest = raw.get("path"), raw.get("size"), raw.get(digest_key)
    if not isinstance(rel, str) or not _is_safe_relative(rel):
        raise ManifestError(f"unsafe path in manifest: {rel!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"bad size for {rel}: {size!r}")
    if not isinstance(digest, str) or not 16 <= len(digest) <= 128:
        raise ManifestError(f"bad digest for {rel}")
    return FileEntry(path=rel, size=size, digest=digest)


def _is_safe_relative(rel: str) -> bool:
    pure = PurePosixPath(rel)
    return bool(rel) and not pure.is_absolute() and ".." not in pure.parts and rel != MANIFEST_NAME
