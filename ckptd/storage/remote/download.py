"""Fetching a checkpoint's files: each object streamed to disk and hashed on the way.

Every byte is hashed as it arrives and each file's digest and size are compared with its
manifest entry when its last byte is in, so a download is verified without reading the
copy back. Writeback to the disk starts while the download goes on (``sync_file_range``),
so the fsync before the rename finds little left to write. Local files are created
exclusively and never through a symlink.

On asynchronous filesystems files come down in parallel in ranged parts (several in
flight, taken in order so that the hash sees the bytes in order; no object is read past
one byte more than its entry says, so a wrong one never fills the memory or the disk); on
synchronous ones (``file://``) each file is read in chunks, the deadline checked between
chunks. An object whose bytes disagree with its entry raises :class:`ObjectMismatch`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckptd_client import _digest
from ckptd_client.manifest import FileEntry

__all__ = ["Fetch", "ObjectMismatch", "fetch_async", "fetch_sync"]

_CHUNK = 8 << 20  # read size on synchronous filesystems
_WRITEBACK_EVERY = 16 << 20  # start writing back to the disk after this many new bytes
_DEFAULT_PART = 32 << 20  # ranged part size when the filesystem names none


class ObjectMismatch(Exception):
    """A remote object whose size or digest is not what the manifest says."""


@dataclass(frozen=True)
class Fetch:
    """One file to fetch: its manifest entry, where it is remote, where it goes locally."""

    entry: FileEntry
    remote: str
    local: Path


class _LocalCopy:
    """A new local file that hashes what is written to it and starts its writeback early."""

    def __init__(self, fetch: Fetch, algorithm: str) -> None:
        self.fetch = fetch
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fd = os.open(fetch.local, flags, 0o644)
        self.hasher = _digest.new_hasher(algorithm)
        self.size = 0
        self.synced_to = 0

    def write(self, data: bytes | memoryview) -> None:
        if self.size + len(data) > self.fetch.entry.size:
            raise ObjectMismatch(f"{self.fetch.entry.path}: larger than the manifest says")
        view = memoryview(data)
        self.hasher.update(view)
        while view:
            view = view[os.write(self.fd, view) :]
        self.size += len(data)
        if self.size - self.synced_to >= _WRITEBACK_EVERY:
            _digest.start_writeback(self.fd, self.synced_to, self.size - self.synced_to)
            self.synced_to = self.size

    def finish(self) -> None:
        """Check size and digest against the entry; raises ObjectMismatch."""
        entry = self.fetch.entry
        if self.size != entry.size:
            raise ObjectMismatch(f"{entry.path}: size {self.size}, manifest says {entry.size}")
        if self.hasher.hexdigest() != entry.digest:
            raise ObjectMismatch(f"{entry.path}: digest mismatch")
        _digest.start_writeback(self.fd, self.synced_to, 0)

    def close(self) -> None:
        os.close(self.fd)


@contextlib.contextmanager
def _local_copy(fetch: Fetch, algorithm: str) -> Iterator[_LocalCopy]:
    copy = _LocalCopy(fetch, algorithm)
    try:
        yield copy
        copy.finish()
    finally:
        copy.close()


# -- asynchronous filesystems ----------------------------------------------------------


async def fetch_async(
    fs: Any,
    fetches: list[Fetch],
    algorithm: str,
    *,
    files: int,
    parts: int,
    part_size: int | None = None,
) -> None:
    """Fetch every file, ``files`` at a time; one larger than ``part_size`` (by default the
    filesystem's block size) in ranges of that size, ``parts`` ranges at most in flight or
    waiting for their turn, across all files (the memory a download holds)."""
    part_size = part_size or getattr(fs, "default_block_size", None) or _DEFAULT_PART
    info_kwargs = {"refresh": True} if "refresh" in inspect.signature(fs._info).parameters else {}
    gate = asyncio.Semaphore(files)
    slots = asyncio.Semaphore(parts)

    async def size_of(remote: str) -> int:
        return int((await fs._info(remote, **info_kwargs))["size"])

    async def into(copy: _LocalCopy) -> None:
        remote, size = copy.fetch.remote, copy.fetch.entry.size
        if size == 0:  # no range of an empty object can be asked for
            if (found := await size_of(remote)) != 0:
                raise ObjectMismatch(f"{copy.fetch.entry.path}: size {found}, manifest says 0")
            return
        # The last range asks for one byte more: an object longer than its entry shows.
        ranges = [(s, min(s + part_size, size)) for s in range(0, size, part_size)]
        ranges[-1] = (ranges[-1][0], size + 1)
        reads = (
            lambda start=start, end=end: fs._cat_file(remote, start=start, end=end)
            for start, end in ranges
        )
        await _in_order(reads, slots, copy.write)

    async def one(fetch: Fetch) -> None:
        async with gate:
            with _local_copy(fetch, algorithm) as copy:
                try:
                    await into(copy)
                except ObjectMismatch:
                    raise
                except Exception:
                    # A range past the end of a shorter object fails; say why, when that is it.
                    found = await size_of(fetch.remote)
                    if found != fetch.entry.size:
                        raise ObjectMismatch(
                            f"{fetch.entry.path}: size {found}, manifest says {fetch.entry.size}"
                        ) from None
                    raise

    await _all(one(fetch) for fetch in fetches)


async def _in_order(
    reads: Iterator[Callable[[], Awaitable[bytes]]],
    slots: asyncio.Semaphore,
    consume: Callable[[bytes], None],
) -> None:
    """``consume`` each result of ``reads`` in order; each read holds one of ``slots`` from
    its start until it is consumed. More start while slots are free; with none of ours
    running, the next waits for a slot (the head of a file's reads always holds one, so
    every file gets on)."""
    running: collections.deque[asyncio.Future[bytes]] = collections.deque()
    try:
        while True:
            while not running or not slots.locked():
                read = next(reads, None)
                if read is None:
                    break
                await slots.acquire()
                running.append(asyncio.ensure_future(read()))
            if not running:
                return
            head = running.popleft()
            try:
                consume(await head)
            finally:
                slots.release()
    finally:
        for _ in running:
            slots.release()
        await _cancel(running)


async def _all(coroutines: Iterator[Awaitable[None]]) -> None:
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.gather(*tasks)
    finally:
        await _cancel(tasks)


async def _cancel(tasks: Any) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- synchronous filesystems -----------------------------------------------------------


def fetch_sync(fs: Any, fetches: list[Fetch], algorithm: str, check: Callable[[], None]) -> None:
    """Fetch every file in turn; ``check()`` runs between chunks (it raises to stop)."""
    for fetch in fetches:
        with _local_copy(fetch, algorithm) as copy, fs.open(fetch.remote, "rb") as source:
            while chunk := source.read(min(_CHUNK, fetch.entry.size - copy.size + 1)):
                check()
                copy.write(chunk)
