"""The uploader's state: what is pending, what is known to be remote, and what comes next.

One lock (a Condition) guards it all; the arbiter's thread submits and reads, the
uploader's thread takes jobs and reports how they went. Nothing here touches the network:
the methods that end in an event return it for the caller to post.

Rules it keeps: the newest pending step goes first and supersedes older pending ones;
failed attempts back off (doubling, capped); before the first upload after a launch the
remote is compared with the job (``remote_lineage``), and a remote ahead of the job holds
every upload until the next launch; once fenced or closed, nothing more is taken.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ckptd.storage.remote.lineage import reconcile
from ckptd.storage.remote.outcomes import RemoteAhead, RemoteFenced, UploadFailed
from ckptd.storage.remote.store import RemoteEntry
from ckptd_client.store import Checkpoint

__all__ = ["COMPARE", "LastError", "LastUpload", "UploadQueue", "UploadState"]

COMPARE = -1  # the job that lists the remote and compares it with the job (no step is -1)
_FLUSH_RETRY = 0.2  # at a stop, a failed attempt is retried this soon


@dataclass(frozen=True)
class LastUpload:
    step: int
    bytes: int
    seconds: float
    time: float  # wall clock


@dataclass(frozen=True)
class LastError:
    step: int | None
    error: str
    upload_attempt: int
    time: float  # wall clock


@dataclass(frozen=True)
class UploadState:
    """The uploads at one moment (``RemoteStatus`` says what each field means)."""

    newest_remote_step: int | None
    backlog_steps: list[int]
    backlog_bytes: int
    in_flight: int | None
    lineage: str | None
    synced: bool
    other_lineage_steps: list[int]
    fenced_by: str | None
    last_upload: LastUpload | None
    last_error: LastError | None


class UploadQueue:
    def __init__(
        self, backoff: float, backoff_max: float, newest_remote_step: int | None = None
    ) -> None:
        self._cond = threading.Condition()
        self._backoff = (backoff, backoff_max)
        self._pending: dict[int, tuple[Path, int]] = {}  # step -> (local path, bytes)
        self._attempts: dict[int, int] = {}
        self._failures = 0  # attempts failed in a row, of any step: the backoff
        self._in_flight: int | None = None
        self._retry_at = 0.0
        self._flush_by: float | None = None
        self._newest_remote = newest_remote_step
        self._newest_submitted: int | None = None
        self._lineage: str | None = None
        self._resume_step: int | None = None
        self._synced = False  # the remote was compared with the job since the last launch
        self._held: RemoteAhead | None = None  # the remote is ahead: nothing goes up
        self._others: list[int] = []  # remote steps of other lineages, as last listed
        self._fenced: str | None = None
        self._closing = False
        self._last_upload: LastUpload | None = None
        self._last_error: LastError | None = None

    # -- the arbiter's side --------------------------------------------------------------

    def submit(self, step: int, path: Path, size: int) -> bool:
        """Queue a committed checkpoint; False when nothing is taken any more."""
        with self._cond:
            if self._fenced or self._closing or self._held:
                return False
            self._queue(step, path, size)
            return True

    def follow(
        self,
        lineage: str,
        resume_step: int | None,
        catalog: list[RemoteEntry] | None,
        local: Iterable[Checkpoint] | None,
    ) -> None:
        """See :meth:`Uploader.follow`."""
        with self._cond:
            self._lineage, self._resume_step = lineage, resume_step
            if local is None:
                return
            self._held = None
            self._pending.clear()
            self._attempts.clear()
            self._newest_submitted = None  # what is queued below is (a launch may go back)
            floor = -1
            if catalog is not None:
                found = reconcile(catalog, lineage, -1)
                self._newest_remote, self._others = found.newest_ours, found.others
                self._synced = True
                floor = -1 if found.newest_ours is None else found.newest_ours
            else:
                self._synced = False
                self._retry_at = 0.0
            for checkpoint in local:
                if checkpoint.valid and checkpoint.step > floor:
                    self._queue(checkpoint.step, checkpoint.path, checkpoint.bytes)
            self._cond.notify_all()

    def backlog(self) -> tuple[list[int], int]:
        with self._cond:
            return sorted(self._pending), sum(size for _, size in self._pending.values())

    def snapshot(self) -> UploadState:
        with self._cond:
            return UploadState(
                newest_remote_step=self._newest_remote,
                backlog_steps=sorted(self._pending),
                backlog_bytes=sum(size for _, size in self._pending.values()),
                in_flight=self._in_flight,
                lineage=self._lineage,
                synced=self._synced,
                other_lineage_steps=list(self._others),
                fenced_by=self._fenced,
                last_upload=self._last_upload,
                last_error=self._last_error,
            )

    @property
    def newest_remote_step(self) -> int | None:
        with self._cond:
            return self._newest_remote

    @property
    def in_flight(self) -> int | None:
        with self._cond:
            return self._in_flight

    @property
    def held(self) -> RemoteAhead | None:
        with self._cond:
            return self._held

    @property
    def fenced(self) -> bool:
        with self._cond:
            return self._fenced is not None

    @property
    def lineage(self) -> str | None:
        with self._cond:
            return self._lineage

    def wait_flushed(self, deadline: float, working: Callable[[], bool]) -> bool:
        """See :meth:`Uploader.flush`; ``working()`` is whether the thread still runs."""
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
                    if left <= 0 or self._fenced or self._held or not working():
                        return False
                    self._cond.wait(min(left, 0.5))
            finally:
                self._flush_by = None  # later attempts get their full upload_timeout again

    def fence(self, why: str, step: int | None) -> RemoteFenced:
        with self._cond:
            self._fenced = why
            self._in_flight = None
            self._cond.notify_all()
            return RemoteFenced(step if step is not None else max(self._pending, default=-1), why)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    # -- the uploader thread's side ------------------------------------------------------

    def next_job(self) -> tuple[int, Path] | None:
        """Block until there is something to do: ``(COMPARE, _)`` lists the remote and
        compares it with the job, ``(step, path)`` uploads; None: stop for good."""
        with self._cond:
            while True:
                if self._closing or self._fenced:
                    return None
                now = time.monotonic()
                due = now >= self._retry_at and self._held is None
                if due and not self._synced:
                    return COMPARE, Path()
                if due and self._pending:
                    step = max(self._pending)
                    for older in [s for s in self._pending if s < step]:
                        del self._pending[older]
                    self._in_flight = step
                    return step, self._pending[step][0]
                waiting = (self._pending or not self._synced) and self._held is None
                self._cond.wait(max(0.0, self._retry_at - now) if waiting else None)

    def compared(self, catalog: list[RemoteEntry], job_step: int | None) -> RemoteAhead | None:
        """The remote as listed, against the job at ``job_step``: the outcome when it is ahead
        (every upload is then held back until the next launch), else None."""
        with self._cond:
            known = (job_step, self._newest_submitted, self._resume_step)
            progress = max((s for s in known if s is not None), default=-1)
            found = reconcile(catalog, self._lineage, progress)
            self._synced, self._failures, self._others = True, 0, found.others
            if found.ahead is not None:
                self._held = RemoteAhead(
                    found.ahead.step, progress, found.ahead.lineage, self._lineage
                )
                self._pending.clear()
            else:
                self._newest_remote = found.newest_ours
                floor = -1 if found.newest_ours is None else found.newest_ours
                for step in [s for s in self._pending if s <= floor]:
                    del self._pending[step]
            self._cond.notify_all()
            return self._held

    def attempt_timeout(self, upload_timeout: float) -> float:
        """An attempt's bound: ``upload_timeout``, or at a stop all the time left."""
        with self._cond:
            if self._flush_by is None:
                return upload_timeout
            return max(0.0, self._flush_by - time.monotonic())

    def flush_deadline(self) -> float | None:
        """At a stop, when the attempt in flight must end instead of at its own timeout."""
        with self._cond:
            return self._flush_by

    def should_cancel(self, step: int) -> bool:
        """Closing, or at a stop a newer step waits: the upload of ``step`` gives way."""
        with self._cond:
            if self._closing:
                return True
            return self._flush_by is not None and any(s > step for s in self._pending)

    def size_of(self, step: int) -> int:
        with self._cond:
            return self._pending.get(step, (Path(), 0))[1]

    def is_pending(self, step: int) -> bool:
        with self._cond:
            return step in self._pending

    @property
    def closing(self) -> bool:
        with self._cond:
            return self._closing

    def newest_pending(self) -> int | None:
        with self._cond:
            return max(self._pending, default=None)

    def uploaded(self, step: int, size: int, seconds: float) -> None:
        with self._cond:
            self._in_flight = None
            self._pending.pop(step, None)
            self._attempts.pop(step, None)
            self._failures = 0
            self._newest_remote = max(step, self._newest_remote or step)
            self._last_upload = LastUpload(step, size, round(seconds, 3), time.time())
            self._last_error = None
            self._cond.notify_all()

    def cancelled(self) -> None:
        with self._cond:
            self._in_flight = None
            self._cond.notify_all()

    def failed(self, step: int | None, error: str, ceiling: float | None) -> UploadFailed | None:
        """A failed attempt (step None: comparing with the remote, nothing pending); retried
        after the backoff (at most ``ceiling``). The outcome to post, when a step failed."""
        with self._cond:
            attempt = 0
            if step is not None:
                attempt = self._attempts[step] = self._attempts.get(step, 0) + 1
            self._failures += 1
            first, most = self._backoff
            delay = min(most, ceiling or most, first * 2 ** (self._failures - 1))
            if self._flush_by is not None:
                delay = min(delay, _FLUSH_RETRY)
            self._retry_at = time.monotonic() + delay
            self._in_flight = None
            self._last_error = LastError(step, error, attempt, time.time())
            self._cond.notify_all()
        return None if step is None else UploadFailed(step, error, attempt, round(delay, 3))

    def gave_up(self, step: int, error: str) -> UploadFailed:
        """The local checkpoint of ``step`` is gone or invalid: it is dropped."""
        with self._cond:
            attempt = self._attempts.pop(step, 0) + 1
            self._pending.pop(step, None)
            self._in_flight = None
            self._last_error = LastError(step, error, attempt, time.time())
            self._cond.notify_all()
        return UploadFailed(step, error, attempt, None)

    def set_others(self, steps: list[int]) -> None:
        with self._cond:
            self._others = list(steps)

    def _queue(self, step: int, path: Path, size: int) -> None:
        self._pending[step] = (path, size)
        self._attempts.pop(step, None)
        self._newest_submitted = max(step, self._newest_submitted or step)
        self._cond.notify_all()
