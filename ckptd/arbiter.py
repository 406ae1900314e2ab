"""The supervisor loop: the only owner of the job's state.

Sources post immutable Requests (thread- and signal-safe); the job channel
delivers client messages and the control server commands; the loop polls them
all plus a wake-up pipe, and acts. Everything here runs on one thread.
"""

from __future__ import annotations

import enum
import math
import os
import queue
import random
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil
import zmq

from ckptd_client import protocol
from ckptd_client.manifest import remove_temporaries
from ckptd_client.store import Checkpoint, bytes_in_progress, newest_valid, scan

from . import exit_codes, log, retention
from .checkpoint_desk import CheckpointDesk, file_request_is_stale
from .config import JobConfig
from .control_server import ControlServer, ReplyError, Waiter
from .events import EventLog
from .job_channel import JobChannel, Peer
from .preemption import Preemption
from .requests import Action, Origin, Request, new_id
from .restart_policy import ExitStatus, RestartPolicy
from .run_dir import STOP_FILE, Orphan, RunDir, RunDirError
from .sources import RequestSource
from .sources.cloud_notices import CloudNotices
from .sources.timer import PeriodicTimer
from .states import JobState, check_transition
from .systemd import Notifier
from .trainer import LaunchError, Trainer

_MAX_SLEEP = 1.0
_ADOPT_WINDOW = 3.0  # how long an orphan's client gets to reconnect before it is signalled
_ADOPT_POLL = 0.05
_SYSTEMD_ONLY = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}
)  # the daemon's, not the job's  # an adopted process is not our child: no SIGCHLD, so look often


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


