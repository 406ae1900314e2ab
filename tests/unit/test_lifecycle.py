"""The job's lifecycle as a table: every (phase, input) pair, one line each, and its rules.

A row reads ``phase | input | phase after ("=": unchanged) | effects, in order``. Phases and
inputs are named in PHASES, VARIANTS and INPUTS below; every pair of a PHASES name with an
INPUTS name has its row, and each row's public state names move along the states diagram.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, cast

import pytest

from ckptd import exit_codes
from ckptd.process.restart_policy import ExitStatus, RestartPolicy
from ckptd.process.trainer import Trainer
from ckptd.requests import Origin
from ckptd.supervisor import effects as fx
from ckptd.supervisor import inputs as ev
from ckptd.supervisor import lifecycle as lc
from ckptd.supervisor.states import JobState, check_transition
from ckptd.supervisor.stops import Intent, Stop

NOW = 100.0
T = cast(Trainer, "the trainer")  # the lifecycle only carries it
FAILURE, SUCCESS = ExitStatus(code=1), ExitStatus(code=0)
RULES = lc.Lifecycle(
    grace=30.0, kill_timeout=10.0, stop_signal="SIGTERM", remote=True,
    policy=RestartPolicy("on-failure", max_restarts=2, delay=4.0, delay_max=4.0),
)  # fmt: skip


def _stop(intent: Intent = Intent.STOP, reason: str = "SIGTERM", **fields: Any) -> Stop:
    origin = {Intent.STOP: Origin.SIGNAL, Intent.RESTART: Origin.CONTROL}.get(intent, Origin.TIMER)
    return Stop(reason, intent, NOW + 30, frozenset({origin}), 10.0, final_id="f", **fields)


PHASES: dict[str, lc.Phase] = {
    "starting": lc.Starting(),
    "running": lc.Running(T, launched=NOW - 60),
    "adopting": lc.Adopting(T, _stop(Intent.RESTART, lc.ORPHAN, signal_at=NOW + 3)),
    "stopping": lc.Stopping(T, _stop(signal_at=NOW + 15)),
    "reaping": lc.Reaping(T, FAILURE, None),
    "ending": lc.Ending(_stop(committed=True), SUCCESS, JobState.STOPPING, flushed=True),
    "backoff": lc.Backoff(until=NOW + 5),
    "finishing": lc.Finishing(0),
    "exited": lc.Exited(0),
}
VARIANTS: dict[str, lc.Phase] = {
    "running(dumping)": lc.Running(T, launched=NOW - 60, dumping=True),
    "stopping(restart)": lc.Stopping(T, _stop(Intent.RESTART, "restart", signal_at=NOW + 15)),
    "stopping(hang)": lc.Stopping(T, _stop(Intent.HANG, "hang").force(NOW)),
    "stopping(committed)": lc.Stopping(T, _stop(committed=True)),
    "reaping(stop)": lc.Reaping(T, SUCCESS, _stop(committed=True)),
    "reaping(stop, requeue)": lc.Reaping(T, SUCCESS, _stop(requeue=True)),
    "reaping(restart)": lc.Reaping(T, SUCCESS, _stop(Intent.RESTART, "restart")),
    "reaping(hang)": lc.Reaping(T, FAILURE, _stop(Intent.HANG, "hang")),
    "reaping(success)": lc.Reaping(T, SUCCESS, None),
    "reaping(stop, in ram)": lc.Reaping(T, SUCCESS, _stop(committed=True, in_ram=True)),
    "ending(persisting)": lc.Ending(
        _stop(committed=True, in_ram=True), SUCCESS, JobState.STOPPING, persisted=True
    ),
    "ending(requeueing)": lc.Ending(_stop(requeue=True), None, JobState.BACKOFF, requeued=True),
}
INPUTS: dict[str, ev.Input] = {
    "sigterm": ev.StopRequested("SIGTERM", Intent.STOP, Origin.SIGNAL, NOW),
    "stop-file": ev.StopRequested("STOP file", Intent.STOP, Origin.FILE, NOW),
    "requeue": ev.StopRequested("SIGUSR2", Intent.STOP, Origin.SIGNAL, NOW, requeue=True),
    "preempt": ev.StopRequested("aws spot", Intent.STOP, Origin.CLOUD, NOW, deadline=NOW + 5),
    "fenced": ev.StopRequested("fenced", Intent.STOP, Origin.REMOTE, NOW, why="fenced"),
    "diverged": ev.StopRequested(
        "diverged", Intent.STOP, Origin.TIMER, NOW, save=False, why="diverged"
    ),
    "restart": ev.StopRequested("restart", Intent.RESTART, Origin.CONTROL, NOW),
    "hang": ev.StopRequested("hang", Intent.HANG, Origin.TIMER, NOW),
    "stop-now": ev.StopNow("stop_now", NOW),
    "hang-found": ev.HangFound("overdue"),
    "tick": ev.Tick(NOW + 1),
    "tick-late": ev.Tick(NOW + 31),
    "delivered": ev.FinalDelivered(),
    "committed": ev.FinalCommitted(),
    "committed-ram": ev.FinalCommitted(in_ram=True),
    "failed": ev.FinalFailed(),
    "job-exited": ev.JobExited(FAILURE),
    "reaped": ev.Reaped(NOW, restarts=0, rng=random.Random(0)),
    "persisted": ev.PersistDone(ok=True),
    "flushed": ev.FlushDone(uploaded=True),
    "requeued": ev.RequeueDone(ok=True),
    "prepared": ev.Prepared("prepared"),
    "prepare-failed": ev.PrepareFailed("no such bucket", 2),
    "launched": ev.Launched(T, NOW),
    "launch-failed": ev.LaunchFailed("no such file"),
    "adopt": ev.Adopt(T, NOW),
}
_FLAGS = ("committed", "in_ram", "failed", "forced", "local_only", "unpersisted")


def describe(phase: lc.Phase) -> str:
    """One phase in a few words: its kind, its stop's intent and flags, its clocks."""
    words = [type(phase).__name__]
    if isinstance(phase, lc.Backoff):
        words.append(f"+{phase.until - NOW:g}s")
    if isinstance(phase, (lc.Exited, lc.Finishing)):
        words.append(str(phase.code))
    if isinstance(phase, lc.Running) and phase.dumping:
        words.append("dumping")
    stop = lc.stop_of(phase)
    if stop is not None:
        words.append(stop.intent.value)
        words += ["requeue"] if stop.requeue else []
        words += [stop.why] if stop.why else []
        words += [flag for flag in _FLAGS if getattr(stop, flag)]
        if stop.signal_at is not None:
            words.append(f"signal@+{stop.signal_at - NOW:g}s")
        if stop.deadline != NOW + 30:
            words.append(f"deadline@+{stop.deadline - NOW:g}s")
    if isinstance(phase, lc.Ending):
        words.append(f"shown={phase.shown.value}")
        words += [step for step in ("persisted", "flushed", "requeued") if getattr(phase, step)]
    return " ".join(words)


