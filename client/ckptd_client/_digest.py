"""File digests for manifests: streamed, in parallel threads, overlapped with fsync.

``xxh3_128`` (the ``xxhash`` package, at memory speed) when it is installed, else
``sha256`` from the standard library. The manifest records which one was used, so
either kind of checkpoint verifies wherever its algorithm is available. These are
integrity checks against torn writes and bit rot, not signatures.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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
    with ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="ckptd-commit") as pool:
        syncs = [pool.submit(fsync_file, root / rel) for rel in names]
        digests = {rel: pool.submit(digest_file, root / rel, algorithm) for rel in names}
        for future in syncs:
            future.result()
        return {rel: future.result() for rel, future in digests.items()}


def digest_all(root: Path, files: Iterable[str], algorithm: str) -> dict[str, tuple[str, int]]:
    """Digests of many files, several at a time (verification)."""
    names = list(files)
    if len(names) <= 1:
        return {rel: digest_file(root / rel, algorithm) for rel in names}
    with ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="ckptd-verify") as pool:
        futures = {rel: pool.submit(digest_file, root / rel, algorithm) for rel in names}
        return {rel: future.result() for rel, future in futures.items()}
