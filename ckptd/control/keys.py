"""CURVE keys of the TCP control plane: writing a key pair, checking one, the authorized keys.

- :func:`write_key_pair` (``ckptd keygen``) never replaces a pair unless told to, and
  the secret file is 0600 from its first byte (created so, never chmod-ed afterwards).
- :func:`secret_key_problem` is the rule the daemon applies to its own secret file
  before using it, the rule ssh applies to private keys.
- :class:`AuthorizedKeys` is the directory of client public keys, re-read whenever
  its listing changes; it is consulted from the ZAP thread (each new connection) and
  from the arbiter's thread (each TCP request, each published event), hence its lock.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import zmq
import zmq.auth

from ckptd.log import get_logger

__all__ = [
    "AuthorizedKeys",
    "KeyPairExists",
    "authorized_keys_problem",
    "secret_key_problem",
    "write_key_pair",
]

_BANNER = """#   ****  Generated on {time} by ckptd keygen  ****
#   ZeroMQ CURVE {kind} Certificate
#   {advice}

metadata
curve
    public-key = "{public}"
"""
_Signature = tuple[tuple[str, int, int, int, int], ...]


class KeyPairExists(FileExistsError):
    """A key file is in the way and replacing it was not asked for."""


def write_key_pair(directory: Path, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (0600) into ``directory``.

    Raises KeyPairExists when either file exists and ``force`` is false; nothing is
    written then. With ``force`` each file is replaced atomically (rename), so a
    reader never sees half a key. OSError for anything the file system refuses.
    """
    public_path, secret_path = directory / f"{name}.key", directory / f"{name}.key_secret"
    if not force:
        for path in (public_path, secret_path):
            if os.path.lexists(path):
                raise KeyPairExists(17, "exists", str(path))
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    common = {"time": stamp, "public": public.decode()}
    secret_text = (
        _BANNER.format(
            kind="**Secret**", advice="Keep it private: whoever holds it is this key.", **common
        )
        + f'    secret-key = "{secret.decode()}"\n'
    )
    public_text = _BANNER.format(
        kind="Public", advice="Give it to the other side of the connection.", **common
    )
    _place(secret_path, secret_text, 0o600, force)
    _place(public_path, public_text, 0o644, force)
    return public_path, secret_path


def _place(path: Path, text: str, mode: int, force: bool) -> None:
    """Write a new file beside ``path`` with ``mode`` from creation, then move it into place."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if force:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)  # fails rather than replace one that appeared meanwhile
            except FileExistsError:
                raise KeyPairExists(17, "exists", str(path)) from None
    finally:
        if os.path.lexists(temp):
            os.unlink(temp)


def secret_key_problem(path: Path) -> str | None:
    """Why the daemon must not use this secret key file, or None when it may.

    Refused, as ssh refuses a private key: a file of this user that group or others
    may access at all, any file that others may read, a file without a secret key.
    """
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077 and (info.st_uid == os.getuid() or mode & 0o004):
        return f"{path} is open to other users (mode {mode:04o}); chmod 600 {path}"
    try:
        _, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        return f"{path}: {exc}"
    if secret is None:
        return f"{path} holds no secret key (give the .key_secret file ckptd keygen wrote)"
    return None


def authorized_keys_problem(directory: Path) -> str | None:
    """Why a directory of authorized keys cannot be trusted: others could add a key to it."""
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o022:
        return (
            f"{directory} is writable by other users (mode {mode:04o}), who could let "
            f"themselves in; chmod go-w {directory}"
        )
    return None


class AuthorizedKeys:
    """The public keys (z85) of the ``*.key`` files in one directory, as they are now.

    Every :meth:`current` compares the directory's listing (names, sizes, times,
    inodes) with the one last read and re-reads the keys when it changed: a key
    added works at its first connection, a key removed is refused from the next
    check on. A ``*.key`` file that group or others may write, or that holds no key,
    is skipped with a warning (once per change of the directory).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.revocations = 0  # how many re-reads found a key gone
        self._lock = threading.Lock()
        self._signature: _Signature | None = None
        self._keys: frozenset[bytes] = frozenset()

    def current(self) -> frozenset[bytes]:
        signature = self._listing()
        with self._lock:
            if signature != self._signature:
                keys = self._load()
                if self._keys - keys:
                    self.revocations += 1
                self._keys, self._signature = keys, signature
            return self._keys

    def allows(self, key: bytes) -> bool:
        return key in self.current()

    def callback(self, domain: str, key: bytes) -> bool:
        """The ZAP check of pyzmq's ``configure_curve_callback``: ``key`` is z85."""
        return self.allows(key)

    def _listing(self) -> _Signature:
        entries = []
        try:
            with os.scandir(self.directory) as listing:
                for entry in listing:
                    if entry.name.endswith(".key"):
                        info = entry.stat()
                        entries.append(
                            (entry.name, info.st_size, info.st_mtime_ns, info.st_ino, info.st_mode)
                        )
        except OSError:
            return ()  # gone or unreadable: no key is authorized
        return tuple(sorted(entries))

    def _load(self) -> frozenset[bytes]:
        keys = set()
        for path in sorted(self.directory.glob("*.key")):
            try:
                if stat.S_IMODE(path.stat().st_mode) & 0o022:
                    raise ValueError("writable by other users")
                public, _ = zmq.auth.load_certificate(str(path))
            except (OSError, ValueError) as exc:
                get_logger().warning("control.key_skipped", path=str(path), why=str(exc))
                continue
            keys.add(public)
        return frozenset(keys)
