"""A stop in progress, and what happens once the job's process is gone.

A :class:`Stop` owns its own clocks (the final save's deadline, the moment to send
``stop_signal``, the SIGKILL after the group's SIGTERM) and answers the loop with an
:class:`Step` to take; it never touches a process itself. Its ``intent`` says what
follows the job's exit, and :meth:`Stop.supersede` is the one rule that decides when
a later request changes it: **a stop supersedes a restart, a hang or an orphan
adoption; nothing supersedes a stop**. The final checkpoint already in flight keeps
going under the earlier of the two deadlines.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass, field

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


class Step(enum.Enum):
    """What a stop's clocks ask the loop to do now."""

    SIGNAL_MAIN = "signal_main"  # no client got the final request: stop_signal to the main pid
    TERMINATE = "terminate"  # the deadline passed: SIGTERM to the whole tree
    KILL = "kill"  # kill_timeout after that: SIGKILL to the whole tree


@dataclass
class Stop:
    """Everything about one stop; times are monotonic seconds."""

    reason: str
    intent: Intent
    deadline: float
    origins: set[Origin]
    kill_timeout: float
    final_id: str = field(default_factory=new_id)
    requeue: bool = False
    signal_at: float | None = None  # when to send stop_signal unless a client took the request
    delivered: bool = False  # a client has the final request
    committed: bool = False
    failed: bool = False
    forced: bool = False
    kill_at: float | None = None
    superseded: list[str] = field(default_factory=list)
    waiters: list[Waiter] = field(default_factory=list)
    status: ExitStatus | None = None  # how the job ended, once it has
    flushed: bool = False  # the final checkpoint's upload was waited for (a remote is set)
    local_only: bool = False  # ... and it did not reach the remote in time

    def supersede(
        self,
        reason: str,
        intent: Intent,
        origin: Origin,
        deadline: float,
        *,
        requeue: bool = False,
        waiter: Waiter | None = None,
    ) -> bool:
        """A later request during this stop; return whether the intent changed.

        The intent only ever moves up (restart/hang -> stop); the deadline only earlier.
        """
        self.origins.add(origin)
        self.deadline = min(self.deadline, deadline)
        self.requeue = self.requeue or requeue
        if waiter is not None:
            self.waiters.append(waiter)
        if _RANK[intent] <= _RANK[self.intent]:
            return False
        self.superseded.append(self.intent.value)
        self.intent, self.reason = intent, reason
        return True

    def client_took_request(self) -> None:
        self.delivered = True
        self.signal_at = None

    def next_moment(self) -> float | None:
        moments = [self.signal_at, self.kill_at, None if self.forced else self.deadline]
        present = [m for m in moments if m is not None]
        return min(present) if present else None

    def due(self, now: float) -> Step | None:
        """The action whose time has come, if any (each is returned once)."""
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            return Step.KILL
        if not self.forced and now >= self.deadline:
            self.force(now)
            return Step.TERMINATE
        if self.signal_at is not None and now >= self.signal_at:
            self.signal_at = None
            return Step.SIGNAL_MAIN
        return None

    def force(self, now: float) -> None:
        """Give up waiting for the final save: the tree is signalled now, SIGKILL later."""
        self.forced = True
        self.signal_at = None
        self.kill_at = now + self.kill_timeout

    def exit_code(self, status: ExitStatus | None, stop_signal: str) -> int:
        """``ckptd run``'s status once the job of a STOP has exited (docs/exit-codes.md)."""
        if self.local_only:
            return exit_codes.FAILED  # the machine's disk may not outlive it
        if self.committed and not self.failed:
            return exit_codes.OK
        if self.failed or self.forced:
            return exit_codes.FAILED
        if status is None or status.success or status.signal == signal.Signals[stop_signal]:
            return exit_codes.OK  # a job without the client that stopped on its own in time
        return exit_codes.FAILED
