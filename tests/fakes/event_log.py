"""Event logs of simulated jobs whose every second is known, for goodput and report tests."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any


class SimulatedJob:
    """Writes the events a daemon would log for a job with known step and save times.

    ``truth`` adds up, by construction, what each second was spent on, with the same
    definitions as ckptd.reporting.goodput (the first step after a launch counts as restarting).
    """

    def __init__(
        self,
        step: float = 0.5,
        save: float = 5.0,
        every: float = 600.0,
        startup: float = 20.0,
        backoff: float = 2.0,
        progress: float | None = 10.0,
        daemon_started_event: bool = True,
    ) -> None:
        self.step_time, self.save, self.every = step, save, every
        self.startup, self.backoff, self.progress = startup, backoff, progress
        self.daemon_started_event = daemon_started_event
        self.records: list[dict[str, Any]] = []
        self.truth: dict[str, float] = defaultdict(float)
        self.t = 0.0
        self.attempt = -1
        self.step: int | None = None
        self.committed: int | None = None
        self.pending = 0.0  # training since the last kept point
        self.counts = defaultdict(int)

    def emit(self, event: str, step: int | None = None, **fields: Any) -> None:
        record = {"time": self.t, "event": event, "job": "sim", "attempt": self.attempt}
        self.records.append({**record, "step": self.step if step is None else step, **fields})

    def daemon(self) -> None:
        self.counts["daemon_runs"] += 1
        self.attempt = 0
        self.step = self.committed
        if self.daemon_started_event:
            self.emit("ckptd.started", pid=1)
        self.attempt = -1
        self.t += 0.02
        self.truth["restarting"] += 0.02

    def launch(self) -> None:
        self.attempt += 1
        self.counts["attempts"] += 1
        self.step = self.committed
        self.emit("job.started", pid=100, resume_step=self.committed)
        self.t += self.startup / 2
        self.emit("client.connected", pid=100, rank=0)
        self.t += self.startup / 2 + self.step_time
        self.truth["restarting"] += self.startup + self.step_time
        self.step = (self.committed if self.committed is not None else -1) + 1
        self.emit("job.progress")
        self.last_progress = self.t
        self.timer = self.t - self.step_time - self.startup

    def train_until(self, until: float) -> None:
        """Train (with periodic saves) until the step that ends at or after ``until``."""
        while self.t < until:
            if self.t + self.step_time > until:
                return  # the next step would cross: the caller decides what happens then
            self.t += self.step_time
            self.pending += self.step_time
            self.step = (self.step or 0) + 1
            if self.progress is not None and self.t - self.last_progress >= self.progress:
                self.emit("job.progress")
                self.last_progress = self.t
            if self.t - self.timer >= self.every:
                self.emit("checkpoint.requested", request_id="r", reason="every")
                self.save_now()

    def train_fast(self, until: float) -> None:
        """:meth:`train_until` in jumps from one record to the next (for months of steps)."""
        while True:
            left = math.floor((until - self.t) / self.step_time + 1e-9)
            to_save = math.ceil((self.every - (self.t - self.timer)) / self.step_time - 1e-9)
            to_note = math.inf
            if self.progress is not None:
                since = self.t - self.last_progress
                to_note = math.ceil((self.progress - since) / self.step_time)
            steps = min(left, max(1, to_save), max(1, to_note))
            if steps <= 0:
                return
            self.t += steps * self.step_time
            self.pending += steps * self.step_time
            self.step = (self.step or 0) + steps
            if self.progress is not None and self.t - self.last_progress >= self.progress - 1e-6:
                self.emit("job.progress")
                self.last_progress = self.t
            if self.t - self.timer >= self.every - 1e-6:
                self.emit("checkpoint.requested", request_id="r", reason="every")
                self.save_now()

    def hang(self, waited: float) -> None:
        """The job stops reporting; ckptd finds it hung ``waited`` s later and restarts it."""
        self.t += waited
        self.truth["lost"] += self.pending + waited
        self.pending = 0.0
        self.counts["failures"] += 1
        self.emit("job.hung", phase="step", waited=waited, timeout=waited, seconds=waited)
        self.emit("job.stopping", reason="hang", kind="hang", grace=25)
        self.t += 1.0
        self.truth["lost"] += 1.0
        self.emit("job.exited", pid=100, status="killed by SIGKILL", exit_code=-9)
        self.t += 0.001
        self.truth["restarting"] += 0.001
        self.emit("job.restarting", delay=self.backoff, status="hung", restarts_left=9)
        self.t += self.backoff
        self.truth["idle"] += self.backoff
        self.launch()

    def save_now(self, final: bool = False) -> None:
        self.emit("checkpoint.started", request_id="r", request_ids=["r"], pid=100)
        self.t += self.save
        self.truth["saving"] += self.save
        self.truth["productive"] += self.pending
        self.pending = 0.0
        self.committed = self.step
        self.counts["checkpoints"] += 1
        self.emit("checkpoint.committed", step=self.step, seconds=self.save, reused=False)
        self.timer = self.t

    def crash(self, into_step: float) -> None:
        """The job dies ``into_step`` seconds into a step; ckptd restarts it after a backoff."""
        self.t += into_step
        self.truth["lost"] += self.pending + into_step
        self.pending = 0.0
        self.counts["failures"] += 1
        self.emit("job.exited", pid=100, status="exit status 1", exit_code=1)
        self.t += 0.001
        self.truth["restarting"] += 0.001
        self.emit("job.restarting", delay=self.backoff, status="exit status 1", restarts_left=9)
        self.t += self.backoff
        self.truth["idle"] += self.backoff
        self.launch()

    def stop(self, preempted: bool = False) -> None:
        """A requested stop (or a preemption notice): final save at the step's end, exit."""
        if preempted:
            self.counts["preemptions"] += 1
            self.emit("preemption.noticed", provider="gcp", kind="preempted", deadline=self.t + 30)
        self.emit("job.stopping", reason="SIGTERM", kind="stop", grace=25, request_id="f")
        self.t += self.step_time  # the step in progress ends
        self.pending += self.step_time
        self.step = (self.step or 0) + 1
        self.save_now(final=True)
        self.t += 0.05
        self.truth["restarting"] += 0.05
        self.emit("job.exited", pid=100, status="exit status 0", exit_code=0)
        self.emit("job.stopped", reason="SIGTERM", final_checkpoint=True, exit_code=0)
        self.t += 0.01
        self.truth["idle"] += 0.01
        self.emit("ckptd.exiting", exit_code=0)

    def machine_lost(self) -> None:
        """Daemon and job vanish without a record: what was trained since the last one is lost."""
        last = self.records[-1]["time"]
        self.truth["lost"] += self.pending - (self.t - last)  # the log ends at its last record
        self.counts["failures"] += 1
        self.pending = 0.0
        self.t = last

    def ratio(self) -> float:
        settled = sum(self.truth.values())
        return self.truth["productive"] / settled


