"""The ranks of a torchrun group on this node: one agreed step, one commit per shared directory.

Owned by the checkpoint desk, on the arbiter's thread. Agreement: each rank proposes the
first step at which it can still take a request (one it has not answered
``should_checkpoint()`` for); once every rank of the node has, all are told ``agreed`` = the
highest proposal, a step every rank can still take. Commit: each
rank reports ``written`` when its part of the shared directory of a step is written; once
all have, the lowest rank is told ``commit``; its ``committed`` becomes ``done`` for the
others and any rank's ``failed`` becomes ``aborted`` for the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .events import EventLog
from .job_channel import JobChannel, Peer


@dataclass
class Agreement:
    """The proposals for one request (kept when a final request replaces it)."""

    proposals: dict[bytes, int] = field(default_factory=dict)
    step: int | None = None


class RankGroup:
    def __init__(self, channel: JobChannel, events: EventLog) -> None:
        self.channel = channel
        self.events = events
        self._written: dict[int, set[bytes]] = {}
        self._aborted: set[int] = set()

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
        """``peer`` wrote its part of ``step``; once all have, the lowest rank commits it."""
        if step in self._aborted:
            return  # its ranks were told already
        done = self._written.setdefault(step, set())
        done.add(peer.identity)
        if len(done) < self.channel.group_size():
            return
        members = [p for p in self.channel.group() if p.identity in done]
        if members:
            del self._written[step]
            self.channel.send(members[0], "commit", step=step)

    def committed(self, peer: Peer, step: object, rid: str | None, path: object) -> None:
        """The committer is done: every other rank's save of ``step`` is too."""
        for member in self.channel.group():
            if member is not peer:
                self.channel.send(member, "done", id=rid, path=path, step=step)

    def failed(self, peer: Peer, step: object) -> bool:
        """A rank's part (or the commit) failed; return False when ``step`` had failed already."""
        if not isinstance(step, int) or step in self._aborted:
            return False
        self._aborted.add(step)
        self._written.pop(step, None)
        return True

    def abort(self, peer: Peer, step: int, error: str) -> None:
        for member in self.channel.group():
            if member is not peer:
                self.channel.send(member, "aborted", step=step, error=error)

    def reset(self) -> None:
        """The job's processes are gone, and their saves with them."""
        self._written.clear()
        self._aborted.clear()
