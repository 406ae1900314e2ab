"""The job's lifecycle: one phase value, and the pure rule that moves it.

The arbiter owns the current :data:`Phase`; it feeds :meth:`Lifecycle.advance` every input
that can change it and performs the effects it gets back, in order. Nothing here touches a
process, a socket or a clock (``now`` comes with the input), so every transition is one row
of a table (tests/unit/test_lifecycle.py). Each phase carries exactly the data valid in it:

    Starting --Prepared--> Starting [Launch] --Launched--> Running
    Starting --Adopt--> Adopting      an orphan of a dead ckptd: final save, then relaunch
    Running --StopRequested--> Stopping(stop)      Adopting --a stop--> Stopping
    Running, Stopping, Adopting --JobExited--> Reaping --Reaped--> Backoff | Exited | Ending
    Reaping --Reaped (done, or given up), with a remote--> Finishing --FlushDone--> Exited
    Starting, Backoff --StopRequested(intent stop)--> Ending   (nothing runs, nothing to save)
    Ending --PersistDone, FlushDone, RequeueDone--> ... --> Exited   (a final in RAM: Persist)
    Backoff --Tick(until)--> Starting [Prepare]

A later stop request never starts a second stop: :meth:`Stop.supersede` merges it into the
one under way (a stop supersedes a restart, a hang, an adoption; nothing supersedes a stop).
``ckptd status`` shows the public name of a phase (:func:`shown`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ckptd import exit_codes
from ckptd.process.restart_policy import ExitStatus, RestartPolicy
from ckptd.process.trainer import Trainer
from ckptd.requests import Origin
from ckptd.supervisor.effects import (
    Announce,
    CleanUp,
    Conclude,
    CountFailure,
    DumpStacks,
    Effects,
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
    emit,
)
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
from ckptd.supervisor.states import JobState
from ckptd.supervisor.stops import Intent, Step, Stop

# How long a client gets to connect (after a launch) or reconnect (an adopted orphan) before
# a stop falls back to stop_signal: a stop right after a launch must not kill a job whose
# client is still importing its way to connect(). A job whose client connected to an earlier
# launch (a relaunch: torchrun and torch imports can take longer than that on a busy machine)
# gets half the grace period after its launch.
CLIENT_WINDOW = 3.0
ORPHAN = "orphan of an earlier ckptd"

# -- phases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Starting:
    """A launch is being prepared off the loop (at boot: before an orphan is looked for)."""


@dataclass(frozen=True)
class Running:
    trainer: Trainer
    launched: float  # monotonic
    dumping: bool = False  # a hang was found: its stacks are being dumped, then it is stopped
    instrumented: bool = False  # a client connected to an earlier launch: it is waited for


@dataclass(frozen=True)
class Adopting:
    """A job left running by a ckptd that died: stopped (final save), then relaunched."""

    trainer: Trainer
    stop: Stop


@dataclass(frozen=True)
class Stopping:
    trainer: Trainer
    stop: Stop


@dataclass(frozen=True)
class Reaping:
    """The job's main process is gone; what is left of its tree is cleaned up off the loop."""

    trainer: Trainer
    status: ExitStatus
    stop: Stop | None


@dataclass(frozen=True)
class Ending:
    """The job of a stop is gone: the final checkpoint persisted from RAM (if it is there), its
    upload, then the requeue command, then the exit."""

    stop: Stop
    status: ExitStatus | None  # None: the stop came while nothing ran
    shown: JobState  # what ``ckptd status`` says meanwhile
    persisted: bool = False  # the final checkpoint's copy from RAM to disk was started
    flushed: bool = False  # the final upload was started
    requeued: bool = False  # the requeue command was started


@dataclass(frozen=True)
class Finishing:
    """The job ended for good on its own (done, or given up): its newest checkpoints still go
    up to the remote before ckptd exits with ``code`` (1 instead of 0 when they could not)."""

    code: int


@dataclass(frozen=True)
class Backoff:
    until: float  # monotonic


@dataclass(frozen=True)
class Exited:
    code: int  # ``ckptd run``'s exit status