def spot_schedule(job: SimulatedJob) -> SimulatedJob:
    """Two hours: crashes, a preemption with an offline gap, a machine lost, a final stop."""
    job.daemon()
    job.launch()
    job.train_until(1500.0)
    job.crash(0.2)
    job.train_until(3000.0)
    job.stop(preempted=True)
    job.t += 900.0  # a new VM comes up a quarter of an hour later
    job.daemon()
    job.launch()
    job.train_until(5000.0)
    job.crash(0.3)
    job.train_until(6000.0)
    if job.progress is not None:
        job.machine_lost()
        job.t += 300.0
        job.daemon()
        job.launch()
    job.train_until(7200.0)
    job.stop()
    return job


def busy_months(seed: int = 16) -> SimulatedJob:
    """A report at scale: about 35k events, 300 attempts and 6.8k checkpoints over 50 days.

    Steps of 1 s up to about 4.1 M, ``every = "auto"`` (``checkpoint.interval`` records)
    near 10 min; crashes, a few hangs and preemptions (each with a new daemon after an
    offline gap) every 3 to 4 hours. Deterministic for a given ``seed``.
    """
    rng = random.Random(seed)
    job = SimulatedJob(step=1.0, save=4.0, every=600.0, startup=30.0, backoff=2.0, progress=300.0)
    job.t = 1_700_000_000.0
    job.daemon()
    job.launch()
    job.emit("checkpoint.interval", every=600.0, optimum=600.0, save_cost=4.0, mtbf=12000.0)
    for attempt in range(299):
        job.train_fast(job.t + rng.uniform(2.3, 5.3) * 3600)
        if attempt % 40 == 39:
            job.stop(preempted=True)
            job.t += rng.uniform(300.0, 1800.0)  # a new VM
            job.daemon()
            job.launch()
        elif attempt % 25 == 24:
            job.hang(rng.uniform(60.0, 300.0))
        else:
            job.crash(rng.uniform(0.1, 0.9))
    job.train_fast(job.t + 3 * 3600)
    job.stop()
    return job
