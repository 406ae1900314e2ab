"""The saves of one rank of a torchrun group: the agreed step and the one shared directory.

:class:`GroupSaves` is the client's collaborator when the process is a rank of a group
(see ``_group``): the channel's thread hands it the requests and the daemon's round
messages; the training (or saving) thread asks it what is due and runs each
:class:`GroupSave`. What ends a round or a save is settled with the client's decisions,
which tell the daemon (``started``, ``committed``, ``failed``); the round's own
messages (``propose``, ``written``) go out through the channel directly.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import manifest
from ._decisions import Commit, GroupSaveEnded, GroupSaveStarted, JoinRound
from ._group import Group, Outcome, Rounds
from ._group_store import StoreRounds
from ._messages import Aborted, Agreed, CommitOrdered, DaemonMessage, Done
from ._save import Settle, describe

Send = Callable[..., None]  # the channel's send(kind, **fields)


class GroupSaves:
    """This rank's side of the group's checkpoint rounds."""

    @classmethod
    def of(
        cls,
        group: Group,
        send: Send,
        step: Callable[[], int | None],
        checkpoint_dir: Path,
        lineage: manifest.Lineage,
        settle: Settle,
    ) -> GroupSaves:
        """The saves of ``group``'s rank; ranks on several nodes agree through the store."""
        if group.nodes:
            rounds: Rounds = StoreRounds(group, send, step, checkpoint_dir=checkpoint_dir)
        else:
            rounds = Rounds(group, send, step)
        return cls(rounds, send, checkpoint_dir, lineage, settle)

    def __init__(
        self,
        rounds: Rounds,
        send: Send,
        checkpoint_dir: Path,
        lineage: manifest.Lineage,
        settle: Settle,
    ) -> None:
        self.rounds = rounds
        self._send = send
        self._checkpoint_dir = checkpoint_dir
        self._lineage = lineage
        self._settle = settle

    # -- the channel's thread (under the client's lock) ---------------------------------

    def join(self, request: JoinRound) -> bool:
        """Take a request into a round; True when a save here has answered it already."""
        return self.rounds.on_request(
            request.id, request.final, request.save, request.joins, request.memory_dir
        )

    def hear(self, message: DaemonMessage) -> bool:
        """Take the daemon's word on a round; True when that ended a final round."""
        rounds = self.rounds
        if isinstance(message, Agreed):
            rounds.on_agreed(message.id, message.step)
        elif isinstance(message, CommitOrdered):
            rounds.on_outcome(message.step, Outcome("commit"))
        elif isinstance(message, Aborted):
            rounds.on_outcome(message.step, Outcome("aborted", error=message.error))
        elif isinstance(message, Done):
            if message.step is not None:  # another rank committed the shared directory
                rounds.on_outcome(message.step, Outcome("done", message.path))
            else:  # the daemon holds no such request any more
                return rounds.finish([message.id])
        return False

    # -- the training (or saving) thread ------------------------------------------------

    def checked(self, step: int | None) -> bool:
        """Note the step training asks about; True when a round is open (ask ``due``)."""
        self.rounds.checked = step  # before ``current`` is read: see Rounds.earliest
        return self.rounds.current is not None

    def due(self, step: int | None) -> tuple[bool, bool]:
        """(save now, stop now) at ``step``; waits for the agreed step once past the proposal."""
        return self.rounds.due(step)

    def shared_directory(self, step: int) -> Path:
        """The directory every rank of the group gets from ``checkpoint(step)``, created now."""
        memory_dir = self.rounds.memory_dir()
        base = Path(memory_dir) if memory_dir is not None else self._checkpoint_dir
        return self.rounds.group.shared_dir(base, step)

    def begin(self, step: int, *, background: bool) -> GroupSave:
        """Claim the round due at ``step`` and make its shared directory; when this rank
        cannot make it, the save fails on every rank (the daemon and the others are told),
        then the error propagates."""
        ids, final = self.rounds.claim(step)
        save = GroupSave(
            self.rounds, self._send, self._lineage, self._settle, step, tuple(ids), background
        )
        try:
            save.directory = self.shared_directory(step)
        except BaseException as exc:
            save.fail(exc)
            raise
        # The node's LOCAL_RANK 0 says why its part of a memory round is on disk (once a node).
        fallback = self.rounds.fallback() if self.rounds.group.local_rank == 0 else None
        self._settle(GroupSaveStarted(step, save.ids, final, fallback))
        return save

    def close(self) -> None:
        self.rounds.close()


class GroupSave:
    """One save of the group, as this rank takes part in it; ``fail`` or ``commit`` ends it."""

    def __init__(
        self,
        rounds: Rounds,
        send: Send,
        lineage: manifest.Lineage,
        settle: Settle,
        step: int,
        ids: tuple[str, ...],
        background: bool,
    ) -> None:
        self.directory = Path()  # set once made
        self.step = step
        self.ids = ids
        self._background = background  # its failure is held for training to raise
        self._rounds = rounds
        self._send = send
        self._lineage = lineage
        self._settle = settle
        self._began = time.monotonic()

    def fail(self, error: BaseException) -> None:
        """This rank could not write its part; the others may still write: they remove it."""
        self._end(describe(error), report=True, raised=error)

    def commit(self, metrics: dict[str, Any]) -> None:
        """This rank's part is written: wait for the others, then commit once or hear who did."""
        rounds, step = self._rounds, self.step
        self._send("written", ids=list(self.ids), step=step)
        outcome = rounds.await_outcome(step)
        if outcome.kind == "aborted":  # every rank has stopped writing by now
            shutil.rmtree(self.directory, ignore_errors=True)
            error = manifest.CommitError(
                f"checkpoint of step {step} not committed: {outcome.error}"
            )
            self._end(outcome.error, report=False, raised=error)
            raise error
        if outcome.kind == "done":
            path, size, report = Path(outcome.path or ""), 0, False
        else:
            elsewhere = rounds.other_nodes_wrote(step)
            if elsewhere is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
                why = f"another node: {elsewhere}"
                error = manifest.CommitError(f"checkpoint of step {step} not committed: {why}")
                self._end(why, report=True, raised=error)
                raise error
            try:
                path, written = rounds.commit(self.directory, step, metrics, self._lineage)
            except BaseException as exc:
                self.fail(exc)
                raise
            size, report = written.size, True
        commit = Commit(str(path), step, metrics, size, time.monotonic() - self._began)
        final = rounds.finish(list(self.ids))
        self._settle(GroupSaveEnded(step, self.ids, final, commit, report=report))

    def _end(self, error: str, *, report: bool, raised: BaseException) -> None:
        rounds = self._rounds
        rounds.abandon(self.step, f"rank {rounds.group.rank}: {error}" if report else error)
        final = rounds.finish(list(self.ids))
        held = raised if self._background else None  # training raises it at its next call
        self._settle(
            GroupSaveEnded(self.step, self.ids, final, None, error, report=report, raised=held)
        )
