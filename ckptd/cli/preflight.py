"""Checks of the file system before anything starts: each failure is one line, not a traceback.

A job must not be launched when its final checkpoint could never be written, and a
run directory that cannot take a byte would fail in the middle of supervision; both
are cheaper to find out before the job has trained for hours.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

from ckptd.config import JobConfig
from ckptd.options import ConfigError

_PROBE_PREFIX = ".ckptd-probe-"
_PROBE_BYTES = b"\0" * 4096  # one page: a full file system refuses it, an empty file it might not


def check(config: JobConfig) -> None:
    """Refuse a configuration the file system cannot serve; raise ConfigError naming the key.

    ``cwd`` must be an existing directory; ``checkpoint_dir`` and ``run_dir`` are created
    when missing and must take a small probe file (written and removed again), so a
    regular file in their place, a read-only mount or a full disk are found now.
    """
    _check_cwd(config.cwd)
    _check_writable("checkpoint_dir", config.checkpoint_dir, mode=0o755)
    if config.run_dir.is_symlink():
        raise ConfigError(f"run_dir: {config.run_dir} is a symlink; ckptd does not follow it")
    _check_writable("run_dir", config.run_dir, mode=0o700)


def _check_cwd(cwd: Path) -> None:
    if not cwd.exists():
        raise ConfigError(f"cwd: no such directory {cwd}")
    if not cwd.is_dir():
        raise ConfigError(f"cwd: {cwd} is not a directory")
    if not os.access(cwd, os.X_OK):
        raise ConfigError(f"cwd: {cwd} cannot be entered (permission denied)")


def _check_writable(key: str, directory: Path, mode: int) -> None:
    try:
        directory.mkdir(mode=mode, parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{key}: {directory} exists and is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot create {directory}: {_reason(exc)}") from None
    if not directory.is_dir():
        raise ConfigError(f"{key}: {directory} exists and is not a directory")
    probe = directory / f"{_PROBE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot write in {directory}: {_reason(exc)}") from None
    try:
        os.write(fd, _PROBE_BYTES)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot write in {directory}: {_reason(exc)}") from None
    finally:
        os.close(fd)
        try:
            os.unlink(probe)
        except OSError:
            pass  # it was created by us and is harmless; the write error above says more


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    return exc.strerror or str(exc)
