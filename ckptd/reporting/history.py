"""A job's history read back from ``events.jsonl``: daemon runs, attempts, saves, step samples.

The event log is appended to by every daemon that ever ran on the run directory, so
it holds several daemon runs one after the other. A run starts with ``ckptd.started``
(or, in logs written before that event existed, where the attempt counter starts
over); it ends with ``ckptd.exiting``, or just stops when the daemon was killed. An
attempt is one launch of the job: ``job.started`` (or ``job.adopted``) to
``job.exited``. Nothing here reads the clock: callers pass ``now`` for a live job.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptd import strict_json
from ckptd.run_dir import open_regular

__all__ = ["Attempt", "History", "Run", "Save", "read_events"]

Record = dict[str, Any]

# Events whose ``step`` is the step the job had reported when they happened (other events,
# such as checkpoint.committed or checkpoint.pruned, carry the step of a checkpoint).
_STEP_SAMPLES = frozenset(
    {
        "job.progress",
        "job.slow",
        "checkpoint.requested",
        "checkpoint.started",
        "job.exited",
        "job.stopping",
        "job.hung",
        "job.terminating",
        "preemption.noticed",
    }
)
_LAUNCH_PREPARATION = frozenset({"checkpoint.temporary_removed", "checkpoint.invalid"})

_LAST_TIME = 253402300799.0  # 9999-12-31 23:59:59 UTC: the last second a clock can show
_COUNTS = ("attempt", "step", "resume_step", "training_step")  # None or an integer
_DURATIONS = ("seconds", "stall", "delay")  # None or seconds, at most _LONGEST
_LONGEST = 1e9  # about 31 years
_LARGEST_COUNT = 2**53  # what a float (a page's coordinate) holds exactly


def read_events(path: Path) -> list[Record]:
    """The records of an ``events.jsonl``; a line that is not one is skipped, never fatal.

    Skipped: a torn or foreign line, one that is not strict JSON (``NaN``, ``Infinity``,
    ``1e400``), and one whose fields the history is built from are out of their range:
    ``event`` a string, ``time`` a number between 1970 and the year 9999, ``attempt``,
    ``step``, ``resume_step`` and ``training_step`` null or integers below 2**53, and
    ``seconds``, ``stall`` and ``delay`` null or 0 to 1e9 seconds. Raises ``OSError``
    (:class:`~ckptd.run_dir.NotRegularFile` for a FIFO or a link) when it cannot be read.
    """
    fd = open_regular(path)
    with os.fdopen(fd, encoding="utf-8", errors="replace") as handle:
        records = []
        for line in handle:
            try:
                record = strict_json.loads(line)
            except (ValueError, RecursionError):
                continue
            if _is_record(record):
                records.append(record)
    return records


def _is_record(record: Any) -> bool:
    if not isinstance(record, dict) or not isinstance(record.get("event"), str):
        return False
    when: Any = record.get("time")
    if not _number(when) or not 0 <= when <= _LAST_TIME:
        return False
    for key in _COUNTS:
        value = record.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or abs(value) > _LARGEST_COUNT
        ):
            return False
    for key in _DURATIONS:
        value = record.get(key)
        if value is not None and (not _number(value) or not 0 <= value <= _LONGEST):
            return False
    return True


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Save:
    """One save the job started: its stall is the time training waited for it."""

    started: float
    ended: float | None  # commit or failure; None when the job ended first
    step: int | None
    committed: bool
    stall: float  # seconds training was blocked (0 for a background save without a report)
    seconds: float | None  # the save's own duration as the client measured it
    final: bool  # it answered the final request of a stop
    background: bool = False  # announced with its snapshot's stall: training went on
    tier: str = "disk"  # "memory": committed in RAM, persisted to disk by ckptd afterwards


@dataclass
class Attempt:
    """One launch of the job, from ``job.started`` to ``job.exited`` (or the end of the log)."""

    index: int
    launched: float
    resume_step: int | None
    adopted: bool = False
    exited: float | None = None
    exit_step: int | None = None
    end: float = 0.0  # exit, or the last record while it ran
    records: list[Record] = field(default_factory=list)
    after: list[Record] = field(default_factory=list)  # up to the next launch
    saves: list[Save] = field(default_factory=list)
    samples: list[tuple[float, int]] = field(default_factory=list)  # (time, reported step)
    progress_events: bool = False
    connected: float | None = None
    hung: bool = False
    stopping: bool = False  # a job.stopping was seen: a save after it answers the stop
    stopped_on_request: bool = False  # a stop or restart was asked for, not a failure
    finished_ok: bool = False  # the job completed on its own (exit 0): its result is kept
    live: bool = False  # still running at the end of the log

    @property
    def ended_by_failure(self) -> bool:
        return self.hung or (not self.finished_ok and not self.stopped_on_request)

    def restarting_at(self) -> tuple[float, float] | None:
        """Time of the ``job.restarting`` after this attempt and its backoff delay."""
        for record in self.after:
            if record["event"] == "job.restarting":
                delay = record.get("delay")
                return record["time"], float(delay) if isinstance(delay, (int, float)) else 0.0
        return None


@dataclass
class Run:
    """One daemon's stretch of the log."""

    start: float
    end: float
    records: list[Record]
    exited_cleanly: bool
    attempts: list[Attempt] = field(default_factory=list)
    adopts_previous: bool = False  # it took over a job the previous daemon left running


