"""File digests for manifests: streamed, in parallel threads, overlapped with fsync.

``xxh3_128`` (the ``xxhash`` package, at memory speed) when it is installed, else
``sha256`` from the standard library. The manifest records which one was used, so
either kind of checkpoint verifies wherever its algorithm is available. These are
integrity checks against torn writes and bit rot, not signatures.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import importlib.util
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ._mapped import PIECE, cut, lease, write_hashed
from ._spare import take_spare

xxhash: Any = importlib.import_module("xxhash") if importlib.util.find_spec("xxhash") else None

CHUNK = 1 << 20
_WORKERS = 4


def default_algorithm() -> str:
    return "xxh3_128" if xxhash is not None else "sha256"


def available(algorithm: str) -> bool:
    return algorithm == "sha256" or (algorithm == "xxh3_128" and xxhash is not None)


def new_hasher(algorithm: str) -> Any:
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "xxh3_128" and xxhash is not None:
        return xxhash.xxh3_128()
    raise ValueError(f"hash algorithm {algorithm!r} is not available here (pip install xxhash)")


def open_nofollow(path: Path) -> Any:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    return os.fdopen(fd, "rb", buffering=0)


def digest_file(path: Path, algorithm: str) -> tuple[str, int]:
    """(hex digest, size) of one file, read in chunks; never follows a symlink."""
    hasher = new_hasher(algorithm)
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    size = 0
    with open_nofollow(path) as handle:
        while count := handle.readinto(buffer):
            hasher.update(view[:count])
            size += count
    return hasher.hexdigest(), size


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hash_and_sync(root: Path, files: Iterable[str], algorithm: str) -> dict[str, tuple[str, int]]:
    """Digest and fsync every file; digests read the page cache while fsyncs write back.

    Both hashing (for large buffers) and fsync release the GIL, so the threads overlap
    the CPU work of one file with the disk work of another.
    """
    names = list(files)
    known = {rel: take_known(root / rel, algorithm) for rel in names}
    with ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="ckptd-commit") as pool:
        syncs = [pool.submit(fsync_file, root / rel) for rel in names]
        digests = {
            rel: pool.submit(digest_file, root / rel, algorithm)
            for rel in names
            if known[rel] is None
        }
        for future in syncs:
            future.result()
        return {rel: known[rel] or digests[rel].result() for rel in names}


def digest_all(root: Path, files: Iterable[str], algorithm: str) -> dict[str, tuple[str, int]]:
    """Digests of many files, several at a time (verification)."""
    names = list(files)
    if len(names) <= 1:
        return {rel: digest_file(root / rel, algorithm) for rel in names}
    with ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="ckptd-verify") as pool:
        futures = {rel: pool.submit(digest_file, root / rel, algorithm) for rel in names}
        return {rel: future.result() for rel, future in futures.items()}


class HashingWriter:
    """A binary file opened for writing that digests what passes through it.

    On close, its digest is remembered so that the commit need not read the file back
    (it still checks the size, and hashes the file itself when anything else wrote to it).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        fd = take_spare(self.path)  # a file of a RAM save: written over a spare's pages
        self._recycled = fd is not None
        self._file = open(self.path, "xb") if fd is None else os.fdopen(fd, "wb")  # noqa: SIM115
        self._lease = lease(fd) if fd is not None else None  # ... at memcpy speed
        self._algorithm = default_algorithm()
        self._hasher = new_hasher(self._algorithm)
        self._size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        held = self._lease
        fits = max(0, min(len(view), len(held.view) - self._size)) if held is not None else 0
        if fits > 0:
            assert held is not None
            write_hashed(held.view, self._size, view[:fits], self._hasher)
            self._size += fits
            view = view[fits:]
        if not view:
            return fits
        if held is not None:  # past the mapped part: on with write()
            self._give_back()
            self._file.seek(self._size)
        written = 0
        while written < len(view):
            piece = view[written : written + PIECE]
            count = self._file.write(piece)
            self._hasher.update(piece[:count])
            written += count
        self._size += written
        return fits + written

    def _give_back(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._give_back()
            if self._recycled:  # the spare may have been longer
                cut(self._file.fileno(), self._size)
            start_writeback(self._file.fileno())
            info = os.fstat(self._file.fileno())
            self._file.close()
            _known[str(self.path.resolve())] = (
                self._algorithm,
                self._hasher.hexdigest(),
                (self._size, info.st_mtime_ns, info.st_ino),
            )

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# path -> (algorithm, digest, (size, mtime_ns, inode)): a file written again, or replaced,
# after the writer closed it no longer matches its identity and is hashed afresh.
_known: dict[str, tuple[str, str, tuple[int, int, int]]] = {}
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int = 0, count: int = 0) -> None:
    """Ask Linux to start writing a range back now, without waiting (0 bytes: to the end).

    The commit's fsync then finds most of the file already on its way to the disk, and
    the disk works while the next file is being written, as databases do.
    """
    if _libc is not None:
        _libc.sync_file_range(
            fd, ctypes.c_int64(offset), ctypes.c_int64(count), _SYNC_FILE_RANGE_WRITE
        )


def _load_libc() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.sync_file_range.argtypes = [
            ctypes.c_int,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_uint,
        ]
        return libc
    except (OSError, AttributeError):
        return None


_libc = _load_libc()


def take_known(path: Path, algorithm: str) -> tuple[str, int] | None:
    """The digest a HashingWriter recorded for ``path``, if the file is still the one it wrote.

    The same size, modification time and inode: anything that wrote to the file or
    replaced it since changes at least one of them (a same-size rewrite moves mtime).
    """
    record = _known.pop(str(path.resolve()), None)
    if record is None or record[0] != algorithm:
        return None
    try:
        info = path.lstat()
    except OSError:
        return None
    if (info.st_size, info.st_mtime_ns, info.st_ino) != record[2]:
        return None
    return record[1], record[2][0]
