"""The background uploader: each committed checkpoint goes to the remote, newest first.

One thread owns the upload queue. ``submit()`` after each local commit returns at once; the
thread uploads the newest pending step, and a newer commit supersedes older pending ones
(they are dropped, never uploaded). A failed attempt is retried with capped, doubling
backoff; every attempt is bounded by ``upload_timeout``, except at a stop (``flush``),
where the final upload is one attempt that gets the whole remaining deadline, the one in
flight included. Outcomes are immutable values handed to ``post`` (the arbiter turns them
into events); nothing is swallowed. After each upload the remote is pruned (``keep_remote``
newest, or the local rules) and older checkpoints of another lineage are deleted.

Before its first upload the thread compares the remote with the job (``remote_lineage``):
at once when the launch could not, and again whenever the remote answers after being down
at launch. A remote ahead of the job holds every upload back until the next launch.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ckptd_client.manifest import read_manifest
from ckptd_client.store import Checkpoint

from .lease import Fenced, Lease
from .remote_lineage import is_ours, reconcile, superseded
from .remote_outcomes import (
    Outcome,
    RemoteAhead,
    RemoteFenced,
    RemotePruned,
    RemotePruneFailed,
    Uploaded,
    UploadFailed,
    UploadTimeoutShort,
)
from .remote_store import RemoteCancelled, RemoteEntry, RemoteError, RemoteStore, RemoteTimeout
from .retention import RetentionRules, plan

__all__ = [
    "Outcome",
    "RemoteAhead",
    "RemoteFenced",
    "RemotePruneFailed",
    "RemotePruned",
    "UploadFailed",
    "UploadTimeoutShort",
    "Uploaded",
    "Uploader",
    "protected_locally",
]

_FLUSH_RETRY = 0.2  # at a stop, a failed attempt is retried this soon
_PROBE_EVERY_MAX = 10.0  # a remote down since the launch is listed again at least this often


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
        self._post = post
        self._lease = lease
        self.timeout = upload_timeout
        self._rules = RetentionRules(keep_last=keep_remote) if keep_remote else rules
        self._backoff = (backoff, backoff_max)
        self._progress = progress
        self._cond = threading.Condition()
        self._pending: dict[int, tuple[Path, int]] = {}  # step -> (local path, bytes)
        self._attempts: dict[int, int] = {}
        self._failures = 0  # attempts failed in a row, of any step: the backoff
        self._in_flight: int | None = None
        self._retry_at = 0.0
        self._flush_by: float | None = None
        self._newest_remote = newest_remote_step
        self._newest_submitted: int | None = None
        self._recent: collections.deque[tuple[int, float]] = collections.deque(maxlen=3)
        self._lineage: str | None = None
        self._resume_step: int | None = None
        self._synced = False  # the remote was compared with the job since the last launch
        self._held: RemoteAhead | None = None  # the remote is ahead: nothing goes up
        self._others: list[int] = []  # remote steps of other lineages, as last listed
        self._timeout_short = False
        self._fenced: str | None = None
        self._closing = False
        self.last_upload: LastUpload | None = None
        self.last_error: LastError | None = None
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
            if self._fenced or self._closing or self._held:
                return
            self._queue(step, path, size)
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
        with self._cond:
            self._lineage, self._resume_step = lineage, resume_step
            if local is None:
                return
            self._held = None
            self._pending.clear()
            self._attempts.clear()
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
        """The newest remote step of this job's lineage."""
        with self._cond:
            return self._newest_remote

    @property
    def in_flight(self) -> int | None:
        """The step being uploaded now, if any."""
        with self._cond:
            return self._in_flight

    @property
    def lineage(self) -> str | None:
        with self._cond:
            return self._lineage

    @property
    def synced(self) -> bool:
        """The remote answered and was compared with the job since the last launch."""
        with self._cond:
            return self._synced

    @property
    def held(self) -> RemoteAhead | None:
        """Set when the remote is ahead of the job: no upload until the next launch."""
        with self._cond:
            return self._held

    @property
    def other_lineage_steps(self) -> list[int]:
        """Remote steps of another lineage, as last listed (pruned once superseded)."""
        with self._cond:
            return list(self._others)

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
            return self._fenced is not None

    @property
    def fenced_by(self) -> str | None:
        """Why this uploader stopped for good: who holds the lease now."""
        with self._cond:
            return self._fenced

    def flush(self, deadline: float) -> bool:
        """Wait until the newest submitted checkpoint is remote, or until ``deadline``.

        ``deadline`` is a ``time.monotonic()`` value. While flushing, an attempt (the one
        in flight included) runs until the deadline instead of ``upload_timeout``, backoff
        shrinks, and an older upload in flight gives way to the newest step. Returns True
        when the newest submitted checkpoint (if any) is remote.
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
                    if left <= 0 or self._fenced or self._held or not self._thread.is_alive():
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
                if step is None:
                    self._sync()
                else:
                    self._upload(step, path)
            except Fenced as exc:
                self.fence(exc, step)
                return

    def _next(self) -> tuple[int | None, Path] | None:
        """The next thing to do: (None, _) compares with the remote, (step, path) uploads."""
        with self._cond:
            while True:
                if self._closing or self._fenced:
                    return None
                now = time.monotonic()
                due = now >= self._retry_at
                if due and not self._synced and not self._held:
                    return None, Path()
                if self._pending and due and not self._held:
                    step = max(self._pending)
                    for older in [s for s in self._pending if s < step]:
                        del self._pending[older]
                    self._in_flight = step
                    return step, self._pending[step][0]
                waiting = (self._pending or not self._synced) and not self._held
                self._cond.wait(max(0.0, self._retry_at - now) if waiting else None)

    def _sync(self) -> None:
        """List the remote and compare it with the job (``remote_lineage``)."""
        try:
            self._check_lease()
            catalog = self.store.catalog(self._attempt_timeout())
        except RemoteError as exc:
            with self._cond:
                newest = max(self._pending, default=None)
            self._retry_later(newest, str(exc), ceiling=_PROBE_EVERY_MAX)
            return
        with self._cond:
            known = (self._progress(), self._newest_submitted, self._resume_step)
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
            held = self._held
        if held is not None:
            self._post(held)

    def _upload(self, step: int, path: Path) -> None:
        sent = _Counter()
        began = time.monotonic()
        try:
            self._check_lease()
            result = self.store.upload(
                path,
                self._attempt_timeout(),
                before_manifest=self._check_lease,
                cancelled=functools.partial(self._should_cancel, step),
                until=self._flush_deadline,
                sent=sent.add,
            )
        except (OSError, ValueError) as exc:
            self._give_up(step, str(exc))
        except RemoteCancelled:
            self._done(step, None)
        except RemoteError as exc:
            if isinstance(exc, RemoteTimeout) and sent.total:
                # An attempt cut short still measured the bandwidth: is the bound too short?
                self._measured(sent.total, time.monotonic() - began)
                self._warn_if_timeout_short(step, self._size_of(step))
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

    def _attempt_timeout(self) -> float:
        with self._cond:
            if self._flush_by is None:
                return self.timeout
            return max(0.0, self._flush_by - time.monotonic())

    def _flush_deadline(self) -> float | None:
        """At a stop, when the attempt in flight must end instead of its own timeout."""
        with self._cond:
            return self._flush_by

    def _should_cancel(self, step: int) -> bool:
        with self._cond:
            if self._closing:
                return True
            return self._flush_by is not None and any(s > step for s in self._pending)

    def _queue(self, step: int, path: Path, size: int) -> None:
        self._pending[step] = (path, size)
        self._attempts.pop(step, None)
        self._newest_submitted = max(step, self._newest_submitted or step)
        self._cond.notify_all()

    def _size_of(self, step: int) -> int:
        with self._cond:
            return self._pending.get(step, (Path(), 0))[1]

    def _measured(self, size: int, seconds: float) -> None:
        with self._cond:
            self._recent.append((size, seconds))

    def _warn_if_timeout_short(self, step: int, size: int) -> None:
        """``remote.timeout_short`` once each time upload_timeout becomes too short."""
        bandwidth = self.measured_bandwidth
        expected = size / bandwidth if bandwidth else None
        with self._cond:
            short = expected is not None and expected > self.timeout
            warn, self._timeout_short = short and not self._timeout_short, short
        if warn and bandwidth is not None and expected is not None:
            self._post(
                UploadTimeoutShort(step, size, round(expected, 3), self.timeout, round(bandwidth))
            )

    def _done(self, step: int, sent: tuple[int, float] | None) -> None:
        with self._cond:
            self._in_flight = None
            if sent is not None:
                self._pending.pop(step, None)
                self._attempts.pop(step, None)
                self._failures = 0
                self._newest_remote = max(step, self._newest_remote or step)
                self.last_upload = LastUpload(step, sent[0], round(sent[1], 3), time.time())
                self.last_error = None
                if sent[0]:
                    self._recent.append(sent)
            self._cond.notify_all()

    def _retry_later(self, step: int | None, error: str, ceiling: float | None = None) -> None:
        """A failed attempt (step None: comparing with the remote, nothing pending)."""
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
            self.last_error = LastError(step, error, attempt, time.time())
            self._cond.notify_all()
        if step is not None:
            self._post(UploadFailed(step, error, attempt, round(delay, 3)))

    def _give_up(self, step: int, error: str) -> None:
        with self._cond:
            attempt = self._attempts.pop(step, 0) + 1
            self._pending.pop(step, None)
            self._in_flight = None
            self.last_error = LastError(step, error, attempt, time.time())
            self._cond.notify_all()
        self._post(UploadFailed(step, error, attempt, None))

    def fence(self, exc: Fenced, step: int | None = None) -> None:
        """Stop for good: another daemon holds the lease (``remote.fenced``)."""
        with self._cond:
            self._fenced = str(exc)
            self._in_flight = None
            step = step if step is not None else max(self._pending, default=-1)
            self._cond.notify_all()
        self._post(RemoteFenced(step, str(exc)))

    def _prune(self, uploaded: int) -> None:
        """Apply remote retention to this lineage; other lineages' older checkpoints go, and
        so do leftovers of failed uploads below the newest."""
        if self._rules is None:
            return
        lineage = self.lineage
        try:
            found = self.store.catalog()
            ours = [e.checkpoint for e in found if is_ours(e, lineage)]
            newest = max((e.step for e in found if e.valid), default=-1)
            newest_ours = max((c.step for c in ours if c.valid), default=-1)
            keep = [c.path for c in ours if c.step in (newest_ours, uploaded)]
            doomed = [(c.step, "retention") for c in plan(ours, self._rules, keep)]
            doomed += [(e.step, "other lineage") for e in superseded(found, lineage, uploaded)]
            for step, why in doomed:
                if self._is_closing():
                    return
                self._check_lease()
                self.store.delete(step)
                self._post(RemotePruned(step, why))
            with self._cond:
                gone = {step for step, _ in doomed}
                self._others = [e.step for e in found if not is_ours(e, lineage)]
                self._others = [s for s in self._others if s not in gone]
            listed = {e.step for e in found}
            for step in self.store.step_dirs():
                if step not in listed and step < newest and not self._is_pending(step):
                    self._check_lease()
                    self.store.delete_leftover(step)
        except Fenced as exc:
            self.fence(exc, uploaded)
        except RemoteError as exc:
            self._post(RemotePruneFailed(str(exc)))

    def _is_closing(self) -> bool:
        with self._cond:
            return self._closing

    def _is_pending(self, step: int) -> bool:
        with self._cond:
            return step in self._pending