@dataclass
class History:
    runs: list[Run]
    attempts: list[Attempt]
    preemptions: int

    @classmethod
    def from_records(cls, records: Iterable[Record], now: float | None = None) -> History:
        """Split the records into runs and attempts; ``now`` marks the last run as live."""
        runs = [_build_run(part) for part in _split_runs(list(records))]
        attempts: list[Attempt] = []
        for number, run in enumerate(runs):
            first = run.attempts[0] if run.attempts else None
            previous = attempts[-1] if attempts else None
            if (
                first is not None
                and first.adopted
                and previous is not None
                and previous.exited is None
                and number > 0
            ):
                _merge_adopted(previous, first)  # one job process, seen by two daemons
                run.attempts[0] = previous
                run.adopts_previous = True
                attempts.extend(run.attempts[1:])
            else:
                attempts.extend(run.attempts)
        for index, attempt in enumerate(attempts):
            attempt.index = index
        if runs and now is not None and not runs[-1].exited_cleanly:
            runs[-1].end = max(runs[-1].end, now)
            last = runs[-1].attempts[-1] if runs[-1].attempts else None
            if last is not None and last.exited is None:
                last.live = True
                last.end = runs[-1].end
        preemptions = sum(
            1 for run in runs if any(r["event"] == "preemption.noticed" for r in run.records)
        )
        return cls(runs, attempts, preemptions)

    @property
    def failures(self) -> int:
        """Attempts that ended in a crash, a hang or the loss of the daemon (not stops)."""
        return sum(1 for a in self.attempts if not a.live and a.ended_by_failure)


def _split_runs(records: list[Record]) -> list[list[Record]]:
    runs: list[list[Record]] = []
    current: list[Record] = []
    top_attempt = -1
    launched = -1
    for record in records:
        event = record["event"]
        attempt = record.get("attempt")
        attempt = attempt if isinstance(attempt, int) else None
        starts_job = event in ("job.started", "job.adopted")
        boundary = bool(current) and (
            current[-1]["event"] == "ckptd.exiting"
            or event == "ckptd.started"
            or (attempt is not None and attempt < top_attempt)
            or (starts_job and attempt is not None and attempt <= launched)
        )
        if boundary:
            carried: list[Record] = []
            while starts_job and current and current[-1]["event"] in _LAUNCH_PREPARATION:
                carried.insert(0, current.pop())
            runs.append(current)
            current, top_attempt, launched = carried, -1, -1
        current.append(record)
        if attempt is not None:
            top_attempt = max(top_attempt, attempt)
            if starts_job:
                launched = attempt
    if current:
        runs.append(current)
    return [run for run in runs if run]


def _build_run(records: list[Record]) -> Run:
    run = Run(
        records[0]["time"],
        records[-1]["time"],
        records,
        exited_cleanly=records[-1]["event"] == "ckptd.exiting",
    )
    attempt: Attempt | None = None
    for record in records:
        event, now = record["event"], record["time"]
        if event in ("job.started", "job.adopted"):
            resume = record.get("resume_step")
            attempt = Attempt(
                0, now, resume if isinstance(resume, int) else None, adopted=event == "job.adopted"
            )
            run.attempts.append(attempt)
            _sample(attempt, now, attempt.resume_step)
        elif attempt is None:
            continue
        elif attempt.exited is None:
            _add_record(attempt, record)
        else:
            attempt.after.append(record)
            if event == "job.finished" and record.get("exit_code") == 0:
                attempt.finished_ok = True
    for attempt in run.attempts:
        if attempt.exited is None:
            attempt.end = run.end
            _close_open_save(attempt)
    return run