Phase = Starting | Running | Adopting | Stopping | Reaping | Ending | Finishing | Backoff | Exited

# -- what a phase holds and shows ---------------------------------------------------------


def stop_of(phase: Phase) -> Stop | None:
    return phase.stop if isinstance(phase, (Adopting, Stopping, Reaping, Ending)) else None


def trainer_of(phase: Phase) -> Trainer | None:
    """The job's process, alive or being reaped."""
    return phase.trainer if isinstance(phase, (Running, Adopting, Stopping, Reaping)) else None


def job_alive(phase: Phase) -> bool:
    return isinstance(phase, (Running, Adopting, Stopping))


def takes_checkpoints(phase: Phase) -> bool:
    """Checkpoint requests are taken (held until a launch while none runs) but not during a
    stop, nor once the job ended for good."""
    return stop_of(phase) is None and not isinstance(phase, (Finishing, Exited))


def shown(phase: Phase, checkpointing: bool = False) -> JobState:
    """The public state name of ``phase`` (``checkpointing``: a save is in flight)."""
    if isinstance(phase, (Running, Reaping)) and stop_of(phase) is None:
        return JobState.CHECKPOINTING if checkpointing else JobState.RUNNING
    if isinstance(phase, Ending):
        return phase.shown
    return {
        Starting: JobState.STARTING,
        Backoff: JobState.BACKOFF,
        Exited: JobState.EXITED,
    }.get(type(phase), JobState.STOPPING)


# -- the transitions ----------------------------------------------------------------------


