"""Immutable request values: what a source saw, turned into something the arbiter acts on.

Every way in (a POSIX signal, a signal file, the timer, a control command, a cloud
notice) produces one of these and posts it; only the arbiter decides and acts. A
control command's request carries where its answer goes (``reply_to``).
"""

from __future__ import annotations

import enum
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol


class Action(enum.Enum):
    CHECKPOINT = "checkpoint"
    STOP = "stop"  # final checkpoint, then stop without restart
    RESTART = "restart"  # final checkpoint, then relaunch at once (not counted as a failure)
    STOP_NOW = "stop-now"  # a second stop: signal the job's process group at once
    PREEMPT = "preempt"  # the machine goes at a known time: checkpoint now, final save in time
    REQUEUE = "requeue"  # SLURM's warning signal: final checkpoint, requeue the job, exit
    WAKE = "wake"  # nothing to do but look around (a child changed state)


class Origin(enum.Enum):
    SIGNAL = "signal"
    FILE = "file"
    TIMER = "timer"
    CONTROL = "control"
    CLOUD = "cloud"
    REMOTE = "remote"  # the remote store: fenced by another daemon, or ahead of the job
    GROUP = "group"  # another node of a torchrun job: its stop reached this node's ranks


class Reply(Protocol):
    """Where the answer to a control command goes (the control server's waiter)."""

    def reply(self, result: Any) -> None: ...
    def fail(self, code: str, message: str) -> None: ...


def new_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class Request:
    action: Action
    origin: Origin
    reason: str
    id: str = field(default_factory=new_id)
    received: float = field(default_factory=time.monotonic)
    notice: Any = None  # the cloud notice of a PREEMPT request
    save: bool = True  # STOP: False stops without a final checkpoint
    reply_to: Reply | None = None  # a control command: answered by the arbiter
    wait: bool = False  # ... once the checkpoint or the stop is done, not at once
