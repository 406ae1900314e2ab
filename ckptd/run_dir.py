"""The run directory: its lock, its sockets, its signal files. Private to the user (0700).

The lock is an ``flock`` on ``<run_dir>/lock`` whose descriptor the job
inherits: while the daemon *or any process of its job* lives, a second daemon
cannot take the run directory, even after the first was SIGKILLed.

A run directory too deep for ipc paths gets its sockets in a private directory
made by ``mkdtemp`` (unguessable name, 0700) under ``$XDG_RUNTIME_DIR`` or the temp
directory: no other user can create it first. A later daemon of the same run
directory reuses it while it is still there and its own, so an orphaned job's client
(whose ``CKPTD_ENDPOINT`` names it) can reconnect.
"""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

# The one opener of run-dir files (shared with the client), re-exported for the daemon.
from ckptd_client._run_files import NotRegularFile as NotRegularFile
from ckptd_client._run_files import open_regular as open_regular
from ckptd_client._run_files import read_regular as read_regular

from . import strict_json

CHECKPOINT_FILE = "CHECKPOINT"
STOP_FILE = "STOP"
EVENTS_FILE = "events.jsonl"
ENDPOINTS_FILE = "endpoints.json"
JOB_FILE = "job.json"
_LOCK_FILE = "lock"
_DAEMON_LOCK_FILE = "daemon.lock"
_MAX_IPC_PATH = 100  # sun_path holds 107 bytes; keep a margin


