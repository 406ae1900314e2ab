"""The job's public state names (``ckptd status``) and the diagram they move along.

The arbiter's real phase is a :data:`~ckptd.supervisor.lifecycle.Phase`; these are its
names as users see them (:func:`~ckptd.supervisor.lifecycle.shown`), and every transition
of the lifecycle moves them along this diagram (tests/unit/test_lifecycle.py checks it):

starting --> running <--> checkpointing
   |            |              |
   |            v              v
   +------> stopping <---------+      (an orphan adopted at start is stopped first)
   |            |
   v            v
backoff <-------+        (a failure, a hang or a restart)
   |
   +--> starting
any state --> exited      (finished, gave up, or stopped)
"""

from __future__ import annotations

import enum


class JobState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    CHECKPOINTING = "checkpointing"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    EXITED = "exited"


_ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.STARTING: frozenset(
        {JobState.RUNNING, JobState.STOPPING, JobState.BACKOFF, JobState.EXITED}
    ),
    JobState.RUNNING: frozenset(
        {JobState.CHECKPOINTING, JobState.STOPPING, JobState.BACKOFF, JobState.EXITED}
    ),
    JobState.CHECKPOINTING: frozenset(
        {JobState.RUNNING, JobState.STOPPING, JobState.BACKOFF, JobState.EXITED}
    ),
    JobState.STOPPING: frozenset({JobState.BACKOFF, JobState.EXITED}),
    JobState.BACKOFF: frozenset({JobState.STARTING, JobState.EXITED}),
    JobState.EXITED: frozenset(),
}


class TransitionError(RuntimeError):
    """A transition the diagram does not allow: a bug in the lifecycle."""


def check_transition(current: JobState, target: JobState) -> JobState:
    """Return ``target`` if the machine allows ``current -> target``; raise otherwise."""
    if target is not current and target not in _ALLOWED[current]:
        raise TransitionError(f"{current.value} -> {target.value} is not allowed")
    return target