def describe_effects(effects: list[fx.Effect]) -> str:
    names = []
    for effect in effects:
        name = type(effect).__name__
        if isinstance(effect, fx.Emit):
            name = f"Emit {effect.event}"
        elif isinstance(effect, fx.Terminate):
            name = f"Terminate({effect.reason})"
        elif isinstance(effect, fx.Conclude):
            name = f"Conclude({effect.code})"
        elif isinstance(effect, fx.Announce) and effect.superseded:
            name = f"Announce(superseded {effect.superseded})"
        names.append(name)
    return ", ".join(names) or "-"


# phase            | input         | phase after                             | effects
TABLE = """
starting          | sigterm       | Exited 0                                | Announce, ReportPreemption, Conclude(0)
starting          | stop-file     | Exited 0                                | Announce, ReportPreemption, Conclude(0)
starting          | requeue       | Ending stop requeue shown=starting requeued| Announce, ReportPreemption, Requeue
starting          | preempt       | Exited 0                                | Announce, ReportPreemption, Conclude(0)
starting          | fenced        | Exited 4                                | Announce, ReportPreemption, Conclude(4)
starting          | diverged      | Exited 5                                | Announce, ReportPreemption, Conclude(5)
starting          | restart       | =                                       | -
starting          | hang          | =                                       | -
starting          | stop-now      | =                                       | -
starting          | hang-found    | =                                       | -
starting          | tick          | =                                       | -
starting          | tick-late     | =                                       | -
starting          | delivered     | =                                       | -
starting          | committed     | =                                       | -
starting          | failed        | =                                       | -
starting          | job-exited    | =                                       | -
starting          | reaped        | =                                       | -
starting          | flushed       | =                                       | -
starting          | requeued      | =                                       | -
starting          | prepared      | =                                       | Launch
starting          | prepare-failed| Exited 2                                | Emit job.launch_failed
starting          | launched      | Running                                 | -
starting          | launch-failed | Exited 127                              | Emit job.launch_failed
starting          | adopt         | Adopting restart signal@+3s             | PauseTimer, Announce, RequestFinal

running           | sigterm       | Stopping stop signal@+0s                | PauseTimer, Announce, RequestFinal
running           | stop-file     | Stopping stop signal@+0s                | PauseTimer, Announce, RequestFinal
running           | requeue       | Stopping stop requeue signal@+0s        | PauseTimer, Announce, RequestFinal
running           | preempt       | Stopping stop signal@+0s deadline@+5s   | PauseTimer, Announce, RequestFinal
running           | fenced        | Stopping stop fenced signal@+0s         | PauseTimer, Announce, RequestFinal
running           | diverged      | Stopping stop diverged signal@+0s       | PauseTimer, Announce, RequestFinal
running           | restart       | Stopping restart signal@+0s             | PauseTimer, Announce, RequestFinal
running           | hang          | Stopping hang forced                    | PauseTimer, Announce, Terminate(hang)
running           | stop-now      | =                                       | -
running           | hang-found    | Running dumping                         | DumpStacks
running           | tick          | =                                       | -
running           | tick-late     | =                                       | -
running           | delivered     | =                                       | -
running           | committed     | =                                       | -
running           | failed        | =                                       | -
running           | job-exited    | Reaping                                 | CleanUp
running           | reaped        | =                                       | -
running           | flushed       | =                                       | -
running           | requeued      | =                                       | -
running           | prepared      | =                                       | -
running           | prepare-failed| =                                       | -
running           | launched      | =                                       | -
running           | launch-failed | =                                       | -
running           | adopt         | =                                       | -

adopting          | sigterm       | Stopping stop signal@+3s                | Announce(superseded restart)
adopting          | stop-file     | Stopping stop signal@+3s                | Announce(superseded restart)
adopting          | requeue       | Stopping stop requeue signal@+3s        | Announce(superseded restart)
adopting          | preempt       | Stopping stop signal@+3s deadline@+5s   | Announce(superseded restart)
adopting          | fenced        | Stopping stop fenced signal@+3s         | Announce(superseded restart)
adopting          | diverged      | Stopping stop diverged signal@+3s       | Announce(superseded restart)
adopting          | restart       | =                                       | -
adopting          | hang          | Adopting restart signal@+3s             | -
adopting          | stop-now      | Adopting restart forced                 | Terminate(stop_now)
adopting          | hang-found    | =                                       | -
adopting          | tick          | =                                       | -
adopting          | tick-late     | Adopting restart forced                 | Terminate(grace period over)
adopting          | delivered     | Adopting restart                        | -
adopting          | committed     | Adopting restart committed signal@+3s   | -
adopting          | failed        | Adopting restart failed signal@+3s      | -
adopting          | job-exited    | Reaping restart signal@+3s              | CleanUp
adopting          | reaped        | =                                       | -
adopting          | flushed       | =                                       | -
adopting          | requeued      | =                                       | -
adopting          | prepared      | =                                       | -
adopting          | prepare-failed| =                                       | -
adopting          | launched      | =                                       | -
adopting          | launch-failed | =                                       | -
adopting          | adopt         | =                                       | -

stopping          | sigterm       | Stopping stop forced                    | Terminate(SIGTERM)
stopping          | stop-file     | Stopping stop signal@+15s               | -
stopping          | requeue       | Stopping stop requeue signal@+15s       | -
stopping          | preempt       | Stopping stop signal@+15s deadline@+5s  | -
stopping          | fenced        | Stopping stop fenced signal@+15s        | -
stopping          | diverged      | Stopping stop diverged signal@+15s      | -
stopping          | restart       | Stopping stop signal@+15s               | -
stopping          | hang          | Stopping stop signal@+15s               | -
stopping          | stop-now      | Stopping stop forced                    | Terminate(stop_now)
stopping          | hang-found    | =                                       | -
stopping          | tick          | =                                       | -
stopping          | tick-late     | Stopping stop forced                    | Terminate(grace period over)
stopping          | delivered     | Stopping stop                           | -
stopping          | committed     | Stopping stop committed signal@+15s     | -
stopping          | failed        | Stopping stop failed signal@+15s        | -
stopping          | job-exited    | Reaping stop signal@+15s                | CleanUp
stopping          | reaped        | =                                       | -
stopping          | flushed       | =                                       | -
stopping          | requeued      | =                                       | -
stopping          | prepared      | =                                       | -
stopping          | prepare-failed| =                                       | -
stopping          | launched      | =                                       | -
stopping          | launch-failed | =                                       | -
stopping          | adopt         | =                                       | -

reaping           | sigterm       | Reaping stop                            | -
reaping           | stop-file     | Reaping stop                            | -
reaping           | requeue       | Reaping stop requeue                    | -
reaping           | preempt       | Reaping stop deadline@+5s               | -
reaping           | fenced        | Reaping stop fenced                     | -
reaping           | diverged      | Reaping stop diverged                   | -
reaping           | restart       | Reaping restart                         | -
reaping           | hang          | Reaping hang                            | -
reaping           | stop-now      | =                                       | -
reaping           | hang-found    | =                                       | -
reaping           | tick          | =                                       | -
reaping           | tick-late     | =                                       | -
reaping           | delivered     | =                                       | -
reaping           | committed     | =                                       | -
reaping           | failed        | =                                       | -
reaping           | job-exited    | =                                       | -
reaping           | reaped        | Backoff +4s                             | CountFailure, Emit job.restarting, PauseTimer
reaping           | flushed       | =                                       | -
reaping           | requeued      | =                                       | -
reaping           | prepared      | =                                       | -
reaping           | prepare-failed| =                                       | -
reaping           | launched      | =                                       | -
reaping           | launch-failed | =                                       | -
reaping           | adopt         | =                                       | -

ending            | sigterm       | =                                       | -
ending            | stop-file     | Ending stop committed shown=stopping flushed| -
ending            | requeue       | Ending stop requeue committed shown=stopping flushed| -
ending            | preempt       | Ending stop committed deadline@+5s shown=stopping flushed| -
ending            | fenced        | Ending stop fenced committed shown=stopping flushed| -
ending            | diverged      | Ending stop diverged committed shown=stopping flushed| -
ending            | restart       | Ending stop committed shown=stopping flushed| -
ending            | hang          | Ending stop committed shown=stopping flushed| -
ending            | stop-now      | =                                       | -
ending            | hang-found    | =                                       | -
ending            | tick          | =                                       | -
ending            | tick-late     | =                                       | -
ending            | delivered     | =                                       | -
ending            | committed     | =                                       | -
ending            | failed        | Ending stop committed failed shown=stopping flushed| -
ending            | job-exited    | =                                       | -
ending            | reaped        | =                                       | -
ending            | flushed       | Exited 0                                | Conclude(0)
ending            | requeued      | Exited 0                                | Conclude(0)
ending            | prepared      | =                                       | -
ending            | prepare-failed| =                                       | -
ending            | launched      | =                                       | -
ending            | launch-failed | =                                       | -
ending            | adopt         | =                                       | -

backoff           | sigterm       | Exited 0                                | Announce, ReportPreemption, Conclude(0)
backoff           | stop-file     | Exited 0                                | Announce, ReportPreemption, Conclude(0)
backoff           | requeue       | Ending stop requeue shown=backoff requeued| Announce, ReportPreemption, Requeue
backoff           | preempt       | Exited 0                                | Announce, ReportPreemption, Conclude(0)
backoff           | fenced        | Exited 4                                | Announce, ReportPreemption, Conclude(4)
backoff           | diverged      | Exited 5                                | Announce, ReportPreemption, Conclude(5)
backoff           | restart       | =                                       | -
backoff           | hang          | =                                       | -
backoff           | stop-now      | =                                       | -
backoff           | hang-found    | =                                       | -
backoff           | tick          | =                                       | -
backoff           | tick-late     | Starting                                | Prepare
backoff           | delivered     | =                                       | -
backoff           | committed     | =                                       | -
backoff           | failed        | =                                       | -
backoff           | job-exited    | =                                       | -
backoff           | reaped        | =                                       | -
backoff           | flushed       | =                                       | -
backoff           | requeued      | =                                       | -
backoff           | prepared      | =                                       | -
backoff           | prepare-failed| =                                       | -
backoff           | launched      | =                                       | -
backoff           | launch-failed | =                                       | -
backoff           | adopt         | =                                       | -

finishing         | sigterm       | =                                       | -
finishing         | stop-file     | =                                       | -
finishing         | requeue       | =                                       | -
finishing         | preempt       | =                                       | -
finishing         | fenced        | =                                       | -
finishing         | diverged      | =                                       | -
finishing         | restart       | =                                       | -
finishing         | hang          | =                                       | -
finishing         | stop-now      | =                                       | -
finishing         | hang-found    | =                                       | -
finishing         | tick          | =                                       | -
finishing         | tick-late     | =                                       | -
finishing         | delivered     | =                                       | -
finishing         | committed     | =                                       | -
finishing         | failed        | =                                       | -
finishing         | job-exited    | =                                       | -
finishing         | reaped        | =                                       | -
finishing         | flushed       | Exited 0                                | -
finishing         | requeued      | =                                       | -
finishing         | prepared      | =                                       | -
finishing         | prepare-failed| =                                       | -
finishing         | launched      | =                                       | -
finishing         | launch-failed | =                                       | -
finishing         | adopt         | =                                       | -
exited            | sigterm       | =                                       | -
exited            | stop-file     | =                                       | -
exited            | requeue       | =                                       | -
exited            | preempt       | =                                       | -
exited            | fenced        | =                                       | -
exited            | diverged      | =                                       | -
exited            | restart       | =                                       | -
exited            | hang          | =                                       | -
exited            | stop-now      | =                                       | -
exited            | hang-found    | =                                       | -
exited            | tick          | =                                       | -
exited            | tick-late     | =                                       | -
exited            | delivered     | =                                       | -
exited            | committed     | =                                       | -
exited            | failed        | =                                       | -
exited            | job-exited    | =                                       | -
exited            | reaped        | =                                       | -
exited            | flushed       | =                                       | -
exited            | requeued      | =                                       | -
exited            | prepared      | =                                       | -
exited            | prepare-failed| =                                       | -
exited            | launched      | =                                       | -
exited            | launch-failed | =                                       | -
exited            | adopt         | =                                       | -

running(dumping)  | sigterm       | Stopping stop signal@+0s                | PauseTimer, Announce, RequestFinal
running(dumping)  | requeue       | Stopping stop requeue signal@+0s        | PauseTimer, Announce, RequestFinal
running(dumping)  | fenced        | Stopping stop fenced signal@+0s         | PauseTimer, Announce, RequestFinal
running(dumping)  | restart       | Stopping restart signal@+0s             | PauseTimer, Announce, RequestFinal
running(dumping)  | hang          | Stopping hang forced                    | PauseTimer, Announce, Terminate(hang)
running(dumping)  | hang-found    | =                                       | -
running(dumping)  | job-exited    | Reaping                                 | CleanUp

stopping(restart) | sigterm       | Stopping stop signal@+15s               | Announce(superseded restart)
stopping(restart) | requeue       | Stopping stop requeue signal@+15s       | Announce(superseded restart)
stopping(restart) | fenced        | Stopping stop fenced signal@+15s        | Announce(superseded restart)
stopping(restart) | stop-now      | Stopping restart forced                 | Terminate(stop_now)
stopping(restart) | tick-late     | Stopping restart forced                 | Terminate(grace period over)
stopping(restart) | delivered     | Stopping restart                        | -
stopping(restart) | committed     | Stopping restart committed signal@+15s  | -
stopping(restart) | failed        | Stopping restart failed signal@+15s     | -
stopping(restart) | job-exited    | Reaping restart signal@+15s             | CleanUp

stopping(hang)    | sigterm       | Stopping stop forced                    | Announce(superseded hang)
stopping(hang)    | requeue       | Stopping stop requeue forced            | Announce(superseded hang)
stopping(hang)    | fenced        | Stopping stop fenced forced             | Announce(superseded hang)
stopping(hang)    | restart       | Stopping hang forced                    | -
stopping(hang)    | tick-late     | Stopping hang forced                    | Kill
stopping(hang)    | committed     | Stopping hang committed forced          | -
stopping(hang)    | failed        | Stopping hang failed forced             | -
stopping(hang)    | job-exited    | Reaping hang forced                     | CleanUp

stopping(committed)| sigterm       | Stopping stop committed forced          | Terminate(SIGTERM)
stopping(committed)| requeue       | Stopping stop requeue committed         | -
stopping(committed)| fenced        | Stopping stop fenced committed          | -
stopping(committed)| restart       | Stopping stop committed                 | -
stopping(committed)| stop-now      | Stopping stop committed forced          | Terminate(stop_now)
stopping(committed)| tick-late     | Stopping stop committed forced          | Terminate(grace period over)
stopping(committed)| failed        | Stopping stop committed failed          | -
stopping(committed)| job-exited    | Reaping stop committed                  | CleanUp

reaping(stop)     | requeue       | Reaping stop requeue committed          | -
reaping(stop)     | fenced        | Reaping stop fenced committed           | -
reaping(stop)     | restart       | Reaping stop committed                  | -
reaping(stop)     | failed        | Reaping stop committed failed           | -
reaping(stop)     | reaped        | Ending stop committed shown=stopping flushed| ReportPreemption, Flush

reaping(stop, requeue)| fenced        | Reaping stop requeue fenced             | -
reaping(stop, requeue)| restart       | Reaping stop requeue                    | -
reaping(stop, requeue)| committed     | Reaping stop requeue committed          | -
reaping(stop, requeue)| failed        | Reaping stop requeue failed             | -
reaping(stop, requeue)| reaped        | Ending stop requeue shown=stopping requeued| ReportPreemption, Requeue

reaping(restart)  | sigterm       | Reaping stop                            | Announce(superseded restart)
reaping(restart)  | requeue       | Reaping stop requeue                    | Announce(superseded restart)
reaping(restart)  | fenced        | Reaping stop fenced                     | Announce(superseded restart)
reaping(restart)  | committed     | Reaping restart committed               | -
reaping(restart)  | failed        | Reaping restart failed                  | -
reaping(restart)  | reaped        | Backoff +0s                             | Emit job.restarting, PauseTimer

reaping(hang)     | sigterm       | Reaping stop                            | Announce(superseded hang)
reaping(hang)     | requeue       | Reaping stop requeue                    | Announce(superseded hang)
reaping(hang)     | fenced        | Reaping stop fenced                     | Announce(superseded hang)
reaping(hang)     | restart       | Reaping hang                            | -
reaping(hang)     | committed     | Reaping hang committed                  | -
reaping(hang)     | failed        | Reaping hang failed                     | -
reaping(hang)     | reaped        | Backoff +4s                             | CountFailure, Emit job.restarting, PauseTimer

reaping(success)  | sigterm       | Reaping stop                            | -
reaping(success)  | requeue       | Reaping stop requeue                    | -
reaping(success)  | fenced        | Reaping stop fenced                     | -
reaping(success)  | restart       | Reaping restart                         | -
reaping(success)  | reaped        | Finishing 0                             | Emit job.finished, Flush

ending(requeueing)| fenced        | Ending stop requeue fenced shown=backoff requeued| -
ending(requeueing)| restart       | Ending stop requeue shown=backoff requeued| -
ending(requeueing)| committed     | Ending stop requeue committed shown=backoff requeued| -
ending(requeueing)| failed        | Ending stop requeue failed shown=backoff requeued| -
ending(requeueing)| flushed       | Exited 0                                | Conclude(0)

starting          | committed-ram | =                                       | -
starting          | persisted     | =                                       | -
running           | committed-ram | =                                       | -
running           | persisted     | =                                       | -
adopting          | committed-ram | Adopting restart committed in_ram signal@+3s| -
adopting          | persisted     | =                                       | -
stopping          | committed-ram | Stopping stop committed in_ram signal@+15s| -
stopping          | persisted     | =                                       | -
reaping           | committed-ram | =                                       | -
reaping           | persisted     | =                                       | -
ending            | committed-ram | Ending stop committed in_ram shown=stopping flushed| -
ending            | persisted     | Exited 0                                | Conclude(0)
backoff           | committed-ram | =                                       | -
backoff           | persisted     | =                                       | -
finishing         | committed-ram | =                                       | -
finishing         | persisted     | =                                       | -
exited            | committed-ram | =                                       | -
exited            | persisted     | =                                       | -

stopping(committed)| committed-ram | Stopping stop committed in_ram          | -
reaping(stop, in ram)| reaped        | Ending stop committed in_ram shown=stopping persisted| ReportPreemption, Persist
reaping(stop, in ram)| failed        | Reaping stop committed in_ram failed    | -
ending(persisting)| persisted     | Ending stop committed in_ram shown=stopping persisted flushed| Flush
ending(persisting)| committed     | Ending stop committed shown=stopping persisted| -
"""  # noqa: E501 - one row a line reads best


