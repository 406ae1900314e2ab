"""One job per checkpoint directory: a ``flock`` on ``<checkpoint_dir>/.ckptd-lock``.

Held by the daemon (close-on-exec) for its whole life and released with it, even
when it is SIGKILLed. The file records who holds it (job, node group, run directory,
host, pid) so a refused daemon can say whom to stop.

A job on one node holds the lock exclusively. The daemons of one multi-node job (same
name, same node group: see ``job_identity``) hold it shared: the first takes it
exclusively, writes the record and turns its lock into a shared one; each later one
takes a shared lock and stays only when the record names its own job. Turning a lock
into a shared one is not atomic (another daemon may take it exclusively in between), so
after it the record is read again: a daemon whose record was overwritten gives way.
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
        self.shared_with: dict[str, object] | None = None  # the first node's record, when shared

    def acquire(self, job: str, run_dir: Path, group: str | None = None, hint: str = "") -> None:
        """Take the directory or raise RunDirError naming the holder's run dir and pid.

        ``group``: the node group of a multi-node job, whose daemons share the directory.
        ``hint``: appended to a refusal (how to let the nodes of one job share it).
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise RunDirError(f"cannot lock {self.path}: {exc.strerror}") from None
        mine: dict[str, object] = {"job": job, "group": group}
        try:
            if _try(fd, fcntl.LOCK_EX):
                _write(fd, run_dir, mine)
                if group is not None:
                    self._share(fd, mine, hint)
            elif group is None or not _try_shared(fd):
                raise self._refusal(_read(fd), hint)
            else:
                holder = _read(fd)
                if _identity(holder) != mine:
                    raise self._refusal(holder, hint)
                self.shared_with = holder
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _share(self, fd: int, mine: dict[str, object], hint: str) -> None:
        """Exclusive to shared, then make sure no other job wrote its record in between."""
        if not _try(fd, fcntl.LOCK_SH):
            raise self._refusal(_read(fd), hint)
        holder = _read(fd)
        if _identity(holder) != mine:
            raise self._refusal(holder, hint)

    def _refusal(self, holder: dict[str, object], hint: str) -> RunDirError:
        group = f", nodes {holder['group']}" if holder.get("group") else ""
        return RunDirError(
            f"checkpoint directory {self.path.parent} is in use by job "
            f"{holder.get('job')!r}{group} (run dir {holder.get('run_dir')}, ckptd pid "
            f"{holder.get('pid')} on {holder.get('host')}); stop it or pick another "
            f"--checkpoint-dir{hint}"
        )


def _try(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _try_shared(fd: int, patience: float = 1.0) -> bool:
    """A shared lock; a node of the same job may hold it exclusively for a moment (see above)."""
    deadline = time.monotonic() + patience
    while not _try(fd, fcntl.LOCK_SH):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _identity(record: dict[str, object]) -> dict[str, object]:
    return {"job": record.get("job"), "group": record.get("group")}


def _write(fd: int, run_dir: Path, identity: dict[str, object]) -> None:
    record = {
        **identity,
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


def _read(fd: int) -> dict[str, object]:
    try:
        data = strict_json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
