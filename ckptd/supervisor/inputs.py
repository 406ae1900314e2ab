"""What can happen to the job's phase: the inputs the arbiter feeds the lifecycle.

Immutable values; times are monotonic seconds, taken by the arbiter when the input arrived.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ckptd.control.server import Waiter
from ckptd.process.restart_policy import ExitStatus
from ckptd.process.trainer import Trainer
from ckptd.progress.health import Overdue
from ckptd.requests import Origin
from ckptd.supervisor.launcher import Prepared as PreparedLaunch
from ckptd.supervisor.stops import Intent


@dataclass(frozen=True)
class Adopt:
    """At start: a job left running by a ckptd that died (it is stopped, then relaunched)."""

    trainer: Trainer
    now: float


@dataclass(frozen=True)
class Prepared:
    """The launch is prepared (resume point verified, lock taken): start the job."""

    prepared: PreparedLaunch


@dataclass(frozen=True)
class PrepareFailed:
    """The preparation failed; ``code``: ckptd's exit status."""

    error: str
    code: int


@dataclass(frozen=True)
class Launched:
    """The job's process is started; ``instrumented``: a client connected to an earlier launch."""

    trainer: Trainer
    now: float
    instrumented: bool = False


@dataclass(frozen=True)
class LaunchFailed:
    """The command could not be executed."""

    error: str


@dataclass(frozen=True)
class StopRequested:
    """Any request that ends the job's process: a stop, a requeue, a restart, a hang."""

    reason: str
    intent: Intent
    origin: Origin
    now: float
    deadline: float | None = None  # an earlier one than the grace period (a preemption)
    save: bool = True  # ask for a final checkpoint
    requeue: bool = False
    why: str | None = None  # a stop for good that job.stopped names: fenced, diverged, early_stop
    waiter: Waiter | None = None
    answered: bool = False  # its final checkpoint is committed already (another node's stop)


@dataclass(frozen=True)
class HangFound:
    """The running job made no progress in time."""

    overdue: Overdue


@dataclass(frozen=True)
class StopNow:
    """Wait no longer for the final save (a second SIGTERM, ``stop_now``)."""

    reason: str
    now: float


@dataclass(frozen=True)
class Tick:
    """The loop's clock: a moment it was to wake at may have come."""

    now: float


@dataclass(frozen=True)
class FinalDelivered:
    """A client has the final checkpoint request: no stop_signal is needed."""


@dataclass(frozen=True)
class FinalCommitted:
    """The final checkpoint committed (``in_ram``: in the memory tier, still to persist)."""

    in_ram: bool = False


@dataclass(frozen=True)
class FinalFailed:
    """The final checkpoint failed."""


@dataclass(frozen=True)
class JobExited:
    """The job's main process exited."""

    status: ExitStatus


@dataclass(frozen=True)
class Reaped:
    """The job's tree is cleaned up; ``restarts``: restarts without progress until now."""

    now: float
    restarts: int
    rng: random.Random


@dataclass(frozen=True)
class FlushDone:
    """The final upload is over: whether it reached the remote."""

    uploaded: bool


@dataclass(frozen=True)
class PersistDone:
    """The final checkpoint's copy from RAM to ``checkpoint_dir`` is over: whether it is there."""

    ok: bool


@dataclass(frozen=True)
class RequeueDone:
    """The requeue command is over: whether it succeeded."""

    ok: bool


Input = (
    Adopt
    | Prepared
    | PrepareFailed
    | Launched
    | LaunchFailed
    | StopRequested
    | StopNow
    | HangFound
    | Tick
    | FinalDelivered
    | FinalCommitted
    | FinalFailed
    | JobExited
    | Reaped
    | PersistDone
    | FlushDone
    | RequeueDone
)
