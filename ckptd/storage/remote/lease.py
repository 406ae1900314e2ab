"""Fencing two daemons on one remote prefix: a lease object with a generation number.

``<remote>/.ckptd-lease`` holds ``{"owner", "generation", "host", "pid", "time"}``.

- :meth:`Lease.take` (at daemon start) reads the lease and writes ``generation + 1`` with a
  conditional write on what it read: S3 ``If-Match: <ETag>`` (``If-None-Match: *`` when
  there is none yet); on ``file://`` a read-compare-write under ``flock``. Losing the race
  re-reads and tries again, so every generation is granted to exactly one owner and the
  daemon that started last holds the highest one.
- :meth:`Lease.check` (before each upload, right before each manifest write and before each
  remote deletion) reads the lease: a higher generation, or the same one held by another
  owner, raises :class:`Fenced`, the uploader stops for good (``remote.fenced``) and the daemon
  stops its job (exit ``FENCED``). A missing bucket is named as such, never a lost race. A lease
  that vanished or went *down* (someone wiped the prefix) is written back with this owner's
  generation, again conditionally, so the highest generation always wins.

The daemons of one multi-node job share one lease (``shared``: the owner is the job's node
group, see ``ckptd.storage.job_identity``): a node that finds the lease held by its own
job adopts its generation instead of taking a new one, so the nodes never fence each other,
while a second instance of the job (another node group) takes it over and fences them all.

Guarantee (S3 and S3-compatible stores with conditional writes, and ``file://``): after a
new daemon took the lease, the old one starts no upload, writes no manifest and deletes
nothing once its next check has run; the only write that can still land is one whose check
passed before the takeover (object stores have no multi-object transaction, so the window
is one request round trip). Manifests are created with ``If-None-Match: *``, so two writers
never silently replace each other's manifest, and every file is covered by the manifest's
digests: a checkpoint mixed from two writers fails verification and is never resumed from.
Other stores (gs://, az://, ...) get the same protocol without the conditional write: a
read-compare-write that two daemons starting within the same second could both win.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from ckptd import strict_json
from ckptd.storage.remote.store import Deadline, RemoteError, RemoteStore
from ckptd.storage.remote.url import redact

__all__ = ["LEASE_NAME", "Fenced", "Lease", "LeaseRecord"]

LEASE_NAME = ".ckptd-lease"
_ATTEMPTS = 8


class Fenced(Exception):
    """Another daemon holds the lease with a newer generation: stop writing to the remote."""

    def __init__(self, holder: LeaseRecord) -> None:
        super().__init__(
            f"fenced by {holder.owner} (generation {holder.generation}, "
            f"host {holder.host}, pid {holder.pid})"
        )
        self.holder = holder


@dataclass(frozen=True)
class LeaseRecord:
    owner: str
    generation: int
    host: str = ""
    pid: int = 0
    time: float = 0.0

    def to_bytes(self) -> bytes:
        return strict_json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> LeaseRecord | None:
        """The record in ``raw``; None for anything that is not one (treated as no lease)."""
        try:
            data = json.loads(raw)
            record = cls(
                str(data["owner"]),
                int(data["generation"]),
                str(data.get("host", "")),
                int(data.get("pid", 0)),
                float(data.get("time", 0.0)),
            )
        except (ValueError, TypeError, KeyError, UnicodeDecodeError, RecursionError):
            return None
        return record if record.generation > 0 else None


class Lease:
    """This daemon's lease on ``store``; ``generation`` is None until :meth:`take`."""

    def __init__(
        self,
        store: RemoteStore,
        owner: str | None = None,
        timeout: float = 30.0,
        *,
        shared: bool = False,
    ) -> None:
        self.store = store
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.timeout = timeout
        self.shared = shared  # the daemons of one multi-node job: one owner, never fenced apart
        self.generation: int | None = None
        self.path = f"{store.root}/{LEASE_NAME}"

    def take(self) -> int:
        """Take the lease over from any previous holder; return the new generation.

        Raises RemoteError when the remote cannot be reached or the race keeps being lost.
        """
        for _ in range(_ATTEMPTS):
            current, token = self._read()
            if self.shared and current is not None and current.owner == self.owner:
                self.generation = current.generation  # another node of this job took it
                return current.generation
            generation = (current.generation if current else 0) + 1
            if self._write(self._record(generation), token):
                self.generation = generation
                return generation
        raise RemoteError(f"{self.path}: could not take the lease (kept losing the race)")

    def check(self) -> None:
        """Raise Fenced when a newer holder took the lease; re-assert it when it vanished."""
        if self.generation is None:
            raise RuntimeError("check() before take()")
        for _ in range(_ATTEMPTS):
            current, token = self._read()
            if current is not None:
                if current.generation > self.generation or (
                    current.generation == self.generation and current.owner != self.owner
                ):
                    raise Fenced(current)
                if current.generation == self.generation:
                    return
            if self._write(self._record(self.generation), token):
                return
        raise RemoteError(f"{self.path}: could not re-assert the lease (kept losing the race)")

    def holder(self) -> LeaseRecord | None:
        """Who holds the lease now (None: nobody)."""
        return self._read()[0]

    def _record(self, generation: int) -> LeaseRecord:
        return LeaseRecord(self.owner, generation, socket.gethostname(), os.getpid(), time.time())

    # -- conditional read / write per backend --------------------------------------------

    def _read(self) -> tuple[LeaseRecord | None, Any]:
        """The lease and a token to write conditionally on it (None: there is no lease)."""
        if "s3" in self.store.protocols:
            return self._read_s3()
        if "file" in self.store.protocols:
            with self._flock():
                return self._read_plain()
        return self._read_plain()

    def _write(self, record: LeaseRecord, token: Any) -> bool:
        """Write ``record`` if the lease is still what ``token`` says; False when it changed."""
        if "s3" in self.store.protocols:
            return self._write_s3(record, token)
        if "file" in self.store.protocols:
            with self._flock():
                return self._write_plain(record, token)
        return self._write_plain(record, token)

    def _read_plain(self) -> tuple[LeaseRecord | None, Any]:
        try:
            raw = self.store.transport.call(
                "cat_file", self.path, deadline=Deadline.after(self.timeout)
            )
        except RemoteError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                return None, None
            raise
        return LeaseRecord.from_bytes(raw), raw

    def _write_plain(self, record: LeaseRecord, token: Any) -> bool:
        current = self._read_plain()[1]
        if current != token:
            return False
        if "file" in self.store.protocols:
            os.makedirs(self.store.root, exist_ok=True)
            temp = f"{self.path}.{secrets.token_hex(4)}"
            with open(temp, "wb") as handle:
                handle.write(record.to_bytes())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
            return True
        self.store.transport.call(
            "pipe_file", self.path, record.to_bytes(), deadline=Deadline.after(self.timeout)
        )
        return True

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        os.makedirs(self.store.root, exist_ok=True)
        fd = os.open(
            f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read_s3(self) -> tuple[LeaseRecord | None, Any]:
        fs = self.store.fs
        bucket, key, _ = fs.split_path(self.path)

        async def get() -> tuple[bytes, str]:
            response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
            async with response["Body"] as body:
                return await body.read(), response["ETag"]

        try:
            raw, etag = self.store.transport.bounded(get, Deadline.after(self.timeout))
        except RemoteError as exc:
            self._raise_if_bucket_gone(exc)
            if isinstance(exc.__cause__, FileNotFoundError):
                return None, None
            raise
        return LeaseRecord.from_bytes(raw), etag

    def _write_s3(self, record: LeaseRecord, etag: str | None) -> bool:
        fs = self.store.fs
        bucket, key, _ = fs.split_path(self.path)
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}

        async def put() -> None:
            await fs._call_s3(
                "put_object", Bucket=bucket, Key=key, Body=record.to_bytes(), **condition
            )

        try:
            self.store.transport.bounded(put, Deadline.after(self.timeout))
        except RemoteError as exc:
            self._raise_if_bucket_gone(exc)
            if _lost_race(exc.__cause__):
                return False
            raise
        return True

    def _raise_if_bucket_gone(self, exc: RemoteError) -> None:
        """A missing bucket is not a missing lease, nor a lost race: say what it is."""
        if _error_code(exc.__cause__) == "NoSuchBucket":
            bucket = self.store.fs.split_path(self.path)[0]
            raise RemoteError(
                f"{redact(self.store.url)}: the bucket {bucket!r} does not exist (deleted?)"
            ) from exc


def _lost_race(cause: BaseException | None) -> bool:
    """A failed precondition (412), or If-Match on a lease deleted meanwhile (404)."""
    if isinstance(cause, (FileExistsError, FileNotFoundError)):
        return True
    return _error_code(cause) == "PreconditionFailed"


def _error_code(cause: BaseException | None) -> str | None:
    """The S3 error code behind s3fs's translated exception (``NoSuchBucket``, ...)."""
    original = getattr(cause, "__cause__", None)
    response: Any = getattr(original, "response", None) or {}
    code = response.get("Error", {}).get("Code")
    return code if isinstance(code, str) else None
