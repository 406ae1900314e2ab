"""The object a training script talks to: flags read on the hot path, saves committed atomically.

The client owns one :class:`~._decisions.State` (save now? stop now?) and replaces it in
``_apply`` only, under its one lock. Three kinds of thread feed it: the channel's
thread posts the daemon's messages (typed values, see ``_messages``) to ``_receive``;
a save, on the training thread or in the background, settles what became of it; the
training thread settles what it saw. Nothing else writes the state, and no other
module reaches into the client: the channel gets an :class:`~._messages.Inbox`, a save
gets ``_settle``.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from . import manifest
from ._decisions import (
    AnsweredElsewhere,
    Commit,
    ErrorRaised,
    Event,
    Forked,
    Progressed,
    Requested,
    RoundEnded,
    Seen,
    Send,
    State,
    decide,
    memory_dir_for,
)
from ._group import Group
from ._group_saves import GroupSaves
from ._mapped import forget_all
from ._messages import CheckpointRequested, DaemonMessage, Done, Inbox, StopRequested
from ._save import Save, Underway, write_and_commit
from .skip_steps import SkipSteps, from_environment
from .store import Checkpoint


class Channel(Protocol):
    """Where requests come from and acknowledgements go; runs its own thread."""

    def start(self, inbox: Inbox) -> None: ...
    def send(self, kind: str, **fields: Any) -> None: ...
    def close(self) -> None: ...


_live_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def _make_inert_after_fork() -> None:
    for client in list(_live_clients):
        client._make_inert()


os.register_at_fork(after_in_child=_make_inert_after_fork)


class Client:
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
        self._step: int | None = resume_from.step if resume_from else None
        self._lock = threading.Lock()
        group: Group | None = getattr(channel, "group", None)
        self._group = (
            GroupSaves.of(
                group, channel.send, lambda: self._step, checkpoint_dir, self.lineage, self._settle
            )
            if group is not None
            else None
        )
        self._state = State(group=self._group is not None, last=_resumed(resume_from))
        # Mirrors of the state for the calls made on every step (written by _apply only).
        self._quiet = self._group is None
        self._async_error: BaseException | None = None
        self._in_flight: threading.Thread | None = None
        self._inert = False
        self._closed = False
        self._loss: tuple[int, float] | None = None
        self._skip_steps: SkipSteps | None = None  # parsed at the first call, not each step
        _live_clients.add(self)
        turn = self._group.rounds.poll if self._group is not None else _nothing
        channel.start(Inbox(self._receive, lambda: self._step, turn, lambda: self._loss))
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
        if self._skip_steps is None:
            self._skip_steps = from_environment()
        return self._skip_steps

    def should_checkpoint(self) -> bool:
        """True when someone asked for a checkpoint that this process has not saved yet."""
        if self._quiet:  # nothing asked, nothing failed, not a rank of a group (or inert)
            return False
        if self._async_error is not None:
            self._raise_async_error()
        state = self._state
        if state.final_at is not None:
            state = self._settle(Progressed(self._step))
        if self._group is not None and self._group.checked(self._step):
            return self._group_due()
        if not state.wanted:
            return False
        if state.wanted_since is None:
            self._settle(Seen(time.monotonic()))
        return True

    def should_stop(self) -> bool:
        """True once a stop was requested and its final checkpoint is done (or failed, or was
        not wanted: ``ckptd stop --no-checkpoint``, after which nothing more is asked for).

        When the final checkpoint is a background save still in flight, this waits for
        it, so no training happens after the final save has been taken; like ``wait()``,
        it raises a background save that failed.
        """
        if self._inert:
            return False
        if self._state.final_in_flight or self._async_error is not None:
            self.wait()
        state = self._state
        if state.final_at is not None:
            state = self._settle(Progressed(self._step))
        if self._group is not None and self._group.rounds.current is not None:
            self._group_due()
            state = self._state
        return state.stop

    def deadline(self) -> float | None:
        """Seconds left before the daemon forces the process down, or None when no stop is near."""
        deadline = self._state.deadline
        if deadline is None:
            return None
        return max(0.0, deadline - time.time())

    @contextmanager
    def checkpoint(self, step: int, metrics: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yield a fresh directory to write into; commit it atomically when the block exits cleanly.

        An exception in the block (or in the commit) removes the directory, reports
        the failure to the daemon and propagates; earlier checkpoints stay as they were.
        """
        metrics = self._usable("checkpoint", metrics)
        self.wait()
        save = self._begin(step, background=False)
        try:
            yield save.directory
        except BaseException as exc:
            save.fail(exc)
            raise
        save.commit(metrics)

    def checkpoint_async(
        self, step: int, write: Callable[[Path], None], metrics: dict[str, Any] | None = None
    ) -> None:
        """Save in the background: ``write(directory)`` then the atomic commit, on another thread.

        Returns once the save has started; ``write`` runs while training goes on, so it must
        only touch a snapshot of the state (``ckptd_client.torch.save_async`` makes one).
        At most one save is in flight: a call while one runs first waits for it. A failed
        background save is reported to the daemon and raised by the next call of ``step()``,
        ``should_checkpoint()``, ``should_stop()``, ``checkpoint*()`` or ``wait()``; it is
        never swallowed.
        """
        metrics = self._usable("checkpoint_async", metrics)
        self.wait()
        save = self._begin(step, background=True)
        self._in_flight = threading.Thread(
            target=write_and_commit, args=(save, write, metrics), name="ckptd-save"
        )
        self._in_flight.start()

    def wait(self) -> None:
        """Block until the background save in flight (if any) has committed; raise if it failed."""
        thread = self._in_flight
        if thread is not None:
            thread.join()
            self._in_flight = None
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
        if self._group is not None:
            self._group.close()
        self._channel.close()
        forget_all()  # the mappings of its RAM saves' files: their pages are not pinned on

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def in_group(self) -> bool:
        """This process is one rank of a torchrun group (``WORLD_SIZE`` > 1) under ckptd."""
        return self._group is not None

    def shared_directory(self, step: int) -> Path:
        """The directory every rank of the group gets from ``checkpoint(step)``, created now.

        For helpers that must start writing before ``checkpoint_async`` (DCP's
        ``async_save`` plans on the calling thread); outside a group there is none.
        """
        if self._group is None:
            raise RuntimeError("ckptd_client: shared_directory() needs torchrun's WORLD_SIZE > 1")
        return self._group.shared_directory(step)

    # -- the one way the channel's thread changes the client -------------------------

    def _receive(self, message: DaemonMessage) -> None:
        with self._lock:
            if self._inert:
                return
            if isinstance(message, (CheckpointRequested, StopRequested)):
                self._apply(Requested.of(message, self._step))
            elif self._group is not None:
                if self._group.hear(message):
                    self._apply(RoundEnded(final=True))
            elif isinstance(message, Done):
                self._apply(AnsweredElsewhere(message.id))

    # -- the state and its mirrors ---------------------------------------------------

    def _settle(self, event: Event) -> State:
        with self._lock:
            return self._apply(event)

    def _apply(self, event: Event) -> State:
        """Under the lock: the next state, its mirrors, then what it says to do."""
        state, effects = decide(self._state, event)
        self._state = state
        self._async_error = state.error
        self._quiet = self._group is None and state.quiet
        for effect in effects:
            if isinstance(effect, Send):
                self._channel.send(effect.kind, **effect.fields)
            elif self._group is not None and self._group.join(effect) and effect.final:
                self._apply(RoundEnded(final=True))  # a save here has answered it already
        return self._state

    def _raise_async_error(self) -> None:
        with self._lock:
            error = self._state.error
            self._apply(ErrorRaised())
        if error is not None:
            raise RuntimeError(f"ckptd_client: a background save failed: {error}") from error

    def _make_inert(self) -> None:
        self._inert = True
        self._lock = threading.Lock()  # another thread of the parent may have held it
        self._in_flight = None
        self._state = decide(self._state, Forked())[0]
        self._quiet = True
        self._async_error = None
        _live_clients.discard(self)

    # -- saves -----------------------------------------------------------------------

    def _usable(self, call: str, metrics: dict[str, Any] | None) -> dict[str, Any]:
        metrics = dict(metrics or {})
        json.dumps(metrics)  # refuse metrics the manifest cannot hold before any work is done
        if self._inert:
            raise RuntimeError(f"ckptd_client: {call}() in a forked child process")
        return metrics

    def _begin(self, step: int, *, background: bool) -> Underway:
        if self._group is not None:
            return self._group.begin(step, background=background)
        # A save of the progress made after a final answer is the final save.
        self._settle(Progressed(self._step))
        return Save.begin(
            self.checkpoint_dir, step, self.lineage, self._settle, background=background,
            memory_dir=memory_dir_for(self._state, step),
        )  # fmt: skip

    def _group_due(self) -> bool:
        assert self._group is not None
        save, stop = self._group.due(self._step)
        if stop:
            self._settle(RoundEnded(final=True))
        return save


def _resumed(checkpoint: Checkpoint | None) -> Commit | None:
    if checkpoint is None:
        return None
    return Commit(str(checkpoint.path), checkpoint.step, checkpoint.metrics, checkpoint.bytes, 0.0)


def _nothing() -> None:
    pass
