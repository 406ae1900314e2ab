"""A stop in progress: one frozen value, and the one rule by which a later request changes it.

A :class:`Stop` owns its own clocks (the final save's deadline, the moment to send
``stop_signal``, the SIGKILL after the group's SIGTERM) and answers the lifecycle with a
:class:`Step` to take; it never touches a process itself. Every change returns a new Stop.
Its ``intent`` says what follows the job's exit, and :meth:`Stop.supersede` is the one rule
that decides when a later request changes it: **a stop supersedes a restart, a hang or an
orphan adoption; nothing supersedes a stop**. The final checkpoint already in flight keeps
going under the earlier of the two deadlines.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass, field, replace

from ckptd import exit_codes
from ckptd.control.server import Waiter
from ckptd.process.restart_policy import ExitStatus
from ckptd.requests import Origin, new_id


class Intent(enum.Enum):
    """What the arbiter does once the job's process has exited."""

    RESTART = "restart"  # relaunch at once from the final checkpoint (not a failure)
    HANG = "hang"  # the job hung: it is killed, then restarted as after a failure
    STOP = "stop"  # exit ckptd; never relaunch


_RANK = {Intent.RESTART: 0, Intent.HANG: 0, Intent.STOP: 1}
# Why a job ends for good, as ``job.stopped`` says it; the highest named wins.
_WHY_RANK = {None: 0, "early_stop": 1, "diverged": 2, "fenced": 3}


class Step(enum.Enum):
    """What a stop's clocks ask the loop to do now."""

    SIGNAL_MAIN = "signal_main"  # no client got the final request: stop_signal to the main pid
    TERMINATE = "terminate"  # the deadline passed: SIGTERM to the whole tree
    KILL = "kill"  # kill_timeout after that: SIGKILL to the whole tree


@dataclass(frozen=True)
class Stop:
    """Everything about one stop; times are monotonic seconds."""

    reason: str
    intent: Intent
    deadline: float
    origins: frozenset[Origin]
    kill_timeout: float
    final_id: str = field(default_factory=new_id)
    requeue: bool = False  # SLURM's requeue command runs once the job is gone
    why: str | None = None  # "fenced" (exit FENCED), "diverged" (exit DIVERGED), "early_stop"
    signal_at: float | None = None  # when to send stop_signal unless a client took the request
    committed: bool = False  # the final checkpoint committed
    in_ram: bool = False  # ... in the memory tier: it is persisted once the job is gone
    failed: bool = False  # ... or failed (or the requeue command did)
    forced: bool = False  # the tree was signalled: no more waiting for the final save
    kill_at: float | None = None
    superseded: tuple[str, ...] = ()
    waiters: tuple[Waiter, ...] = ()  # control clients told when the stop ends
    local_only: bool = False  # the final checkpoint did not reach the remote in time
    unpersisted: bool = False  # the final checkpoint committed in RAM did not reach the disk

    def supersede(
        self,
        reason: str,
        intent: Intent,
        origin: Origin,
        deadline: float,
        *,
        requeue: bool = False,
        why: str | None = None,
        waiter: Waiter | None = None,
    ) -> tuple[Stop, bool]:
        """A later request during this stop: the stop it makes, and whether the intent changed.

        The intent only ever moves up (restart/hang -> stop); the deadline only earlier.
        """
        merged = replace(
            self,
            origins=self.origins | {origin},
            deadline=min(self.deadline, deadline),
            requeue=self.requeue or requeue,
            why=max(self.why, why, key=_WHY_RANK.__getitem__),
            waiters=self.waiters if waiter is None else (*self.waiters, waiter),
        )
        if _RANK[intent] <= _RANK[self.intent]:
            return merged, False
        superseded = (*self.superseded, self.intent.value)
        return replace(merged, intent=intent, reason=reason, superseded=superseded), True

    def client_took_request(self) -> Stop:
        return replace(self, signal_at=None)

    def next_moment(self) -> float | None:
        moments = [self.signal_at, self.kill_at, None if self.forced else self.deadline]
        present = [m for m in moments if m is not None]
        return min(present) if present else None

    def due(self, now: float) -> tuple[Stop, Step | None]:
        """The action whose time has come, if any, and the stop that has taken it (each once)."""
        if self.kill_at is not None and now >= self.kill_at:
            return replace(self, kill_at=None), Step.KILL
        if not self.forced and now >= self.deadline:
            return self.force(now), Step.TERMINATE
        if self.signal_at is not None and now >= self.signal_at:
            return replace(self, signal_at=None), Step.SIGNAL_MAIN
        return self, None

    def force(self, now: float) -> Stop:
        """Give up waiting for the final save: the tree is signalled now, SIGKILL later."""
        return replace(self, forced=True, signal_at=None, kill_at=now + self.kill_timeout)

    def exit_code(self, status: ExitStatus | None, stop_signal: str) -> int:
        """``ckptd run``'s status once the job of a STOP has exited (docs/exit-codes.md)."""
        if self.why == "fenced":
            return exit_codes.FENCED
        if self.why == "diverged":
            return exit_codes.DIVERGED
        if self.local_only or self.unpersisted:
            return exit_codes.FAILED  # the machine's disk (or its RAM) may not outlive it
        if self.committed and not self.failed:
            return exit_codes.OK
        if self.failed or self.forced:
            return exit_codes.FAILED
        if status is None or status.success or status.signal == signal.Signals[stop_signal]:
            return exit_codes.OK  # a job without the client that stopped on its own in time
        return exit_codes.FAILED
