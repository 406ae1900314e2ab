"""Stopping the job: the final save, its deadline, the group signals; preemption; requeue."""

from __future__ import annotations

import enum
import math
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

from . import exit_codes
from .arbiter_state import ArbiterState
from .control_server import Waiter
from .preemption import Preemption
from .requests import Action, Origin, Request, new_id
from .restart_policy import ExitStatus
from .run_dir import STOP_FILE
from .states import JobState


class StopKind(enum.Enum):
    STOP = "stop"  # final checkpoint, then exit
    RESTART = "restart"  # final checkpoint, then relaunch at once (not a failure)
    HANG = "hang"  # kill now, then restart as after a failure


@dataclass
class Stopping:
    """A stop in progress: final save first, the group signals only at the deadline."""

    reason: str
    deadline: float  # monotonic
    origin: Origin
    kind: StopKind = StopKind.STOP
    final_id: str = field(default_factory=new_id)
    committed: bool = False
    failed: bool = False
    forced: bool = False
    kill_at: float | None = None
    requeue: bool = False
    waiters: list[Waiter] = field(default_factory=list)


class Stopper(ArbiterState):
    """The arbiter's stopping part (see ``arbiter_state``)."""

    def _on_preemption(self, request: Request) -> None:
        """Checkpoint at once; take the final save as late as its measured time allows."""
        notice = request.notice
        plan = Preemption.plan(notice, self.config.preemption.margin, self.config.grace)
        self.events.emit(
            "preemption.noticed",
            provider=notice.provider,
            kind=notice.kind,
            deadline=plan.deadline,
            seconds_left=round(plan.deadline - time.time(), 3),
            request_id=request.id,
        )
        if self.preemption is None:
            last = self.desk.last_commit
            plan.committed_step_at_notice = last.get("step") if last else self.desk.newest_step
            self.preemption = plan
        if self.stopping is not None:
            self.stopping.deadline = min(self.stopping.deadline, plan.stop_by_monotonic())
            return
        no_time_left = self.preemption.final_at(self._save_seconds()) <= time.monotonic()
        if no_time_left or self.trainer is None:
            self._begin_stop(request, deadline=plan.stop_by_monotonic())
        else:
            self._request_checkpoint(Request(Action.CHECKPOINT, Origin.CLOUD, request.reason))

    def _save_seconds(self) -> float:
        last = self.desk.last_commit
        seconds = last.get("seconds") if last else None
        return float(seconds) if isinstance(seconds, (int, float)) else 0.0

    def _preemption_final_due(self, now: float) -> bool:
        plan = self.preemption
        return (
            plan is not None
            and self.stopping is None
            and self.trainer is not None
            and now >= plan.final_at(self._save_seconds())
        )

    def _begin_stop(
        self,
        request: Request,
        *,
        kind: StopKind = StopKind.STOP,
        save: bool = True,
        waiter: Waiter | None = None,
        deadline: float | None = None,
        requeue: bool = False,
    ) -> None:
        now = time.monotonic()
        self.backoff_until = None
        stop_by = min(now + self.config.grace, deadline if deadline is not None else math.inf)
        self.stopping = Stopping(request.reason, stop_by, request.origin, kind, requeue=requeue)
        if waiter is not None:
            self.stopping.waiters.append(waiter)
        trainer = self.trainer
        if trainer is None or trainer.poll() is not None:
            self._finish_stop(None)
            return
        self._transition(JobState.STOPPING)
        self.timer.pause()
        self._save_bytes = 0
        if kind is StopKind.STOP:
            self.notifier.stopping(
                f"stopping ({request.reason}): final checkpoint within {self.config.grace:g}s"
            )
        self.events.emit(
            "job.stopping",
            reason=request.reason,
            kind=kind.value,
            grace=self.config.grace,
            request_id=self.stopping.final_id,
        )
        if kind is StopKind.HANG:
            self._force(now, "hang")
            return
        wall_deadline = time.time() + (stop_by - now)
        if not self.desk.request_final(
            self.stopping.final_id, request.reason, request.origin, wall_deadline, save
        ):
            trainer.signal_main(signal.Signals[self.config.stop_signal])
            self.events.emit(
                "job.signalled",
                signal=self.config.stop_signal,
                pid=trainer.pid,
                why="no client connected",
            )

    def _stop_now(self, reason: str) -> None:
        if self.stopping is None or self.stopping.forced or self.trainer is None:
            return
        self._force(time.monotonic(), reason)

    def _force(self, now: float, reason: str) -> None:
        assert self.stopping is not None and self.trainer is not None
        self.stopping.forced = True
        self.stopping.kill_at = now + self.config.kill_timeout
        self.events.emit("job.terminating", level="warning", reason=reason, pid=self.trainer.pid)
        self.trainer.signal_tree(signal.SIGTERM)

    def _finish_stop(self, status: ExitStatus | None) -> None:
        stop = self.stopping
        assert stop is not None
        self.stopping = None
        if stop.kind is StopKind.RESTART:
            self.events.emit(
                "job.restarting", delay=0, reason=stop.reason, final_checkpoint=stop.committed
            )
            self._transition(JobState.BACKOFF)
            self.backoff_until = time.monotonic()
            return
        if self.preemption is not None:
            self._report_preemption(stop)
        if stop.requeue:
            self._requeue(stop)
        if stop.committed and not stop.failed:
            self.exit_code = exit_codes.OK
        elif stop.failed or stop.forced:
            self.exit_code = exit_codes.FAILED
        elif (
            status is None
            or status.success
            or status.signal == signal.Signals[self.config.stop_signal]
        ):
            self.exit_code = exit_codes.OK
        else:
            self.exit_code = exit_codes.FAILED
        self.events.emit(
            "job.stopped",
            reason=stop.reason,
            final_checkpoint=stop.committed,
            exit_code=self.exit_code,
            request_id=stop.final_id,
        )
        for waiter in stop.waiters:
            waiter.reply(
                {"stopped": True, "final_checkpoint": stop.committed, "exit_code": self.exit_code}
            )
        if stop.origin is Origin.FILE:
            self.run_dir.consume(STOP_FILE)
        self._transition(JobState.EXITED)

    def _report_preemption(self, stop: Stopping) -> None:
        """How much work the final checkpoint saved and how much was lost; approve the event."""
        assert self.preemption is not None
        outcome = self.preemption.outcome(
            self.desk.last_commit if stop.committed else None, self.step
        )
        self.events.emit("preemption.final", **outcome)
        if self.cloud is not None and self.preemption.notice is not None:
            self.cloud.acknowledge(self.preemption.notice)

    def _requeue(self, stop: Stopping) -> None:
        command = [os.path.expandvars(arg) for arg in self.config.slurm.requeue_command]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=60)
            code, output = result.returncode, (result.stderr or result.stdout).strip()[-500:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            code, output = None, str(exc)
        self.events.emit(
            "job.requeued" if code == 0 else "job.requeue_failed",
            level="info" if code == 0 else "error",
            command=command,
            returncode=code,
            output=output,
        )
        if code != 0:
            stop.failed = True
