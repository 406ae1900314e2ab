"""Immutable request values: what a source saw, turned into something the arbiter acts on.

Every way in (a POSIX signal, a signal file, the timer, later the control socket
and cloud notices) produces one of these and posts it; only the arbiter acts.
"""

from __future__ import annotations

import enum
import time
import uuid
from dataclasses import dataclass, field
from typing import Any


class Action(enum.Enum):
    CHECKPOINT = "checkpoint"
    STOP = "stop"  # final checkpoint, then stop without restart
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
