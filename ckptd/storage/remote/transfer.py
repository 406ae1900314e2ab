"""Moving bytes between a local directory and an fsspec filesystem, within a deadline.

On asynchronous filesystems (s3fs, gcsfs, adlfs) each operation runs as one coroutine on
fsspec's I/O loop and is cancelled when its :class:`Deadline` passes or its caller cancels
it; files go up and down in parallel, and s3fs splits large ones into concurrent multipart
parts. On synchronous ones (``file://``) files are copied in chunks and the deadline is
checked between chunks. Downloads go through ``remote_download``, which hashes them on
the way. Every failure surfaces as :class:`RemoteError`, whose ``__cause__`` is the
filesystem's own exception (FileNotFoundError, ...).
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec.asyn
import fsspec.callbacks
from fsspec.implementations.local import LocalFileSystem

from ckptd.storage.remote.download import Fetch, fetch_async, fetch_sync
from ckptd_client.manifest import TRASH_PREFIX

__all__ = [
    "Deadline",
    "RemoteCancelled",
    "RemoteError",
    "RemoteTimeout",
    "Transport",
    "move_into_place",
    "write_new",
]

_CHUNK = 8 << 20
_KERNEL_COPY = hasattr(os, "copy_file_range")  # Linux
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM}
_FILES_IN_PARALLEL = 8
_POLL = 0.05  # how often a running operation looks at its deadline and cancellation


class RemoteError(Exception):
    """The remote could not do what was asked (down, refused, too slow); worth retrying."""


class RemoteTimeout(RemoteError):
    """An operation did not finish within its timeout; it was cancelled."""


class RemoteCancelled(RemoteError):
    """An operation was cancelled by its caller (a newer checkpoint, a stop)."""


@dataclass(frozen=True)
class Deadline:
    """When an operation must end: a monotonic time, or earlier when ``cancelled()`` says so.

    ``moved()``, while it returns a time, replaces ``at``: a stop gives the upload in
    flight its own deadline, later or earlier than the attempt's.
    """

    at: float
    cancelled: Callable[[], bool] = lambda: False
    moved: Callable[[], float | None] = lambda: None

    @classmethod
    def after(cls, timeout: float, cancelled: Callable[[], bool] | None = None) -> Deadline:
        return cls(time.monotonic() + timeout, cancelled or (lambda: False))

    def end(self) -> float:
        moved = self.moved()
        return self.at if moved is None else moved

    def check(self) -> None:
        if self.cancelled():
            raise RemoteCancelled("cancelled")
        if time.monotonic() > self.end():
            raise RemoteTimeout("timed out")


class Transport:
    """Bounded operations on ``fs``; ``part_size`` is the multipart part size where supported."""

    def __init__(self, fs: Any, part_size: int | None = None) -> None:
        self.fs = fs
        self.part_size = part_size

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
            raise RemoteError(describe_error(exc)) from exc

    def bounded(self, make: Callable[[], Awaitable[Any]], deadline: Deadline) -> Any:
        """Run the coroutine ``make()`` on fsspec's loop, cancelled when ``deadline`` passes."""

        async def run() -> Any:
            task = asyncio.ensure_future(make())
            try:
                while True:
                    deadline.check()
                    wait = min(_POLL, max(0.0, deadline.end() - time.monotonic()))
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
            raise RemoteError(describe_error(exc)) from exc

    def upload(
        self,
        pairs: Iterable[tuple[Path, str]],
        *,
        deadline: Deadline,
        sent: Callable[[int], None] = lambda size: None,
    ) -> None:
        """Upload each ``(local, remote)`` pair, several files (and parts) at a time.

        ``sent(n)`` is called as each piece of ``n`` bytes is up (a part, a chunk, a small
        file), from whichever thread moved it: an attempt cut short still tells how fast
        the bytes went.
        """
        pairs = list(pairs)
        if self.fs.async_impl:
            self.bounded(lambda: self._upload_async(pairs, sent), deadline)
            return
        for local, remote in pairs:
            try:
                _upload_chunked(self.fs, local, remote, deadline, sent)
            except RemoteError:
                raise
            except Exception as exc:
                raise RemoteError(describe_error(exc)) from exc

    def fetch(self, fetches: list[Fetch], algorithm: str, deadline: Deadline) -> None:
        """Download and check every file (see ``remote_download``); a mismatch is the cause.

        Raises RemoteError whose ``__cause__`` is ObjectMismatch for an object that does not
        match its entry, FileNotFoundError for a missing one, or the filesystem's own error.
        """
        if self.fs.async_impl:
            max_parts = getattr(self.fs, "max_concurrency", None) or _FILES_IN_PARALLEL
            self.bounded(
                lambda: fetch_async(
                    self.fs,
                    fetches,
                    algorithm,
                    files=_FILES_IN_PARALLEL,
                    parts=max_parts,
                    part_size=self.part_size,
                ),
                deadline,
            )
            return
        try:
            fetch_sync(self.fs, fetches, algorithm, deadline.check)
        except RemoteError:
            raise
        except Exception as exc:
            raise RemoteError(describe_error(exc)) from exc

    async def _upload_async(
        self, pairs: list[tuple[Path, str]], sent: Callable[[int], None]
    ) -> None:
        method = self.fs._put_file
        extra: dict[str, Any] = {}
        parameters = inspect.signature(method).parameters
        if "callback" in parameters:
            extra["callback"] = _Counted(sent)
        if "max_concurrency" in parameters:
            extra["max_concurrency"] = getattr(self.fs, "max_concurrency", None)
        if self.part_size and "chunksize" in parameters:
            extra["chunksize"] = self.part_size
        gate = asyncio.Semaphore(_FILES_IN_PARALLEL)

        async def one(local: Path, remote: str) -> None:
            async with gate:
                await method(str(local), remote, **extra)

        tasks = [asyncio.ensure_future(one(local, remote)) for local, remote in pairs]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


class _Counted(fsspec.callbacks.Callback):
    """fsspec's progress callback, reduced to the bytes each piece adds."""

    def __init__(self, sent: Callable[[int], None]) -> None:
        super().__init__()
        self._sent = sent

    def relative_update(self, inc: int = 1) -> None:
        self._sent(inc)


def _upload_chunked(
    fs: Any, local: Path, remote: str, deadline: Deadline, sent: Callable[[int], None]
) -> None:
    fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(local, flags), "rb") as source:
        local_fs = _KERNEL_COPY and isinstance(fs, LocalFileSystem)
        if local_fs and _copy_in_kernel(source, fs, remote, deadline, sent):
            return
        with fs.open(remote, "wb") as target:
            while chunk := source.read(_CHUNK):
                deadline.check()
                target.write(chunk)
                sent(len(chunk))


def _copy_in_kernel(
    source: Any, fs: Any, remote: str, deadline: Deadline, sent: Callable[[int], None]
) -> bool:
    """Copy to a local path with copy_file_range: the bytes never pass through this process
    (half the CPU of a read and a write; a reflink or a server-side copy where the file
    system offers one). False when the kernel cannot do it here (nothing was written)."""
    path = fs._strip_protocol(remote)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    target = os.open(path, flags, 0o644)
    try:
        first = True
        while True:
            deadline.check()
            try:
                copied = os.copy_file_range(source.fileno(), target, _CHUNK)
            except OSError as exc:
                if first and exc.errno in _NO_KERNEL_COPY:
                    return False
                raise
            if not copied:
                return True
            sent(copied)
            first = False
    finally:
        os.close(target)


def describe_error(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def move_into_place(temp: Path, final: Path) -> Path:
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