def _rows() -> list[tuple[str, str, str, str]]:
    rows = []
    for line in TABLE.strip().splitlines():
        if line.strip():
            phase, event, after, effects = (cell.strip() for cell in line.split("|"))
            rows.append((phase, event, after, effects))
    return rows


ROWS = _rows()


def test_the_table_has_a_row_for_every_phase_and_input() -> None:
    """Each (phase, input) pair is in the table exactly once; variants add rows, never replace."""
    pairs = [(phase, event) for phase, event, _, _ in ROWS]
    assert len(pairs) == len(set(pairs))
    assert {(p, i) for p in PHASES for i in INPUTS} <= set(pairs)


@pytest.mark.parametrize(("phase", "event", "after", "effects"), ROWS, ids=lambda v: str(v))
def test_transition(phase: str, event: str, after: str, effects: str) -> None:
    """One row: the phase an input leads to and the effects, in order, on the states diagram."""
    before = {**PHASES, **VARIANTS}[phase]
    got, done = RULES.advance(before, INPUTS[event])
    assert (describe(got) if got != before else "=", describe_effects(done)) == (after, effects)
    check_transition(lc.shown(before), lc.shown(got))


def test_a_later_request_only_raises_the_intent_and_brings_the_deadline_forward() -> None:
    """Stop.supersede: restart -> stop, never back; the earlier deadline; requeue/fenced stick."""
    restart = _stop(Intent.RESTART, "restart")
    stop, changed = restart.supersede("SIGTERM", Intent.STOP, Origin.SIGNAL, NOW + 50)
    assert changed and stop.intent is Intent.STOP and stop.superseded == ("restart",)
    assert stop.deadline == NOW + 30 and stop.origins == {Origin.CONTROL, Origin.SIGNAL}
    again, changed = stop.supersede("x", Intent.RESTART, Origin.CONTROL, NOW + 1, requeue=True)
    assert not changed and again.intent is Intent.STOP and again.reason == "SIGTERM"
    assert again.deadline == NOW + 1 and again.requeue
    assert restart.intent is Intent.RESTART  # a value: the old stop is unchanged


