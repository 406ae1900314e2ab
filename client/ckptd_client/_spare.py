"""The spare pool of the memory tier: pages a RAM save writes over instead of fresh ones.

A file written into fresh tmpfs pages costs several times a memcpy: the kernel allocates and
zeroes every page. So when ckptd prunes a RAM checkpoint it keeps that checkpoint's files
(only the last pruned one's) in the directory's spare pool (``.ckptd-spare``), and a file of
a RAM save made through ``ckptd_client.create`` (the torch helpers, the framework callbacks)
takes the spare of the same name, if any, is written over its pages and cut to its size
(:func:`take_spare`), as databases recycle their log segments.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from . import protocol

SPARE_DIR = ".ckptd-spare"


def spare_name(relative: str) -> str:
    """The pool's name for the file at ``relative`` (a POSIX path) in a checkpoint."""
    return relative.replace("%", "%25").replace("/", "%2F")


def spare_bytes(memory_dir: Path) -> int:
    """The bytes of the regular files in ``memory_dir``'s spare pool."""
    total = 0
    try:
        with os.scandir(memory_dir / SPARE_DIR) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    except OSError:
        return total
    return total


def take_spare(path: Path) -> int | None:
    """A read-write descriptor of ``path``, a new file of a RAM save under
    ``CKPTD_MEMORY_DIR``, made by moving the pool's spare of the same name there (its pages are
    reused: the caller writes from offset 0, through a kept mapping where it can, and cuts the
    file to its size); None when there is none to take."""
    ram = os.environ.get(protocol.ENV_MEMORY_DIR)
    if not ram:
        return None
    target = os.path.abspath(path)
    relative = os.path.relpath(target, os.path.abspath(ram))
    first, _, rest = relative.partition(os.sep)
    if not first.startswith(protocol.TMP_PREFIX) or not rest or os.path.lexists(target):
        return None
    spare = os.path.join(ram, SPARE_DIR, spare_name(rest.replace(os.sep, "/")))
    try:
        os.rename(spare, target)
    except OSError:
        return None
    try:
        fd = os.open(target, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        os.unlink(target)  # not a file ckptd put there (a link): gone, and a fresh file made
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        os.unlink(target)
        return None
    return fd
