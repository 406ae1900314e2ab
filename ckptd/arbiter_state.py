"""What the parts of the arbiter share: its state, set once in ``Arbiter.__init__``.

The arbiter is one object (one owner of the job's state) written in several modules by
concern: ``arbiter`` (the loop, requests, clocks, the job's messages), ``stopping``
(final saves, deadlines, preemption, requeue) and ``launcher`` (launches, exits,
restarts, orphans). Each part derives from this class, which declares the state and the
few steps one part calls in another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ckptd_client.store import Checkpoint

    from . import retention
    from .checkpoint_desk import CheckpointDesk
    from .config import JobConfig
    from .control_server import ControlServer, Waiter
    from .events import EventLog
    from .job_channel import JobChannel
    from .preemption import Preemption
    from .requests import Request
    from .restart_policy import ExitStatus, RestartPolicy
    from .run_dir import Orphan, RunDir
    from .sources.cloud_notices import CloudNotices
    from .sources.timer import PeriodicTimer
    from .states import JobState
    from .stopping import Stopping
    from .systemd import Notifier
    from .trainer import Trainer


class ArbiterState:
    config: JobConfig
    run_dir: RunDir
    events: EventLog
    channel: JobChannel
    control: ControlServer
    desk: CheckpointDesk
    policy: RestartPolicy
    rules: retention.RetentionRules
    state: JobState
    trainer: Trainer | None
    attempt: int
    restarts_without_progress: int
    step: int | None
    resumed_from: Checkpoint | None
    stopping: Stopping | None
    backoff_until: float | None
    started: float
    launched: float
    last_progress: float
    exit_code: int
    timer: PeriodicTimer
    notifier: Notifier
    preemption: Preemption | None
    cloud: CloudNotices | None
    _orphan: Orphan | None
    _adopting_until: float | None
    _save_bytes: int

    def _transition(self, target: JobState) -> None:
        raise NotImplementedError

    def _request_checkpoint(self, request: Request, waiter: Waiter | None = None) -> Any:
        raise NotImplementedError

    def _set_step(self, step: int | None) -> None:
        raise NotImplementedError

    def _finish_stop(self, status: ExitStatus | None) -> None:
        raise NotImplementedError

    def _status_line(self) -> str:
        raise NotImplementedError