def test_a_stop_right_after_a_launch_waits_for_the_client_to_connect() -> None:
    """No client yet: stop_signal waits CLIENT_WINDOW after the launch, at most half the grace."""
    running = lc.Running(T, launched=NOW - 1)
    stopping, _ = RULES.advance(running, INPUTS["sigterm"])
    assert isinstance(stopping, lc.Stopping)
    assert stopping.stop.signal_at == NOW - 1 + lc.CLIENT_WINDOW
    short = dataclasses.replace(RULES, grace=2.0)
    stopping, _ = short.advance(running, INPUTS["sigterm"])
    assert isinstance(stopping, lc.Stopping) and stopping.stop.signal_at == NOW + 1.0


def test_a_relaunch_of_a_job_with_the_client_gets_half_the_grace_to_connect() -> None:
    """A job whose client connected to an earlier launch: a stop in the first half of the grace
    after the relaunch waits until then for the client; later ones signal at once, as before."""
    stopping, _ = RULES.advance(RULES.advance(lc.Starting(), ev.Launched(T, NOW - 4, True))[0],
                                INPUTS["sigterm"])  # fmt: skip
    assert isinstance(stopping, lc.Stopping) and stopping.stop.signal_at == NOW - 4 + 15
    late = lc.Running(T, launched=NOW - 20, instrumented=True)
    stopping, _ = RULES.advance(late, INPUTS["sigterm"])
    assert isinstance(stopping, lc.Stopping) and stopping.stop.signal_at == NOW
    plain = lc.Running(T, launched=NOW - 4)
    stopping, _ = RULES.advance(plain, INPUTS["sigterm"])
    assert isinstance(stopping, lc.Stopping) and stopping.stop.signal_at == NOW


