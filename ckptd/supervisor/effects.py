"""What the lifecycle asks the loop to do: immutable effects, performed in order.

The arbiter performs each one (``Arbiter._perform``); an effect that has an outcome (a
launch prepared, a final request delivered, an upload or a requeue finished) comes back
later as an input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ckptd.process.restart_policy import ExitStatus
from ckptd.process.trainer import Trainer
from ckptd.progress.health import Overdue
from ckptd.requests import Origin
from ckptd.supervisor.launcher import Prepared as PreparedLaunch
from ckptd.supervisor.stops import Stop


@dataclass(frozen=True)
class Prepare:
    """Prepare a launch off the loop; its outcome comes back as Prepared or PrepareFailed."""


@dataclass(frozen=True)
class Launch:
    """Start the job from its prepared launch."""

    prepared: PreparedLaunch


@dataclass(frozen=True)
class Emit:
    """An event for the event log and stream."""

    event: str
    fields: tuple[tuple[str, Any], ...] = ()
    level: str = "info"


def emit(event: str, level: str = "info", **fields: Any) -> Emit:
    """An event to emit, its fields as keyword arguments."""
    return Emit(event, tuple(fields.items()), level)


@dataclass(frozen=True)
class Announce:
    """``job.stopping`` (and the systemd status of a stop for good)."""

    stop: Stop
    superseded: str | None = None


@dataclass(frozen=True)
class PauseTimer:
    """No periodic checkpoint until the next launch."""


@dataclass(frozen=True)
class RequestFinal:
    """Ask the job's client for the final checkpoint; FinalDelivered if one took it."""

    stop: Stop
    save: bool
    origin: Origin


@dataclass(frozen=True)
class SignalMain:
    """No client took the final request: ``stop_signal`` to the job's main process."""


@dataclass(frozen=True)
class Terminate:
    """SIGTERM to the job's whole tree (SIGKILL follows after ``kill_timeout``)."""

    reason: str


@dataclass(frozen=True)
class Kill:
    """SIGKILL to the job's whole tree."""


@dataclass(frozen=True)
class DumpStacks:
    """Dump the hung job's stacks off the loop; then it is stopped (intent hang)."""

    overdue: Overdue


@dataclass(frozen=True)
class CleanUp:
    """The main process is gone: forget its clients, clean its tree up off the loop."""

    trainer: Trainer
    status: ExitStatus


@dataclass(frozen=True)
class CountFailure:
    """One more restart without progress (a progress failure too, unless a hang, counted
    when found)."""

    restarts: int
    hang: bool  # a hang was counted as a failure when it was found


@dataclass(frozen=True)
class ReportPreemption:
    """If a preemption notice came: what the final checkpoint saved (``preemption.final``)."""

    stop: Stop


@dataclass(frozen=True)
class Persist:
    """Copy the final checkpoint from RAM to ``checkpoint_dir`` off the loop; PersistDone."""

    deadline: float


@dataclass(frozen=True)
class Flush:
    """Wait (off the loop) for the final checkpoint's upload; FlushDone when it is over."""

    deadline: float


@dataclass(frozen=True)
class Requeue:
    """Run SLURM's requeue command off the loop; RequeueDone when it is over."""


@dataclass(frozen=True)
class Conclude:
    """``job.stopped``, the waiters' replies, the STOP file consumed."""

    stop: Stop
    code: int


Effect = (
    Prepare
    | Launch
    | Emit
    | Announce
    | PauseTimer
    | RequestFinal
    | SignalMain
    | Terminate
    | Kill
    | DumpStacks
    | CleanUp
    | CountFailure
    | ReportPreemption
    | Persist
    | Flush
    | Requeue
    | Conclude
)
Effects = list[Effect]
