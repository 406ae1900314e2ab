"""The durable remote copy of the checkpoints, over fsspec (s3://, gs://, az://, file://, ...).

The remote mirrors the local layout: ``<root>/step-NNNNNNNN/<files>``, with ``ckptd.json``
uploaded **last** and deleted **first**, so a remote directory without its manifest is not
a checkpoint and a half-uploaded or half-deleted one never counts. The manifest's digests
cover the remote copy: a download is verified in full before it is renamed into place,
so a corrupt or partial remote checkpoint is reported invalid and never resumed from.
Nothing is unpickled; only the files a manifest lists are fetched (its paths are checked).

Every operation is bounded by a timeout and cancellable (see ``remote_transfer``).
"""

from __future__ import annotations

import builtins
import re
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import fsspec

from ckptd.storage.remote.download import Fetch, ObjectMismatch
from ckptd.storage.remote.transfer import (
    Deadline,
    RemoteCancelled,
    RemoteError,
    RemoteTimeout,
    Transport,
    move_into_place,
    write_new,
)
from ckptd.storage.remote.url import redact
from ckptd_client._digest import available as digest_available
from ckptd_client.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    TMP_PREFIX,
    Manifest,
    ManifestError,
    checkpoint_name,
    verify,
)
from ckptd_client.store import Checkpoint

__all__ = [
    "Deadline",
    "InvalidRemoteCheckpoint",
    "RemoteCancelled",
    "RemoteEntry",
    "RemoteError",
    "RemoteStore",
    "RemoteTimeout",
    "UploadResult",
]

_STEP_DIR = re.compile(r"^step-(\d{8,})$")
_MAX_MANIFEST_BYTES = 16 << 20


class InvalidRemoteCheckpoint(Exception):
    """A remote checkpoint that does not verify (corrupt, partial, foreign); try an older one."""

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(f"remote step {step}: {reason}")
        self.step = step
        self.reason = reason


@dataclass(frozen=True)
class UploadResult:
    step: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class RemoteEntry:
    """One remote checkpoint as listed, with the lineage id its manifest records.

    ``lineage`` is None for a manifest written before lineages were recorded, or one
    that does not parse.
    """

    checkpoint: Checkpoint
    lineage: str | None = None

    @property
    def step(self) -> int:
        return self.checkpoint.step

    @property
    def valid(self) -> bool:
        return self.checkpoint.valid


