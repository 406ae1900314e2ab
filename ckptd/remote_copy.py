"""The remote copy of one job's checkpoints: the part the arbiter owns when a remote is set.

One object wires the store, the lease and the uploader from ``[storage]``: ``prepare()``
at each launch (on the background worker: it may download), ``submit()`` after each local
commit, ``status()`` for ``ckptd status``, ``protected()`` for local retention, and
``flush(deadline)`` then ``close()`` at a stop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ckptd_client.store import Checkpoint

from .config import StorageConfig
from .lease import Lease
from .remote_resume import RemoteResume, RemoteUnusable, fetch_newer
from .remote_store import RemoteError, RemoteStore, RemoteTimeout
from .remote_url import redact
from .retention import RetentionRules
from .uploader import Outcome, Uploader, protected_locally

__all__ = ["RemoteCopy", "RemoteStatus"]

_PROBE_TIMEOUT = 10.0  # listing and the lease at launch: a remote that is down costs this much


@dataclass(frozen=True)
class RemoteStatus:
    """What ``ckptd status`` shows about the remote copy."""

    remote: str  # the URL, credentials removed
    newest_remote_step: int | None
    backlog_steps: list[int]
    backlog_bytes: int
    bandwidth: float | None  # bytes/s of the last uploads
    fenced: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class RemoteCopy:
    """Store, lease and uploader for ``storage``; outcomes go to ``post`` (from its thread).

    Raises RemoteUnusable when the filesystem refuses the URL or its options.
    """

    def __init__(
        self,
        storage: StorageConfig,
        rules: RetentionRules,
        post: Callable[[Outcome], None],
        *,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        if storage.remote is None:
            raise ValueError("no remote configured")
        self.storage = storage
        try:
            self.store = RemoteStore(storage.remote, storage.options)
        except Exception as exc:  # each backend rejects bad options in its own way
            raise RemoteUnusable(f"{redact(storage.remote)}: {type(exc).__name__}: {exc}") from None
        # A remote that is down must not hold up a launch, nor a stop, for long.
        self.probe_timeout = min(storage.upload_timeout, _PROBE_TIMEOUT)
        self.lease = Lease(self.store, timeout=self.probe_timeout)
        self._prepared = False
        self.uploader = Uploader(
            self.store,
            post,
            lease=self.lease,
            upload_timeout=storage.upload_timeout,
            keep_remote=storage.keep_remote,
            rules=rules,
            backoff=backoff,
            backoff_max=backoff_max,
        )

    def prepare(self, checkpoint_dir: Path, local: Checkpoint | None) -> RemoteResume:
        """At the first launch: take the lease, download a newer remote checkpoint if any.

        Blocking (network, a full verification); run it off the loop. The returned
        ``checkpoint``, when not None, is newer than ``local`` and is the resume point.
        Raises RemoteUnusable (exit 2); a remote that is down is in ``error`` (warn).
        Later launches (restarts) return at once: everything remote since came from here,
        and a remote that is down must not delay a relaunch.
        """
        if self._prepared:
            return RemoteResume(newest_remote_step=self.uploader.newest_remote_step)
        try:
            self.lease.take()
        except RemoteError as exc:
            if isinstance(exc, RemoteTimeout):  # down (not refusing): resume from local now
                self._prepared = True
                return RemoteResume(error=str(exc))
        result = fetch_newer(
            self.store,
            checkpoint_dir,
            newer_than=local.step if local is not None else -1,
            timeout=self.storage.upload_timeout,
            list_timeout=self.probe_timeout,
        )
        if result.newest_remote_step is not None:
            self.uploader.note_remote(result.newest_remote_step)
        self._prepared = True
        return result

    def start(self) -> None:
        self.uploader.start()

    def submit(self, path: Path, step: int) -> None:
        """After each local commit; returns at once."""
        self.uploader.submit(path, step)

    def status(self) -> RemoteStatus:
        steps, size = self.uploader.backlog()
        return RemoteStatus(
            redact(self.store.url),
            self.uploader.newest_remote_step,
            steps,
            size,
            self.uploader.measured_bandwidth,
            self.uploader.fenced,
        )

    def protected(self, local: Iterable[Checkpoint]) -> list[Path]:
        """Local checkpoints retention must keep (newer than the newest remote one)."""
        return protected_locally(local, self.uploader.newest_remote_step)

    def flush(self, deadline: float) -> bool:
        """At a stop: True once the newest committed checkpoint is remote (monotonic deadline)."""
        return self.uploader.flush(deadline)

    def close(self) -> None:
        self.uploader.close()