def test_the_ending_uploads_then_requeues_then_exits_with_the_outcome() -> None:
    """Upload, then requeue, once each; left local or a failed requeue exits FAILED."""
    reaping = lc.Reaping(T, SUCCESS, _stop(committed=True, requeue=True))
    ending, effects = RULES.advance(reaping, INPUTS["reaped"])
    assert [type(e) for e in effects] == [fx.ReportPreemption, fx.Flush]
    ending, effects = RULES.advance(ending, INPUTS["requeue"])  # a second SIGUSR2 meanwhile
    assert effects == []
    ending, effects = RULES.advance(ending, ev.FlushDone(uploaded=False))
    assert effects == [fx.Requeue()]
    ending, effects = RULES.advance(ending, INPUTS["requeue"])  # SIGUSR2 again meanwhile
    assert effects == []
    ending, effects = RULES.advance(ending, ev.RequeueDone(ok=True))
    assert ending == lc.Exited(exit_codes.FAILED)  # local only; the command ran once
    requeue_failed = RULES.advance(lc.Ending(_stop(), SUCCESS, JobState.STOPPING, requeued=True),
                                   ev.RequeueDone(ok=False))  # fmt: skip
    assert requeue_failed[0] == lc.Exited(exit_codes.FAILED)
    local = dataclasses.replace(RULES, remote=False)
    ending, effects = local.advance(reaping, INPUTS["reaped"])
    assert [type(e) for e in effects] == [fx.ReportPreemption, fx.Requeue]


