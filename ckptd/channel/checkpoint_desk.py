"""Checkpoint requests on their way to the job: coalescing, delivery, acknowledgements, waiters.

Owned by the arbiter and called only from its thread. At most one request is
outstanding; later ones join it. A request that finds no client connected is
held and delivered when one connects (or, for a job without the client,
forwarded as ``request_signal``). The ranks of a torchrun group agree on the
step of each request and commit one shared directory (see ``rank_group``).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptd.channel.job_channel import JobChannel, Peer
from ckptd.channel.messages import Committed, Failed, Ids, Propose, Written
from ckptd.channel.rank_group import Agreement, RankGroup
from ckptd.config import JobConfig
from ckptd.control.server import Waiter
from ckptd.events import EventLog
from ckptd.process.trainer import Trainer
from ckptd.requests import Origin, Request
from ckptd.run_dir import CHECKPOINT_FILE, RunDir


@dataclass
class Outstanding:
    """The checkpoint request the job has been asked for, with everyone waiting on it."""

    id: str
    reason: str
    origins: set[Origin]
    final: bool = False
    save: bool = True
    deadline: float | None = None  # wall-clock, as the client sees it
    delivered: bool = False
    waiters: list[Waiter] = field(default_factory=list)
    agreement: Agreement = field(default_factory=Agreement)
    aliases: set[str] = field(default_factory=set)  # group: earlier requests it joined
    joins: str | None = None
    tier: str = "disk"  # "memory": saved in RAM (memory_dir), persisted by the daemon
    persist: bool = False  # a disk request joined it after delivery: persist it at once

    def answers(self, ids: Ids) -> bool:
        return self.id in ids or bool(self.aliases.intersection(ids))


@dataclass(frozen=True)
class Acknowledged:
    """What one acknowledgement from the job meant."""

    final: bool = False  # it answered the final request of a stop
    progress: bool = False  # a checkpoint newer than any before committed
    persist: bool = False  # a RAM commit a disk request wants on disk at once
    # ... and the waiters of that disk request with their answer: they get it once on disk
    held: tuple[list[Waiter], dict[str, Any]] | None = None


class CheckpointDesk:
    def __init__(
        self, config: JobConfig, channel: JobChannel, events: EventLog, run_dir: RunDir
    ) -> None:
        self.config = config
        self.channel = channel
        self.events = events
        self.run_dir = run_dir
        self.outstanding: Outstanding | None = None
        self.last_commit: dict[str, Any] | None = None
        self.newest_step: int | None = None
        self.group = RankGroup(channel, events)
        self.memory_dir: Path | None = None  # set when the memory tier is on
        self._warned_undeliverable = False

    @property
    def in_flight(self) -> bool:
        """A non-final request has reached the job and is not answered yet."""
        return self.outstanding is not None and self.outstanding.delivered

    @property
    def in_flight_final(self) -> bool:
        """The final request of a stop has reached a client."""
        return (
            self.outstanding is not None and self.outstanding.final and self.outstanding.delivered
        )

    def request(
        self,
        request: Request,
        trainer: Trainer | None,
        waiter: Waiter | None,
        tier: str = "disk",
    ) -> dict[str, Any]:
        """Ask for a checkpoint, joining the outstanding one if any; return the immediate answer.

        A disk request that joins a memory one makes it a disk one when it has not reached
        the job yet, and else has it persisted as soon as it commits.
        """
        current = self.outstanding
        if current is not None:
            current.origins.add(request.origin)
            if waiter is not None:
                current.waiters.append(waiter)
            if current.tier == "memory" and tier == "disk":
                if current.delivered:
                    current.persist = True
                else:
                    current.tier = "disk"
            self.events.emit(
                "checkpoint.requested",
                request_id=request.id,
                reason=request.reason,
                coalesced_into=current.id,
                tier=tier,
            )
            return {"request_id": request.id, "coalesced_into": current.id}
        self.outstanding = Outstanding(request.id, request.reason, {request.origin}, tier=tier)
        if waiter is not None:
            self.outstanding.waiters.append(waiter)
        self.events.emit(
            "checkpoint.requested", request_id=request.id, reason=request.reason, tier=tier
        )
        self._deliver(self.outstanding, trainer)
        return {"request_id": request.id, "coalesced_into": None}

    def request_final(
        self,
        rid: str,
        reason: str,
        origin: Origin,
        deadline: float,
        save: bool,
        tier: str = "disk",
    ) -> bool:
        """Replace the outstanding request by a final one; return whether a client got it."""
        final = Outstanding(
            rid, reason, {origin}, final=True, save=save, deadline=deadline, tier=tier
        )
        earlier = self.outstanding
        if earlier is not None:
            final.origins |= earlier.origins
            final.waiters += earlier.waiters  # answered by the final save (once on disk)
            if earlier.delivered and self.group.active:
                # Ranks may be saving it at its agreed step already: the final joins that save.
                final.agreement, final.joins = earlier.agreement, earlier.id
                final.aliases = earlier.aliases | {earlier.id}
        self.outstanding = final
        return self._deliver(final, None)

    def client_connected(self, peer: Peer) -> None:
        if self.outstanding is not None:
            self.channel.send(peer, "request", **self._fields(self.outstanding))
            self.outstanding.delivered = True

    def job_exited(self) -> None:
        """The job ended: a final request ends with it; a plain one waits for the next job."""
        self.group.reset()
        if self.outstanding is None:
            return
        if self.outstanding.final:
            self._finish(self.outstanding.id, error="the job exited before the checkpoint")
        else:
            self.outstanding.delivered = False
            self.outstanding.agreement = Agreement()
            self.outstanding.aliases.clear()
        self._warned_undeliverable = False

    def on_propose(self, peer: Peer, message: Propose) -> None:
        """A rank's step when request ``id`` reached it; the agreed step once all ranks sent one."""
        rid, current = message.id, self.outstanding
        if current is None or rid is None or not current.answers((rid,)):
            self.channel.send(peer, "done", id=rid, path=None, step=None)  # answered already
            return
        # ``at`` None: a client that could not say; the others' proposals decide
        self.group.propose(current.agreement, current.id, peer, message.at)

    def on_written(self, peer: Peer, message: Written) -> None:
        if message.step is not None:
            self.group.written(peer, message.step)

    def on_committed(self, peer: Peer, message: Committed) -> Acknowledged:
        ids, step = message.ids, message.step
        self.events.emit(
            "checkpoint.committed",
            rank=peer.rank,
            request_id=self._primary(ids),
            request_ids=list(ids),
            path=message.path,
            step=step,
            bytes=message.bytes,
            seconds=message.seconds,
            metrics=message.metrics,
            reused=message.reused,
            tier=self.tier_of(message.path),
        )
        progress = step is not None and self.note_progress(step)
        self.last_commit = {
            "path": message.path,
            "step": step,
            "time": time.time(),
            "metrics": message.metrics,
            "bytes": message.bytes,
            "seconds": message.seconds,
            "tier": self.tier_of(message.path),
        }
        final = (
            self.outstanding is not None
            and self.outstanding.final
            and self.outstanding.answers(ids)
        )
        persist, held = self._wanted_on_disk(ids, message.path)
        if peer.in_group:
            self.group.committed(peer, step, self._primary(ids), message.path)
        for rid in ids:
            if not peer.in_group:
                self.channel.broadcast("done", skip=peer, id=rid, path=message.path, step=step)
            self._finish(rid, result={"request_id": rid, **self.last_commit})
        return Acknowledged(final=final, progress=progress, persist=persist, held=held)

    def on_failed(self, message: Failed, peer: Peer | None = None) -> Acknowledged:
        ids, error, step = message.ids, message.error, message.step
        if peer is not None and peer.in_group and not self.group.failed(peer, step, error):
            return Acknowledged()  # another rank reported this save's failure first
        self.events.emit(
            "checkpoint.failed",
            level="error",
            rank=peer.rank if peer is not None else None,
            request_id=self._primary(ids),
            request_ids=list(ids),
            step=step,
            error=error,
        )
        final = (
            self.outstanding is not None
            and self.outstanding.final
            and self.outstanding.answers(ids)
        )
        for rid in ids:
            self._finish(rid, error=error)
        return Acknowledged(final=final)

    def tier_of(self, path: str | None) -> str:
        """``memory`` for a checkpoint in the memory tier's directory, else ``disk``."""
        if self.memory_dir is None or path is None:
            return "disk"
        return "memory" if Path(path).parent == self.memory_dir else "disk"

    def note_progress(self, step: int) -> bool:
        """A checkpoint of ``step`` exists (found on disk); return whether it is newer."""
        if self.newest_step is None or step > self.newest_step:
            self.newest_step = step
            return True
        return False

    def fail_waiters(self, code: str, message: str) -> None:
        """Answer everyone still waiting for the outstanding request with an error."""
        if self.outstanding is not None:
            for waiter in self.outstanding.waiters:
                waiter.fail(code, message)
            self.outstanding.waiters.clear()

    def _wanted_on_disk(
        self, ids: Ids, path: str | None
    ) -> tuple[bool, tuple[list[Waiter], dict[str, Any]] | None]:
        """For a RAM commit answering the outstanding request: whether to persist it at once
        (a disk request joined the memory save, or the save reused a RAM checkpoint), and its
        waiters, taken off the commit's answer: a waiter (``ckptd checkpoint --wait``) asked
        for a checkpoint on disk, and ckptd answers it once this one is there."""
        current = self.outstanding
        if current is None or not current.answers(ids) or self.tier_of(path) != "memory":
            return False, None
        persist = current.persist or current.tier == "disk"
        if not current.waiters:
            return persist, None
        waiters, current.waiters = current.waiters, []
        return persist, (waiters, {"request_id": current.id, **(self.last_commit or {})})

    def _deliver(self, outstanding: Outstanding, trainer: Trainer | None) -> bool:
        if self.channel.broadcast("request", **self._fields(outstanding)):
            outstanding.delivered = True
            return True
        if trainer is not None and self.config.request_signal and not outstanding.final:
            trainer.signal_main(signal.Signals[self.config.request_signal])
            self.events.emit(
                "checkpoint.forwarded",
                request_id=outstanding.id,
                signal=self.config.request_signal,
                pid=trainer.pid,
            )
            self._finish(
                outstanding.id,
                result={"request_id": outstanding.id, "forwarded": self.config.request_signal},
            )
        elif not outstanding.final and not self._warned_undeliverable:
            self._warned_undeliverable = True
            self.events.emit(
                "checkpoint.held",
                level="warning",
                request_id=outstanding.id,
                why="no client connected yet; delivered when one connects",
            )
        return False

    def _finish(self, rid: str, *, result: dict[str, Any] | None = None, error: str = "") -> None:
        """The outstanding request ``rid`` is answered: tell its waiters, clear its file."""
        current = self.outstanding
        if current is None or not current.answers((rid,)):
            return
        for waiter in current.waiters:
            if result is not None:
                waiter.reply(result)
            else:
                waiter.fail("checkpoint_failed", error)
        if Origin.FILE in current.origins:
            self.run_dir.consume(CHECKPOINT_FILE)
        self.outstanding = None

    def _primary(self, ids: Ids) -> str | None:
        if self.outstanding is not None and self.outstanding.id in ids:
            return self.outstanding.id
        return ids[0] if ids else None

    def _fields(self, outstanding: Outstanding) -> dict[str, Any]:
        memory = outstanding.tier == "memory" and self.memory_dir is not None
        where = {"tier": "memory", "dir": str(self.memory_dir)} if memory else {}
        return {
            "id": outstanding.id,
            "reason": outstanding.reason,
            "deadline": outstanding.deadline,
            "final": outstanding.final,
            "save": outstanding.save,
            "joins": outstanding.joins,
            **where,
        }


def file_request_is_stale(run_dir: RunDir, request: Request) -> bool:
    """A CHECKPOINT-file event for a file already consumed (a late duplicate)."""
    return request.origin is Origin.FILE and not os.path.lexists(run_dir.file(CHECKPOINT_FILE))
