"""The supervisor loop: the only owner of the job's lifecycle.

Sources post immutable Requests (thread- and signal-safe), the background worker
posts Finished values, the job channel delivers client messages and the control
server commands; the loop polls them all plus a wake-up pipe, and acts. Everything
here runs on one thread. The job's lifecycle is one value, ``self.phase``: the loop feeds
each input that can change it to :class:`~ckptd.supervisor.lifecycle.Lifecycle` and performs
the effects it answers (``_perform``); the phases and their diagram are in ``lifecycle``.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from ckptd import exit_codes, log
from ckptd.channel import messages
from ckptd.channel.checkpoint_desk import CheckpointDesk, file_request_is_stale
from ckptd.channel.job_channel import JobChannel, Peer
from ckptd.config import JobConfig
from ckptd.control.commands import execute
from ckptd.control.server import ControlServer, ReplyError, Waiter
from ckptd.events import EventLog
from ckptd.guard import Divergence, EarlyStop, EarlyStopRule
from ckptd.process.restart_policy import ExitStatus, RestartPolicy
from ckptd.process.trainer import LaunchError, Trainer
from ckptd.progress.health import Overdue, dump_stacks, stacks_file
from ckptd.progress.steps import Progress
from ckptd.redaction import redact_config
from ckptd.reporting.goodput_watch import GoodputWatch
from ckptd.reporting.prometheus import Metrics
from ckptd.requests import Action, Origin, Request
from ckptd.run_dir import STOP_FILE, Orphan, RunDir
from ckptd.sources import RequestSource
from ckptd.sources.cloud_notices import CloudNotices
from ckptd.storage import retention
from ckptd.storage.branches import (
    GoBackError,
    SetAside,
    check_target,
    set_aside_newer,
    target_of,
)
from ckptd.storage.job_identity import node_group
from ckptd.storage.memory import drop_newer
from ckptd.storage.persist import Pickup
from ckptd.storage.remote.outcomes import RemoteAhead, RemoteFenced
from ckptd.storage.remote.url import RemoteUnusable
from ckptd.supervisor.background import Background, Finished
from ckptd.supervisor.divergence import DivergenceGuard, GiveUp, loss_field
from ckptd.supervisor.effects import (
    Announce,
    CleanUp,
    Conclude,
    CountFailure,
    DumpStacks,
    Effect,
    Emit,
    Flush,
    Kill,
    Launch,
    PauseTimer,
    Persist,
    Prepare,
    ReportPreemption,
    RequestFinal,
    Requeue,
    SignalMain,
    Terminate,
)
from ckptd.supervisor.ending import StopEnding
from ckptd.supervisor.inputs import (
    Adopt,
    FinalCommitted,
    FinalDelivered,
    FinalFailed,
    FlushDone,
    HangFound,
    Input,
    JobExited,
    Launched,
    LaunchFailed,
    PersistDone,
    Prepared,
    PrepareFailed,
    Reaped,
    RequeueDone,
    StopNow,
    StopRequested,
    Tick,
)
from ckptd.supervisor.launcher import Launcher
from ckptd.supervisor.launcher import Prepared as PreparedLaunch
from ckptd.supervisor.lifecycle import (
    Backoff,
    Ending,
    Exited,
    Finishing,
    Lifecycle,
    Phase,
    Reaping,
    Running,
    Starting,
    job_alive,
    shown,
    stop_of,
    takes_checkpoints,
    trainer_of,
)
from ckptd.supervisor.memory_copy import FINAL, PERSISTED, PRUNED, MemoryCopy
from ckptd.supervisor.preemption import Preemption
from ckptd.supervisor.signatures import Signed, sign_then_upload, signer_of
from ckptd.supervisor.states import JobState
from ckptd.supervisor.status import status_of
from ckptd.supervisor.stops import Intent, Stop
from ckptd.supervisor.systemd import Notifier
from ckptd_client.manifest import checkpoint_name, remove_temporaries
from ckptd_client.store import Checkpoint, bytes_in_progress, inspect, scan

if TYPE_CHECKING:
    from ckptd.storage.remote.outcomes import Outcome
    from ckptd.supervisor.remote_copy import RemoteCopy


# The loop sleeps until the next moment it must act at (_next_moment) or until woken; this
# cap is only a safety net, so that nothing waits on a moment that was never counted.
_MAX_SLEEP = 60.0
_ADOPT_POLL = 0.05  # an adopted process is not our child: no SIGCHLD, so look often
# messages whose step is training's
_TRAINING_AT = (messages.Hello, messages.StepReport, messages.Started, messages.Bye)


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
        metrics: Metrics | None = None,
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
            config.keep_last, config.keep_best, config.best_metric, config.best_mode,
            config.keep_every,
        )  # fmt: skip
        self.remote: RemoteCopy | None = None
        if config.storage.remote is not None:  # fsspec is loaded only for a remote
            from ckptd.supervisor.remote_copy import RemoteCopy

            # RemoteUnusable (a bucket that does not exist, bad options): exit 2 at start
            self.remote = RemoteCopy(
                config.storage, self.rules, post=self.post, progress=lambda: self.step,
                group=node_group(config.job_id, config.command),
            )  # fmt: skip
        self.background = Background(self.post)
        # MemoryPlaceError (no RAM filesystem, a memory_dir not ours): exit 2 at start
        self.memory = MemoryCopy(config, events, self.background) if config.memory_every else None
        self.desk.memory_dir = self.memory.path if self.memory is not None else None
        self.launcher = Launcher(
            config, run_dir, channel.endpoint, self.remote,
            self.memory.path if self.memory is not None else None,
        )  # fmt: skip
        self.signer = signer_of(config.integrity)  # the key stays in the daemon
        self.pinned: Path | None = None  # gone back to: never pruned in this run
        self.guard = DivergenceGuard(config.guard) if config.guard.active else None
        self.early_stop: EarlyStop | None = None  # rebuilt from the checkpoints at each launch
        if config.resume_from:
            self.launcher.go_back = target_of(config.checkpoint_dir, config.resume_from)
        self.ending = StopEnding(
            events, self.background, self.remote, config.slurm.requeue_command,
            config.kill_timeout,
        )  # fmt: skip
        self.notifier = notifier or Notifier()
        self.metrics = metrics
        self.progress = Progress(config, run_dir.path, events, metrics)
        self.health = self.progress.health
        self.interval = self.progress.interval
        self.timer = self.progress.timer
        self.cloud = next((s for s in sources if isinstance(s, CloudNotices)), None)
        self.lifecycle = Lifecycle(
            config.grace, config.kill_timeout, config.stop_signal, self.policy,
            remote=self.remote is not None, finish_upload=config.storage.upload_timeout,
        )  # fmt: skip
        self.phase: Phase = Starting()
        self.preemption: Preemption | None = None
        self.restarts_without_progress = 0
        self.resumed_from: Checkpoint | None = None
        self.newest_verified: Path | None = None
        self.instrumented = False  # a client connected (a stop waits longer for a relaunch's)
        self.started = self.launched = time.monotonic()
        self.launched_wall = time.time()  # checkpoints committed before it are an earlier run's
        self.wakeups = 0  # turns of the loop (``ckptd status``: is the daemon idle when idle?)
        self._child_checked = self.started
        self.fenced = False  # another daemon took the remote's lease: this job stops for good
        self._queue: queue.SimpleQueue[Request | Finished | Outcome] = queue.SimpleQueue()
        self._wake_r, self._wake_w = wake_fds
        self._orphan = orphan
        self.goodput = GoodputWatch(events.path)
        if metrics is not None and self.memory is not None:
            metrics.read_memory(self.memory.status)  # on the scrape thread: attribute reads
        if metrics is not None:
            metrics.read_goodput(lambda: self.goodput.latest.ratio if self.goodput.latest else None)

    @property
    def step(self) -> int | None:
        return self.progress.step

    @property
    def attempt(self) -> int:
        return self.launcher.attempt

    @property
    def restarts_left(self) -> int:
        return max(0, self.config.max_restarts - self.restarts_without_progress)

    @property
    def state(self) -> JobState:
        """The phase's public name (``ckptd status``)."""
        return shown(self.phase, self.desk.in_flight)

    @property
    def trainer(self) -> Trainer | None:
        return trainer_of(self.phase)

    @property
    def stop(self) -> Stop | None:
        return stop_of(self.phase)

    @property
    def exit_code(self) -> int:
        return self.phase.code if isinstance(self.phase, Exited) else exit_codes.OK

    @property
    def endpoints(self) -> dict[str, str]:
        return {"job": self.channel.endpoint, **self.control.endpoints}

    # -- the loop ------------------------------------------------------------------------

    def post(self, item: Request | Finished | Outcome) -> None:
        """Hand a value to the loop; safe from any thread and from signal handlers."""
        self._queue.put(item)
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass  # pipe full: the loop is awake anyway

    def run(self) -> int:
        for source in self.sources:
            source.start(self.post)
        self.goodput.start()
        if self.remote is not None:
            self.remote.start()
        poller = zmq.Poller()
        poller.register(self.channel.socket, zmq.POLLIN)
        for router in self.control.routers:
            poller.register(router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            self._drain_queue()  # a STOP file present at start is answered before any launch
            if isinstance(self.phase, Starting):
                trainer = self.launcher.adopt(self._orphan)
                if trainer is not None:
                    self._adopt(trainer)
                else:
                    self._perform(Prepare())
            due = self._next_moment()
            while not isinstance(self.phase, Exited):
                ready = dict(poller.poll(_sleep_ms(due)))
                self.wakeups += 1
                if self._wake_r in ready:
                    _drain_fd(self._wake_r)
                if self.channel.socket in ready:
                    for peer, message in self.channel.receive():
                        self._guarded(self._on_client, peer, message)
                for router in self.control.routers:
                    if router in ready:
                        self.control.handle(router, self._dispatch)
                self._drain_queue()
                if not ready or (due is not None and due <= time.monotonic()):
                    # A child's exit wakes the loop as a request (SIGCHLD); looking here too
                    # is the only way to see an adopted process end, and a safety net.
                    self._guarded(self._check_child)
                    self._guarded(self._check_clocks)
                self._guarded(self._tell_systemd)
                due = self._next_moment()  # one made due by this turn: the next turn, at once
        finally:
            self._shutdown()
        return self.exit_code

    def _guarded(self, handler: Any, *args: Any) -> None:
        """Run one handler; a bug in it is logged, and supervision goes on."""
        try:
            handler(*args)
        except Exception:
            log.get_logger().exception("arbiter.handler_failed", handler=handler.__name__)

    def _next_moment(self) -> float | None:
        """The soonest moment ``_check_clocks`` (or the notifier) has something to do at,
        unless a message, a request or a signal comes first; None when nothing is pending.

        Each moment is counted only in the state where ``_check_clocks`` acts on it, so a
        moment that has passed is always consumed and never keeps the loop spinning.
        """
        phase = self.phase
        moments = [self.notifier.next_moment(stopping=self.stop is not None)]
        if isinstance(phase, Backoff):
            moments.append(phase.until)
        if job_alive(phase):
            assert self.trainer is not None
            if self.trainer.adopted:
                moments.append(self._child_checked + _ADOPT_POLL)
            if (stop := stop_of(phase)) is not None:
                moments.append(stop.next_moment())
            else:
                if self.preemption is not None:
                    moments.append(self.preemption.final_at(self._save_seconds()))
                hung_at = self.health.deadline() if _hang_clock_on(phase) else None
                moments += [hung_at, self.timer.next_due()]
                if self.memory is not None:
                    moments.append(self.memory.next_due())
        present = [m for m in moments if m is not None]
        return min(present) if present else None

    def _drain_queue(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Finished):
                self._guarded(self._on_finished, item)
            elif isinstance(item, Request):
                self._guarded(self._answer, item)
            else:
                self._guarded(self._on_remote, item)

    def _shutdown(self) -> None:
        """Leave nothing behind: the job is signalled before anything that could fail."""
        trainer = self.trainer
        if trainer is not None and job_alive(self.phase) and trainer.poll() is None:
            # Only reached when the loop itself failed: never leave a job behind.
            trainer.signal_tree(signal.SIGTERM)
            self.events.emit("job.abandoned", level="error", pid=trainer.pid)
            trainer.kill_leftovers(self.config.kill_timeout)
        for close in (
            self.notifier.close,
            *((self.metrics.close,) if self.metrics is not None else ()),
            *(source.stop for source in self.sources),
            lambda: self.desk.fail_waiters(
                "not_running", "the job is not running any more and ckptd is exiting"
            ),
            self.goodput.close,
            self.background.stop,
            *((self.memory.close,) if self.memory is not None else ()),
            self._remove_interrupted_saves,
            *((self.remote.close,) if self.remote is not None else ()),
        ):
            self._guarded(close)

    def _remove_interrupted_saves(self) -> None:
        """A save cut short (a second SIGTERM, a kill at the deadline) leaves a ``.tmp-``
        directory: removed at exit once its writer is gone, not at the next launch."""
        for path in remove_temporaries(self.config.checkpoint_dir, only_dead_writers=True):
            self.events.emit("checkpoint.temporary_removed", path=str(path))

    def _job_alive(self) -> bool:
        return job_alive(self.phase)

    def _hang_watched(self) -> bool:
        """Hangs are watched while the job runs and no stop is under way."""
        return isinstance(self.phase, Running)

    # -- requests ------------------------------------------------------------------------

    def _answer(self, request: Request) -> None:
        """Decide on one request; a control command's is answered (or kept, with ``wait``)."""
        reply_to = request.reply_to
        if reply_to is None:
            self._on_request(request)
            return
        try:
            result = self._on_request(request)
        except ReplyError as exc:
            reply_to.fail(exc.code, str(exc))
            return
        except Exception as exc:  # a bug: the command's answer says so, supervision goes on
            reply_to.fail("internal_error", f"{type(exc).__name__}: {exc}")
            raise
        if not request.wait:
            reply_to.reply(result)

    def _on_request(self, request: Request) -> Any:
        """The one place every request is decided, wherever it came from; returns the answer
        a control command gets (ReplyError: the command cannot act now)."""
        action = request.action
        if action is Action.CHECKPOINT:
            return self._request_checkpoint(request, _waiter(request))
        if action is Action.STOP:
            already = self.stop is not None and self.stop.intent is Intent.STOP
            # A stop under way takes it in (Stop.supersede); a second SIGTERM/SIGINT: at once.
            self._begin_stop(request, Intent.STOP, save=request.save, waiter=_waiter(request))
            return {"stopping": True, "already": True} if already else {"stopping": True}
        if action is Action.RESTART:
            if self.stop is not None:
                raise ReplyError(
                    "not_running", f"a {self.stop.intent.value} is already in progress"
                )
            if not self._job_alive():
                raise ReplyError("not_running", f"no job process is running ({self.state.value})")
            self._begin_stop(request, Intent.RESTART)
            return {"restarting": True}
        if action is Action.STOP_NOW:
            self._advance(StopNow(request.reason, time.monotonic()))
        elif action is Action.PREEMPT:
            self._on_preemption(request)
        elif action is Action.REQUEUE:
            self._begin_stop(request, Intent.STOP, requeue=True)
        elif action is Action.WAKE:  # SIGCHLD: the job (or an orphan it left) changed state
            self._check_child()
        return None

    def _request_checkpoint(
        self, request: Request, waiter: Waiter | None = None, tier: str = "disk"
    ) -> Any:
        if file_request_is_stale(self.run_dir, request):
            return None
        if not takes_checkpoints(self.phase):
            if request.reply_to is not None:
                raise ReplyError("not_running", f"the job is {self.state.value}")
            return None
        trainer = self.trainer if self._job_alive() else None
        return self.desk.request(request, trainer, waiter, tier)

    def _on_preemption(self, request: Request) -> None:
        """Take the final save as late as its measured time allows (and one at once when no
        periodic saves bound the work at risk until then)."""
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
        first = self.preemption is None
        if self.preemption is None:
            last = self.desk.last_commit
            plan.committed_step_at_notice = last.get("step") if last else self.desk.newest_step
            self.preemption = plan
        elif plan.stop_by < self.preemption.stop_by:
            self.preemption.stop_by, self.preemption.deadline = plan.stop_by, plan.deadline
        final_at = self.preemption.final_at(self._save_seconds())
        if first and self.remote is not None:
            needed, left = (
                self._save_seconds(),
                self.preemption.stop_by_monotonic() - time.monotonic(),
            )
            if needed > left:
                self.events.emit(
                    "preemption.shortfall",
                    level="warning",
                    needed=round(needed, 3),
                    available=round(left, 3),
                    why="the final save and its upload may not fit before the deadline",
                )
        if not isinstance(self.phase, Running) or final_at <= time.monotonic():
            self._begin_stop(request, Intent.STOP, deadline=self.preemption.stop_by_monotonic())
        elif first and self.timer.next_due() is None:
            # With periodic saves running, the work at risk until the final save is less
            # than one period, as always; without them, it is everything since the last save.
            self._request_checkpoint(Request(Action.CHECKPOINT, Origin.CLOUD, request.reason))

    def _save_seconds(self) -> float:
        """What a final save costs: the last save's time, plus its upload when a remote is set."""
        last = self.desk.last_commit or {}
        seconds = last.get("seconds")
        if self.memory is not None and last.get("tier") == "memory":
            seconds = self.memory.disk_seconds  # a final save in RAM is persisted before the exit
        total = float(seconds) if isinstance(seconds, (int, float)) else 0.0
        size = last.get("bytes")
        if self.remote is not None and isinstance(size, int):
            total += self.remote.uploader.expected_seconds(size) or 0.0
        return total

    # -- control commands ----------------------------------------------------------------

    def _dispatch(self, command: str, args: Any, waiter: Waiter) -> None:
        execute(self, command, args, waiter)

    @property
    def job_name(self) -> str:
        return self.config.name

    def control_rollback(self, step: int) -> Any:
        """Final save of the current state, then a relaunch from checkpoint ``step``; the newer
        checkpoints (that final save included) are set aside, not deleted."""
        if self.stop is not None:
            raise ReplyError("not_running", f"a {self.stop.intent.value} is already in progress")
        if not self._job_alive():
            raise ReplyError("not_running", f"no job process is running ({self.state.value})")
        target = target_of(self.config.checkpoint_dir, str(step))
        try:
            check_target(target)
        except GoBackError as exc:
            raise ReplyError("no_checkpoint", str(exc)) from None
        if not inspect(target, full=False).valid:
            raise ReplyError("no_checkpoint", f"{target} is not a valid checkpoint")
        self.launcher.go_back = target
        self.pinned = target  # the final save's retention must not prune it
        request = Request(Action.STOP, Origin.CONTROL, f"rollback to step {step}")
        self._begin_stop(request, Intent.RESTART)
        return {"rolling_back": True, "step": step, "path": str(target)}

    def status(self) -> dict[str, Any]:
        return status_of(self)

    def checkpoints(self) -> list[dict[str, Any]]:
        return [c.to_json() for c in scan(self.config.checkpoint_dir)]

    def effective_config(self) -> dict[str, Any]:
        return redact_config(self.config)

    # -- the lifecycle -------------------------------------------------------------------

    def _begin_stop(
        self,
        request: Request,
        intent: Intent,
        *,
        save: bool = True,
        waiter: Waiter | None = None,
        deadline: float | None = None,
        requeue: bool = False,
        why: str | None = None,
    ) -> None:
        self._advance(
            StopRequested(
                request.reason, intent, request.origin, time.monotonic(), deadline, save,
                requeue, why, waiter,
            )
        )  # fmt: skip

    def _advance(self, event: Input) -> None:
        """Move the phase on ``event`` and perform what the lifecycle answers, in order."""
        self.phase, effects = self.lifecycle.advance(self.phase, event)
        for effect in effects:
            self._perform(effect)

    def _perform(self, effect: Effect) -> None:
        trainer = self.trainer
        if isinstance(effect, Prepare):
            self.background.submit("prepared", self.launcher.prepare)
        elif isinstance(effect, Launch):
            self._launch(effect.prepared)
        elif isinstance(effect, Emit):
            self.events.emit(effect.event, level=effect.level, **dict(effect.fields))
        elif isinstance(effect, Announce):
            self._announce_stop(effect.stop, effect.superseded)
        elif isinstance(effect, PauseTimer):
            self.timer.pause()
        elif isinstance(effect, RequestFinal):
            stop = effect.stop
            wall_deadline = time.time() + (stop.deadline - time.monotonic())
            tier = "disk"
            if self.memory is not None and effect.save:  # RAM first, then persisted (Ending)
                tier = self.memory.tier()
            if self.desk.request_final(
                stop.final_id, stop.reason, effect.origin, wall_deadline, effect.save, tier
            ):
                self._advance(FinalDelivered())
        elif isinstance(effect, SignalMain):
            assert trainer is not None
            trainer.signal_main(signal.Signals[self.config.stop_signal])
            self.events.emit(
                "job.signalled",
                signal=self.config.stop_signal,
                pid=trainer.pid,
                why="no client connected",
            )
        elif isinstance(effect, Terminate):
            assert trainer is not None
            self.events.emit(
                "job.terminating", level="warning", reason=effect.reason, pid=trainer.pid
            )
            trainer.signal_tree(signal.SIGTERM)
        elif isinstance(effect, Kill):
            assert trainer is not None
            self.events.emit("job.killing", level="warning", pid=trainer.pid)
            trainer.signal_tree(signal.SIGKILL)
        elif isinstance(effect, DumpStacks):
            self._dump_stacks(effect.overdue)
        elif isinstance(effect, CleanUp):
            self._reap(effect.trainer, effect.status)
        elif isinstance(effect, CountFailure):
            self.restarts_without_progress = effect.restarts
            if not effect.hang:
                self.progress.failure()
        elif isinstance(effect, ReportPreemption):
            if self.preemption is not None:
                self._report_preemption(effect.stop)
        elif isinstance(effect, Persist):
            assert self.memory is not None
            self.memory.persist_final(effect.deadline)
        elif isinstance(effect, Flush):
            self.ending.flush(effect.deadline, preempted=self.preemption is not None)
        elif isinstance(effect, Requeue):
            self.ending.requeue()
        elif isinstance(effect, Conclude):
            self._conclude_stop(effect.stop, effect.code)

    def _announce_stop(self, stop: Stop, superseded: str | None = None) -> None:
        if stop.intent is Intent.STOP:
            self.notifier.stopping(
                f"stopping ({stop.reason}): final checkpoint within {self.config.grace:g}s"
            )
        self.events.emit(
            "job.stopping",
            reason=stop.reason,
            kind=stop.intent.value,
            grace=self.config.grace,
            request_id=stop.final_id,
            superseded=superseded,
        )

    def _conclude_stop(self, stop: Stop, code: int) -> None:
        self.events.emit(
            "job.stopped",
            why=stop.why,
            reason=stop.reason,
            final_checkpoint=stop.committed,
            final_remote=None if self.remote is None else stop.committed and not stop.local_only,
            exit_code=code,
            request_id=stop.final_id,
            superseded=list(stop.superseded) or None,
        )
        for waiter in stop.waiters:
            waiter.reply({"stopped": True, "final_checkpoint": stop.committed, "exit_code": code})
        self.run_dir.consume(STOP_FILE)  # a STOP file touched during any stop is answered by it

    def _report_preemption(self, stop: Stop) -> None:
        """How much work the final checkpoint saved and how much was lost; approve the event."""
        assert self.preemption is not None
        outcome = self.preemption.outcome(
            self.desk.last_commit if stop.committed else None, self.step
        )
        self.events.emit("preemption.final", **outcome)
        if self.cloud is not None and self.preemption.notice is not None:
            self.cloud.acknowledge(self.preemption.notice)

    # -- the job process -----------------------------------------------------------------

    def _launch(self, prepared: PreparedLaunch) -> None:
        log.bind(attempt=self.attempt + 1)
        for path in prepared.removed:
            self.events.emit("checkpoint.temporary_removed", path=str(path))
        if prepared.strays_killed:
            self.events.emit("job.strays_killed", level="warning", pids=prepared.strays_killed)
        for bad in prepared.quarantined:
            self.events.emit(
                "checkpoint.invalid",
                level="warning",
                path=str(bad.checkpoint.path),
                step=bad.checkpoint.step,
                why=bad.checkpoint.reason,
                moved_to=str(bad.moved_to) if bad.moved_to else None,
            )
        for rejected in prepared.remote_rejected:
            self.events.emit(
                "checkpoint.invalid",
                level="warning",
                path=str(rejected.path),
                step=rejected.step,
                why=rejected.reason,
                remote=True,
            )
        if prepared.remote_error is not None:
            self.events.emit("remote.unreachable", level="warning", error=prepared.remote_error)
        if self.memory is not None and prepared.memory is not None:
            persisted = self.memory.report(prepared.memory, why="before the launch")
            if persisted is not None:
                self._prune(str(persisted.path), persisted.step)
        resume = prepared.resume
        if prepared.went_back is not None:
            went = prepared.went_back
            self.pinned = went.path
            remote: dict[str, Any] = {}
            if self.remote is not None:
                moved = [checkpoint_name(s) for s in went.remote_set_aside]
                remote = {"remote_branch": went.remote_branch, "remote_set_aside": moved}
            self.events.emit(
                "job.rolled_back",
                step=went.step,
                path=str(went.path),
                chosen=str(went.chosen),
                branch=str(went.set_aside.branch) if went.set_aside.branch else None,
                set_aside=[p.name for p in went.set_aside.moved],
                **remote,
            )
        if prepared.downloaded and resume is not None:
            self.events.emit("remote.downloaded", step=resume.step, path=str(resume.path))
        self.resumed_from = resume
        if self.config.guard.monitor is not None:  # what the checkpoints on disk say so far
            rule = EarlyStopRule(
                self.config.guard.monitor, self.config.guard.mode, self.config.guard.patience
            )
            history = [(c.step, c.metrics) for c in scan(self.config.checkpoint_dir) if c.valid]
            self.early_stop = EarlyStop.from_history(rule, history)
        if resume is not None:
            self.desk.note_progress(resume.step)
            self.newest_verified = resume.path
        try:
            trainer = self.launcher.start(prepared)
        except LaunchError as exc:
            log.bind(attempt=self.attempt)
            self._advance(LaunchFailed(str(exc)))
            return
        log.bind(attempt=self.attempt)
        self.launched, self.launched_wall = time.monotonic(), time.time()
        self._advance(Launched(trainer, self.launched, instrumented=self.instrumented))
        self.progress.launched(
            self.launched,
            self.attempt,
            resume.step if resume else None,
            resume.time if resume else None,
        )
        if self.memory is not None:
            self.memory.launched(self.launched, resume.path if resume else None)
        self.notifier.ready(self._status_line())
        self.events.emit(
            "job.started",
            pid=trainer.pid,
            resume_from=str(resume.path) if resume else None,
            resume_step=resume.step if resume else None,
        )

    def _adopt(self, trainer: Trainer) -> None:
        """A job left running by a dead daemon: final checkpoint, then relaunch from it."""
        log.bind(attempt=self.attempt)
        self.events.emit(
            "job.adopted",
            level="warning",
            pid=trainer.pid,
            why="left running by a ckptd that died; stopping it before a new launch",
        )
        self._advance(Adopt(trainer, time.monotonic()))

    def _check_child(self) -> None:
        self._child_checked = time.monotonic()
        trainer = self.trainer
        if trainer is None or not job_alive(self.phase):
            return
        status = trainer.poll()
        if status is None:
            return
        for peer, message in self.channel.receive():  # its last words (``bye``'s step) first
            self._guarded(self._on_client, peer, message)
        self._advance(JobExited(status))

    def _reap(self, trainer: Trainer, status: ExitStatus) -> None:
        """The job's main process is gone: forget its clients; clean its tree up off the loop."""
        self.events.emit(
            "job.exited",
            pid=trainer.pid,
            status=str(status),
            exit_code=None if trainer.adopted else status.shell_code,
        )
        self.channel.forget_peers()
        self.desk.job_exited()
        self.progress.exited()
        if self.memory is not None:
            self.memory.exited()
        stop = self.stop
        final_in_ram = stop is not None and stop.intent is Intent.STOP and stop.in_ram
        persist = self.memory is not None and not final_in_ram  # else the Ending's Persist
        self.background.submit("cleaned", lambda: self._clean_up(trainer, persist))

    def _clean_up(self, trainer: Trainer, persist: bool) -> tuple[int, int | None, Pickup | None]:
        """On the worker: stop what is left of the tree; persist the newest RAM checkpoint
        newer than the disk (so that a final upload or a relaunch finds it on disk); the
        newest checkpoint step on disk."""
        leftovers = trainer.kill_leftovers(self.config.kill_timeout)
        pickup = self.memory.persist_blocking() if self.memory is not None and persist else None
        steps = [c.step for c in scan(self.config.checkpoint_dir) if c.valid]
        return leftovers, max(steps) if steps else None, pickup

    def _on_cleaned(self, finished: Finished) -> None:
        if not isinstance(self.phase, Reaping):
            return
        self.run_dir.record_holder(None)
        if finished.error is None:
            leftovers, newest, pickup = finished.result
            if leftovers:
                self.events.emit("job.leftovers_killed", count=leftovers)
            if self.memory is not None and pickup is not None:
                persisted = self.memory.report(pickup, why="the job exited")
                if persisted is not None:  # pruned and uploaded before a final flush
                    self._prune(str(persisted.path), persisted.step)
            # A commit whose acknowledgement died with the job still counts as progress.
            if newest is not None and self.desk.note_progress(newest):
                self.restarts_without_progress = 0
        self._advance(Reaped(time.monotonic(), self.restarts_without_progress, random.Random()))

    # -- values posted back by the worker ------------------------------------------------

    def _on_finished(self, finished: Finished) -> None:
        if finished.tag == "prepared":
            if finished.error is None:
                self._advance(Prepared(finished.result))
            else:
                unusable = isinstance(finished.error, (RemoteUnusable, GoBackError))
                code = exit_codes.USAGE if unusable else exit_codes.FAILED
                self._advance(PrepareFailed(str(finished.error), code))
        elif finished.tag == "cleaned":
            self._on_cleaned(finished)
        elif finished.tag == "stacks":
            self._on_stacks(finished)
        elif finished.tag == "pruned":
            self._on_pruned(finished)
        elif finished.tag == FINAL and self.memory is not None:
            persisted, ok = self.memory.on_final_persisted(finished)
            if persisted is not None:  # pruned and uploaded before the final flush
                self._prune(str(persisted.path), persisted.step)
            self._advance(PersistDone(ok))
        elif finished.tag in (PERSISTED, PRUNED) and self.memory is not None:
            self._on_memory(finished)
        elif finished.tag == "signed":
            self._on_signed(finished)
        elif finished.tag == "passed_over":
            self._on_passed_over(finished)
        elif finished.tag == "flushed" and isinstance(self.phase, (Ending, Finishing)):
            self._advance(FlushDone(self.ending.flushed(finished)))
        elif finished.tag == "requeued" and isinstance(self.phase, Ending):
            self._advance(RequeueDone(self.ending.requeued(finished)))

    def _set_aside_passed_over(self, resume_step: int | None) -> None:
        """The ranks of several nodes resumed below steps this node holds: those steps, of an
        earlier run, go to a branch (RAM copies: removed), so that a later save of the same
        step number on another node never makes a step with this one's (a mixed resume)."""
        disk, before = self.config.checkpoint_dir, self.launched_wall
        floor = resume_step if resume_step is not None else -1
        ram = self.memory.path if self.memory is not None else None

        def set_aside() -> tuple[SetAside, list[Path]]:
            dropped = drop_newer(ram, floor, before) if ram is not None else []
            return set_aside_newer(disk, floor, before=before), dropped

        self.background.submit("passed_over", set_aside)

    def _on_passed_over(self, finished: Finished) -> None:
        if finished.error is not None:
            self.events.emit(
                "checkpoint.set_aside_failed", level="error", error=str(finished.error)
            )  # fmt: skip
            return
        aside, dropped = finished.result
        if self.memory is not None and aside.moved:
            self.memory.rescan_disk()
        if aside.moved or dropped:
            self.events.emit(
                "checkpoint.passed_over", level="warning",
                branch=str(aside.branch) if aside.branch else None,
                moved=[str(path) for path in aside.moved],
                removed_from_ram=[str(path) for path in dropped],
            )  # fmt: skip

    def _on_memory(self, finished: Finished) -> None:
        """The memory tier's work on the worker: a RAM checkpoint persisted (then pruned on
        disk and uploaded like any commit; the ``every`` period starts again), RAM pruned."""
        assert self.memory is not None
        if finished.tag == PRUNED:
            self.memory.on_pruned(finished)
            return
        persisted = self.memory.on_persisted(finished)
        if persisted is not None:
            self._prune(str(persisted.path), persisted.step)
            self.progress.persisted(persisted.seconds)
            if self.stop is None and self._job_alive():
                self.timer.reset(time.monotonic())

    def _on_remote(self, outcome: Outcome) -> None:
        """What the uploader did, reported from its thread through the queue.

        Fenced: another machine owns the job now; it is stopped (final checkpoint kept
        locally) and ckptd exits ``FENCED``. Ahead: the job is restarted, without a save
        (its work is behind), and the relaunch resumes from the remote's newest.
        """
        self.events.emit(outcome.event, level=outcome.level, **outcome.fields())
        if isinstance(outcome, RemoteFenced) and not self.fenced:
            self.fenced = True
            request = Request(Action.STOP, Origin.REMOTE, "fenced")
            self._begin_stop(request, Intent.STOP, why="fenced")
        elif isinstance(outcome, RemoteAhead) and isinstance(self.phase, Running):
            request = Request(Action.STOP, Origin.REMOTE, "remote ahead")
            self._begin_stop(request, Intent.RESTART, save=False)

    def _on_signed(self, finished: Finished) -> None:
        if finished.error is not None:  # a bug of the library's: the upload did not happen
            self.events.emit("checkpoint.sign_failed", level="error", error=str(finished.error))
            return
        signed: Signed = finished.result
        if signed.error is not None:
            self.events.emit(
                "checkpoint.sign_failed",
                level="warning",
                path=str(signed.path),
                step=signed.step,
                error=signed.error,
            )
        else:
            self.events.emit(
                "checkpoint.signed",
                path=str(signed.path),
                step=signed.step,
                seconds=round(signed.seconds, 3),
            )

    def _on_pruned(self, finished: Finished) -> None:
        if finished.error is not None:
            self.events.emit("checkpoint.prune_failed", level="warning", error=str(finished.error))
            return
        pruned: retention.Pruned = finished.result
        for gone in pruned.deleted:
            self.events.emit(
                "checkpoint.pruned", path=str(gone.path), step=gone.step, valid=gone.valid
            )
        for kept, why in pruned.failed:
            self.events.emit(
                "checkpoint.prune_failed", level="warning", path=str(kept.path), error=why
            )

    # -- clocks --------------------------------------------------------------------------

    def _check_clocks(self) -> None:
        """Act on what ``_next_moment`` said was due (each call consumes at least one)."""
        now = time.monotonic()
        self._advance(Tick(now))  # a backoff over, a stop's clocks
        if not isinstance(self.phase, Running):
            return
        if self.preemption is not None and now >= self.preemption.final_at(self._save_seconds()):
            request = Request(Action.STOP, Origin.CLOUD, self.preemption.reason)
            self._begin_stop(request, Intent.STOP, deadline=self.preemption.stop_by_monotonic())
        elif _hang_clock_on(self.phase) and (overdue := self.health.overdue(now)) is not None:
            self._advance(HangFound(overdue))
        elif self.memory is not None and self.memory.due(now):
            request = Request(Action.CHECKPOINT, Origin.TIMER, "memory_every")
            self._request_checkpoint(request, tier=self.memory.tier())
        elif self.timer.is_due(now):
            self.timer.reset(now)
            if self.memory is not None:  # the disk tier is fed from RAM, not by the job
                self.memory.persist()
            else:
                self._request_checkpoint(Request(Action.CHECKPOINT, Origin.TIMER, "every"))

    def _check_slow(self, now: float) -> None:
        """On a new step: has the job been straggling for long enough to say so?"""
        if self._hang_watched() and (slow := self.health.slow(now)) is not None:
            typical, seconds = slow
            self.events.emit(
                "job.slow", level="warning", typical=round(typical, 3), seconds=round(seconds, 1)
            )

    def _tell_systemd(self) -> None:
        """The watchdog ping, STATUS= when it changed, EXTEND_TIMEOUT_USEC= during a stop."""
        if not self.notifier.enabled:
            return
        directory = self.config.checkpoint_dir
        self.notifier.report(
            time.monotonic(),
            self._status_line(),
            self.stop.deadline if self.stop is not None else None,
            lambda: bytes_in_progress(directory),
            self.config.kill_timeout + 5.0,
        )

    def _status_line(self) -> str:
        last = self.desk.last_commit
        saved = f"last checkpoint step {last['step']}" if last else "no checkpoint yet"
        return f"{self.state.value}: attempt {self.attempt}, step {self.step}, {saved}"

    # -- messages from the job -----------------------------------------------------------

    def _on_client(self, peer: Peer, message: messages.ClientMessage) -> None:
        now = time.monotonic()
        training_at = isinstance(message, _TRAINING_AT)
        loss = message.loss if isinstance(message, messages.StepReport) else None
        if self.progress.reported(message.step, now, training_at=training_at, loss=loss):
            self._check_slow(now)
        if not peer.known and not isinstance(message, messages.Bye):
            peer.known = True
            self.instrumented = True
            self.events.emit("client.connected", pid=peer.pid, rank=peer.rank)
            self.desk.client_connected(peer)
            if self.desk.in_flight_final:
                self._advance(FinalDelivered())
        guarded = self.guard is not None and self.stop is None
        if isinstance(message, messages.StepReport) and guarded:
            assert self.guard is not None
            diverged = self.guard.observe(message.step, message.loss)
            if diverged is not None:
                self._on_diverged(diverged)
        if isinstance(message, messages.Started):
            if self.memory is not None:
                self.memory.started(message)
            stall, ids = message.stall, message.ids
            self.progress.save_started(now, stall)
            fields: dict[str, Any] = {"stall": round(stall, 6)} if stall is not None else {}
            self.events.emit(
                "checkpoint.started",
                request_id=ids[0] if ids else None,
                request_ids=list(ids),
                pid=peer.pid,
                rank=peer.rank,
                **fields,
            )
        elif isinstance(message, messages.Propose):
            self.desk.on_propose(peer, message)
        elif isinstance(message, messages.Written):
            self.desk.on_written(peer, message)
        elif isinstance(message, messages.Committed):
            ack = self.desk.on_committed(peer, message)
            in_ram = self.memory is not None and self.memory.committed(
                message, persist_now=ack.persist, final=ack.final
            )
            if ack.held is not None:
                waiters, answer = ack.held
                if self.memory is not None and message.step is not None:
                    self.memory.await_disk(message.step, waiters, answer)
                else:
                    for waiter in waiters:
                        waiter.reply(answer)
            at = self.desk.last_commit["time"] if self.desk.last_commit else None
            self.progress.save_ended(now, message, at, feeds_interval=not in_ram)
            if ack.progress:
                self.restarts_without_progress = 0
            if ack.final:
                self._advance(FinalCommitted(in_ram=in_ram))
            elif message.final and isinstance(self.phase, Running):
                # Another node's stop, taken by this node's ranks too: they end on their own,
                # and however their processes exit, this is a stop with its final checkpoint.
                self._advance(
                    StopRequested(
                        "a stop on another node", Intent.STOP, Origin.GROUP, now, answered=True
                    )
                )
            if self.stop is None and not in_ram:
                self.timer.reset(now)
            if not message.reused:
                if not in_ram:
                    self._prune(message.path, message.step)
                self._watch_metrics(message.step, message.metrics)
        elif isinstance(message, messages.Incomplete):  # the job resumes from an older step
            self.events.emit(
                "checkpoint.incomplete",
                level="warning",
                rank=peer.rank,
                step=message.step,
                missing=list(message.missing),
                resume_step=message.resume_step,
            )
            self._set_aside_passed_over(message.resume_step)
        elif isinstance(message, messages.Failed):
            if self.memory is not None:
                self.memory.failed(message)
            self.progress.save_ended(now, None)
            ack = self.desk.on_failed(message, peer)
            if ack.final:
                self._advance(FinalFailed())

    def _watch_metrics(self, step: Any, metrics: Any) -> None:
        """Early stopping: after ``patience`` commits without improvement, a final save and
        the end of the job (``job.stopped {why: early_stop}``)."""
        watch = self.early_stop
        if watch is None or not isinstance(step, int) or not isinstance(metrics, dict):
            return
        decision = watch.observe(step, metrics)
        if decision.stop and isinstance(self.phase, Running):
            self.events.emit(
                "job.early_stop",
                reason=decision.reason,
                best_step=decision.state.best_step,
                best=decision.state.best,
            )
            request = Request(Action.STOP, Origin.TIMER, "early stop")
            self._begin_stop(request, Intent.STOP, why="early_stop")

    def _on_diverged(self, divergence: Divergence) -> None:
        """Stop the job without saving its diverged state; relaunch from before it, or end."""
        assert self.guard is not None
        steps = [c.step for c in scan(self.config.checkpoint_dir) if c.valid]
        decision = self.guard.decide(divergence, steps)
        fields: dict[str, Any] = {
            "step": divergence.step,
            "loss": loss_field(divergence.loss),
            "rule": divergence.rule,
            "detail": divergence.detail,
        }
        request = Request(Action.STOP, Origin.TIMER, "diverged")
        if isinstance(decision, GiveUp):
            self.events.emit("job.diverged", level="error", **fields, action="stop",
                             why=decision.reason)  # fmt: skip
            self._begin_stop(request, Intent.STOP, save=False, why="diverged")
            return
        target = self.config.checkpoint_dir / checkpoint_name(decision.resume_step or 0)
        self.launcher.go_back = target
        self.launcher.skip_steps = self.guard.skip_text
        self.pinned = target
        self.events.emit(
            "job.diverged", level="warning", **fields, action="rollback",
            resume_step=decision.resume_step, skip=decision.skip.text(), depth=decision.depth,
        )  # fmt: skip
        self._begin_stop(request, Intent.RESTART, save=False)

    def _dump_stacks(self, overdue: Overdue) -> None:
        """Dump every thread's stack of every process of the job (off the loop), then stop it."""
        assert self.trainer is not None
        path = stacks_file(self.run_dir.path, self.attempt)
        trainer = self.trainer
        self.background.submit(
            "stacks", lambda: dump_stacks(trainer, path), context=(overdue, self.step, path)
        )

    def _on_stacks(self, finished: Finished) -> None:
        overdue, since_step, path = finished.context
        if not isinstance(self.phase, Running):
            return
        self.events.emit(
            "job.hung",
            level="error",
            phase=overdue.phase,
            since_step=since_step,
            waited=round(overdue.waited, 3),
            timeout=round(overdue.timeout, 3),
            seconds=round(overdue.timeout, 3),
            stacks_file=str(path),
        )
        log.get_logger().error("job.stacks", stacks_file=str(path), stacks=finished.result or "")
        if self.metrics is not None:
            self.metrics.hung()
        self.progress.failure()
        self._begin_stop(Request(Action.STOP, Origin.TIMER, "hang"), Intent.HANG)

    def _prune(self, committed: str | None, step: int | None) -> None:
        """Retention after a commit, off the loop; never the newest verified checkpoint, nor
        one newer than the newest remote one (the only copy)."""
        if committed is not None and Path(committed).parent == self.config.checkpoint_dir:
            path = Path(committed)
            self.newest_verified = path
            upload = None
            if self.remote is not None and step is not None:
                upload = partial(self.remote.submit, path, step)
            if self.signer is not None:  # signed first: model.sig goes up before ckptd.json
                signer = self.signer
                self.background.submit(
                    "signed", lambda: sign_then_upload(signer, path, step, upload)
                )
            elif upload is not None:
                upload()
        protect = [self.resumed_from.path] if self.resumed_from else []
        if self.pinned is not None:
            protect.append(self.pinned)
        if self.newest_verified is not None:
            protect.append(self.newest_verified)
        directory, rules, remote = self.config.checkpoint_dir, self.rules, self.remote

        def prune() -> retention.Pruned:
            kept = remote.protected(scan(directory)) if remote is not None else []
            return retention.prune(directory, rules, [*protect, *kept])

        self.background.submit("pruned", prune)


def _hang_clock_on(phase: Phase) -> bool:
    """The hang clock runs while the job runs, except while a hang found is confirmed (stacks)."""
    return isinstance(phase, Running) and not phase.dumping


def _waiter(request: Request) -> Waiter | None:
    """The control waiter a request keeps to answer once it is done (``wait``), else None."""
    reply_to = request.reply_to
    return reply_to if request.wait and isinstance(reply_to, Waiter) else None


def _sleep_ms(due: float | None) -> int:
    """Poll timeout until ``due`` (ms, rounded up so the moment has passed on waking)."""
    wait = _MAX_SLEEP if due is None else min(_MAX_SLEEP, due - time.monotonic())
    return 0 if wait <= 0 else int(wait * 1000) + 1


def _drain_fd(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
