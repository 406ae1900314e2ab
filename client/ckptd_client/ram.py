"""Whether a checkpoint still fits in RAM: the memory tier's check before each save.

Used by the daemon before it asks for a RAM save, and by the ranks of several nodes, whose
node's part of a round another node's daemon asked for. The spare pool (``_spare``) counts
as free room: the next save writes over it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ._spare import spare_bytes
from .store import scan

_HEADROOM = 64 << 20  # a RAM save must leave this much of the filesystem and of MemAvailable


def room_for(
    memory_dir: Path,
    size: int,
    available: Callable[[], int | None] | None = None,
) -> str | None:
    """None when a checkpoint of ``size`` bytes fits in RAM; else why it does not.

    Counts the free space of ``memory_dir``'s filesystem and ``MemAvailable`` (a tmpfs is
    paid for in memory), each less a headroom, so that a save never fills ``/dev/shm`` nor
    drives the machine into the OOM killer.
    """
    try:
        info = os.statvfs(memory_dir)
    except OSError as exc:
        return f"{memory_dir}: {exc.strerror}"
    spare = spare_bytes(memory_dir)  # the next save writes over these pages
    free = info.f_bavail * info.f_frsize + spare
    if free - _HEADROOM < size:
        return f"{memory_dir} has {free >> 20} MiB free, the last checkpoint took {size >> 20} MiB"
    memory = (available or mem_available)()
    if memory is not None and memory + spare - _HEADROOM < size:
        return f"MemAvailable is {memory >> 20} MiB, the last checkpoint took {size >> 20} MiB"
    return None


def mem_available() -> int | None:
    """``MemAvailable`` of /proc/meminfo in bytes; None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def newest_size(memory_dir: Path) -> int:
    """The bytes of the newest valid checkpoint in ``memory_dir`` (0 when there is none)."""
    for found in reversed(scan(memory_dir)):
        if found.valid:
            return found.bytes
    return 0
