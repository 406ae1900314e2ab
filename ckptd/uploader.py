"""The background uploader: each committed checkpoint goes to the remote, newest first.

One thread owns the upload queue. ``submit()`` after each local commit returns at once; the
thread uploads the newest pending step, and a newer commit supersedes older pending ones
(they are dropped, never uploaded). A failed attempt is retried with capped, doubling
backoff; every attempt is bounded by ``upload_timeout``. Outcomes are immutable values
handed to ``post`` (the arbiter turns them into events); nothing is swallowed.
After each upload the remote is pruned (``keep_remote`` newest, or the local rules).
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from ckptd_client.manifest import read_manifest
from ckptd_client.store import Checkpoint

from .lease import Fenced, Lease
from .remote_store import RemoteCancelled, RemoteError, RemoteStore
from .retention import RetentionRules, plan

__all__ = [
    "Outcome",
    "RemoteFenced",
    "RemotePruneFailed",
    "RemotePruned",
    "UploadFailed",
    "Uploaded",
    "Uploader",
    "protected_locally",
]


@dataclass(frozen=True)
class _Outcome:
    event: ClassVar[str]

    def fields(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Uploaded(_Outcome):
    event: ClassVar[str] = "remote.uploaded"
    step: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class UploadFailed(_Outcome):
    event: ClassVar[str] = "remote.failed"
    step: int
    error: str
    attempt: int
    retry_in: float | None  # None: given up (the local checkpoint is gone or invalid)


@dataclass(frozen=True)
class RemoteFenced(_Outcome):
    event: ClassVar[str] = "remote.fenced"
    step: int
    error: str


@dataclass(frozen=True)
class RemotePruned(_Outcome):
    event: ClassVar[str] = "remote.pruned"
    step: int


@dataclass(frozen=True)
class RemotePruneFailed(_Outcome):
    event: ClassVar[str] = "remote.prune_failed"
    error: str


Outcome = Uploaded | UploadFailed | RemoteFenced | RemotePruned | RemotePruneFailed


def protected_locally(local: Iterable[Checkpoint], newest_remote_step: int | None) -> list[Path]:
    """Local checkpoints retention must keep: every one newer than the newest remote one.

    With nothing remote yet (None), all of them: each may be the only copy.
    """
    floor = -1 if newest_remote_step is None else newest_remote_step
    return [c.path for c in local if c.step > floor]


class Uploader:
    """Uploads committed checkpoints to ``store`` in a background thread.

    ``lease`` fences this uploader against a newer daemon on the same prefix; take it at
    start (``lease.take()``), or leave that to the first upload when the remote is down.
    ``keep_remote`` N keeps the N newest remote checkpoints; 0 applies ``rules`` (the local
    retention rules; None: no remote pruning). ``newest_remote_step`` seeds what is known
    to be remote.
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
    ) -> None:
        self.store = store
        self._post = post
        self._lease = lease
        self._timeout = upload_timeout
        self._rules = RetentionRules(keep_last=keep_remote) if keep_remote else rules
        self._backoff = (backoff, backoff_max)
        self._cond = threading.Condition()
        self._pending: dict[int, tuple[Path, int]] = {}  # step -> (local path, bytes)
        self._attempts: dict[int, int] = {}
        self._in_flight: int | None = None
        self._retry_at = 0.0
        self._flush_by: float | None = None
        self._newest_remote = newest_remote_step
        self._newest_submitted: int | None = None
        self._recent: collections.deque[tuple[int, float]] = collections.deque(maxlen=3)
        self._fenced = False
        self._closing = False
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
        with self._cond:
            if self._fenced or self._closing:
                return
            self._pending[step] = (path, size)
            self._attempts.pop(step, None)
            self._newest_submitted = max(step, self._newest_submitted or step)
            self._cond.notify_all()

    def note_remote(self, step: int) -> None:
        """Record that ``step`` is already remote (found there at launch)."""
        with self._cond:
            self._newest_remote = max(step, self._newest_remote or step)
            self._cond.notify_all()

    def backlog(self) -> tuple[list[int], int]:
        """Steps committed locally but not yet remote (in flight included), and their bytes."""
        with self._cond:
            return sorted(self._pending), sum(size for _, size in self._pending.values())

    @property
    def newest_remote_step(self) -> int | None:
        with self._cond:
            return self._newest_remote

    @property
    def measured_bandwidth(self) -> float | None:
        """Bytes per second of the last few uploads (None before the first)."""
        with self._cond:
            sent = sum(size for size, _ in self._recent)
            seconds = sum(seconds for _, seconds in self._recent)
        return sent / seconds if sent and seconds > 0 else None

    def expected_seconds(self, size: int) -> float | None:
        """How long ``size`` bytes should take to upload at the measured bandwidth."""
        bandwidth = self.measured_bandwidth
        return size / bandwidth if bandwidth else None

    @property
    def fenced(self) -> bool:
        with self._cond:
            return self._fenced

    def flush(self, deadline: float) -> bool:
        """Wait until the newest submitted checkpoint is remote, or until ``deadline``.

        ``deadline`` is a ``time.monotonic()`` value. While flushing, backoff shrinks to
        the time left and an older upload in flight gives way to the newest step. Returns
        True when the newest submitted checkpoint (if any) is remote.
        """
        with self._cond:
            self._flush_by = deadline
            self._retry_at = min(self._retry_at, time.monotonic())
            self._cond.notify_all()
            try:
                while True:
                    target = self._newest_submitted
                    if target is None or (
                        self._newest_remote is not None and self._newest_remote >= target
                    ):
                        return True
                    left = deadline - time.monotonic()
                    if left <= 0 or self._fenced or not self._thread.is_alive():
                        return False
                    self._cond.wait(min(left, 0.5))
            finally:
                self._flush_by = None  # later attempts get their full upload_timeout again

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the thread: an upload in flight is cancelled within a fraction of a second."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while (job := self._next()) is not None:
            step, path = job
            try:
                self._check_lease()
                result = self.store.upload(
                    path,
                    self._attempt_timeout(),
                    before_manifest=self._check_lease,
                    cancelled=functools.partial(self._should_cancel, step),
                )
            except Fenced as exc:
                self._fence(step, exc)
                return
            except (OSError, ValueError) as exc:
                self._give_up(step, str(exc))
            except RemoteCancelled:
                self._done(step, None)
            except RemoteError as exc:
                self._retry_later(step, str(exc))
            else:
                self._done(step, (result.bytes, result.seconds))
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

    def _next(self) -> tuple[int, Path] | None:
        with self._cond:
            while True:
                if self._closing or self._fenced:
                    return None
                now = time.monotonic()
                if self._pending and now >= self._retry_at:
                    step = max(self._pending)
                    for older in [s for s in self._pending if s < step]:
                        del self._pending[older]
                    self._in_flight = step
                    return step, self._pending[step][0]
                wait = self._retry_at - now if self._pending else None
                self._cond.wait(wait)

    def _attempt_timeout(self) -> float:
        with self._cond:
            if self._flush_by is None:
                return self._timeout
            return max(0.0, min(self._timeout, self._flush_by - time.monotonic()))

    def _should_cancel(self, step: int) -> bool:
        with self._cond:
            if self._closing:
                return True
            if self._flush_by is None:
                return False
            newer = any(s > step for s in self._pending)
            return newer or time.monotonic() > self._flush_by

    def _done(self, step: int, sent: tuple[int, float] | None) -> None:
        with self._cond:
            self._in_flight = None
            if sent is not None:
                self._pending.pop(step, None)
                self._attempts.pop(step, None)
                self._newest_remote = max(step, self._newest_remote or step)
                if sent[0]:
                    self._recent.append(sent)
            self._cond.notify_all()

    def _retry_later(self, step: int, error: str) -> None:
        with self._cond:
            attempt = self._attempts[step] = self._attempts.get(step, 0) + 1
            first, ceiling = self._backoff
            delay = min(ceiling, first * 2 ** (attempt - 1))
            if self._flush_by is not None:
                delay = min(delay, 0.2)
            self._retry_at = time.monotonic() + delay
            self._in_flight = None
            self._cond.notify_all()
        self._post(UploadFailed(step, error, attempt, round(delay, 3)))

    def _give_up(self, step: int, error: str) -> None:
        with self._cond:
            attempt = self._attempts.pop(step, 0) + 1
            self._pending.pop(step, None)
            self._in_flight = None
            self._cond.notify_all()
        self._post(UploadFailed(step, error, attempt, None))

    def _fence(self, step: int, exc: Fenced) -> None:
        with self._cond:
            self._fenced = True
            self._in_flight = None
            self._cond.notify_all()
        self._post(RemoteFenced(step, str(exc)))

    def _prune(self, uploaded: int) -> None:
        """Apply remote retention; leftovers of failed uploads below the newest go too."""
        if self._rules is None:
            return
        try:
            found = self.store.list()
            newest = max((c.step for c in found if c.valid), default=-1)
            listed = {c.step for c in found}
            keep = [c.path for c in found if c.step in (newest, uploaded)]
            for checkpoint in plan(found, self._rules, keep):
                if self._is_closing():
                    return
                self._check_lease()
                self.store.delete(checkpoint.step)
                self._post(RemotePruned(checkpoint.step))
            for step in self.store.step_dirs():
                if step not in listed and step < newest and not self._is_pending(step):
                    self._check_lease()
                    self.store.delete_leftover(step)
        except Fenced as exc:
            self._fence(uploaded, exc)
        except RemoteError as exc:
            self._post(RemotePruneFailed(str(exc)))

    def _is_closing(self) -> bool:
        with self._cond:
            return self._closing

    def _is_pending(self, step: int) -> bool:
        with self._cond:
            return step in self._pending
