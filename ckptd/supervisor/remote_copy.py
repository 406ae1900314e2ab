"""The remote copy of one job's checkpoints: the part the arbiter owns when a remote is set.

One object wires the store, the lease and the uploader from ``[storage]``: ``prepare()``
then ``follow()`` at each launch (on the background worker: it may download), before them
``set_aside_newer()`` when the launch goes back to an older checkpoint,
``submit()`` after each local commit, ``status()`` for ``ckptd status``, ``protected()``
for local retention, and ``flush(deadline)`` then ``close()`` at a stop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ckptd.config import StorageConfig
from ckptd.storage.branches import GoBackError
from ckptd.storage.remote.branches import RemoteSetAside, set_aside_newer_remote
from ckptd.storage.remote.lease import Fenced, Lease
from ckptd.storage.remote.resume import RemoteResume, RemoteUnusable, fetch_newer
from ckptd.storage.remote.store import RemoteEntry, RemoteError, RemoteStore, RemoteTimeout
from ckptd.storage.remote.uploader import Outcome, Uploader, protected_locally
from ckptd.storage.remote.url import redact
from ckptd.storage.retention import RetentionRules
from ckptd_client.store import Checkpoint

__all__ = ["RemoteCopy", "RemoteSetAside", "RemoteStatus"]

_PROBE_TIMEOUT = 10.0  # listing and the lease at launch: a remote that is down costs this much


@dataclass(frozen=True)
class RemoteStatus:
    """What ``ckptd status`` shows about the remote copy (the ``remote`` object of --json)."""

    remote: str  # the URL, credentials removed
    newest_remote_step: int | None  # of this job's lineage
    backlog_steps: list[int]  # committed locally, not yet remote (in flight included)
    backlog_bytes: int
    bandwidth: float | None  # bytes/s of the last uploads
    fenced: bool  # another daemon took the lease: this one uploads nothing more
    fenced_by: str | None  # who holds the lease then
    reached: bool  # the remote answered since the launch and was compared with the job
    upload_in_flight: int | None  # the step going up now
    upload_timeout: float  # seconds, one attempt
    expected_upload_seconds: float | None  # the backlog at the measured bandwidth
    last_upload: dict[str, Any] | None  # {step, bytes, seconds, age}
    last_error: dict[str, Any] | None  # {step, error, upload_attempt, age}; None after a success
    lineage: str | None  # this job's lineage id
    other_lineage_steps: list[int]  # remote steps of another lineage (pruned once superseded)

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
        progress: Callable[[], int | None] = lambda: None,
        group: str | None = None,
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
        # The nodes of one multi-node job share the lease (and the prefix): see lease.py.
        self.group = group
        owner = None if group is None else f"nodes of {group}"
        self.lease = Lease(self.store, owner, self.probe_timeout, shared=group is not None)
        self._prepared = False
        # What this launch's prepare() saw of the remote, for follow(): whether it looked,
        # and the listing (None: the remote did not answer).
        self._looked = False
        self._catalog: list[RemoteEntry] | None = None
        self.uploader = Uploader(
            self.store,
            post,
            lease=self.lease,
            upload_timeout=storage.upload_timeout,
            keep_remote=storage.keep_remote,
            rules=rules,
            backoff=backoff,
            backoff_max=backoff_max,
            progress=progress,
        )

    def prepare(
        self,
        checkpoint_dir: Path,
        local: Checkpoint | None,
        refuse: Callable[[Path], str | None] = lambda path: None,
    ) -> RemoteResume:
        """At the first launch: take the lease, download a newer remote checkpoint if any.

        Blocking (network, a full verification); run it off the loop. The returned
        ``checkpoint``, when not None, is newer than ``local`` and is the resume point.
        Raises RemoteUnusable (exit 2); a remote that is down is in ``error`` (warn).
        Later launches (restarts) return at once: everything remote since came from here,
        and a remote that is down must not delay a relaunch; except after the remote was
        found ahead of the job (``remote.ahead``), when this launch resumes from it.
        ``refuse`` (the signature check) judges each download before it is put in place.
        """
        if self._prepared and self.uploader.held is None:
            return RemoteResume(newest_remote_step=self.uploader.newest_remote_step)
        self._prepared, self._looked, self._catalog = True, True, None
        try:
            if self.lease.generation is None:
                self.lease.take()
            else:
                self.lease.check()
        except Fenced as exc:  # taken over since: the uploader reports it, the job stops
            self.uploader.fence(exc)
            return RemoteResume(error=str(exc))
        except RemoteError as exc:
            if isinstance(exc, RemoteTimeout):  # down (not refusing): resume from local now
                return RemoteResume(error=str(exc))
        result = fetch_newer(
            self.store,
            checkpoint_dir,
            newer_than=local.step if local is not None else -1,
            timeout=self.storage.upload_timeout,
            list_timeout=self.probe_timeout,
            refuse=refuse,
        )
        self._catalog = result.catalog if result.error is None else None
        return result

    def set_aside_newer(self, step: int, stamp: str | None = None) -> RemoteSetAside:
        """Going back to ``step``: once no upload of a newer step is in flight (waited for up
        to ``upload_timeout``), every remote checkpoint above it moves to ``.branches/``
        (:mod:`ckptd.storage.remote.branches`), and the next ``prepare()`` lists the remote
        again. Blocking. Raises GoBackError when the remote cannot be reached, or another
        daemon holds its lease (what was moved stays moved; the next call finishes)."""
        try:
            if self.lease.generation is None:
                self.lease.take()
            else:
                self.lease.check()
            give_up = time.monotonic() + self.storage.upload_timeout
            while (flying := self.uploader.in_flight) is not None and flying > step:
                if time.monotonic() > give_up:
                    raise RemoteTimeout(f"the upload of step {flying} did not end")
                time.sleep(0.05)
            aside = set_aside_newer_remote(self.store, step, self.storage.upload_timeout, stamp)
        except (RemoteError, Fenced) as exc:
            raise GoBackError(f"cannot set the remote's newer checkpoints aside: {exc}") from None
        self._prepared = False
        return aside

    def follow(self, lineage: str, resume_step: int | None, local: Iterable[Checkpoint]) -> None:
        """After ``prepare()``: the launch's lineage and resume step; after a launch that
        looked at the remote, every valid ``local`` checkpoint newer than the remote's
        newest of this lineage is queued (``status`` shows it as backlog)."""
        looked, catalog = self._looked, self._catalog
        self._looked, self._catalog = False, None
        self.uploader.follow(lineage, resume_step, catalog, list(local) if looked else None)

    def start(self) -> None:
        self.uploader.start()

    def submit(self, path: Path, step: int) -> None:
        """After each local commit; returns at once."""
        self.uploader.submit(path, step)

    def status(self) -> RemoteStatus:
        state = self.uploader.snapshot()
        expected = self.uploader.expected_seconds(state.backlog_bytes)
        now = time.time()
        last, error = state.last_upload, state.last_error
        return RemoteStatus(
            remote=redact(self.store.url),
            newest_remote_step=state.newest_remote_step,
            backlog_steps=state.backlog_steps,
            backlog_bytes=state.backlog_bytes,
            bandwidth=self.uploader.measured_bandwidth,
            fenced=state.fenced_by is not None,
            fenced_by=state.fenced_by,
            reached=state.synced,
            upload_in_flight=state.in_flight,
            upload_timeout=self.uploader.timeout,
            expected_upload_seconds=None
            if expected is None or not state.backlog_bytes
            else round(expected, 3),
            last_upload=None
            if last is None
            else {
                "step": last.step,
                "bytes": last.bytes,
                "seconds": last.seconds,
                "age": round(max(0.0, now - last.time), 3),
            },
            last_error=None
            if error is None
            else {
                "step": error.step,
                "error": error.error,
                "upload_attempt": error.upload_attempt,
                "age": round(max(0.0, now - error.time), 3),
            },
            lineage=state.lineage,
            other_lineage_steps=state.other_lineage_steps,
        )

    def protected(self, local: Iterable[Checkpoint]) -> list[Path]:
        """Local checkpoints retention must keep (newer than the newest remote one)."""
        return protected_locally(local, self.uploader.newest_remote_step)

    def flush(self, deadline: float) -> bool:
        """At a stop: True once the newest committed checkpoint is remote (monotonic deadline)."""
        return self.uploader.flush(deadline)

    def close(self) -> None:
        self.uploader.close()
