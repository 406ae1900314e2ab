"""Mappings kept across RAM saves: a recycled file is written at the speed of a memcpy.

Writing a tmpfs file with ``write()`` costs about three memcpys even over existing pages (the
kernel looks up and copies page by page). A spare (``_spare``) is a file an earlier RAM save
of this process wrote, and it comes back with the same inode. This process keeps a shared
mapping of each spare it has written, with its page tables filled, so the next save of that
file is a plain copy into pages that are already mapped. The writer hashes each piece right
after copying it, while it is still in the CPU cache.

Bounds, because a mapping pins its pages and a fault through it can kill the process:
- Only whole files on a RAM filesystem (tmpfs) are mapped: a write through a mapping into a
  hole, or into a file of a disk filesystem, allocates, and a full filesystem answers with
  SIGBUS instead of an error.
- A mapping never reaches past its file's end: one that would after a save cuts the file
  shorter is dropped first.
- Mappings of files no longer linked anywhere (pruned, cleared) are dropped by a sweep that
  the client's thread runs every second or so and each mapped take runs, so they pin no RAM
  the daemon's room check cannot see for long. Client.close drops them all.
- A forked process (a data-loader worker) drops its copies of the mappings at once.
- Files below ``MIN_BYTES`` are not kept, and no more than ``MAX_KEPT`` at once: a
  descriptor stays open for each.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from dataclasses import dataclass

PIECE = 256 << 10  # copied then hashed while it sits in the CPU cache
MIN_BYTES = 1 << 20
MAX_KEPT = 256
RAM_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
_SWEEP_SECONDS = 1.0


@dataclass
class _Kept:
    fd: int  # keeps the inode's identity (and its link count) in reach
    mapping: mmap.mmap
    busy: bool = False  # a writer holds a lease on it: never unmapped under it


class Lease:
    """One writer's use of a kept mapping: its own view, given back by :meth:`release`."""

    def __init__(self, kept: _Kept, length: int) -> None:
        self._kept = kept
        self.view = memoryview(kept.mapping)[:length]

    def release(self) -> None:
        if self._kept.busy:
            self.view.release()
            self._kept.busy = False


_kept: dict[tuple[int, int], _Kept] = {}
_in_ram: dict[int, bool] = {}  # st_dev -> on a RAM filesystem
_lock = threading.Lock()
_swept = 0.0


def lease(fd: int) -> Lease | None:
    """A lease on the mapping kept for the file of ``fd`` (a spare taken for a RAM save,
    opened for reading and writing), made now if there is none; its view is no longer than
    the file. None when the file must be written with ``write()``."""
    sweep()
    info = os.fstat(fd)
    if info.st_size < MIN_BYTES or info.st_blocks * 512 < info.st_size:
        return None
    if not _on_ram_filesystem(info.st_dev):
        return None
    key = (info.st_dev, info.st_ino)
    with _lock:
        kept = _kept.get(key)
        if kept is not None and (kept.busy or len(kept.mapping) > info.st_size):
            if not _forget(key):
                return None
            kept = None
        if kept is not None:
            kept.busy = True
            return Lease(kept, len(kept.mapping))
        if len(_kept) >= MAX_KEPT:
            return None
    try:  # outside the lock: filling the page tables of a large file takes a while
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        mapping = mmap.mmap(fd, info.st_size, flags, mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError):
        return None
    try:
        held = os.dup(fd)
    except OSError:  # out of descriptors: this save writes the plain way
        mapping.close()
        return None
    kept = _Kept(held, mapping, busy=True)
    with _lock:
        if key in _kept and not _forget(key):
            kept.busy = False
            _close(kept)
            return None
        _kept[key] = kept
    return Lease(kept, info.st_size)


def write_hashed(view: memoryview, offset: int, data: memoryview, hasher: object) -> None:
    """Copy ``data`` into ``view`` at ``offset`` piece by piece, hashing each copied piece."""
    update = hasher.update  # type: ignore[attr-defined]
    for start in range(0, len(data), PIECE):
        piece = data[start : start + PIECE]
        at = offset + start
        view[at : at + len(piece)] = piece
        update(view[at : at + len(piece)])


def cut(fd: int, size: int) -> None:
    """Cut the file of ``fd`` to ``size`` (its writer's lease given back), first dropping a
    kept mapping that would then reach past its end (a touch there is SIGBUS)."""
    info = os.fstat(fd)
    key = (info.st_dev, info.st_ino)
    with _lock:
        kept = _kept.get(key)
        if kept is not None and len(kept.mapping) > size and not _forget(key):
            raise OSError(f"the mapping of {fd} is leased; the file is not cut under it")
    os.ftruncate(fd, size)


def sweep(every: float = _SWEEP_SECONDS) -> None:
    """Drop the mappings of files no longer linked anywhere (at most once per ``every``;
    never waits for the lock: a writer may hold it)."""
    global _swept
    if not _kept:
        return
    now = time.monotonic()
    if now - _swept < every or not _lock.acquire(blocking=False):
        return
    _swept = now
    try:
        for key, kept in list(_kept.items()):
            try:
                gone = os.fstat(kept.fd).st_nlink == 0
            except OSError:
                gone = True
            if gone:
                _forget(key)
    finally:
        _lock.release()


def kept_count() -> int:
    return len(_kept)


def forget_all() -> None:
    with _lock:
        for key in list(_kept):
            _forget(key)


def _forget(key: tuple[int, int]) -> bool:
    """Unmap and close one; False (kept for a later sweep) while a writer holds it."""
    kept = _kept[key]
    if kept.busy or not _close(kept):
        return False
    del _kept[key]
    return True


def _close(kept: _Kept) -> bool:
    try:
        kept.mapping.close()
    except BufferError:  # a view of it is still alive somewhere
        return False
    try:
        os.close(kept.fd)
    except OSError:
        pass
    return True


def _on_ram_filesystem(device: int) -> bool:
    known = _in_ram.get(device)
    if known is None:
        known = _in_ram[device] = _filesystem(device) in RAM_FILESYSTEMS
    return known


def _filesystem(device: int) -> str:
    """The type of the filesystem mounted from ``device`` (/proc/self/mountinfo), or "?"."""
    wanted = f"{os.major(device)}:{os.minor(device)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split(" ")
                if len(fields) > 2 and fields[2] == wanted and "-" in fields:
                    return fields[fields.index("-") + 1]
    except OSError:
        pass
    return "?"


def _after_fork_in_child() -> None:
    """A forked process (a data-loader worker) writes no RAM save: its copies of the mappings
    go, with their descriptors. One a thread of the parent was writing through at the fork
    cannot be unmapped (that thread's views live on, frozen): it stays, without its
    descriptor, until the child ends."""
    global _lock
    _lock = threading.Lock()
    for kept in _kept.values():
        if not _close(kept):  # a view of the parent's writer thread lives on here
            _frozen.append(kept)
            try:
                os.close(kept.fd)
            except OSError:
                pass
    _kept.clear()


_frozen: list[_Kept] = []
os.register_at_fork(after_in_child=_after_fork_in_child)
