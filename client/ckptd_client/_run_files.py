"""Opening the files of a run directory: regular files only, never a link, never a wait.

A FIFO at ``events.jsonl`` would block ``open()`` (or the first read) forever, a device
could be read without end, and a symlink could point anywhere. Every file of a run
directory that ckptd or its client opens goes through :func:`open_regular`: it opens
with ``O_NOFOLLOW | O_NONBLOCK`` (so neither a link nor a FIFO is ever waited on or
followed), checks with ``fstat`` that it got a regular file, and raises
:class:`NotRegularFile` (an ``OSError`` whose ``strerror`` says what is there) otherwise.
Shared by the daemon and the client, which imports nothing from the daemon.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["NotRegularFile", "open_regular", "read_regular"]

_KINDS = (
    (stat.S_ISLNK, "a symlink"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
)


class NotRegularFile(OSError):
    """Something other than a regular file is at a run-directory path."""

    def __init__(self, path: str | os.PathLike[str], kind: str) -> None:
        what = f"is {kind}, not a regular file (ckptd opens no link, FIFO or device); remove it"
        super().__init__(errno.EINVAL, what, str(path))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def open_regular(path: str | os.PathLike[str], flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """``os.open`` for a run-directory file; the descriptor is blocking and close-on-exec.

    Raises :class:`NotRegularFile` for a symlink, FIFO, socket, device or directory, and
    the ``OSError`` of ``os.open`` otherwise (``FileNotFoundError`` without ``O_CREAT``).
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        # ELOOP: a link; ENXIO: a FIFO without reader or a socket; EISDIR: a directory.
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.ENODEV):
            kind = _kind(path)
            if kind is not None:
                raise NotRegularFile(path, kind) from None
        raise
    try:
        kind = _kind_of(os.fstat(fd).st_mode)
        if kind is not None:
            raise NotRegularFile(path, kind)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike[str], limit: int = 1 << 20) -> str:
    """The text of a small run-directory file (at most ``limit`` bytes, else ValueError)."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return data.decode("utf-8", errors="replace")


def _kind(path: str | os.PathLike[str]) -> str | None:
    try:
        return _kind_of(os.lstat(Path(path)).st_mode)
    except OSError:
        return None


def _kind_of(mode: int) -> str | None:
    return next((kind for test, kind in _KINDS if test(mode)), None)