def test_a_final_checkpoint_in_ram_is_persisted_before_its_upload() -> None:
    """Persist, then Flush; a final left in RAM only exits FAILED (after its upload too)."""
    reaping = lc.Reaping(T, SUCCESS, _stop(committed=True, in_ram=True))
    ending, effects = RULES.advance(reaping, INPUTS["reaped"])
    assert [type(e) for e in effects] == [fx.ReportPreemption, fx.Persist]
    persisted, effects = RULES.advance(ending, ev.PersistDone(ok=True))
    assert effects == [fx.Flush(NOW + 30)]
    assert RULES.advance(persisted, INPUTS["flushed"]) == (lc.Exited(0), [fx.Conclude(
        dataclasses.replace(persisted.stop, local_only=False), 0)])  # fmt: skip
    lost, _ = RULES.advance(ending, ev.PersistDone(ok=False))
    assert RULES.advance(lost, INPUTS["flushed"])[0] == lc.Exited(exit_codes.FAILED)
    local = dataclasses.replace(RULES, remote=False)
    assert local.advance(ending, ev.PersistDone(ok=True))[0] == lc.Exited(0)
    assert local.advance(ending, ev.PersistDone(ok=False))[0] == lc.Exited(exit_codes.FAILED)


def test_restarts_without_progress_run_out() -> None:
    """A failure once max_restarts are used up without progress: exit GAVE_UP, counted, after
    the uploads (RULES has a remote); without a remote at once."""
    failed = lc.Reaping(T, FAILURE, None)
    after, effects = RULES.advance(failed, ev.Reaped(NOW, restarts=2, rng=random.Random(0)))
    assert after == lc.Finishing(exit_codes.GAVE_UP)
    assert effects[0] == fx.CountFailure(3, hang=False)  # max_restarts = 2
    assert describe_effects(effects) == "CountFailure, Emit job.gave_up, Flush"
    local = dataclasses.replace(RULES, remote=False)
    after, _ = local.advance(failed, ev.Reaped(NOW, restarts=2, rng=random.Random(0)))
    assert after == lc.Exited(exit_codes.GAVE_UP)