class RunDirError(RuntimeError):
    """The run directory cannot be used; the message says why and what to do."""


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd: int | None = None
        self._daemon_fd: int | None = None
        self._socket_dir: Path | None = None

    @property
    def has_job_lock(self) -> bool:
        return self._lock_fd is not None

    def lock_holders(self) -> list[psutil.Process]:
        """Processes other than this one with the job lock file open (rare: a full /proc scan)."""
        target = str(self.file(_LOCK_FILE))
        holders = []
        for process in psutil.process_iter():
            if process.pid == os.getpid():
                continue
            try:
                if any(f.path == target for f in process.open_files()):
                    holders.append(process)
            except psutil.Error:
                continue
        return holders

    @property
    def lock_fd(self) -> int:
        if self._lock_fd is None:
            raise RunDirError("run directory is not locked")
        return self._lock_fd

    def file(self, name: str) -> Path:
        return self.path / name

    def prepare(self) -> None:
        """Create the directory (0700) if needed; refuse a symlink or someone else's directory."""
        if self.path.is_symlink():
            raise RunDirError(f"run directory {self.path} is a symlink; ckptd does not follow it")
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {self.path}: {exc.strerror}") from None
        info = self.path.lstat()
        if info.st_uid != os.getuid():
            raise RunDirError(f"run directory {self.path} belongs to another user")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(self.path, 0o700)

    def lock(self) -> Orphan | None:
        """Take the run directory for this daemon.

        Two locks: ``daemon.lock`` is held by the daemon alone (close-on-exec), so a
        second daemon is refused while the first lives; ``lock`` is inherited by the
        job, so it stays held while any process of the job lives, even after the
        daemon was SIGKILLed. When only the job lock is taken, the processes holding
        it belong to an earlier job whose daemon is gone: their record is returned,
        and :meth:`take_job_lock` succeeds once they are stopped.
        """
        fd = open_regular(self.file(_DAEMON_LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirError(_busy_message(self.path, holder)) from None
        self._daemon_fd = fd
        _write_record(fd, {"daemon_pid": os.getpid(), "since": time.time()})
        if self.take_job_lock(timeout=0):
            return None
        job_fd = open_regular(self.file(_LOCK_FILE))
        try:
            holder = _read_holder(job_fd)
        finally:
            os.close(job_fd)
        return Orphan.from_record(holder)

    def take_job_lock(self, timeout: float) -> bool:
        """Take the lock the job inherits; wait up to ``timeout`` s for earlier holders to go."""
        fd = open_regular(self.file(_LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.02)
        self._lock_fd = fd
        self.record_holder(job_pid=None)
        return True

    def record_holder(self, job_pid: int | None) -> None:
        """Write who holds the job lock, so a later daemon can find an orphaned job."""
        if self._lock_fd is None:
            return  # an adopted orphan holds the lock; its record stays as it was
        started = None
        if job_pid is not None:
            try:
                started = psutil.Process(job_pid).create_time()
            except psutil.Error:
                pass
        record = {
            "daemon_pid": os.getpid(),
            "job_pid": job_pid,
            "job_started": started,
            "since": time.time(),
        }
        try:
            _write_record(self.lock_fd, record)
        except OSError:
            pass  # a full disk: the lock still holds; only orphan adoption loses its hint

    def unlock(self) -> None:
        for fd in (self._lock_fd, self._daemon_fd):
            if fd is not None:
                os.close(fd)
        self._lock_fd = self._daemon_fd = None

    def ipc_endpoint(self, name: str) -> str:
        """``ipc://<run_dir>/<name>.sock``, or a short private path when that is too long.

        Raises RunDirError when no short private directory can be made.
        """
        path = self.file(f"{name}.sock")
        if len(str(path)) > _MAX_IPC_PATH:
            if self._socket_dir is None:
                self._socket_dir = self._previous_socket_dir() or _new_socket_dir()
            path = self._socket_dir / f"{name}.sock"
            if len(str(path)) > _MAX_IPC_PATH:
                raise RunDirError(
                    f"socket path {path} is too long for ipc; set XDG_RUNTIME_DIR or TMPDIR "
                    "to a shorter directory"
                )
        return f"ipc://{path}"

    def remove_socket_dir(self) -> None:
        """Remove the private socket directory once its sockets are gone (nothing otherwise)."""
        if self._socket_dir is not None:
            try:
                self._socket_dir.rmdir()
            except OSError:
                pass  # a socket still there (a bug, or a crash): the next daemon reuses it

    def _previous_socket_dir(self) -> Path | None:
        """The private socket directory the last daemon here recorded, if still usable."""
        try:
            recorded = strict_json.loads(read_regular(self.file(ENDPOINTS_FILE)))["job"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        path = socket_path(recorded) if isinstance(recorded, str) else None
        if path is None or path.parent == self.path or not path.parent.name.startswith("ckptd-"):
            return None
        try:
            info = path.parent.lstat()
        except OSError:
            return None
        if (
            stat.S_ISDIR(info.st_mode)
            and info.st_uid == os.getuid()
            and stat.S_IMODE(info.st_mode) == 0o700
        ):
            return path.parent
        return None

    def record_endpoints(self, endpoints: dict[str, str]) -> None:
        """Write where the sockets are, for ``ckptd`` commands and ``Controller``."""
        write_private(self.file(ENDPOINTS_FILE), strict_json.dumps(endpoints, indent=1) + "\n")

    def consume(self, name: str) -> bool:
        """Remove a signal file; return whether it was there. Links are removed, never followed."""
        try:
            os.unlink(self.file(name))
            return True
        except FileNotFoundError:
            return False


def socket_path(endpoint: str) -> Path | None:
    return Path(endpoint[len("ipc://") :]) if endpoint.startswith("ipc://") else None


def bind_private(sock: Any, endpoint: str) -> None:
    """Bind a ZeroMQ socket; an ipc socket file is born 0600 (umask), never readable by others.

    A socket file already there is a dead daemon's: the run-directory locks are ours now.
    """
    path = socket_path(endpoint)
    if path is not None and (path.exists() or path.is_symlink()):
        path.unlink()
    previous = os.umask(0o177)
    try:
        sock.bind(endpoint)
    finally:
        os.umask(previous)
    if path is not None:
        os.chmod(path, 0o600)


def remove_socket(endpoint: str) -> None:
    """Remove the file of an ipc endpoint (nothing for TCP)."""
    path = socket_path(endpoint)
    if path is not None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _new_socket_dir() -> Path:
    """A fresh private directory (0700, random name) for sockets; RunDirError if none can be."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    try:
        return Path(tempfile.mkdtemp(prefix="ckptd-", dir=base))
    except OSError as exc:
        raise RunDirError(
            f"cannot create a socket directory in {base}: {exc.strerror or exc}"
        ) from None


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (0600); whatever was at ``path`` is not opened."""
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = open_regular(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temp, path)


@dataclass(frozen=True)
class Orphan:
    """A job process left running by a daemon that died (recorded in the job lock)."""

    pid: int | None
    started: float | None

    @classmethod
    def from_record(cls, record: dict[str, object]) -> Orphan:
        pid, started = record.get("job_pid"), record.get("job_started")
        return cls(
            pid if isinstance(pid, int) else None,
            float(started) if isinstance(started, (int, float)) else None,
        )


def _write_record(fd: int, record: dict[str, object]) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, strict_json.dumps(record).encode(), 0)


def _read_holder(fd: int) -> dict[str, object]:
    try:
        data = strict_json.loads(os.pread(fd, 4096, 0) or b"{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _busy_message(path: Path, holder: dict[str, object]) -> str:
    daemon = holder.get("daemon_pid")
    return (
        f"run directory {path} is in use by ckptd pid {daemon}; stop it first "
        "(ckptd stop --run-dir, or SIGTERM) or pick another --run-dir"
    )
