"""The background uploader: each committed checkpoint goes to the remote, newest first.

One thread does the uploads; its queue (``upload_queue``) holds what is pending. ``submit()``
after each local commit returns at once; the thread uploads the newest pending step, and a
newer commit supersedes older pending ones (they are dropped, never uploaded). A failed
attempt is retried with capped, doubling backoff; every attempt is bounded by
``upload_timeout``, except at a stop (``flush``), where the final upload is one attempt
that gets the whole remaining deadline, the one in flight included. Outcomes are immutable
values handed to ``post`` (the arbiter turns them into events); nothing is swallowed.
After each upload the remote is pruned (``remote_retention``).

Before its first upload after a launch the thread compares the remote with the job
(``remote_lineage``) when the launch could not: a remote that was down at the launch is
listed again until it answers. A remote ahead of the job holds every upload back until the
next launch (``remote.ahead``).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from ckptd.storage.remote.lease import Fenced, Lease
from ckptd.storage.remote.outcomes import (
    Outcome,
    RemoteAhead,
    RemoteFenced,
    RemotePruned,
    RemotePruneFailed,
    Uploaded,
    UploadFailed,
    UploadTimeoutShort,
)
from ckptd.storage.remote.parts import is_part, upload_part
from ckptd.storage.remote.retention import prune_remote
from ckptd.storage.remote.store import (
    RemoteCancelled,
    RemoteEntry,
    RemoteError,
    RemoteStore,
    RemoteTimeout,
)
from ckptd.storage.remote.upload_meter import UploadMeter
from ckptd.storage.remote.upload_queue import COMPARE, UploadQueue, UploadState
from ckptd.storage.retention import RetentionRules
from ckptd_client.manifest import read_manifest
from ckptd_client.store import Checkpoint

__all__ = [
    "Outcome",
    "RemoteAhead",
    "RemoteFenced",
    "RemotePruneFailed",
    "RemotePruned",
    "UploadFailed",
    "UploadState",
    "UploadTimeoutShort",
    "Uploaded",
    "Uploader",
    "protected_locally",
]

_PROBE_EVERY_MAX = 10.0  # a remote down since the launch is listed again at least this often
_LIST_TIMEOUT = 60.0  # a listing, not an upload: upload_timeout is no bound for it


def protected_locally(local: Iterable[Checkpoint], newest_remote_step: int | None) -> list[Path]:
    """Local checkpoints retention must keep: every one newer than the newest remote one.

    With nothing remote yet (None), all of them: each may be the only copy.
    """
    floor = -1 if newest_remote_step is None else newest_remote_step
    return [c.path for c in local if c.step > floor]


class _Counter:
    """Bytes an attempt has sent so far (added to from fsspec's I/O thread)."""

    def __init__(self) -> None:
        self.total = 0

    def add(self, size: int) -> None:
        self.total += size


class Uploader:
    """Uploads committed checkpoints to ``store`` in a background thread.

    ``lease`` fences this uploader against a newer daemon on the same prefix; take it at
    start (``lease.take()``), or leave that to the thread when the remote is down.
    ``keep_remote`` N keeps the N newest remote checkpoints; 0 applies ``rules`` (the local
    retention rules; None: no remote pruning). ``newest_remote_step`` seeds what is known
    to be remote. ``progress()`` is the job's current step (None before it reports one).
    """

    def __init__(
        self,
        store: RemoteStore,
        post: Callable[[Outcome], None],
        *,
        lease: Lease | None = None,
        upload_timeout: float = 600.0,
        keep_remote: int = 0,
        rules: RetentionRules | None = None,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        newest_remote_step: int | None = None,
        progress: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.store = store
        self.timeout = upload_timeout
        self.meter = UploadMeter(upload_timeout)
        self._post = post
        self._lease = lease
        self._rules = RetentionRules(keep_last=keep_remote) if keep_remote else rules
        self._progress = progress
        self._queue = UploadQueue(backoff, backoff_max, newest_remote_step)
        self._thread = threading.Thread(target=self._run, name="ckptd-uploader", daemon=True)

    # -- what the arbiter calls ----------------------------------------------------------

    def start(self) -> Uploader:
        self._thread.start()
        return self

    def submit(self, path: Path, step: int) -> None:
        """Queue a committed checkpoint for upload; returns at once."""
        try:
            size = read_manifest(path).size
        except (OSError, ValueError):
            size = 0
        if self._queue.submit(step, path, size):
            self._warn_if_timeout_short(step, size)

    def follow(
        self,
        lineage: str,
        resume_step: int | None,
        catalog: list[RemoteEntry] | None,
        local: Iterable[Checkpoint] | None,
    ) -> None:
        """What a launch resumed from: this job's lineage and step.

        ``local`` (the valid local checkpoints) is given after a launch that listed the
        remote, or tried to: every one newer than the newest remote one of this lineage is
        queued, newest first (all of them when the remote could not be listed: ``catalog``
        None; the thread compares once it answers). None (a restart): nothing else changed.
        """
        self._queue.follow(lineage, resume_step, catalog, local)

    def backlog(self) -> tuple[list[int], int]:
        """Steps committed locally but not yet remote (in flight included), and their bytes."""
        return self._queue.backlog()

    def snapshot(self) -> UploadState:
        """Everything ``ckptd status`` shows of the uploads, taken at one moment."""
        return self._queue.snapshot()

    @property
    def newest_remote_step(self) -> int | None:
        """The newest remote step of this job's lineage."""
        return self._queue.newest_remote_step

    @property
    def in_flight(self) -> int | None:
        """The step being uploaded now, if any."""
        return self._queue.in_flight

    @property
    def held(self) -> RemoteAhead | None:
        """Set when the remote is ahead of the job: no upload until the next launch."""
        return self._queue.held

    @property
    def fenced(self) -> bool:
        return self._queue.fenced

    @property
    def measured_bandwidth(self) -> float | None:
        """Bytes per second of the last few uploads (None before the first)."""
        return self.meter.bandwidth

    def expected_seconds(self, size: int) -> float | None:
        """How long ``size`` bytes should take to upload at the measured bandwidth."""
        return self.meter.expected_seconds(size)

    def flush(self, deadline: float) -> bool:
        """Wait until the newest submitted checkpoint is remote, or until ``deadline``.

        ``deadline`` is a ``time.monotonic()`` value. While flushing, an attempt (the one
        in flight included) runs until the deadline instead of ``upload_timeout``, backoff
        shrinks, and an older upload in flight gives way to the newest step. Returns True
        when the newest submitted checkpoint (if any) is remote; False at once when fenced
        or when the remote is ahead.
        """
        return self._queue.wait_flushed(deadline, self._thread.is_alive)

    def fence(self, exc: Fenced, step: int | None = None) -> None:
        """Stop for good: another daemon holds the lease (``remote.fenced``)."""
        self._post(self._queue.fence(str(exc), step))

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the thread: an upload in flight is cancelled within a fraction of a second."""
        self._queue.close()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while (job := self._queue.next_job()) is not None:
            step, path = job
            try:
                if step == COMPARE:
                    self._compare()
                else:
                    self._upload(step, path)
            except Fenced as exc:
                self.fence(exc, None if step == COMPARE else step)
                return

    def _compare(self) -> None:
        """List the remote and compare it with the job (``remote_lineage``)."""
        try:
            self._check_lease()
            bound = min(self._queue.attempt_timeout(self.timeout), _LIST_TIMEOUT)
            catalog = self.store.catalog(bound)
        except RemoteError as exc:
            failed = self._queue.failed(
                self._queue.newest_pending(), str(exc), ceiling=_PROBE_EVERY_MAX
            )
            if failed is not None:
                self._post(failed)
            return
        ahead = self._queue.compared(catalog, self._progress())
        if ahead is not None:
            self._post(ahead)

    def _upload(self, step: int, path: Path) -> None:
        sent = _Counter()
        began = time.monotonic()
        try:
            self._check_lease()
            upload = functools.partial(upload_part, self.store) if is_part(path) else None
            result = (upload or self.store.upload)(
                path,
                self._queue.attempt_timeout(self.timeout),
                before_manifest=self._check_lease,
                cancelled=functools.partial(self._queue.should_cancel, step),
                until=self._queue.flush_deadline,
                sent=sent.add,
            )
        except (OSError, ValueError) as exc:
            self._post(self._queue.gave_up(step, str(exc)))
        except RemoteCancelled:
            self._queue.cancelled()
        except RemoteError as exc:
            if isinstance(exc, RemoteTimeout) and sent.total:
                # An attempt cut short still measured the bandwidth: is the bound too short?
                self.meter.measured(sent.total, time.monotonic() - began)
                self._warn_if_timeout_short(step, self._queue.size_of(step))
            failed = self._queue.failed(step, str(exc), ceiling=None)
            if failed is not None:
                self._post(failed)
        else:
            self._queue.uploaded(step, result.bytes, result.seconds)
            self.meter.measured(result.bytes, result.seconds)
            self._post(Uploaded(step, result.bytes, round(result.seconds, 3)))
            self._prune(step)

    def _check_lease(self) -> None:
        """Fenced when a newer daemon holds the lease; a lease not yet taken is taken now."""
        if self._lease is None:
            return
        if self._lease.generation is None:
            self._lease.take()
        else:
            self._lease.check()

    def _warn_if_timeout_short(self, step: int, size: int) -> None:
        """``remote.timeout_short`` once each time upload_timeout becomes too short."""
        warning = self.meter.too_short(step, size)
        if warning is not None:
            self._post(warning)

    def _prune(self, uploaded: int) -> None:
        """Remote retention after an upload (``remote_retention``)."""
        if self._rules is None:
            return
        try:
            others = prune_remote(
                self.store,
                self._rules,
                self._queue.lineage,
                uploaded,
                check_lease=self._check_lease,
                post=self._post,
                stopping=lambda: self._queue.closing,
                pending=self._queue.is_pending,
            )
        except Fenced as exc:
            self.fence(exc, uploaded)
        except RemoteError as exc:
            self._post(RemotePruneFailed(str(exc)))
        else:
            self._queue.set_others(others)