@dataclass(frozen=True)
class Lifecycle:
    """The rules, with the settings they read; :meth:`advance` is the one entry."""

    grace: float
    kill_timeout: float
    stop_signal: str
    policy: RestartPolicy
    remote: bool = False  # a remote is configured: a committed final save is uploaded
    finish_upload: float = 600.0  # how long a job that ended on its own waits for its uploads

    def advance(self, phase: Phase, event: Input) -> tuple[Phase, Effects]:
        """The phase after ``event`` and the effects to perform, in order."""
        if isinstance(phase, Exited):
            return phase, []
        if isinstance(event, StopRequested):
            return self._stop_requested(phase, event)
        if isinstance(event, (StopNow, FinalDelivered, FinalCommitted, FinalFailed)):
            return _stop_changed(phase, event)
        if isinstance(event, Tick):
            return self._tick(phase, event.now)
        if isinstance(event, HangFound):
            if isinstance(phase, Running) and not phase.dumping:
                return replace(phase, dumping=True), [DumpStacks(event.overdue)]
            return phase, []
        if isinstance(event, JobExited):
            if isinstance(phase, (Running, Adopting, Stopping)):
                stop = stop_of(phase)
                return Reaping(phase.trainer, event.status, stop), [
                    CleanUp(phase.trainer, event.status)
                ]
            return phase, []
        if isinstance(event, Reaped):
            return self._reaped(phase, event) if isinstance(phase, Reaping) else (phase, [])
        if isinstance(event, (PersistDone, FlushDone, RequeueDone)):
            return self._ending_step_done(phase, event)
        if not isinstance(phase, Starting):
            return phase, []  # a preparation outlived by a stop: no launch
        return self._starting(phase, event)

    def _starting(self, phase: Starting, event: Input) -> tuple[Phase, Effects]:
        if isinstance(event, Prepared):
            return phase, [Launch(event.prepared)]
        if isinstance(event, PrepareFailed):
            return Exited(event.code), [emit("job.launch_failed", "error", error=event.error)]
        if isinstance(event, Launched):
            return Running(event.trainer, event.now, instrumented=event.instrumented), []
        if isinstance(event, LaunchFailed):
            # Not found, not executable: no restart can fix that (docs/exit-codes.md: 127).
            code = exit_codes.CANNOT_EXECUTE
            failed = emit("job.launch_failed", "error", error=event.error, exit_code=code)
            return Exited(code), [failed]
        if isinstance(event, Adopt):
            request = StopRequested(ORPHAN, Intent.RESTART, Origin.TIMER, event.now)
            running = Running(event.trainer, event.now)
            stopping, effects = self._stop_job(
                running, self._new_stop(request), request, signal_delay=CLIENT_WINDOW
            )
            return Adopting(event.trainer, stopping.stop), effects
        return phase, []

    def _stop_requested(self, phase: Phase, r: StopRequested) -> tuple[Phase, Effects]:
        stop = stop_of(phase)
        if (
            stop is not None
            and stop.intent is Intent.STOP
            and r.intent is Intent.STOP
            and r.origin is Origin.SIGNAL
            and not r.requeue
        ):
            # A second SIGTERM/SIGINT while stopping for good: wait no longer.
            return _stop_changed(phase, StopNow(r.reason, r.now))
        new = self._new_stop(r)
        if stop is not None:
            merged, changed = stop.supersede(
                r.reason, r.intent, r.origin, new.deadline,
                requeue=r.requeue, why=r.why, waiter=r.waiter,
            )  # fmt: skip
            if isinstance(phase, Adopting) and changed:
                return Stopping(phase.trainer, merged), [Announce(merged, stop.intent.value)]
            effects: Effects = [Announce(merged, stop.intent.value)] if changed else []
            return _with_stop(phase, merged), effects
        if isinstance(phase, Running):
            return self._stop_job(phase, new, r)
        if isinstance(phase, Reaping):
            return replace(phase, stop=new), []  # its end is decided once it is reaped
        if isinstance(phase, (Starting, Backoff)) and r.intent is Intent.STOP:
            ending = Ending(new, None, shown(phase))
            after, effects = self._enter_ending(ending)
            return after, [Announce(new), *effects]
        return phase, []  # nothing runs: a restart or a hang has nothing to act on

    def _new_stop(self, r: StopRequested) -> Stop:
        """The stop ``r`` starts: within the grace period, or by its earlier deadline."""
        stop_by = r.now + self.grace if r.deadline is None else min(r.now + self.grace, r.deadline)
        return Stop(
            r.reason, r.intent, stop_by, frozenset({r.origin}), self.kill_timeout,
            requeue=r.requeue, why=r.why,
            waiters=() if r.waiter is None else (r.waiter,),
        )  # fmt: skip

    def _stop_job(
        self, phase: Running, stop: Stop, r: StopRequested, signal_delay: float = 0.0
    ) -> tuple[Stopping, Effects]:
        """Ask the running job for its final save (or, for a hang, signal it at once)."""
        now = r.now
        effects: Effects = [PauseTimer(), Announce(stop)]
        if stop.intent is Intent.HANG:
            return Stopping(phase.trainer, stop.force(now)), [*effects, Terminate("hang")]
        if r.answered:  # the ranks took another node's stop: they end on their own
            return Stopping(phase.trainer, replace(stop, committed=True)), effects
        # Half the grace at most: a plain job must still get stop_signal before the deadline.
        window = max(CLIENT_WINDOW, self.grace / 2) if phase.instrumented else CLIENT_WINDOW
        wait = min(phase.launched + window - now, (stop.deadline - now) / 2)
        stop = replace(stop, signal_at=now + max(signal_delay, wait))
        return Stopping(phase.trainer, stop), [*effects, RequestFinal(stop, r.save, r.origin)]

    def _tick(self, phase: Phase, now: float) -> tuple[Phase, Effects]:
        if isinstance(phase, Backoff):
            return (Starting(), [Prepare()]) if now >= phase.until else (phase, [])
        if not isinstance(phase, (Adopting, Stopping)):
            return phase, []
        stop, step = phase.stop.due(now)
        by_step: dict[Step | None, Effects] = {
            None: [],
            Step.SIGNAL_MAIN: [SignalMain()],
            Step.TERMINATE: [Terminate("grace period over")],
            Step.KILL: [Kill()],
        }
        return replace(phase, stop=stop), by_step[step]

    def _reaped(self, phase: Reaping, event: Reaped) -> tuple[Phase, Effects]:
        stop, status = phase.stop, phase.status
        if stop is not None and stop.intent is Intent.STOP:
            return self._enter_ending(Ending(stop, status, JobState.STOPPING))
        if stop is not None and stop.intent is Intent.RESTART:
            restarting = emit(
                "job.restarting", delay=0, reason=stop.reason, final_checkpoint=stop.committed
            )
            return Backoff(event.now), [restarting, PauseTimer()]
        if not self.policy.wants_restart(status):
            finished = emit("job.finished", status=str(status), exit_code=status.shell_code)
            return self._finish(status.shell_code, [finished], event.now)
        restarts = event.restarts + 1
        counted = CountFailure(restarts, hang=stop is not None)  # a hang: counted when found
        if self.policy.exhausted(restarts):
            gave_up = emit(
                "job.gave_up", "error", status=str(status), restarts=restarts - 1,
                why="max_restarts reached without a new checkpoint",
            )  # fmt: skip
            return self._finish(exit_codes.GAVE_UP, [counted, gave_up], event.now)
        delay = self.policy.backoff(restarts, event.rng)
        restarting = emit(
            "job.restarting", delay=round(delay, 3), status=str(status),
            restarts_left=max(0, self.policy.max_restarts - restarts),
        )  # fmt: skip
        return Backoff(event.now + delay), [counted, restarting, PauseTimer()]

    def _finish(self, code: int, effects: Effects, now: float) -> tuple[Phase, Effects]:
        """The end of a job that stopped on its own: with a remote, after its uploads."""
        if not self.remote:
            return Exited(code), effects
        return Finishing(code), [*effects, Flush(now + self.finish_upload)]

    def _enter_ending(self, ending: Ending) -> tuple[Phase, Effects]:
        after, effects = self._next_ending_step(ending)
        return after, [ReportPreemption(ending.stop), *effects]

    def _next_ending_step(self, ending: Ending) -> tuple[Phase, Effects]:
        stop = ending.stop
        if stop.committed and stop.in_ram and not ending.persisted:
            return replace(ending, persisted=True), [Persist(stop.deadline)]
        if self.remote and stop.committed and not ending.flushed:
            return replace(ending, flushed=True), [Flush(stop.deadline)]
        if stop.requeue and not ending.requeued:
            return replace(ending, requeued=True), [Requeue()]
        code = stop.exit_code(ending.status, self.stop_signal)
        return Exited(code), [Conclude(stop, code)]

    def _ending_step_done(
        self, phase: Phase, event: PersistDone | FlushDone | RequeueDone
    ) -> tuple[Phase, Effects]:
        if isinstance(phase, Finishing) and isinstance(event, FlushDone):
            ok = event.uploaded or phase.code != exit_codes.OK
            return Exited(phase.code if ok else exit_codes.FAILED), []
        if not isinstance(phase, Ending):
            return phase, []
        if isinstance(event, PersistDone):
            stop = replace(phase.stop, unpersisted=not event.ok)
        elif isinstance(event, FlushDone):
            stop = replace(phase.stop, local_only=not event.uploaded)
        else:
            stop = phase.stop if event.ok else replace(phase.stop, failed=True)
        return self._next_ending_step(replace(phase, stop=stop))


def _stop_changed(
    phase: Phase, event: StopNow | FinalDelivered | FinalCommitted | FinalFailed
) -> tuple[Phase, Effects]:
    """What the job's client or a second signal changes in the stop under way, if any."""
    stop = stop_of(phase)
    if stop is None:
        return phase, []
    if isinstance(event, StopNow):
        if stop.forced or not isinstance(phase, (Adopting, Stopping)):
            return phase, []
        return replace(phase, stop=stop.force(event.now)), [Terminate(event.reason)]
    if isinstance(event, FinalDelivered):
        stop = stop.client_took_request()
    elif isinstance(event, FinalCommitted):
        stop = replace(stop, committed=True, in_ram=event.in_ram)
    else:
        stop = replace(stop, failed=True)
    return _with_stop(phase, stop), []


def _with_stop(phase: Phase, stop: Stop) -> Phase:
    assert isinstance(phase, (Adopting, Stopping, Reaping, Ending))
    return replace(phase, stop=stop)