def test_a_job_that_ends_on_its_own_waits_for_its_uploads() -> None:
    """Done with a remote: Flush bounded by finish_upload; exit 0 if they landed, else 1."""
    done = VARIANTS["reaping(success)"]
    after, effects = RULES.advance(done, ev.Reaped(NOW, restarts=0, rng=random.Random(0)))
    assert after == lc.Finishing(0)
    assert effects[-1] == fx.Flush(NOW + RULES.finish_upload)
    assert RULES.advance(after, ev.FlushDone(uploaded=True)) == (lc.Exited(0), [])
    assert RULES.advance(after, ev.FlushDone(uploaded=False)) == (lc.Exited(exit_codes.FAILED), [])
    gave_up = lc.Finishing(exit_codes.GAVE_UP)
    assert RULES.advance(gave_up, ev.FlushDone(uploaded=False))[0] == lc.Exited(exit_codes.GAVE_UP)
    assert lc.shown(after) is JobState.STOPPING
    local = dataclasses.replace(RULES, remote=False)
    assert local.advance(done, ev.Reaped(NOW, restarts=0, rng=random.Random(0)))[0] == lc.Exited(0)


def test_public_state_names() -> None:
    """Status names: checkpointing, an ending as where it came from, adopting as stopping."""
    assert lc.shown(PHASES["running"], checkpointing=True) is JobState.CHECKPOINTING
    assert lc.shown(PHASES["reaping"]) is JobState.RUNNING
    assert lc.shown(VARIANTS["reaping(stop)"]) is JobState.STOPPING
    assert lc.shown(PHASES["adopting"]) is JobState.STOPPING
    assert lc.shown(VARIANTS["ending(requeueing)"]) is JobState.BACKOFF
    assert lc.shown(PHASES["exited"]) is JobState.EXITED


