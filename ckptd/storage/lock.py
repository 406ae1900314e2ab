"""One job per checkpoint directory: an exclusive ``flock`` on ``<checkpoint_dir>/.ckptd-lock``.

Held by the daemon (close-on-exec) for its whole life and released with it, even
when it is SIGKILLed. The file records who holds it (job, run directory, host, pid)
so a refused daemon can say whom to stop. The record carries the job's identity so
that daemons of one multi-node job may later share the directory by design.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from ckptd import strict_json
from ckptd.run_dir import RunDirError

LOCK_NAME = ".ckptd-lock"


class CheckpointDirLock:
    def __init__(self, checkpoint_dir: Path) -> None:
        self.path = checkpoint_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, job: str, run_dir: Path) -> None:
        """Take the directory or raise RunDirError naming the holder's run dir and pid."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise RunDirError(f"cannot lock {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise RunDirError(
                f"checkpoint directory {self.path.parent} is in use by job "
                f"{holder.get('job')!r} (run dir {holder.get('run_dir')}, ckptd pid "
                f"{holder.get('pid')} on {holder.get('host')}); stop it or pick another "
                "--checkpoint-dir"
            ) from None
        record = {
            "job": job,
            "run_dir": str(run_dir),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.time(),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, strict_json.dumps(record).encode(), 0)
        except OSError:
            pass  # a full disk: the lock itself holds; only the holder's description is missing
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read(fd: int) -> dict[str, object]:
    try:
        data = strict_json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
