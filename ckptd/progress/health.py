"""Is the job alive? Hang timeouts (fixed or learned), stack dumps before a kill, stragglers.

``hang_timeout = "auto"`` (the default) learns the budgets from the job's own step
reports (:mod:`ckptd.progress.hang_budget`) and only watches an attempt whose client has
reported; a number is a fixed budget counted from the launch or the last progress,
as before. Time inside a save never counts against the step budget. Owned by the
arbiter; :func:`dump_stacks` runs on the background worker.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from ckptd.config import JobConfig
from ckptd.process.trainer import Trainer
from ckptd.progress.hang_budget import HangBudget
from ckptd.run_dir import open_regular
from ckptd_client._stacks import STACKS_SIGNAL

_DUMP_WAIT = 1.0  # per process, at most, for faulthandler to finish writing
_DUMP_QUIET = 0.1  # the file has not grown for this long: that process is done
_LOG_BYTES = 64 * 1024
_REPORTS_PER_TIMEOUT = 5  # step reports within the shortest hang timeout that may apply
_REPORT_EVERY_MAX = 1.0  # `ckptd status` and the metrics show a step at most this old


@dataclass(frozen=True)
class Overdue:
    """A hang: which budget ran out, after how long, and what it was."""

    phase: str
    waited: float
    timeout: float


class HangWatch:
    def __init__(self, config: JobConfig, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.fixed = config.hang_timeout if isinstance(config.hang_timeout, float) else None
        self.budget = (
            HangBudget.load(run_dir, minimum=config.hang_min)
            if config.hang_timeout == "auto"
            else None
        )
        self.last_progress = time.monotonic()
        self._saving = False
        self._reported = False  # this attempt's client has reported (auto mode watches then)
        self._slow_reported = False

    @property
    def load_problem(self) -> str | None:
        return self.budget.load_problem if self.budget is not None else None

    def launched(self, now: float) -> None:
        self.last_progress = now
        self._saving = self._reported = self._slow_reported = False
        if self.budget is not None:
            self.budget.launched(now)

    def reported(self, now: float) -> None:
        """A client connected or said something: it is alive and speaks the protocol."""
        self._reported = True
        self.last_progress = now

    def stepped(self, now: float, steps: int = 1) -> None:
        """A new step was reported, ``steps`` past the previous report."""
        self.reported(now)
        if self.budget is not None:
            self.budget.stepped(now, steps)

    def save_started(self, now: float) -> None:
        self._saving = True
        self.last_progress = now
        if self.budget is not None:
            self.budget.save_started(now)

    def save_ended(self, now: float) -> None:
        self._saving = False
        self.last_progress = now
        if self.budget is not None:
            self.budget.save_ended(now)
            self._persist()

    def exited(self) -> None:
        self._saving = False
        if self.budget is not None:
            self.budget.exited()
            self._persist()

    def deadline(self) -> float | None:
        """When the running job counts as hung unless it reports before."""
        if self.fixed is not None:
            return None if self._saving else self.last_progress + self.fixed
        if self.budget is not None and self._reported:
            return self.budget.deadline()
        return None

    def overdue(self, now: float) -> Overdue | None:
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return None
        if self.fixed is not None:
            return Overdue("step", now - self.last_progress, self.fixed)
        assert self.budget is not None
        found = self.budget.overdue(now)
        if found is None:
            return None
        phase, waited, timeout = found
        return Overdue(phase.value, waited, timeout)

    def slow(self, now: float) -> tuple[float, float] | None:
        """``(typical step seconds, seconds slow)`` once per straggling episode, else None."""
        found = self.budget.slow(now) if self.budget is not None else None
        if found is None:
            self._slow_reported = False
            return None
        if self._slow_reported:
            return None
        self._slow_reported = True
        return found

    def budgets(self) -> dict[str, Any]:
        if self.budget is not None:
            return {"mode": "auto", **self.budget.current()}
        return {"mode": "fixed" if self.fixed is not None else "off", "step": self.fixed}

    def _persist(self) -> None:
        assert self.budget is not None
        try:
            self.budget.save(self.run_dir)
        except OSError:
            pass  # a full run directory: learned again next run


def report_interval(config: JobConfig) -> float:
    """Seconds between the client's step reports (``CKPTD_REPORT_EVERY``): each wakes the
    daemon, so as few as the hang watch needs (five within its shortest timeout), and at
    least one a second for ``ckptd status``."""
    if isinstance(config.hang_timeout, float):
        shortest: float | None = config.hang_timeout
    else:
        shortest = config.hang_min if config.hang_timeout == "auto" else None
    if shortest is None:
        return _REPORT_EVERY_MAX
    return min(_REPORT_EVERY_MAX, shortest / _REPORTS_PER_TIMEOUT)


def stacks_file(run_dir: Path, attempt: int) -> Path:
    """Where the job of ``attempt`` writes its stack dumps (``CKPTD_STACKS_FILE``)."""
    return run_dir / f"stacks-{attempt}.txt"


def dump_stacks(trainer: Trainer, path: Path) -> str:
    """Ask each process of the job that listens (faulthandler) for its threads' stacks.

    One process at a time, each under a header naming it, so the dumps do not interleave.
    Processes without the handler are left alone (the signal's default would kill them).
    Returns the dump's text (its last 64 KiB) for the log, or why there is none (a FIFO
    or a link at ``path``: no process is asked, the job is stopped all the same).
    """
    for process in trainer.alive_tree():
        if not _catches(process.pid, STACKS_SIGNAL):
            continue
        try:
            header = f"--- pid {process.pid}: {' '.join(process.cmdline())[:200]} ---\n"
        except psutil.Error:
            continue
        try:
            fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            return f"no stack dump: {exc}"
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(header)
            os.kill(process.pid, STACKS_SIGNAL)
        except OSError:
            continue
        _wait_quiet(path)
    try:
        with os.fdopen(open_regular(path), "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - _LOG_BYTES))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _catches(pid: int, signum: int) -> bool:
    """Whether ``pid`` has a handler for ``signum`` (the SigCgt mask in /proc)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _wait_quiet(path: Path) -> None:
    deadline = time.monotonic() + _DUMP_WAIT
    size, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        try:
            now_size = path.lstat().st_size
        except OSError:
            return
        if now_size != size:
            size, quiet_since = now_size, time.monotonic()
        elif time.monotonic() - quiet_since >= _DUMP_QUIET:
            return
        time.sleep(0.01)
