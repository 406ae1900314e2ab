"""Launching the job, noticing its end, restarting it, and taking over an orphaned one."""

from __future__ import annotations

import os
import random
import time

import psutil

from ckptd_client import protocol
from ckptd_client.manifest import remove_temporaries
from ckptd_client.store import Checkpoint, newest_valid, scan

from . import exit_codes, log
from .arbiter_state import ArbiterState
from .restart_policy import ExitStatus
from .run_dir import RunDirError
from .states import JobState
from .stopping import StopKind
from .trainer import LaunchError, Trainer

_ADOPT_WINDOW = 3.0  # how long an orphan's client gets to reconnect before it is signalled
_SYSTEMD_ONLY = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})  # not the job's


class Launcher(ArbiterState):
    """The arbiter's launching part (see ``arbiter_state``)."""

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
