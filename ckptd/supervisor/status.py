"""The ``status`` answer: a snapshot of the arbiter's state, in plain JSON types.

Reads the arbiter through :class:`Observed` (what it needs, nothing more), on the
arbiter's thread, so the module does not import the loop it describes.
"""

from __future__ import annotations

import os
import time
from typing import Any, Protocol

from ckptd.channel.checkpoint_desk import CheckpointDesk
from ckptd.channel.job_channel import JobChannel
from ckptd.config import JobConfig
from ckptd.process.trainer import Trainer
from ckptd.progress.auto_interval import AutoInterval
from ckptd.progress.health import HangWatch
from ckptd.reporting.goodput_watch import GoodputWatch
from ckptd.run_dir import RunDir
from ckptd.sources.timer import PeriodicTimer
from ckptd.supervisor.preemption import Preemption
from ckptd.supervisor.states import JobState
from ckptd_client.store import Checkpoint


class _JsonValue(Protocol):
    def to_json(self) -> dict[str, Any]: ...


class _Remote(Protocol):  # the remote copy, whose module loads fsspec
    def status(self) -> _JsonValue: ...


class _Memory(Protocol):  # the memory tier (supervisor.memory_copy)
    def status(self) -> dict[str, Any]: ...


class Observed(Protocol):
    """The arbiter as ``status`` reads it."""

    @property
    def config(self) -> JobConfig: ...
    @property
    def run_dir(self) -> RunDir: ...
    @property
    def state(self) -> JobState: ...
    @property
    def trainer(self) -> Trainer | None: ...
    @property
    def attempt(self) -> int: ...
    @property
    def restarts_left(self) -> int: ...
    @property
    def step(self) -> int | None: ...
    @property
    def desk(self) -> CheckpointDesk: ...
    @property
    def channel(self) -> JobChannel: ...
    @property
    def resumed_from(self) -> Checkpoint | None: ...
    @property
    def launched(self) -> float: ...
    @property
    def started(self) -> float: ...
    @property
    def wakeups(self) -> int: ...
    @property
    def timer(self) -> PeriodicTimer: ...
    @property
    def preemption(self) -> Preemption | None: ...
    @property
    def health(self) -> HangWatch: ...
    @property
    def interval(self) -> AutoInterval | None: ...
    @property
    def goodput(self) -> GoodputWatch: ...
    @property
    def remote(self) -> _Remote | None: ...
    @property
    def memory(self) -> _Memory | None: ...


def status_of(arbiter: Observed) -> dict[str, Any]:
    """What a person asks of a running job: is it alive, where is it, what would a crash cost."""
    now, wall = time.monotonic(), time.time()
    last = arbiter.desk.last_commit
    resumed = arbiter.resumed_from
    if last is None and resumed is not None:
        last = {"path": str(resumed.path), "step": resumed.step, "time": resumed.time}
    step = arbiter.step
    unsaved_steps = None
    if step is not None:
        unsaved_steps = step - last["step"] if last and last.get("step") is not None else step + 1
    unsaved_seconds = None
    if arbiter.trainer is not None:
        # Work is at risk since the later of the last commit and this launch.
        launched = wall - (now - arbiter.launched)
        since = max(launched, (last or {}).get("time") or launched)
        unsaved_seconds = round(wall - since, 3)
    due = arbiter.timer.next_due()
    trainer = arbiter.trainer
    return {
        "job": arbiter.config.name,
        "state": arbiter.state.value,
        "daemon_pid": os.getpid(),
        "pid": trainer.pid if trainer else None,
        "attempt": arbiter.attempt,
        "restarts_left": arbiter.restarts_left,
        "step": step,
        "clients": len(arbiter.channel.peers),
        "ranks": [
            {
                "rank": peer.rank,
                "pid": peer.pid,
                "step": peer.step,
                "last_report": None
                if peer.last_report is None
                else round(max(0.0, wall - peer.last_report), 3),
            }
            for peer in sorted(arbiter.channel.peers.values(), key=lambda p: p.rank or 0)
        ],
        "last_checkpoint": None
        if last is None
        else {
            **last,
            "age": round(wall - last["time"], 3) if last.get("time") else None,
        },
        "unsaved_steps": unsaved_steps,
        "unsaved_seconds": unsaved_seconds,
        "next_checkpoint_in": None if due is None else round(max(0.0, due - now), 3),
        "checkpoint_in_flight": arbiter.desk.outstanding.id if arbiter.desk.outstanding else None,
        "uptime": round(now - arbiter.started, 3),
        "wakeups": arbiter.wakeups,
        "preemption": None
        if arbiter.preemption is None
        else {
            "provider": arbiter.preemption.provider,
            "reason": arbiter.preemption.reason,
            "deadline": arbiter.preemption.deadline,
            "seconds_left": round(arbiter.preemption.deadline - wall, 3),
        },
        "hang_timeouts": arbiter.health.budgets(),
        "interval": _interval(arbiter),
        "goodput": arbiter.goodput.latest.to_json() if arbiter.goodput.latest else None,
        "remote": arbiter.remote.status().to_json() if arbiter.remote is not None else None,
        "memory": arbiter.memory.status() if arbiter.memory is not None else None,
        "run_dir": str(arbiter.run_dir.path),
        "checkpoint_dir": str(arbiter.config.checkpoint_dir),
    }


def _interval(arbiter: Observed) -> dict[str, Any] | None:
    """The periodic interval: with ``every = "auto"`` also what it was chosen from; None: off."""
    if arbiter.interval is not None:
        return {"mode": "auto", **arbiter.interval.choice.to_json()}
    every = arbiter.config.every
    return {"mode": "fixed", "every": every} if isinstance(every, float) else None