def _add_record(attempt: Attempt, record: Record) -> None:
    event, now, step = record["event"], record["time"], record.get("step")
    attempt.records.append(record)
    if event in _STEP_SAMPLES:
        _sample(attempt, now, step)
    attempt.progress_events = attempt.progress_events or event == "job.progress"
    if event == "client.connected" and attempt.connected is None:
        attempt.connected = now
    elif event == "job.hung":
        attempt.hung = True
    elif event == "job.stopping":
        attempt.stopping = True
        if record.get("kind") in ("stop", "restart"):
            attempt.stopped_on_request = True
        attempt.hung = attempt.hung or record.get("kind") == "hang"
    elif event == "checkpoint.started":
        if not attempt.saves or attempt.saves[-1].ended is not None:  # other ranks: same save
            snapshot = record.get("stall")  # only a background save reports one
            if isinstance(snapshot, (int, float)):
                save = Save(now, None, step, False, float(snapshot), None, False, background=True)
            else:
                save = Save(now, None, step, False, 0.0, None, False)
            attempt.saves.append(save)
    elif event in ("checkpoint.committed", "checkpoint.failed"):
        _end_save(attempt, record)
    elif event == "job.exited":
        attempt.exited = attempt.end = now
        attempt.exit_step = step if isinstance(step, int) else None
        _close_open_save(attempt)


def _end_save(attempt: Attempt, record: Record) -> None:
    now, step = record["time"], record.get("step")
    committed = record["event"] == "checkpoint.committed"
    open_save = attempt.saves[-1] if attempt.saves and attempt.saves[-1].ended is None else None
    if committed and record.get("reused") and open_save is None:
        return  # answered by an existing checkpoint: nothing was saved or waited for
    seconds = record.get("seconds")
    seconds = float(seconds) if isinstance(seconds, (int, float)) else None
    training = record.get("training_step")
    if isinstance(training, int):
        _sample(attempt, now, training)
    started = open_save.started if open_save else now - (seconds or 0.0)
    stall = record.get("stall")
    background = open_save.background if open_save is not None else False
    if isinstance(stall, (int, float)):
        stall = float(stall)
    elif open_save is not None and open_save.background:
        stall = open_save.stall  # training went on while it was written, after its snapshot
    elif _trained_during(attempt, started, now, step):
        stall = 0.0  # a background save that did not say what it stalled
    else:
        stall = now - started
    final = attempt.stopping
    save = Save(
        started,
        now,
        step if isinstance(step, int) else None,
        committed,
        stall,
        seconds,
        final,
        background,
        "memory" if record.get("tier") == "memory" else "disk",
    )
    if open_save is not None:
        attempt.saves[-1] = save
    else:
        attempt.saves.append(save)


def _trained_during(attempt: Attempt, start: float, end: float, step: Any) -> bool:
    if not isinstance(step, int):
        return False
    for t, s in reversed(attempt.samples):  # in log order: only the save's own are read
        if t <= start:
            return False
        if t <= end and s > step:
            return True
    return False


def _close_open_save(attempt: Attempt) -> None:
    """A save still open when the job ended: it never finished (nothing was kept by it)."""
    if attempt.saves and attempt.saves[-1].ended is None and attempt.exited is not None:
        save = attempt.saves[-1]
        attempt.saves[-1] = Save(save.started, None, save.step, False, 0.0, None, save.final)


def _sample(attempt: Attempt, now: float, step: Any) -> None:
    if isinstance(step, int):
        attempt.samples.append((now, step))


def _merge_adopted(previous: Attempt, adopted: Attempt) -> None:
    for record in adopted.records:
        _add_record(previous, record)
    previous.after.extend(adopted.after)
    previous.finished_ok = previous.finished_ok or adopted.finished_ok
    previous.end = adopted.end
    if previous.exited is None:
        previous.exited = adopted.exited