class RemoteStore:
    """Checkpoints under one fsspec URL; ``options`` are fsspec storage options, verbatim.

    ``part_size`` sets the multipart part size where the filesystem takes one (s3fs: 50 MiB
    by default; files of two parts or more go up in concurrent parts), and the size of the
    ranges a large file is downloaded in.
    """

    def __init__(
        self, url: str, options: dict[str, Any] | None = None, *, part_size: int | None = None
    ) -> None:
        self.url = url.rstrip("/")
        # Other nodes and daemons write the same prefix: a cached listing would hide their
        # objects (s3fs answers ``cat`` of a file missing from a cached listing with
        # FileNotFoundError, without asking the store), so nothing is listed from a cache.
        options = {**(options or {}), "use_listings_cache": False}
        self.fs, root = fsspec.url_to_fs(self.url, **options)
        self.root = root.rstrip("/")
        protocol = self.fs.protocol
        self.protocols = {protocol} if isinstance(protocol, str) else set(protocol)
        self.supports_create = "s3" in self.protocols  # If-None-Match: * on put/complete
        self.transport = Transport(self.fs, part_size)

    def __repr__(self) -> str:
        return f"RemoteStore({redact(self.url)!r})"

    def path_of(self, step: int, name: str = "") -> str:
        base = f"{self.root}/{checkpoint_name(step)}"
        return f"{base}/{name}" if name else base

    # -- reading ------------------------------------------------------------------------

    def list(self, timeout: float = 60.0) -> builtins.list[Checkpoint]:
        """Remote checkpoints (``step-N`` directories whose manifest exists), oldest first.

        ``valid`` means the manifest parses, names its own step, and every file it lists
        is there with the size it says (the sizes come with the listing: no download);
        file digests are checked only by :meth:`download`. Raises RemoteError when the
        remote cannot be read.
        """
        return [entry.checkpoint for entry in self.catalog(timeout)]

    def catalog(self, timeout: float = 60.0) -> builtins.list[RemoteEntry]:
        """What :meth:`list` returns, each with the lineage its manifest records."""
        deadline = Deadline.after(timeout)
        listed = self.transport.call("find", self.root, detail=True, deadline=deadline)
        sizes: dict[str, int] = {}
        for name, info in listed.items():
            relative = name.rstrip("/")[len(self.root) + 1 :]
            if name.startswith(f"{self.root}/") and info.get("type") != "directory":
                sizes[relative] = int(info.get("size") or 0)
        manifests = [
            f"{self.root}/{relative}"
            for relative in sizes
            if relative.count("/") == 1
            and relative.endswith(f"/{MANIFEST_NAME}")
            and _is_checkpoint_name(relative.split("/")[0])
        ]
        if not manifests:
            return []
        contents = self.transport.call("cat", manifests, on_error="return", deadline=deadline)
        found = [self._describe(path, contents.get(path), sizes) for path in manifests]
        return sorted(found, key=lambda e: (e.step, e.checkpoint.name))

    def manifest(self, step: int, timeout: float = 60.0) -> Manifest:
        """The manifest of remote ``step``; InvalidRemoteCheckpoint when absent or unusable."""
        raw = self._read_manifest(step, Deadline.after(timeout))
        if raw is None:
            raise InvalidRemoteCheckpoint(step, "no manifest")
        return self._parse(step, raw)

    # -- writing ------------------------------------------------------------------------

    def upload(
        self,
        local: Path,
        timeout: float,
        before_manifest: Callable[[], None] = lambda: None,
        cancelled: Callable[[], bool] | None = None,
        until: Callable[[], float | None] = lambda: None,
        sent: Callable[[int], None] = lambda size: None,
    ) -> UploadResult:
        """Upload one committed local checkpoint; its manifest goes last.

        ``before_manifest`` runs after the files are up and before the manifest is written
        (the fencing check); whatever it raises propagates and no manifest is written.
        A remote manifest of the same step that differs is deleted before any file is
        replaced. Raises RemoteTimeout after ``timeout`` seconds (or at ``until()``, a
        monotonic time, whenever that returns one), RemoteCancelled as soon as
        ``cancelled()`` is true, RemoteError when the remote fails, ValueError when
        ``local`` is not a valid checkpoint. ``sent(n)`` counts the bytes as they go up.
        """
        started = time.monotonic()
        deadline = Deadline(started + timeout, cancelled or (lambda: False), until)
        checked = verify(local, full=False)
        if not checked.ok or checked.manifest is None:
            raise ValueError(f"{local}: not a valid checkpoint: {checked.reason}")
        manifest = checked.manifest
        raw = (local / MANIFEST_NAME).read_bytes()
        step = manifest.step
        existing = self._read_manifest(step, deadline)
        if existing == raw:
            return UploadResult(step, 0, time.monotonic() - started)
        if existing is not None:
            self.transport.call("rm_file", self.path_of(step, MANIFEST_NAME), deadline=deadline)
        pairs = [(local / e.path, self.path_of(step, e.path)) for e in manifest.files]
        if _has_signature(local, manifest):  # before the manifest: a copy is whole with it
            pairs.append((local / SIGNATURE_NAME, self.path_of(step, SIGNATURE_NAME)))
        self.transport.upload(pairs, deadline=deadline, sent=sent)
        before_manifest()
        self._write_manifest(step, raw, deadline)
        return UploadResult(step, manifest.size + len(raw), time.monotonic() - started)

    def delete(self, step: int, timeout: float = 60.0) -> None:
        """Delete remote ``step``: the manifest first, so a half-deleted one does not exist."""
        deadline = Deadline.after(timeout)
        try:
            self.transport.call("rm_file", self.path_of(step, MANIFEST_NAME), deadline=deadline)
        except RemoteError as exc:
            if not isinstance(exc.__cause__, FileNotFoundError):
                raise
        self.delete_leftover(step, max(0.0, deadline.at - time.monotonic()))

    def delete_leftover(self, step: int, timeout: float = 60.0) -> None:
        """Delete the files of a remote ``step`` directory (one that has no manifest)."""
        try:
            self.transport.call(
                "rm", self.path_of(step), recursive=True, deadline=Deadline.after(timeout)
            )
        except RemoteError as exc:
            if not isinstance(exc.__cause__, FileNotFoundError):
                raise

    def step_dirs(self, timeout: float = 60.0) -> builtins.list[int]:
        """Steps of every ``step-N`` directory under the root, with or without a manifest."""
        try:
            names = self.transport.call(
                "ls", self.root, detail=False, deadline=Deadline.after(timeout)
            )
        except RemoteError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                return []
            raise
        steps = (n.rstrip("/").rsplit("/", 1)[-1] for n in names)
        return sorted(int(name[len("step-") :]) for name in steps if _is_checkpoint_name(name))

    # -- downloading --------------------------------------------------------------------

    def download(
        self,
        step: int,
        into: Path,
        timeout: float = 600.0,
        refuse: Callable[[Path], str | None] = lambda path: None,
    ) -> Checkpoint:
        """Download remote ``step`` into ``into/step-N``, verified in full; return it.

        Files land in a ``.tmp-`` directory of ``into`` first, each hashed as it arrives;
        only a copy whose every size and digest matches the manifest is renamed into place
        (replacing a local directory of that name). A ``model.sig`` beside the manifest
        comes too, and ``refuse(copy)`` (the signature check) may reject the copy before it
        is put in place. Raises InvalidRemoteCheckpoint for a missing manifest, a missing
        file, a mismatch or a refusal (nothing is left behind),
        RemoteError/RemoteTimeout when the remote fails.
        """
        deadline = Deadline.after(timeout)
        raw = self._read_manifest(step, deadline)
        if raw is None:
            raise InvalidRemoteCheckpoint(step, "no manifest")
        manifest = self._parse(step, raw)
        if not digest_available(manifest.hash):
            raise InvalidRemoteCheckpoint(step, f"cannot check {manifest.hash} here")
        if len({e.path for e in manifest.files}) != len(manifest.files):
            raise InvalidRemoteCheckpoint(step, "a file listed twice")
        into.mkdir(parents=True, exist_ok=True)
        temp = into / f"{TMP_PREFIX}{checkpoint_name(step)}-{secrets.token_hex(4)}"
        temp.mkdir()
        try:
            fetches = [Fetch(e, self.path_of(step, e.path), temp / e.path) for e in manifest.files]
            for fetch in fetches:
                fetch.local.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.transport.fetch(fetches, manifest.hash, deadline)
            except RemoteError as exc:
                if isinstance(exc.__cause__, FileNotFoundError):
                    raise InvalidRemoteCheckpoint(step, f"missing file: {exc}") from None
                if isinstance(exc.__cause__, ObjectMismatch):
                    raise InvalidRemoteCheckpoint(step, str(exc.__cause__)) from None
                raise
            write_new(temp / MANIFEST_NAME, raw)
            listed = {e.path for e in manifest.files}
            signature = None if SIGNATURE_NAME in listed else self._read_signature(step, deadline)
            if signature is not None:
                write_new(temp / SIGNATURE_NAME, signature)
            # Every digest was checked on the way in; this checks the layout (no file more).
            checked = verify(temp, full=False)
            if not checked.ok:
                raise InvalidRemoteCheckpoint(step, checked.reason)
            if (problem := refuse(temp)) is not None:
                raise InvalidRemoteCheckpoint(step, problem)
            final = move_into_place(temp, into / checkpoint_name(step))
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        return Checkpoint(
            final, step, manifest.time, manifest.size, dict(manifest.metrics), valid=True
        )

    # -- transport ----------------------------------------------------------------------

    def _read_signature(self, step: int, deadline: Deadline) -> bytes | None:
        """The remote ``model.sig`` of ``step`` (added by the daemon, not in the manifest)."""
        try:
            raw: bytes = self.transport.call(
                "cat_file", self.path_of(step, SIGNATURE_NAME), deadline=deadline
            )
        except RemoteError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                return None
            raise
        if len(raw) > _MAX_MANIFEST_BYTES:
            raise InvalidRemoteCheckpoint(step, f"{SIGNATURE_NAME} too large")
        return raw

    def _read_manifest(self, step: int, deadline: Deadline) -> bytes | None:
        try:
            raw: bytes = self.transport.call(
                "cat_file", self.path_of(step, MANIFEST_NAME), deadline=deadline
            )
        except RemoteError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                return None
            raise
        if len(raw) > _MAX_MANIFEST_BYTES:
            raise InvalidRemoteCheckpoint(step, "manifest too large")
        return raw

    def _write_manifest(self, step: int, raw: bytes, deadline: Deadline) -> None:
        path = self.path_of(step, MANIFEST_NAME)
        mode = {"mode": "create"} if self.supports_create else {}
        if not self.fs.async_impl:
            self.transport.call("makedirs", self.path_of(step), exist_ok=True, deadline=deadline)
        try:
            self.transport.call("pipe_file", path, raw, **mode, deadline=deadline)
        except RemoteError as exc:
            if isinstance(exc.__cause__, FileExistsError):
                raise RemoteError(f"step {step}: another writer committed it meanwhile") from None
            raise

    def _parse(self, step: int, raw: bytes) -> Manifest:
        try:
            manifest = Manifest.from_json(raw)
        except ManifestError as exc:
            raise InvalidRemoteCheckpoint(step, str(exc)) from None
        if manifest.step != step:
            raise InvalidRemoteCheckpoint(step, f"manifest says step {manifest.step}")
        return manifest

    def _describe(self, manifest_path: str, raw: Any, sizes: dict[str, int]) -> RemoteEntry:
        """One listed checkpoint; ``sizes`` holds every listed object's size by relative key."""
        directory = manifest_path.rsplit("/", 1)[0]
        name = directory.rsplit("/", 1)[-1]
        step = int(name[len("step-") :])
        path = Path(directory)
        if not isinstance(raw, bytes):
            reason = f"unreadable manifest: {raw}"
            return RemoteEntry(Checkpoint(path, step, valid=False, reason=reason))
        try:
            manifest = self._parse(step, raw)
        except InvalidRemoteCheckpoint as exc:
            return RemoteEntry(Checkpoint(path, step, valid=False, reason=exc.reason))
        lineage = manifest.lineage.id if manifest.lineage is not None else None
        described = Checkpoint(path, step, manifest.time, manifest.size, dict(manifest.metrics))
        for entry in manifest.files:
            size = sizes.get(f"{name}/{entry.path}")
            mismatch = None
            if size is None:
                mismatch = f"missing file {entry.path}"
            elif size != entry.size:
                mismatch = f"{entry.path}: size {size}, manifest says {entry.size}"
            if mismatch is not None:
                described = replace(described, valid=False, reason=mismatch)
                break
        return RemoteEntry(described, lineage)


def _is_checkpoint_name(name: str) -> bool:
    """``step-N`` exactly as ckptd names step N (so that the name leads back to the step)."""
    match = _STEP_DIR.match(name)
    return match is not None and name == checkpoint_name(int(match.group(1)))


def _has_signature(local: Path, manifest: Manifest) -> bool:
    """Whether ``local`` holds a ``model.sig`` the daemon added (a regular file, unlisted)."""
    if SIGNATURE_NAME in {entry.path for entry in manifest.files}:
        return False  # the script's own file: uploaded with the others
    signature = local / SIGNATURE_NAME
    return signature.is_file() and not signature.is_symlink()
