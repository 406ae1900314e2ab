"""What can happen to the job's phase: the inputs the arbiter feeds the lifecycle.

Immutable values; times are monotonic seconds, taken by the arbiter when the input arrived.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ckptd.control.server import Waiter
from ckptd.process.restart_policy import ExitStatus
from ckptd.process.trainer import Trainer
from ckptd.requests import Origin
from ckptd.supervisor.stops import Intent


@dataclass(frozen=True)
class Adopt:
    trainer: Trainer
    now: float


@dataclass(frozen=True)
class Prepared:
    prepared: Any  # a launcher.Prepared, handed back in Launch


@dataclass(frozen=True)
class PrepareFailed:
    error: str
    code: int


@dataclass(frozen=True)
class Launched:
    trainer: Trainer
    now: float


@dataclass(frozen=True)
class LaunchFailed:
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
    fenced: bool = False
    waiter: Waiter | None = None


@dataclass(frozen=True)
class HangFound:
    """The running job made no progress in time (``overdue``: a progress.health.Overdue)."""

    overdue: Any


@dataclass(frozen=True)
class StopNow:
    """Wait no longer for the final save (a second SIGTERM, ``stop_now``)."""

    reason: str
    now: float


@dataclass(frozen=True)
class Tick:
    now: float


@dataclass(frozen=True)
class FinalDelivered:
    """A client has the final checkpoint request: no stop_signal is needed."""


@dataclass(frozen=True)
class FinalCommitted:
    pass


@dataclass(frozen=True)
class FinalFailed:
    pass


@dataclass(frozen=True)
class JobExited:
    status: ExitStatus


@dataclass(frozen=True)
class Reaped:
    """The job's tree is cleaned up; ``restarts``: restarts without progress until now."""

    now: float
    restarts: int
    rng: random.Random


@dataclass(frozen=True)
class FlushDone:
    uploaded: bool


@dataclass(frozen=True)
class RequeueDone:
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
    | FlushDone
    | RequeueDone
)
