"""The ranks of a torchrun group on this node: one agreed step, one commit per shared directory.

Owned by the checkpoint desk, on the arbiter's thread. Agreement: each rank proposes the
first step at which it can still take a request (one it has not answered
``should_checkpoint()`` for); once every rank of the node has, all are told ``agreed`` = the
highest proposal, a step every rank can still take. Commit: each
rank reports ``written`` when its part of the shared directory of a step is written; once
all have, the lowest rank is told ``commit``; its ``committed`` becomes ``done`` for the
others. A rank's ``failed`` becomes ``aborted`` for the ranks that wrote, once every rank
has reported (so no rank still writes into the directory they then remove).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ckptd.channel.job_channel import JobChannel, Peer
from ckptd.events import EventLog


@dataclass
class Agreement:
    """The proposals for one request (kept when a final request replaces it)."""

    proposals: dict[bytes, int] = field(default_factory=dict)
    step: int | None = None


@dataclass
class _Save:
    """The reports of the node's ranks on their parts of one step's shared directory."""

    written: set[bytes] = field(default_factory=set)
    reported: set[bytes] = field(default_factory=set)  # written, or failed
    error: str | None = None


class RankGroup:
    def __init__(self, channel: JobChannel, events: EventLog) -> None:
        self.channel = channel
        self.events = events
        self._saves: dict[int, _Save] = {}
        self._committing: set[int] = set()  # told to commit: a failure now is the commit's

    @property
    def active(self) -> bool:
        """Some connected rank belongs to a torchrun group."""
        return self.channel.group_size() > 0

    def propose(self, agreement: Agreement, rid: str, peer: Peer, step: int | None) -> None:
        """Record ``peer``'s proposal; answer everyone once the node's ranks all proposed."""
        agreement.proposals[peer.identity] = 0 if step is None else step
        if agreement.step is not None:
            self.channel.send(peer, "agreed", id=rid, step=agreement.step)
            return
        expected = self.channel.group_size()
        if len(agreement.proposals) < expected:
            return
        agreement.step = max(agreement.proposals.values())
        self.events.emit(
            "checkpoint.agreed",
            request_id=rid,
            at_step=agreement.step,
            ranks=len(agreement.proposals),
        )
        for member in self.channel.group():
            self.channel.send(member, "agreed", id=rid, step=agreement.step)

    def written(self, peer: Peer, step: int) -> None:
        """``peer`` wrote its part of ``step``."""
        save = self._saves.setdefault(step, _Save())
        save.written.add(peer.identity)
        save.reported.add(peer.identity)
        self._settle(step, save)

    def failed(self, peer: Peer, step: int | None, error: str) -> bool:
        """``peer``'s part (or its commit) failed; return whether this is the save's first failure.

        The others are told ``aborted`` only once every rank has stopped writing (so that
        they may remove the shared directory), or at once when the commit itself failed.
        """
        if step is None:
            return True
        error = f"rank {peer.rank}: {error}"
        if step in self._committing:
            self._committing.discard(step)
            for member in self.channel.group():
                if member is not peer:
                    self.channel.send(member, "aborted", step=step, error=error)
            return True
        save = self._saves.setdefault(step, _Save())
        first = save.error is None
        if first:
            save.error = error
        save.reported.add(peer.identity)
        self._settle(step, save)
        return first

    def committed(self, peer: Peer, step: int | None, rid: str | None, path: str | None) -> None:
        """The committer is done: every other rank's save of ``step`` is too."""
        if step is not None:
            self._committing.discard(step)
        for member in self.channel.group():
            if member is not peer:
                self.channel.send(member, "done", id=rid, path=path, step=step)

    def reset(self) -> None:
        """The job's processes are gone, and their saves with them."""
        self._saves.clear()
        self._committing.clear()

    def _settle(self, step: int, save: _Save) -> None:
        """Every rank has reported: the lowest writer commits, or the writers hear it failed."""
        if len(save.reported) < self.channel.group_size():
            return
        del self._saves[step]
        writers = [p for p in self.channel.group() if p.identity in save.written]
        if save.error is not None:
            for member in writers:
                self.channel.send(member, "aborted", step=step, error=save.error)
        elif writers:
            self._committing.add(step)
            self.channel.send(writers[0], "commit", step=step)