def test_checkpoint_requests_are_refused_during_a_stop_and_once_exited() -> None:
    """Requests are taken while starting, running or in backoff; not in a stop, not once exited."""
    taking = {name for name, phase in {**PHASES, **VARIANTS}.items() if lc.takes_checkpoints(phase)}
    assert taking == {
        "starting",
        "running",
        "running(dumping)",
        "reaping",
        "reaping(success)",
        "backoff",
    }


def test_the_strongest_reason_to_end_for_good_names_the_exit_status() -> None:
    """fenced beats diverged beats early_stop, whatever the order; each keeps its exit status."""
    stop = _stop(why="early_stop", committed=True)
    assert stop.exit_code(SUCCESS, "SIGTERM") == exit_codes.OK
    stop, _ = stop.supersede("diverged", Intent.STOP, Origin.TIMER, NOW + 30, why="diverged")
    assert stop.why == "diverged" and stop.exit_code(SUCCESS, "SIGTERM") == exit_codes.DIVERGED
    stop, _ = stop.supersede("fenced", Intent.STOP, Origin.REMOTE, NOW + 30, why="fenced")
    assert stop.why == "fenced" and stop.exit_code(SUCCESS, "SIGTERM") == exit_codes.FENCED
    stop, _ = stop.supersede("early", Intent.STOP, Origin.TIMER, NOW + 30, why="early_stop")
    assert stop.why == "fenced"


def test_another_node_s_stop_is_a_stop_with_its_final_committed_however_the_job_exits() -> None:
    """The ranks took another node's stop and committed its final save: no final request,
    no stop_signal; the job's exit (status 1: gloo aborting in the teardown) ends in exit 0."""
    taken = ev.StopRequested(
        "a stop on another node", Intent.STOP, Origin.GROUP, NOW, answered=True
    )
    stopping, effects = RULES.advance(lc.Running(T, launched=NOW - 60), taken)
    assert isinstance(stopping, lc.Stopping)
    assert stopping.stop.committed and stopping.stop.signal_at is None
    assert [type(e) for e in effects] == [fx.PauseTimer, fx.Announce]
    reaping, _ = RULES.advance(stopping, ev.JobExited(FAILURE))
    ending, _ = dataclasses.replace(RULES, remote=False).advance(reaping, INPUTS["reaped"])
    assert isinstance(ending, lc.Exited) and ending.code == 0
