"""The object a training script talks to: flags read on the hot path, saves committed atomically."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from . import manifest
from ._group import Group, Outcome, Rounds
from ._group_saves import GroupSaves, commit_record
from ._group_store import StoreRounds
from .skip_steps import SkipSteps, from_environment
from .store import Checkpoint


class Channel(Protocol):
    """Where requests come from and acknowledgements go; runs its own thread."""

    def start(self, client: Client) -> None: ...
    def send(self, kind: str, **fields: Any) -> None: ...
    def close(self) -> None: ...


@dataclass
class _Pending:
    id: str
    reason: str
    deadline: float | None
    final: bool
    at_step: int | None
    claimed: bool = False  # a save in flight answers it: no longer wanted of the loop


_live_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def _make_inert_after_fork() -> None:
    for client in list(_live_clients):
        client._make_inert()


os.register_at_fork(after_in_child=_make_inert_after_fork)


class Client(GroupSaves):
    """Connection of one training process to ckptd (or to its stand-ins when standalone).

    ``should_checkpoint()`` and ``step()`` touch one attribute each: no syscall,
    no lock. In a process forked from this one (data-loader workers) the client
    is inert: it never checkpoints, never stops and never uses the channel.
    """

    def __init__(
        self,
        channel: Channel,
        checkpoint_dir: Path,
        resume_from: Checkpoint | None,
        *,
        standalone: bool,
        lineage: manifest.Lineage | None = None,
    ) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.standalone = standalone
        # Recorded in every manifest this process commits (what it resumed from).
        self.lineage = lineage or manifest.lineage_after(None)
        self._channel = channel
        self._resume_from = resume_from
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._wanted = False
        self._wanted_seen: float | None = None  # when should_checkpoint() first said so
        self._stop_ready = False
        self._reused_final_at: int | None = None
        self._deadline: float | None = None
        self._step: int | None = resume_from.step if resume_from else None
        self._last_commit: dict[str, Any] | None = (
            commit_record(
                resume_from.path,
                resume_from.step,
                resume_from.metrics,
                resume_from.bytes,
                0.0,
                reused=True,
            )
            if resume_from
            else None
        )
        self._inert = False
        self._closed = False
        self._in_flight: threading.Thread | None = None
        self._final_in_flight = False
        self._async_error: BaseException | None = None
        group: Group | None = getattr(channel, "group", None)
        self._rounds: Rounds | None = None
        if group is not None:
            kind = StoreRounds if group.nodes else Rounds
            self._rounds = kind(group, channel.send, lambda: self._step)
        self._loss: tuple[int, float] | None = None
        _live_clients.add(self)
        channel.start(self)
        atexit.register(self.close)  # deliver the last acknowledgements before the process ends

    # -- the API of training scripts -------------------------------------------------

    def restore(self) -> Checkpoint | None:
        """The newest valid checkpoint to resume from, or None on a fresh start."""
        return self._resume_from

    def step(self, step: int, loss: float | None = None) -> None:
        """Report progress; cheap enough to call every step. Raises a failed background save.

        ``loss`` (a number) is what the daemon's divergence guard (``[guard]``) watches; the
        report thread sends the one of the step it reports, so a call costs no more than
        without it.
        """
        if self._async_error is not None:
            self._raise_async_error()
        if loss is not None:
            self._loss = (step, loss)
        self._step = step

    def skip_steps(self) -> SkipSteps:
        """The steps to skip after a divergence (``CKPTD_SKIP_STEPS``).

        ``step in ck.skip_steps()`` is True for a step whose data led to it; empty on a
        normal launch. ValueError (naming the variable) when it is malformed.
        """
        return from_environment()

    def should_checkpoint(self) -> bool:
        """True when someone asked for a checkpoint that this process has not saved yet."""
        if self._async_error is not None:
            self._raise_async_error()
        if self._reused_final_at is not None:
            self._check_reused_final()
        rounds = self._rounds
        if rounds is not None:
            rounds.checked = self._step  # before ``current`` is read: see Rounds.earliest
            if rounds.current is not None:
                return self._round_due()
        if not self._wanted:
            return False
        if self._wanted_seen is None:
            self._wanted_seen = time.monotonic()
        return True

    def should_stop(self) -> bool:
        """True once a stop was requested and its final checkpoint is done (or failed, or was
        not wanted: ``ckptd stop --no-checkpoint``, after which nothing more is asked for).

        When the final checkpoint is a background save still in flight, this waits for
        it, so no training happens after the final save has been taken.
        """
        if self._final_in_flight:
            self.wait()
        ready = self._stop_ready  # first: an answer landing now sets _reused_final_at before it
        if self._reused_final_at is not None:
            self._check_reused_final()
            ready = ready and self._stop_ready
        if self._rounds is not None and self._rounds.current is not None:
            self._round_due()
            ready = self._stop_ready
        return ready

    def deadline(self) -> float | None:
        """Seconds left before the daemon forces the process down, or None when no stop is near."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.time())

    @contextmanager
    def checkpoint(self, step: int, metrics: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yield a fresh directory to write into; commit it atomically when the block exits cleanly.

        An exception in the block (or in the commit) removes the directory, reports
        the failure to the daemon and propagates; earlier checkpoints stay as they were.
        """
        metrics = dict(metrics or {})
        json.dumps(metrics)  # refuse metrics the manifest cannot hold before any work is done
        if self._inert:
            raise RuntimeError("ckptd_client: checkpoint() in a forked child process")
        self.wait()
        if self._rounds is not None:
            with self._group_checkpoint(self._rounds, step, metrics) as shared:
                yield shared
            return
        claimed = self._claim(step)
        temp_dir = self._new_temp_dir(claimed, step)
        self._wanted_seen = None
        self._channel.send("started", ids=claimed, step=step)
        began = time.monotonic()
        try:
            yield temp_dir
            path, written = manifest.commit(temp_dir, step, metrics, self.lineage)
        except BaseException as exc:
            shutil.rmtree(temp_dir, ignore_errors=True)
            self._fail(claimed, step, f"{type(exc).__name__}: {exc}")
            raise
        record = commit_record(path, step, metrics, written.size, time.monotonic() - began)
        self._commit(step, record)

    def checkpoint_async(
        self, step: int, write: Callable[[Path], None], metrics: dict[str, Any] | None = None
    ) -> None:
        """Save in the background: ``write(directory)`` then the atomic commit, on another thread.

        Returns once the save has started; ``write`` runs while training goes on, so it must
        only touch a snapshot of the state (``ckptd_client.torch.save_async`` makes one).
        At most one save is in flight: a call while one runs first waits for it. A failed
        background save is reported to the daemon and raised by the next call of ``step()``,
        ``should_checkpoint()``, ``checkpoint*()`` or ``wait()``; it is never swallowed.
        """
        metrics = dict(metrics or {})
        json.dumps(metrics)
        if self._inert:
            raise RuntimeError("ckptd_client: checkpoint_async() in a forked child process")
        self.wait()
        if self._rounds is not None:
            self._group_checkpoint_async(self._rounds, step, write, metrics)
            return
        # Training waited from the request it saw to here: the snapshot of its state.
        seen = self._wanted_seen
        claimed = self._claim(step)
        temp_dir = self._new_temp_dir(claimed, step)
        with self._lock:
            self._final_in_flight = any(
                self._pending[rid].final for rid in claimed if rid in self._pending
            )
        self._wanted_seen = None
        stall = round(time.monotonic() - seen, 6) if seen is not None else None
        self._channel.send("started", ids=claimed, step=step, stall=stall)
        self._in_flight = threading.Thread(
            target=self._save_in_background,
            args=(step, write, metrics, claimed, temp_dir),
            name="ckptd-save",
        )
        self._in_flight.start()

    def wait(self) -> None:
        """Block until the background save in flight (if any) has committed; raise if it failed."""
        thread = self._in_flight
        if thread is not None:
            thread.join()
            self._in_flight = None
            self._final_in_flight = False
        if self._async_error is not None:
            self._raise_async_error()

    def close(self) -> None:
        """Finish a save in flight, say goodbye to the daemon and stop the background thread."""
        if self._closed or self._inert:
            return
        if self._in_flight is not None:
            self._in_flight.join()
        self._closed = True
        atexit.unregister(self.close)
        if self._rounds is not None:
            self._rounds.close()
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _save_in_background(
        self,
        step: int,
        write: Callable[[Path], None],
        metrics: dict[str, Any],
        claimed: list[str],
        temp_dir: Path,
    ) -> None:
        began = time.monotonic()
        try:
            write(temp_dir)
            path, written = manifest.commit(temp_dir, step, metrics, self.lineage)
        except BaseException as exc:  # reported and re-raised in the training thread
            shutil.rmtree(temp_dir, ignore_errors=True)
            self._async_error = exc  # before the report, so it is raised by any later call
            self._fail(claimed, step, f"{type(exc).__name__}: {exc}")
            return
        self._commit(
            step, commit_record(path, step, metrics, written.size, time.monotonic() - began)
        )

    def _raise_async_error(self) -> None:
        error, self._async_error = self._async_error, None
        if error is not None:
            raise RuntimeError(f"ckptd_client: a background save failed: {error}") from error

    # -- called by the channel thread ------------------------------------------------

    def _on_request(
        self,
        rid: str,
        reason: str,
        deadline: float | None,
        final: bool,
        save: bool = True,
        joins: str | None = None,
    ) -> None:
        with self._lock:
            if deadline is not None:
                self._deadline = (
                    deadline if self._deadline is None else min(self._deadline, deadline)
                )
            if self._rounds is not None:
                if self._rounds.on_request(rid, final, save, joins) and final:
                    self._stop_ready = True
                return
            if final and not save:
                # A stop without a final checkpoint saves nothing more, not even a request that
                # is still pending; a background save already under way completes.
                self._pending = {k: p for k, p in self._pending.items() if p.claimed}
                self._reused_final_at = None
                self._refresh_wanted()
                self._stop_ready = True
                return
            last, step = self._last_commit, self._step
            if last is not None and step is not None and last["step"] >= step:
                # Nothing happened since the last commit: it already holds the current state.
                self._channel.send("committed", ids=[rid], **{**last, "reused": True})
                if final:
                    # Holds only for this step: a step trained after it must be saved too.
                    self._reused_final_at = step
                    self._stop_ready = True
                return
            self._pending[rid] = _Pending(rid, reason, deadline, final, step)
            self._wanted = True

    def _check_reused_final(self) -> None:
        """Progress past a final request answered by reuse: save once more before stopping."""
        with self._lock:
            at, step = self._reused_final_at, self._step
            if at is None or step is None or step <= at:
                return
            self._reused_final_at = None
            rid = f"progress-{step}"
            self._pending[rid] = _Pending(
                rid, "progress after the final checkpoint", None, True, step
            )
            self._wanted = True
            self._stop_ready = False

    def _on_done(self, rid: str, path: str | None = None, step: int | None = None) -> None:
        """Another rank committed ``rid``: it no longer needs this process."""
        if self._rounds is not None:
            if step is not None:
                self._rounds.on_outcome(step, Outcome("done", path))
            elif self._rounds.finish([rid]):  # the daemon holds no such request any more
                self._stop_ready = True
            return
        with self._lock:
            request = self._pending.pop(rid, None)
            self._refresh_wanted()
            if request and request.final:
                self._stop_ready = True

    def _make_inert(self) -> None:
        self._inert = True
        self._in_flight = None
        self._final_in_flight = False
        self._async_error = None
        self._wanted = False
        self._stop_ready = False
        self._reused_final_at = None
        self._pending = {}
        _live_clients.discard(self)

    # -- bookkeeping -----------------------------------------------------------------

    def _claim(self, step: int) -> list[str]:
        self._check_reused_final()  # a save of the progress after it is the final save
        with self._lock:
            claimed = [p for p in self._pending.values() if p.at_step is None or p.at_step <= step]
            for request in claimed:
                request.claimed = True
            self._refresh_wanted()
            return [p.id for p in claimed]

    def _refresh_wanted(self) -> None:
        """Under the lock: wanted while a request no save in flight answers is pending."""
        self._wanted = any(not p.claimed for p in self._pending.values())
        if not self._wanted:
            self._wanted_seen = None

    def _new_temp_dir(self, claimed: list[str], step: int) -> Path:
        """The save's fresh directory; when it cannot be made (a read-only or missing checkpoint
        directory), the claimed requests fail and the daemon is told, then the error propagates."""
        try:
            return manifest.new_temp_dir(self.checkpoint_dir, step)
        except BaseException as exc:
            self._fail(claimed, step, f"{type(exc).__name__}: {exc}")
            raise

    def _commit(self, step: int, record: dict[str, Any]) -> None:
        with self._lock:
            done = [p for p in self._pending.values() if p.at_step is None or p.at_step <= step]
            for request in done:
                del self._pending[request.id]
            self._last_commit = record
            self._refresh_wanted()
            if any(p.final and not p.claimed for p in done):
                # It came after this save's snapshot: like a reused answer, it holds only for
                # ``step``; a step trained since must be saved too.
                self._reused_final_at = step
            if any(p.final for p in done):
                self._stop_ready = True
            # Unsolicited saves are reported too, so the daemon sees every commit.
            self._channel.send("committed", ids=[p.id for p in done], **record)

    def _fail(self, claimed: list[str], step: int, error: str) -> None:
        with self._lock:
            failed = [self._pending.pop(rid) for rid in claimed if rid in self._pending]
            self._refresh_wanted()
            if any(p.final for p in failed):
                self._stop_ready = True
            self._channel.send("failed", ids=claimed, step=step, error=error)