class Arbiter:
    def __init__(
        self,
        config: JobConfig,
        run_dir: RunDir,
        events: EventLog,
        channel: JobChannel,
        control: ControlServer,
        sources: list[RequestSource],
        wake_fds: tuple[int, int],
        orphan: Orphan | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.events = events
        self.channel = channel
        self.control = control
        self.sources = sources
        self.desk = CheckpointDesk(config, channel, events, run_dir)
        self.policy = RestartPolicy(
            config.restart, config.max_restarts, config.restart_delay, config.restart_delay_max
        )
        self.rules = retention.RetentionRules(
            config.keep_last,
            config.keep_best,
            config.best_metric,
            config.best_mode,
            config.keep_every,
        )
        self.state = JobState.STARTING
        self.trainer: Trainer | None = None
        self.attempt = -1
        self.restarts_without_progress = 0
        self.step: int | None = None
        self.resumed_from: Checkpoint | None = None
        self.stopping: Stopping | None = None
        self.backoff_until: float | None = None
        self.started = time.monotonic()
        self.launched = self.started
        self.last_progress = self.started
        self.exit_code = exit_codes.OK
        self.timer = PeriodicTimer(config.every)
        self._queue: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._wake_r, self._wake_w = wake_fds
        self._orphan = orphan
        self._adopting_until: float | None = None
        self.notifier = notifier or Notifier()
        self.preemption: Preemption | None = None
        self.cloud = next((s for s in sources if isinstance(s, CloudNotices)), None)
        self._save_bytes = 0
        self._progress_checked = 0.0

    @property
    def endpoints(self) -> dict[str, str]:
        return {"job": self.channel.endpoint, **self.control.endpoints}

    # -- the loop ------------------------------------------------------------------------

    def post(self, request: Request) -> None:
        """Hand a request to the loop; safe from any thread and from signal handlers."""
        self._queue.put(request)
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass  # pipe full: the loop is awake anyway

    def run(self) -> int:
        for source in self.sources:
            source.start(self.post)
        poller = zmq.Poller()
        poller.register(self.channel.socket, zmq.POLLIN)
        for router in self.control.routers:
            poller.register(router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        self._drain_requests()
        if self.state is JobState.STARTING and not self._adopt_orphan():
            self._launch()
        try:
            while self.state is not JobState.EXITED:
                ready = dict(poller.poll(self._sleep_ms()))
                if self._wake_r in ready:
                    _drain_fd(self._wake_r)
                if self.channel.socket in ready:
                    for peer, message in self.channel.receive():
                        self._on_client(peer, message)
                for router in self.control.routers:
                    if router in ready:
                        self.control.handle(router, self._dispatch)
                self._drain_requests()
                self._check_child()
                self._check_clocks()
        finally:
            self._shutdown()
        return self.exit_code

    def _adopt_orphan(self) -> bool:
        """Take charge of a job left running by a dead daemon; True when there is one.

        Its client reconnects to the job socket by itself (same path): within a short
        window it is asked for a final checkpoint like any stop, else it gets
        ``stop_signal``. Once it is gone, the job relaunches from the newest checkpoint.
        """
        orphan = self._orphan
        if orphan is None or orphan.pid is None:
            return False
        trainer = Trainer.adopt(orphan.pid, orphan.started)
        if trainer is None:
            return False
        self.trainer = trainer
        self.attempt += 1
        self._transition(JobState.RUNNING)
        self._adopting_until = time.monotonic() + _ADOPT_WINDOW
        self.events.emit(
            "job.adopted",
            level="warning",
            pid=trainer.pid,
            why="left running by a ckptd that died; stopping it before a new launch",
        )
        return True

    def _take_job_lock(self) -> None:
        """The lock the job inherits; stray holders from an earlier job are killed first."""
        if self.run_dir.has_job_lock or self.run_dir.take_job_lock(self.config.kill_timeout):
            return
        strays = self.run_dir.lock_holders()
        self.events.emit("job.strays_killed", level="warning", pids=[p.pid for p in strays])
        for process in strays:
            try:
                process.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(strays, timeout=self.config.kill_timeout)
        if not self.run_dir.take_job_lock(self.config.kill_timeout):
            raise RunDirError(f"{self.run_dir.path}: the job lock is still held by an earlier job")

    def _sleep_ms(self) -> int:
        now = time.monotonic()
        moments = [
            now + _MAX_SLEEP,
            self.timer.next_due(),
            self.backoff_until,
            self.notifier.next_ping(),
        ]
        if self.trainer is not None and self.trainer.adopted:
            moments.append(now + _ADOPT_POLL)
        if self.stopping is not None:
            moments += [self.stopping.deadline, self.stopping.kill_at]
        elif self.preemption is not None:
            moments.append(self.preemption.final_at(self._save_seconds()))
        if self.config.hang_timeout is not None and self.trainer is not None:
            moments.append(self.last_progress + self.config.hang_timeout)
        soonest = min(m for m in moments if m is not None)
        return max(0, int((soonest - now) * 1000) + 1)

    def _drain_requests(self) -> None:
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return
            self._on_request(request)

    def _shutdown(self) -> None:
        self.notifier.close()
        for source in self.sources:
            source.stop()
        self.desk.fail_waiters("ckptd is exiting")
        if self.trainer is not None and self.trainer.poll() is None:
            # Only reached when the loop itself failed: never leave a job behind.
            self.events.emit("job.abandoned", level="error", pid=self.trainer.pid)
            self.trainer.signal_tree(signal.SIGTERM)
            self.trainer.kill_leftovers(self.config.kill_timeout)

    def _transition(self, target: JobState) -> None:
        self.state = check_transition(self.state, target)

    def _sync_checkpointing(self) -> None:
        if self.state in (JobState.RUNNING, JobState.CHECKPOINTING):
            self._transition(JobState.CHECKPOINTING if self.desk.in_flight else JobState.RUNNING)

    # -- requests ------------------------------------------------------------------------

    def _on_request(self, request: Request, waiter: Waiter | None = None) -> Any:
        if request.action is Action.CHECKPOINT:
            return self._request_checkpoint(request, waiter)
        if request.action is Action.STOP:
            if self.stopping is None or self.stopping.kind is StopKind.HANG:
                self._begin_stop(request)
            elif request.origin is Origin.SIGNAL:
                self._stop_now(request.reason)  # a second SIGTERM/SIGINT: do not wait any longer
        elif request.action is Action.STOP_NOW:
            self._stop_now(request.reason)
        elif request.action is Action.PREEMPT:
            self._on_preemption(request)
        elif request.action is Action.REQUEUE and self.stopping is None:
            self._begin_stop(request, requeue=True)
        return None

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

    def _request_checkpoint(self, request: Request, waiter: Waiter | None = None) -> Any:
        if file_request_is_stale(self.run_dir, request):
            return None
        if self.state in (JobState.STOPPING, JobState.EXITED):
            if waiter is not None:
                raise ReplyError("not_running", f"the job is {self.state.value}")
            return None
        result = self.desk.request(request, self.trainer, waiter)
        self._sync_checkpointing()
        return result

    # -- control commands ----------------------------------------------------------------

    def _dispatch(self, command: str, args: Any, waiter: Waiter) -> None:
        from .control_commands import execute

        execute(self, command, args, waiter)

    def control_checkpoint(self, waiter: Waiter | None) -> Any:
        from .control_commands import LATER

        request = Request(Action.CHECKPOINT, Origin.CONTROL, "control")
        result = self._request_checkpoint(request, waiter)
        return LATER if waiter is not None and not waiter.done else result

    def control_stop(self, save: bool, waiter: Waiter | None) -> Any:
        from .control_commands import LATER

        if self.stopping is not None and self.stopping.kind is StopKind.STOP:
            if waiter is not None:
                self.stopping.waiters.append(waiter)
                return LATER
            return {"stopping": True, "already": True}
        self._begin_stop(Request(Action.STOP, Origin.CONTROL, "control"), save=save, waiter=waiter)
        return LATER if waiter is not None and not waiter.done else {"stopping": True}

    def control_restart(self) -> Any:
        if self.stopping is not None:
            raise ReplyError("not_running", "a stop is already in progress")
        if self.trainer is None:
            raise ReplyError("not_running", f"no job process is running ({self.state.value})")
        self._begin_stop(Request(Action.STOP, Origin.CONTROL, "restart"), kind=StopKind.RESTART)
        return {"restarting": True}

    def status(self) -> dict[str, Any]:
        from .status import status_of

        return status_of(self)

    def checkpoints(self) -> list[dict[str, Any]]:
        return [c.to_json() for c in scan(self.config.checkpoint_dir)]

    def effective_config(self) -> dict[str, Any]:
        return asdict(self.config)

    # -- stopping ------------------------------------------------------------------------

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

    # -- the job process -----------------------------------------------------------------

    def _launch(self) -> None:
        if self.state is JobState.BACKOFF:
            self._transition(JobState.STARTING)
        try:
            self._take_job_lock()
        except RunDirError as exc:
            self.events.emit("job.launch_failed", level="error", error=str(exc))
            self.exit_code = exit_codes.FAILED
            self._transition(JobState.EXITED)
            return
        self.backoff_until = None
        self.attempt += 1
        self.events.attempt = self.attempt
        log.bind(attempt=self.attempt)
        for path in remove_temporaries(self.config.checkpoint_dir):
            self.events.emit("checkpoint.temporary_removed", path=str(path))
        rejected: list[Checkpoint] = []
        resume = newest_valid(self.config.checkpoint_dir, rejected=rejected)
        for bad in rejected:
            self.events.emit(
                "checkpoint.invalid", level="warning", path=str(bad.path), why=bad.reason
            )
        self.resumed_from = resume
        if resume is not None:
            self.desk.note_progress(resume.step)
        self._set_step(resume.step if resume else None)
        try:
            self.trainer = Trainer.launch(
                self.config.command,
                self._job_env(resume),
                self.config.cwd,
                pass_fds=[self.run_dir.lock_fd],
            )
        except LaunchError as exc:
            self.events.emit("job.launch_failed", level="error", error=str(exc))
            self.trainer = None
            self._after_exit(ExitStatus(code=exit_codes.CANNOT_EXECUTE))
            return
        self.run_dir.record_holder(self.trainer.pid)
        now = time.monotonic()
        self.launched = self.last_progress = now
        self.timer.reset(now)
        self._transition(JobState.RUNNING)
        self.notifier.ready(self._status_line())
        self.events.emit(
            "job.started",
            pid=self.trainer.pid,
            resume_from=str(resume.path) if resume else None,
            resume_step=resume.step if resume else None,
        )

    def _job_env(self, resume: Checkpoint | None) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_ONLY}
        return {
            **inherited,
            **self.config.env,
            protocol.ENV_ENDPOINT: self.channel.endpoint,
            protocol.ENV_CHECKPOINT_DIR: str(self.config.checkpoint_dir),
            protocol.ENV_RESUME_FROM: str(resume.path) if resume else "",
            protocol.ENV_RESUME_STEP: str(resume.step) if resume else "",
            protocol.ENV_ATTEMPT: str(self.attempt),
            protocol.ENV_RUN_DIR: str(self.run_dir.path),
            protocol.ENV_JOB: self.config.name,
        }

    def _check_child(self) -> None:
        trainer = self.trainer
        if trainer is None or (status := trainer.poll()) is None:
            return
        self.events.emit(
            "job.exited",
            pid=trainer.pid,
            status=str(status),
            exit_code=None if trainer.adopted else status.shell_code,
        )
        leftovers = trainer.kill_leftovers(self.config.kill_timeout)
        if leftovers:
            self.events.emit("job.leftovers_killed", count=leftovers)
        self.trainer = None
        self.channel.forget_peers()
        self.run_dir.record_holder(None)
        self.desk.job_exited()
        self._note_progress_on_disk()
        if self.stopping is not None and self.stopping.kind is not StopKind.HANG:
            self._finish_stop(status)
            return
        self.stopping = None
        self._after_exit(status)

    def _note_progress_on_disk(self) -> None:
        """Count a commit whose acknowledgement died with the job (cheap check; launch verifies)."""
        steps = [c.step for c in scan(self.config.checkpoint_dir) if c.valid]
        if steps and self.desk.note_progress(max(steps)):
            self.restarts_without_progress = 0

    def _after_exit(self, status: ExitStatus) -> None:
        if not self.policy.wants_restart(status):
            self.exit_code = status.shell_code
            self.events.emit("job.finished", status=str(status), exit_code=self.exit_code)
            self._transition(JobState.EXITED)
            return
        self.restarts_without_progress += 1
        if self.policy.exhausted(self.restarts_without_progress):
            self.exit_code = exit_codes.GAVE_UP
            self.events.emit(
                "job.gave_up",
                level="error",
                status=str(status),
                restarts=self.restarts_without_progress - 1,
                why="max_restarts reached without a new checkpoint",
            )
            self._transition(JobState.EXITED)
            return
        delay = self.policy.backoff(self.restarts_without_progress, random.Random())
        self.backoff_until = time.monotonic() + delay
        self.timer.pause()
        self._transition(JobState.BACKOFF)
        self.events.emit(
            "job.restarting",
            delay=round(delay, 3),
            status=str(status),
            restarts_left=self.restarts_left,
        )

    @property
    def restarts_left(self) -> int:
        return max(0, self.config.max_restarts - self.restarts_without_progress)

    def _status_line(self) -> str:
        last = self.desk.last_commit
        saved = f"last checkpoint step {last['step']}" if last else "no checkpoint yet"
        return f"{self.state.value}: attempt {self.attempt}, step {self.step}, {saved}"

    def _report_to_systemd(self, now: float) -> None:
        self.notifier.ping_if_due(now)
        if self.stopping is None:
            self.notifier.status(self._status_line())
        elif self.notifier.enabled and now - self._progress_checked >= 1.0:
            self._progress_checked = now
            written = bytes_in_progress(self.config.checkpoint_dir)
            if written > self._save_bytes:  # the final save is visibly moving: ask for time
                self.notifier.extend_timeout(
                    max(0.0, self.stopping.deadline - now) + self.config.kill_timeout + 5.0
                )
            self._save_bytes = written

    def _preemption_final_due(self, now: float) -> bool:
        plan = self.preemption
        return (
            plan is not None
            and self.stopping is None
            and self.trainer is not None
            and now >= plan.final_at(self._save_seconds())
        )

    def _check_clocks(self) -> None:
        now = time.monotonic()
        self._report_to_systemd(now)
        stop = self.stopping
        if self.state is JobState.BACKOFF and self.backoff_until is not None:
            if now >= self.backoff_until:
                self._launch()
        elif stop is not None and self.trainer is not None:
            if not stop.forced and now >= stop.deadline:
                self._force(now, "grace period over")
            elif stop.kill_at is not None and now >= stop.kill_at:
                stop.kill_at = None
                self.events.emit("job.killing", level="warning", pid=self.trainer.pid)
                self.trainer.signal_tree(signal.SIGKILL)
        elif self._preemption_final_due(now):
            assert self.preemption is not None
            self._begin_stop(
                Request(Action.STOP, Origin.CLOUD, self.preemption.reason),
                deadline=self.preemption.stop_by_monotonic(),
            )
        elif self._adopting_until is not None:
            if self.channel.peers or now >= self._adopting_until:
                self._adopting_until = None
                self._begin_stop(
                    Request(Action.STOP, Origin.TIMER, "orphan of an earlier ckptd"),
                    kind=StopKind.RESTART,
                )
        elif self.trainer is not None:
            hang = self.config.hang_timeout
            if hang is not None and now - self.last_progress >= hang:
                self.events.emit("job.hung", level="error", seconds=hang)
                self._begin_stop(Request(Action.STOP, Origin.TIMER, "hang"), kind=StopKind.HANG)
            elif self.timer.is_due(now):
                self.timer.reset(now)
                self._request_checkpoint(Request(Action.CHECKPOINT, Origin.TIMER, "every"))

    # -- messages from the job -----------------------------------------------------------

    def _on_client(self, peer: Peer, message: dict[str, Any]) -> None:
        kind = message["type"]
        step = message.get("step")
        if isinstance(step, int) and step != self.step:
            self._set_step(step)
            self.last_progress = time.monotonic()
        if kind == "hello":
            self.events.emit("client.connected", pid=peer.pid, rank=peer.rank)
            self.last_progress = time.monotonic()
            self.desk.client_connected(peer)
        elif kind == "started":
            self.last_progress = time.monotonic()
            ids = message.get("ids") or []
            self.events.emit(
                "checkpoint.started",
                request_id=ids[0] if ids else None,
                request_ids=ids,
                pid=peer.pid,
            )
        elif kind == "committed":
            self.last_progress = time.monotonic()
            ack = self.desk.on_committed(peer, message)
            if ack.progress:
                self.restarts_without_progress = 0
            if ack.final and self.stopping is not None:
                self.stopping.committed = True
            if self.stopping is None:
                self.timer.reset(time.monotonic())
            if not message.get("reused"):
                self._prune()
        elif kind == "failed":
            ack = self.desk.on_failed(message)
            if ack.final and self.stopping is not None:
                self.stopping.failed = True
        self._sync_checkpointing()

    def _prune(self) -> None:
        protect = [self.resumed_from.path] if self.resumed_from else []
        for gone in retention.prune(self.config.checkpoint_dir, self.rules, protect):
            self.events.emit(
                "checkpoint.pruned", path=str(gone.path), step=gone.step, valid=gone.valid
            )

    def _set_step(self, step: int | None) -> None:
        self.step = step
        self.events.step = step
        log.bind(step=step)


def _drain_fd(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
