"""The memory tier, for the arbiter: when the job saves to RAM, and the copies ckptd makes of it.

Owned by the arbiter and called only from its thread. It keeps the ``memory_every`` timer
(with ``"auto"``, Young/Daly from the measured RAM save stall), chooses the tier of each of
its requests (RAM, or disk with ``checkpoint.tier_fallback`` when RAM is short or the last RAM
save failed), and has the background worker persist the newest RAM checkpoint to
``checkpoint_dir`` (after each RAM commit without ``every``, else each ``every``) and prune
RAM to ``memory_keep``. At most one persistence is queued; a commit during one asks for
another. At exit, what RAM holds newer than the disk is persisted, then RAM is cleared.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckptd.channel.messages import Committed, Failed, Started
from ckptd.config import JobConfig
from ckptd.control.server import Waiter
from ckptd.events import EventLog
from ckptd.progress.memory_interval import MemoryInterval
from ckptd.sources.timer import PeriodicTimer
from ckptd.storage.job_identity import multi_node
from ckptd.storage.memory import MemoryPlace, clear, find_place, prune
from ckptd.storage.persist import Persisted, Pickup, persist_newest
from ckptd.supervisor.background import Background, Finished
from ckptd_client.ram import room_for
from ckptd_client.store import scan

PERSISTED = "memory_persisted"  # Background tags whose Finished values come back here
PRUNED = "memory_pruned"
FINAL = "memory_final"  # the final checkpoint of a stop, persisted in the Ending


@dataclass
class _Awaiting:
    """Waiters of a disk request that a RAM commit of ``step`` answered: answered when on disk."""

    step: int
    waiters: list[Waiter]
    answer: dict[str, Any]


@dataclass
class _Newest:
    step: int
    path: str
    bytes: int
    time: float


class MemoryCopy:
    def __init__(
        self,
        config: JobConfig,
        events: EventLog,
        background: Background,
        place: MemoryPlace | None = None,
    ) -> None:
        """Raises MemoryPlaceError when the memory tier has nowhere to live (exit 2)."""
        self.config = config
        self.place = place or find_place(config.name, config.checkpoint_dir, config.memory_dir)
        self.events = events
        self.background = background
        auto = config.memory_every == "auto"
        self.auto = MemoryInterval(config, events.path) if auto else None
        fixed = config.memory_every if isinstance(config.memory_every, float) else None
        self.timer = PeriodicTimer(self.auto.every if self.auto else fixed)
        self.each_commit = config.every is None  # no disk interval: persist every RAM save
        # A node of several persists every RAM step newer than its disk before a relaunch:
        # the other nodes may lack its newest, and the ranks resume from a step all have.
        self.every_newer = multi_node(config.job_id, config.command)
        self.mode = int(config.checkpoint_mode, 8) if config.checkpoint_mode else None
        self.newest: _Newest | None = None
        self._on_disk: tuple[int, str] | None = None  # the newest step known on disk, its path
        self._awaiting: list[_Awaiting] = []
        self.resumed: Path | None = None  # a RAM resume point: never pruned while in use
        self.persisting = False
        self._again = False
        self._saving_tier: str | None = None
        self._stall: float | None = None  # the snapshot of the background save under way
        self._failed_save: str | None = None
        self.fallbacks = 0
        self.disk_seconds: float | None = None  # the last save to disk (or copy): a final's cost
        self.deadline: float | None = None  # a stop's: no copy to disk goes on past it

    @property
    def path(self) -> Path:
        return self.place.path

    @property
    def persisted_step(self) -> int | None:
        return self._on_disk[0] if self._on_disk is not None else None

    def place_fields(self) -> dict[str, Any]:
        """The ``memory.ready`` event: where the tier lives and whether that is RAM."""
        return {
            "dir": str(self.path),
            "filesystem": self.place.filesystem,
            "in_ram": self.place.in_ram,
            "explicit": self.place.explicit,
            "every": self.timer.every,
            "keep": self.config.memory_keep,
        }

    # -- clocks ----------------------------------------------------------------------------

    def launched(self, now: float, resume: Path | None) -> None:
        self.timer.reset(now)
        self.resumed = resume if resume is not None and resume.parent == self.path else None
        self._saving_tier = None
        self.rescan_disk()  # a rollback or a set-aside may have taken the newest away

    def rescan_disk(self) -> None:
        """What the disk holds now, for the status and the waiters (never the max of what
        it once held: steps go aside)."""
        try:
            valid = [c for c in scan(self.config.checkpoint_dir) if c.valid]
        except OSError as exc:  # what was known stands; the next persistence tells more
            self.events.emit("memory.disk_unreadable", level="warning", error=str(exc))
            return
        self._on_disk = (valid[-1].step, str(valid[-1].path)) if valid else None
        self._answer_awaiting()

    def exited(self) -> None:
        self.timer.pause()
        if self.auto is not None:
            self.auto.failed()

    def next_due(self) -> float | None:
        return self.timer.next_due()

    def due(self, now: float) -> bool:
        """The memory timer is due: it restarts, and the arbiter asks for a RAM save."""
        if not self.timer.is_due(now):
            return False
        self.timer.reset(now)
        return True

    def tier(self) -> str:
        """The tier of the next memory-timer request: ``memory``, or ``disk`` with an event.

        The ranks of several nodes check their own node's RAM again (a round may be another
        node's), and save to disk when the nodes share ``checkpoint_dir``.
        """
        why = None
        if self._failed_save is not None:
            why = f"the last memory save failed: {self._failed_save}"
            self._failed_save = None  # RAM is tried again after this one
        elif self.newest is not None:
            why = room_for(self.path, self.newest.bytes)
        if why is None:
            return "memory"
        self._fallback(why)
        return "disk"

    # -- the job's messages ----------------------------------------------------------------

    def started(self, message: Started) -> None:
        self._saving_tier = message.tier
        self._stall = message.stall
        if message.fallback is not None:
            request_id = message.ids[0] if message.ids else None
            self._fallback(message.fallback, request_id=request_id, step=message.step)

    def failed(self, message: Failed) -> None:
        if self._saving_tier == "memory":
            self._failed_save = message.error
        self._saving_tier = None

    def committed(self, message: Committed, *, persist_now: bool, final: bool = False) -> bool:
        """A commit was acknowledged; True when it is in RAM (then it is no disk commit).

        A RAM commit is persisted at once without ``every`` or when a disk request joined it
        (``persist_now``), except a stop's ``final`` (the Ending's, bounded by the stop's
        deadline), and RAM is pruned to ``memory_keep``.
        """
        self._saving_tier = None
        path, step = message.path, message.step
        if path is None or step is None or Path(path).parent != self.path:
            if path is not None and step is not None:
                self._note_on_disk(step, path)
                if message.seconds is not None and not message.reused:
                    self.disk_seconds = message.seconds
            return False
        if message.reused:
            if persist_now:
                self.persist()
            return True
        self.newest = _Newest(step, path, message.bytes or 0, time.time())
        if self.auto is not None and message.seconds is not None:
            # A RAM save stalls training for all of it, or a background one for its snapshot.
            stall = self._stall if self._stall is not None else message.seconds
            choice = self.auto.saved(stall, message.seconds)
            if choice is not None:
                self.timer.retime(self.auto.every, time.monotonic())
                self.events.emit("memory.interval", **choice.to_json())
        if (self.each_commit or persist_now) and not final:
            self.persist()
        place, keep, protect = self.path, self.config.memory_keep, self._protected()
        self.background.submit(PRUNED, lambda: prune(place, keep, protect))
        return True

    # -- persistence -----------------------------------------------------------------------

    def persist(self) -> None:
        """Copy the newest RAM checkpoint newer than the disk's to ``checkpoint_dir`` (worker)."""
        if self.persisting:
            self._again = True
            return
        self.persisting, self._again = True, False
        place, disk, mode = self.path, self.config.checkpoint_dir, self.mode
        self.background.submit(PERSISTED, lambda: persist_newest(place, disk, mode))

    def on_persisted(self, finished: Finished) -> Persisted | None:
        """A persistence ended; return the new disk checkpoint (to prune, upload), if any."""
        self.persisting = False
        if finished.error is not None:
            pickup = Pickup(error=f"{type(finished.error).__name__}: {finished.error}")
        else:
            pickup = finished.result
        persisted = self.report(pickup, why="background")
        if self._again:
            self.persist()
        return persisted

    def on_pruned(self, finished: Finished) -> None:
        if finished.error is not None:
            self.events.emit("checkpoint.prune_failed", level="warning", error=str(finished.error))
            return
        for gone in finished.result:
            self.events.emit("checkpoint.pruned", path=str(gone), tier="memory")

    def report(self, pickup: Pickup, *, why: str) -> Persisted | None:
        """Events for a persistence (``why``: background, before the launch, at exit)."""
        for bad in pickup.skipped:
            self.events.emit(
                "checkpoint.invalid", level="warning", path=str(bad.path), step=bad.step,
                why=bad.why, moved_to=None, tier="memory",
            )  # fmt: skip
            self._fail_awaiting(f"the RAM checkpoint did not verify: {bad.why}", step=bad.step)
        if pickup.error is not None:
            self.events.emit("checkpoint.persist_failed", level="error", error=pickup.error)
            self._fail_awaiting(f"persisting the RAM checkpoint to disk failed: {pickup.error}")
        for older in pickup.older:
            self._persisted(older, why)
        done = pickup.persisted
        if done is None or not done.copied:
            if done is not None:
                self._note_on_disk(done.step, str(done.path))
            return None
        self.disk_seconds = done.seconds if self.disk_seconds is None else self.disk_seconds
        self._persisted(done, why)
        return done

    def _persisted(self, done: Persisted, why: str) -> None:
        self._note_on_disk(done.step, str(done.path))
        if done.copied:
            self.events.emit(
                "checkpoint.persisted", step=done.step, path=str(done.path),
                source=str(done.source), bytes=done.bytes, seconds=round(done.seconds, 6),
                tier="disk", why=why,
            )  # fmt: skip

    def persist_blocking(self, deadline: float | None = None) -> Pickup:
        """The newest RAM checkpoint newer than the disk's (a node of several: every one),
        persisted now; safe on the worker (it reads only what is fixed at start)."""
        disk = self.config.checkpoint_dir
        return persist_newest(self.path, disk, self.mode, deadline, every_newer=self.every_newer)

    def persist_final(self, deadline: float) -> None:
        """The job of a stop is gone: persist its final RAM checkpoint on the worker (FINAL),
        given up at ``deadline`` (monotonic; the RAM copy is then kept for the next run)."""
        step = self.newest.step if self.newest is not None else None
        self.deadline = deadline
        self.background.submit(FINAL, lambda: self._persist_final(step, deadline))

    def on_final_persisted(self, finished: Finished) -> tuple[Persisted | None, bool]:
        """The final's persistence ended: the new disk checkpoint, and whether the disk now
        holds the final step (copied now or earlier)."""
        if finished.error is not None:
            pickup = Pickup(error=f"{type(finished.error).__name__}: {finished.error}")
            on_disk = False
        else:
            pickup, on_disk = finished.result
        return self.report(pickup, why="the final save"), pickup.error is None and on_disk

    def close(self) -> None:
        """At exit, the job gone: persist what RAM holds newer than the disk, then clear RAM.

        RAM is kept (with a warning) when that persistence failed: the next run picks it up.
        """
        try:
            pickup = self.persist_blocking(self.deadline)
            self.report(pickup, why="at exit")
            if self._awaiting:
                self.rescan_disk()
        finally:
            self._fail_awaiting("ckptd is exiting and the RAM checkpoint is not on disk")
        if pickup.error is not None:
            self.events.emit(
                "memory.kept", level="warning", dir=str(self.path), why=pickup.error
            )  # fmt: skip
            return
        clear(self.place)
        self.events.emit("memory.cleared", dir=str(self.path))

    def status(self) -> dict[str, Any]:
        newest = self.newest
        backlog = None
        if newest is not None:
            backlog = newest.step - self.persisted_step if self.persisted_step is not None else 1
        return {
            **self.place_fields(),
            "newest": None
            if newest is None
            else {
                "step": newest.step,
                "path": newest.path,
                "bytes": newest.bytes,
                "age": round(time.time() - newest.time, 3),
            },
            "persisted_step": self.persisted_step,
            "backlog_steps": max(0, backlog) if backlog is not None else None,
            "persisting": self.persisting,
            "fallbacks": self.fallbacks,
            "next_in": None
            if self.timer.next_due() is None
            else round(max(0.0, (self.timer.next_due() or 0.0) - time.monotonic()), 3),
        }

    def _persist_final(self, step: int | None, deadline: float) -> tuple[Pickup, bool]:
        """On the worker: the final persisted; whether the disk now holds ``step``."""
        pickup = self.persist_blocking(deadline)
        steps = [c.step for c in scan(self.config.checkpoint_dir) if c.valid]
        return pickup, step is None or (bool(steps) and max(steps) >= step)

    def await_disk(self, step: int, waiters: list[Waiter], answer: dict[str, Any]) -> None:
        """Answer ``waiters`` (of a disk request a RAM commit of ``step`` answered) once a
        checkpoint of ``step`` or newer is on disk, with that checkpoint's path and step."""
        self._awaiting.append(_Awaiting(step, waiters, answer))
        self._answer_awaiting()

    def _note_on_disk(self, step: int, path: str) -> None:
        if self._on_disk is None or step >= self._on_disk[0]:
            self._on_disk = (step, path)
        self._answer_awaiting()

    def _answer_awaiting(self) -> None:
        if self._on_disk is None:
            return
        step, path = self._on_disk
        still = []
        for awaiting in self._awaiting:
            if awaiting.step > step:
                still.append(awaiting)
                continue
            answer = {**awaiting.answer, "path": path, "step": step, "tier": "disk"}
            answer["memory_path"] = awaiting.answer.get("path")
            if step != awaiting.step:  # a newer step was persisted in its place
                answer.update(metrics=None, bytes=None, seconds=None)
            for waiter in awaiting.waiters:
                waiter.reply(answer)
        self._awaiting = still

    def _fail_awaiting(self, why: str, step: int | None = None) -> None:
        """Fail the waiters for a disk copy of ``step`` (None: of every step)."""
        still = []
        for awaiting in self._awaiting:
            if step is not None and awaiting.step != step:
                still.append(awaiting)
                continue
            for waiter in awaiting.waiters:
                waiter.fail("checkpoint_failed", why)
        self._awaiting = still

    def _protected(self) -> list[Path]:
        return [self.resumed] if self.resumed is not None else []

    def _fallback(self, why: str, request_id: str | None = None, step: Any = None) -> None:
        self.fallbacks += 1
        self.events.emit(
            "checkpoint.tier_fallback", level="warning", request_id=request_id, step=step,
            why=why, tier="disk",
        )  # fmt: skip
