"""The durable remote copy of the checkpoints, over fsspec (s3://, gs://, az://, file://, ...).

The remote mirrors the local layout: ``<root>/step-NNNNNNNN/<files>``, with ``ckptd.json``
uploaded **last** and deleted **first**, so a remote directory without its manifest is not
a checkpoint and a half-uploaded or half-deleted one never counts. The manifest's digests
cover the remote copy: a download is verified in full before it is renamed into place,
so a corrupt or partial remote checkpoint is reported invalid and never resumed from.
Nothing is unpickled; only the files a manifest lists are fetched (its paths are checked).

Every operation is bounded by a timeout. On asynchronous filesystems (s3fs, gcsfs, adlfs)
it runs as one coroutine on fsspec's I/O loop under ``asyncio.wait_for``, which cancels it
at the deadline; files go up in parallel and s3fs splits large ones into concurrent
multipart parts. On synchronous ones (``file://``) files are copied in chunks with the
deadline checked between chunks.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import os
import re
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import fsspec.asyn

from ckptd_client.manifest import (
    MANIFEST_NAME,
    TMP_PREFIX,
    TRASH_PREFIX,
    Manifest,
    ManifestError,
    checkpoint_name,
    verify,
)
from ckptd_client.store import Checkpoint

from .remote_url import redact

__all__ = [
    "Deadline",
    "InvalidRemoteCheckpoint",
    "RemoteCancelled",
    "RemoteError",
    "RemoteStore",
    "RemoteTimeout",
    "UploadResult",
]

_STEP_DIR = re.compile(r"^step-(\d{8,})$")
_MAX_MANIFEST_BYTES = 16 << 20
_CHUNK = 8 << 20
_FILES_IN_PARALLEL = 4
_POLL = 0.05  # how often a running operation looks at its deadline and cancellation


class RemoteError(Exception):
    """The remote could not do what was asked (down, refused, too slow); worth retrying."""


class RemoteTimeout(RemoteError):
    """An operation did not finish within its timeout; it was cancelled."""


class RemoteCancelled(RemoteError):
    """An operation was cancelled by its caller (a newer checkpoint, a stop)."""


@dataclass(frozen=True)
class Deadline:
    """When an operation must end: a monotonic time, or earlier when ``cancelled()`` says so."""

    at: float
    cancelled: Callable[[], bool] = lambda: False

    @classmethod
    def after(cls, timeout: float, cancelled: Callable[[], bool] | None = None) -> Deadline:
        return cls(time.monotonic() + timeout, cancelled or (lambda: False))

    def check(self) -> None:
        if self.cancelled():
            raise RemoteCancelled("cancelled")
        if time.monotonic() > self.at:
            raise RemoteTimeout("timed out")


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


class RemoteStore:
    """Checkpoints under one fsspec URL; ``options`` are fsspec storage options, verbatim.

    ``part_size`` sets the multipart part size where the filesystem takes one (s3fs: 50 MiB
    by default; files of two parts or more go up in concurrent parts).
    """

    def __init__(
        self, url: str, options: dict[str, Any] | None = None, *, part_size: int | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.part_size = part_size
        self.fs, root = fsspec.url_to_fs(self.url, **(options or {}))
        self.root = root.rstrip("/")
        protocol = self.fs.protocol
        self.protocols = {protocol} if isinstance(protocol, str) else set(protocol)
        self.supports_create = "s3" in self.protocols  # If-None-Match: * on put/complete

    def __repr__(self) -> str:
        return f"RemoteStore({redact(self.url)!r})"

    def path_of(self, step: int, name: str = "") -> str:
        base = f"{self.root}/{checkpoint_name(step)}"
        return f"{base}/{name}" if name else base

    # -- reading ------------------------------------------------------------------------

    def list(self, timeout: float = 60.0) -> list[Checkpoint]:
        """Remote checkpoints (``step-N`` directories whose manifest exists), oldest first.

        ``valid`` means the manifest parses and names its own step; file digests are
        checked only by :meth:`download`. Raises RemoteError when the remote cannot be read.
        """
        deadline = Deadline.after(timeout)
        manifests = [
            p
            for p in self.call("glob", f"{self.root}/step-*/{MANIFEST_NAME}", deadline=deadline)
            if _STEP_DIR.match(p.rstrip("/").split("/")[-2])
        ]
        if not manifests:
            return []
        contents = self.call("cat", manifests, on_error="return", deadline=deadline)
        found = [self._describe(path, contents.get(path)) for path in manifests]
        return sorted(found, key=lambda c: (c.step, c.name))

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
    ) -> UploadResult:
        """Upload one committed local checkpoint; its manifest goes last.

        ``before_manifest`` runs after the files are up and before the manifest is written
        (the fencing check); whatever it raises propagates and no manifest is written.
        A remote manifest of the same step that differs is deleted before any file is
        replaced. Raises RemoteTimeout after ``timeout`` seconds, RemoteCancelled as soon as
        ``cancelled()`` is true, RemoteError when the remote fails, ValueError when ``local``
        is not a valid checkpoint.
        """
        started = time.monotonic()
        deadline = Deadline(started + timeout, cancelled or (lambda: False))
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
            self.call("rm_file", self.path_of(step, MANIFEST_NAME), deadline=deadline)
        pairs = [(local / e.path, self.path_of(step, e.path)) for e in manifest.files]
        self._transfer(pairs, upload=True, deadline=deadline)
        before_manifest()
        self._write_manifest(step, raw, deadline)
        return UploadResult(step, manifest.size + len(raw), time.monotonic() - started)

    def delete(self, step: int, timeout: float = 60.0) -> None:
        """Delete remote ``step``: the manifest first, so a half-deleted one does not exist."""
        deadline = Deadline.after(timeout)
        try:
            self.call("rm_file", self.path_of(step, MANIFEST_NAME), deadline=deadline)
        except RemoteError as exc:
            if not isinstance(exc.__cause__, FileNotFoundError):
                raise
        self.delete_leftover(step, max(0.0, deadline.at - time.monotonic()))

    def delete_leftover(self, step: int, timeout: float = 60.0) -> None:
        """Delete the files of a remote ``step`` directory (one that has no manifest)."""
        try:
            self.call("rm", self.path_of(step), recursive=True, deadline=Deadline.after(timeout))
        except RemoteError as exc:
            if not isinstance(exc.__cause__, FileNotFoundError):
                raise

    def step_dirs(self, timeout: float = 60.0) -> builtins.list[int]:
        """Steps of every ``step-N`` directory under the root, with or without a manifest."""
        try:
            names = self.call("ls", self.root, detail=False, deadline=Deadline.after(timeout))
        except RemoteError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                return []
            raise
        steps = (_STEP_DIR.match(n.rstrip("/").rsplit("/", 1)[-1]) for n in names)
        return sorted(int(m.group(1)) for m in steps if m)

    # -- downloading --------------------------------------------------------------------

    def download(self, step: int, into: Path, timeout: float = 600.0) -> Checkpoint:
        """Download remote ``step`` into ``into/step-N``, verified in full; return it.

        Files land in a ``.tmp-`` directory of ``into`` first; only a copy whose every
        digest matches is renamed into place (replacing a local directory of that name).
        Raises InvalidRemoteCheckpoint for a missing manifest, a missing file or a digest
        mismatch (nothing is left behind), RemoteError/RemoteTimeout when the remote fails.
        """
        deadline = Deadline.after(timeout)
        raw = self._read_manifest(step, deadline)
        if raw is None:
            raise InvalidRemoteCheckpoint(step, "no manifest")
        manifest = self._parse(step, raw)
        into.mkdir(parents=True, exist_ok=True)
        temp = into / f"{TMP_PREFIX}{checkpoint_name(step)}-{secrets.token_hex(4)}"
        temp.mkdir()
        try:
            pairs = [(temp / e.path, self.path_of(step, e.path)) for e in manifest.files]
            for local, _ in pairs:
                local.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._transfer(pairs, upload=False, deadline=deadline)
            except RemoteError as exc:
                if isinstance(exc.__cause__, FileNotFoundError):
                    raise InvalidRemoteCheckpoint(step, f"missing file: {exc}") from None
                raise
            _write_new(temp / MANIFEST_NAME, raw)
            checked = verify(temp, full=True)
            if not checked.ok:
                raise InvalidRemoteCheckpoint(step, checked.reason)
            final = _move_into_place(temp, into / checkpoint_name(step))
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        return Checkpoint(
            final, step, manifest.time, manifest.size, dict(manifest.metrics), valid=True
        )

    def newest_valid(
        self,
        into: Path,
        *,
        newer_than: int = -1,
        rejected: builtins.list[Checkpoint] | None = None,
        timeout: float = 600.0,
    ) -> Checkpoint | None:
        """Download the newest remote checkpoint above ``newer_than`` that verifies.

        Each one that does not verify is appended to ``rejected`` (for ``checkpoint.invalid``)
        and the next older one is tried. RemoteError propagates (the remote is down).
        """
        for candidate in reversed(self.list()):
            if candidate.step <= newer_than:
                break
            try:
                return self.download(candidate.step, into, timeout)
            except InvalidRemoteCheckpoint as exc:
                if rejected is not None:
                    rejected.append(
                        Checkpoint(candidate.path, exc.step, valid=False, reason=exc.reason)
                    )
        return None

    # -- transport ----------------------------------------------------------------------

    def _read_manifest(self, step: int, deadline: Deadline) -> bytes | None:
        try:
            raw: bytes = self.call("cat_file", self.path_of(step, MANIFEST_NAME), deadline=deadline)
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
            self.call("makedirs", self.path_of(step), exist_ok=True, deadline=deadline)
        try:
            self.call("pipe_file", path, raw, **mode, deadline=deadline)
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

    def _describe(self, manifest_path: str, raw: Any) -> Checkpoint:
        directory = manifest_path.rsplit("/", 1)[0]
        step = int(directory.rsplit("/", 1)[-1][len("step-") :])
        path = Path(directory)
        if not isinstance(raw, bytes):
            return Checkpoint(path, step, valid=False, reason=f"unreadable manifest: {raw}")
        try:
            manifest = self._parse(step, raw)
        except InvalidRemoteCheckpoint as exc:
            return Checkpoint(path, step, valid=False, reason=exc.reason)
        return Checkpoint(path, step, manifest.time, manifest.size, dict(manifest.metrics))

    def call(self, name: str, *args: Any, deadline: Deadline, **kwargs: Any) -> Any:
        """``fs.<name>(...)``, cancelled at ``deadline``; failures become RemoteError.

        The cause of a RemoteError is the filesystem's own exception (FileNotFoundError, ...).
        """
        if self.fs.async_impl:
            method = getattr(self.fs, "_" + name)
            return self.bounded(lambda: method(*args, **kwargs), deadline)
        deadline.check()
        try:
            return getattr(self.fs, name)(*args, **kwargs)
        except Exception as exc:
            raise RemoteError(_describe_error(exc)) from exc

    def bounded(self, make: Callable[[], Awaitable[Any]], deadline: Deadline) -> Any:
        """Run the coroutine ``make()`` on fsspec's loop, cancelled when ``deadline`` passes."""

        async def run() -> Any:
            task = asyncio.ensure_future(make())
            try:
                while True:
                    deadline.check()
                    wait = min(_POLL, max(0.0, deadline.at - time.monotonic()))
                    done, _ = await asyncio.wait({task}, timeout=wait)
                    if done:
                        return task.result()
            finally:
                if not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

        try:
            return fsspec.asyn.sync(self.fs.loop, run)
        except RemoteError:
            raise
        except Exception as exc:
            raise RemoteError(_describe_error(exc)) from exc

    def _transfer(
        self, pairs: Iterable[tuple[Path, str]], *, upload: bool, deadline: Deadline
    ) -> None:
        pairs = builtins.list(pairs)
        if self.fs.async_impl:
            self.bounded(lambda: self._transfer_async(pairs, upload), deadline)
            return
        for local, remote in pairs:
            try:
                _copy_chunked(self.fs, local, remote, upload, deadline)
            except RemoteError:
                raise
            except Exception as exc:
                raise RemoteError(_describe_error(exc)) from exc

    async def _transfer_async(self, pairs: builtins.list[tuple[Path, str]], upload: bool) -> None:
        method = self.fs._put_file if upload else self.fs._get_file
        extra: dict[str, Any] = {}
        parameters = inspect.signature(method).parameters
        if "max_concurrency" in parameters:
            extra["max_concurrency"] = getattr(self.fs, "max_concurrency", None)
        if upload and self.part_size and "chunksize" in parameters:
            extra["chunksize"] = self.part_size
        gate = asyncio.Semaphore(_FILES_IN_PARALLEL)

        async def one(local: Path, remote: str) -> None:
            async with gate:
                if upload:
                    await method(str(local), remote, **extra)
                else:
                    await method(remote, str(local), **extra)

        tasks = [asyncio.ensure_future(one(local, remote)) for local, remote in pairs]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _copy_chunked(fs: Any, local: Path, remote: str, upload: bool, deadline: Deadline) -> None:
    if upload:
        fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
    with (
        open(local, "rb") if upload else fs.open(remote, "rb") as source,
        fs.open(remote, "wb") if upload else open(local, "wb") as target,
    ):
        while chunk := source.read(_CHUNK):
            deadline.check()
            target.write(chunk)


def _describe_error(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _move_into_place(temp: Path, final: Path) -> Path:
    """fsync the downloaded tree, then rename it to ``final`` (a stale one is replaced)."""
    for root, _dirs, files in os.walk(temp):
        for name in files:
            _fsync(os.path.join(root, name), os.O_RDONLY)
        _fsync(root, os.O_RDONLY | os.O_DIRECTORY)
    trash = None
    if final.exists() or final.is_symlink():
        trash = final.parent / f"{TRASH_PREFIX}{final.name}-{secrets.token_hex(4)}"
        os.rename(final, trash)
    os.rename(temp, final)
    _fsync(str(final.parent), os.O_RDONLY | os.O_DIRECTORY)
    if trash is not None:
        if trash.is_dir() and not trash.is_symlink():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink(missing_ok=True)
    return final


def _fsync(path: str, flags: int) -> None:
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
