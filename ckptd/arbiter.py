"""The supervisor loop: the only owner of the job's state.

Sources post immutable Requests (thread- and signal-safe); the job channel
delivers client messages and the control server commands; the loop polls them
all plus a wake-up pipe, and acts. Everything here runs on one thread.
"""

from __future__ import annotations

import os
import queue
import signal
import time
from dataclasses import asdict
from typing import Any

import zmq

from ckptd_client.store import Checkpoint, bytes_in_progress, scan

from . import exit_codes, log, retention
from .checkpoint_desk import CheckpointDesk, file_request_is_stale
from .config import JobConfig
from .control_server import ControlServer, ReplyError, Waiter
from .events import EventLog
from .job_channel import JobChannel, Peer
from .launcher import Launcher
from .preemption import Preemption
from .requests import Action, Origin, Request
from .restart_policy import RestartPolicy
from .run_dir import Orphan, RunDir
from .sources import RequestSource
from .sources.cloud_notices import CloudNotices
from .sources.timer import PeriodicTimer
from .states import JobState, check_transition
from .stopping import StopKind, Stopper, Stopping
from .systemd import Notifier
from .trainer import Trainer

_MAX_SLEEP = 1.0
_ADOPT_POLL = 0.05  # an adopted process is not our child: no SIGCHLD, so look often


class Arbiter(Stopper, Launcher):
    """The supervisor: owns the job's state; its parts live in ``stopping`` and ``launcher``."""

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

    # -- the job process -----------------------------------------------------------------

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
        log.bind(step=step)


def _drain_fd(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
