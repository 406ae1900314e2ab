"""The supervisor loop: the only owner of the job's state.

Sources post immutable Requests (thread- and signal-safe); the job channel
delivers client messages; the loop polls both plus a wake-up pipe, and acts.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from ckptd_client import protocol
from ckptd_client.manifest import remove_temporaries
from ckptd_client.store import Checkpoint, newest_valid, scan

from . import exit_codes, log, retention
from .config import JobConfig
from .events import EventLog
from .job_channel import JobChannel, Peer
from .requests import Action, Origin, Request, new_id
from .restart_policy import ExitStatus, RestartPolicy
from .run_dir import CHECKPOINT_FILE, STOP_FILE, RunDir
from .sources import RequestSource
from .sources.timer import PeriodicTimer
from .states import JobState, check_transition
from .trainer import LaunchError, Trainer

_MAX_SLEEP = 1.0


@dataclass
class Outstanding:
    """The checkpoint request the job has been asked for (coalescing later ones)."""

    id: str
    reason: str
    origins: set[Origin]
    final: bool = False
    deadline: float | None = None  # wall-clock, as the client sees it


@dataclass
class Stopping:
    """A stop in progress: final save first, then the group signals at the deadline."""

    reason: str
    deadline: float  # monotonic
    origin: Origin
    final_id: str = field(default_factory=new_id)
    restart_after: bool = False
    committed: bool = False
    failed: bool = False
    forced: bool = False
    kill_at: float | None = None


class Arbiter:
    def __init__(
        self,
        config: JobConfig,
        run_dir: RunDir,
        events: EventLog,
        channel: JobChannel,
        sources: list[RequestSource],
        wake_fds: tuple[int, int],
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.events = events
        self.channel = channel
        self.sources = sources
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
        self.newest_step: int | None = None
        self.resumed_from: Checkpoint | None = None
        self.outstanding: Outstanding | None = None
        self.stopping: Stopping | None = None
        self.backoff_until: float | None = None
        self.last_progress = time.monotonic()
        self.exit_code = exit_codes.OK
        self.timer = PeriodicTimer(config.every)
        self._queue: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._wake_r, self._wake_w = wake_fds
        self._warned_undeliverable = False

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
        poller.register(self._wake_r, zmq.POLLIN)
        self._drain_requests()
        if self.state is JobState.STARTING:
            self._launch()
        try:
            while self.state is not JobState.EXITED:
                ready = dict(poller.poll(self._sleep_ms()))
                if self._wake_r in ready:
                    _drain_fd(self._wake_r)
                if self.channel.socket in ready:
                    for peer, message in self.channel.receive():
                        self._on_client(peer, message)
                self._drain_requests()
                self._check_child()
                self._check_clocks()
        finally:
            self._shutdown()
        return self.exit_code

    def _sleep_ms(self) -> int:
        now = time.monotonic()
        moments = [now + _MAX_SLEEP, self.timer.next_due(), self.backoff_until]
        if self.stopping is not None:
            moments += [self.stopping.deadline, self.stopping.kill_at]
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
        for source in self.sources:
            source.stop()
        if self.trainer is not None and self.trainer.poll() is None:
            # Only reached when the loop itself failed: never leave a job behind.
            self.events.emit("job.abandoned", level="error", pid=self.trainer.pid)
            self.trainer.signal_tree(signal.SIGTERM)
            self.trainer.kill_leftovers(self.config.kill_timeout)

    def _transition(self, target: JobState) -> None:
        self.state = check_transition(self.state, target)

    # -- requests ------------------------------------------------------------------------

    def _on_request(self, request: Request) -> None:
        if request.action is Action.CHECKPOINT:
            self._request_checkpoint(request)
        elif request.action is Action.STOP:
            if self.stopping is not None and not self.stopping.restart_after:
                if request.origin is Origin.SIGNAL:
                    self._stop_now(request.reason)
            else:
                self._begin_stop(request)
        elif request.action is Action.STOP_NOW:
            self._stop_now(request.reason)

    def _request_checkpoint(self, request: Request) -> None:
        if request.origin is Origin.FILE and not os.path.lexists(
            self.run_dir.file(CHECKPOINT_FILE)
        ):
            return  # a late duplicate event of a file already handled
        if self.state in (JobState.STOPPING, JobState.EXITED):
            return
        if self.outstanding is not None:
            self.outstanding.origins.add(request.origin)
            self.events.emit(
                "checkpoint.requested",
                id=request.id,
                reason=request.reason,
                coalesced_into=self.outstanding.id,
            )
            return
        self.outstanding = Outstanding(request.id, request.reason, {request.origin})
        self.events.emit("checkpoint.requested", id=request.id, reason=request.reason)
        self._deliver(self.outstanding)

    def _deliver(self, outstanding: Outstanding, peer: Peer | None = None) -> None:
        fields: dict[str, Any] = dict(
            id=outstanding.id,
            reason=outstanding.reason,
            deadline=outstanding.deadline,
            final=outstanding.final,
        )
        if peer is not None:
            self.channel.send(peer, "request", **fields)
            return
        if self.channel.broadcast("request", **fields):
            if self.state is JobState.RUNNING:
                self._transition(JobState.CHECKPOINTING)
            return
        trainer = self.trainer
        if trainer is not None and self.config.request_signal and not outstanding.final:
            trainer.signal_main(signal.Signals[self.config.request_signal])
            self.events.emit(
                "checkpoint.forwarded",
                id=outstanding.id,
                signal=self.config.request_signal,
                pid=trainer.pid,
            )
            self._resolve(outstanding.id)
        elif not self._warned_undeliverable:
            self._warned_undeliverable = True
            self.events.emit(
                "checkpoint.held",
                level="warning",
                id=outstanding.id,
                why="no client connected yet; delivered when one connects",
            )

    def _resolve(self, rid: str) -> None:
        """The outstanding request ``rid`` is finished (committed, failed or forwarded)."""
        if self.outstanding is None or self.outstanding.id != rid:
            return
        if Origin.FILE in self.outstanding.origins:
            self.run_dir.consume(CHECKPOINT_FILE)
        self.outstanding = None
        if self.state is JobState.CHECKPOINTING:
            self._transition(JobState.RUNNING)

    # -- stopping ------------------------------------------------------------------------

    def _begin_stop(self, request: Request, restart_after: bool = False) -> None:
        now = time.monotonic()
        self.backoff_until = None
        self.stopping = Stopping(
            request.reason, now + self.config.grace, request.origin, restart_after=restart_after
        )
        trainer = self.trainer
        if trainer is None or trainer.poll() is not None:
            self._finish_stop(None)
            return
        self._transition(JobState.STOPPING)
        self.timer.pause()
        self.events.emit(
            "job.stopping",
            reason=request.reason,
            grace=self.config.grace,
            final_id=self.stopping.final_id,
        )
        if restart_after:
            self._force(now, "hang")
            return
        final = Outstanding(
            self.stopping.final_id,
            request.reason,
            {request.origin},
            final=True,
            deadline=time.time() + self.config.grace,
        )
        if self.outstanding is not None:
            final.origins |= (
                self.outstanding.origins
            )  # its CHECKPOINT file goes with the final save
        self.outstanding = final
        if self.channel.peers:
            self._deliver(final)
        else:
            trainer.signal_main(signal.Signals[self.config.stop_signal])
            self.events.emit(
                "job.signalled",
                signal=self.config.stop_signal,
                pid=trainer.pid,
                why="no client connected",
            )

    def _stop_now(self, reason: str) -> None:
        if self.stopping is None or self.stopping.forced:
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
        if stop.committed:
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
        )
        if stop.origin is Origin.FILE:
            self.run_dir.consume(STOP_FILE)
        self._transition(JobState.EXITED)

    # -- the job process -----------------------------------------------------------------

    def _launch(self) -> None:
        if self.state is JobState.BACKOFF:
            self._transition(JobState.STARTING)
        self.backoff_until = None
        self.attempt += 1
        self.events.attempt = self.attempt
        log.bind(attempt=self.attempt)
        removed = remove_temporaries(self.config.checkpoint_dir)
        for path in removed:
            self.events.emit("checkpoint.temporary_removed", path=str(path))
        rejected: list[Checkpoint] = []
        resume = newest_valid(self.config.checkpoint_dir, rejected=rejected)
        for bad in rejected:
            self.events.emit(
                "checkpoint.invalid", level="warning", path=str(bad.path), why=bad.reason
            )
        self.resumed_from = resume
        if resume is not None and (self.newest_step is None or resume.step > self.newest_step):
            self.newest_step = resume.step
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
        self.last_progress = now
        self.timer.reset(now)
        self._warned_undeliverable = False
        self._transition(JobState.RUNNING)
        self.events.emit(
            "job.started",
            pid=self.trainer.pid,
            resume_from=str(resume.path) if resume else None,
            resume_step=resume.step if resume else None,
        )

    def _job_env(self, resume: Checkpoint | None) -> dict[str, str]:
        return {
            **os.environ,
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
            "job.exited", pid=trainer.pid, status=str(status), exit_code=status.shell_code
        )
        leftovers = trainer.kill_leftovers(self.config.kill_timeout)
        if leftovers:
            self.events.emit("job.leftovers_killed", count=leftovers)
        self.trainer = None
        self.channel.forget_peers()
        self.run_dir.record_holder(None)
        if self.outstanding is not None and self.outstanding.final:
            self.outstanding = None
        self._note_progress_on_disk()
        if self.stopping is not None and not self.stopping.restart_after:
            self._finish_stop(status)
            return
        self.stopping = None
        self._after_exit(status)

    def _note_progress_on_disk(self) -> None:
        """Count a commit whose acknowledgement died with the job (cheap check; launch verifies)."""
        steps = [c.step for c in scan(self.config.checkpoint_dir) if c.valid]
        if steps and (self.newest_step is None or max(steps) > self.newest_step):
            self.newest_step = max(steps)
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
            restarts_left=self.config.max_restarts - self.restarts_without_progress,
        )

    def _check_clocks(self) -> None:
        now = time.monotonic()
        stop = self.stopping
        if (
            self.state is JobState.BACKOFF
            and self.backoff_until is not None
            and now >= self.backoff_until
        ):
            self._launch()
        elif stop is not None and self.trainer is not None:
            if not stop.forced and now >= stop.deadline:
                self._force(now, "grace period over")
            elif stop.kill_at is not None and now >= stop.kill_at:
                stop.kill_at = None
                self.events.emit("job.killing", level="warning", pid=self.trainer.pid)
                self.trainer.signal_tree(signal.SIGKILL)
        elif self.trainer is not None:
            hang = self.config.hang_timeout
            if hang is not None and now - self.last_progress >= hang:
                self.events.emit("job.hung", level="error", seconds=hang)
                self._begin_stop(Request(Action.STOP, Origin.TIMER, "hang"), restart_after=True)
            elif self.timer.is_due(now):
                self.timer.reset(now)
                self._request_checkpoint(Request(Action.CHECKPOINT, Origin.TIMER, "every"))

    # -- messages from the job -----------------------------------------------------------

    def _on_client(self, peer: Peer, message: dict[str, Any]) -> None:
        kind = message["type"]
        step = message.get("step")
        if isinstance(step, int) and not isinstance(step, bool) and step != self.step:
            self._set_step(step)
            self.last_progress = time.monotonic()
        if kind == "hello":
            self.events.emit("client.connected", pid=peer.pid, rank=peer.rank)
            self.last_progress = time.monotonic()
            if self.outstanding is not None:
                self._deliver(self.outstanding, peer)
                if self.state is JobState.RUNNING:
                    self._transition(JobState.CHECKPOINTING)
        elif kind == "started":
            self.last_progress = time.monotonic()
            self.events.emit("checkpoint.started", ids=message.get("ids"), pid=peer.pid)
        elif kind == "committed":
            self._on_committed(peer, message)
        elif kind == "failed":
            self._on_failed(message)

    def _on_committed(self, peer: Peer, message: dict[str, Any]) -> None:
        ids = [str(i) for i in message.get("ids") or []]
        step = message.get("step")
        reused = bool(message.get("reused"))
        self.last_progress = time.monotonic()
        self.events.emit(
            "checkpoint.committed",
            ids=ids,
            path=message.get("path"),
            step=step,
            bytes=message.get("bytes"),
            seconds=message.get("seconds"),
            metrics=message.get("metrics"),
            reused=reused,
        )
        if isinstance(step, int) and (self.newest_step is None or step > self.newest_step):
            self.newest_step = step
            self.restarts_without_progress = 0
        if self.stopping is not None and self.stopping.final_id in ids:
            self.stopping.committed = True
        for rid in ids:
            self.channel.broadcast("done", skip=peer, id=rid, path=message.get("path"), step=step)
            self._resolve(rid)
        if self.state is not JobState.STOPPING:
            self.timer.reset(time.monotonic())
        if not reused:
            self._prune()

    def _on_failed(self, message: dict[str, Any]) -> None:
        ids = [str(i) for i in message.get("ids") or []]
        self.events.emit(
            "checkpoint.failed",
            level="error",
            ids=ids,
            step=message.get("step"),
            error=message.get("error"),
        )
        if self.stopping is not None and self.stopping.final_id in ids:
            self.stopping.failed = True
        for rid in ids:
            self._resolve(rid)

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
