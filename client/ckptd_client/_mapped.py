"""Mappings kept across RAM saves: a recycled file is written at the speed of a memcpy.

Writing a tmpfs file with ``write()`` costs about three memcpys even over existing pages (the
kernel looks up and copies page by page). A spare (``_spare``) is a file an earlier RAM save
of this process wrote, and it comes back with the same inode. This process keeps a shared
mapping of each spare it has written, with its page tables filled, so the next save of that
file is a plain copy into pages that are already mapped. The writer hashes each piece right
after copying it, while it is still in the CPU cache.

Bounds, because a mapping pins its pages and a fault through it can kill the process:
- Only whole files are kept: a file with holes would allocate a page on a write through
  the mapping, and a full tmpfs answers that with SIGBUS.
- A mapping never reaches past the file's end: one that would after a save cut the file
  shorter is dropped first.
- Mappings of files no longer linked anywhere (pruned, cleared) are dropped at the next
  take, so they pin nothing the daemon's room check cannot see for longer than one save.
- Files below ``MIN_BYTES`` are not kept, and no more than ``MAX_KEPT`` at once: a
  descriptor stays open for each.
"""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass

PIECE = 256 << 10  # copied then hashed while it sits in the CPU cache
MIN_BYTES = 1 << 20
MAX_KEPT = 256
_SWEEP_SECONDS = 1.0


@dataclass
class _Kept:
    fd: int  # keeps the inode's identity (and its link count) in reach
    mapping: mmap.mmap
    view: memoryview


_kept: dict[tuple[int, int], _Kept] = {}
_swept = 0.0


def view_of(fd: int) -> memoryview | None:
    """A writable view of the file of ``fd`` (a spare taken for a RAM save, opened for
    reading and writing), no longer than the file, from a mapping kept for its inode; None
    when the file must be written with ``write()``."""
    global _swept
    now = time.monotonic()
    if now - _swept >= _SWEEP_SECONDS:
        _swept = now
        drop_unlinked()
    info = os.fstat(fd)
    if info.st_size < MIN_BYTES or info.st_blocks * 512 < info.st_size:
        return None
    key = (info.st_dev, info.st_ino)
    kept = _kept.get(key)
    if kept is not None and len(kept.view) <= info.st_size:
        return kept.view
    if kept is not None:
        _forget(key)
    if len(_kept) >= MAX_KEPT:
        return None
    try:
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        mapping = mmap.mmap(fd, info.st_size, flags, mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError):
        return None
    kept = _Kept(os.dup(fd), mapping, memoryview(mapping))
    _kept[key] = kept
    return kept.view


def write_hashed(view: memoryview, offset: int, data: memoryview, hasher: object) -> None:
    """Copy ``data`` into ``view`` at ``offset`` piece by piece, hashing each copied piece."""
    update = hasher.update  # type: ignore[attr-defined]
    for start in range(0, len(data), PIECE):
        piece = data[start : start + PIECE]
        at = offset + start
        view[at : at + len(piece)] = piece
        update(view[at : at + len(piece)])


def drop_unlinked() -> None:
    """Forget the mappings of files no longer linked anywhere: their pages go back to RAM."""
    for key, kept in list(_kept.items()):
        try:
            gone = os.fstat(kept.fd).st_nlink == 0
        except OSError:
            gone = True
        if gone:
            _forget(key)


def cut(fd: int, size: int) -> None:
    """Cut the file of ``fd`` to ``size``, first dropping a kept mapping that would then reach
    past its end (a touch there is SIGBUS)."""
    info = os.fstat(fd)
    kept = _kept.get((info.st_dev, info.st_ino))
    if kept is not None and len(kept.view) > size:
        _forget((info.st_dev, info.st_ino))
    os.ftruncate(fd, size)


def kept_count() -> int:
    return len(_kept)


def forget_all() -> None:
    for key in list(_kept):
        _forget(key)


def _forget(key: tuple[int, int]) -> None:
    kept = _kept.pop(key)
    kept.view.release()
    kept.mapping.close()
    os.close(kept.fd)


os.register_at_fork(after_in_child=forget_all)  # a forked worker writes no RAM save
