"""A waited disk request answered by a RAM save: answered once that step is on disk.

The desk and the memory copy are driven in the arbiter's order with real checkpoint files;
the job channel, the event log and the control server's waiters are stand-ins, and the
background worker's jobs are run by the test when it wants them to have run.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ckptd.channel.checkpoint_desk import CheckpointDesk
from ckptd.channel.job_channel import Peer
from ckptd.channel.messages import Committed
from ckptd.config import load
from ckptd.requests import Action, Origin, Request
from ckptd.storage.memory import MemoryPlace
from ckptd.supervisor.background import Finished
from ckptd.supervisor.memory_copy import PERSISTED, MemoryCopy
from ckptd_client import manifest


class _Anything:
    """A stand-in whose every method accepts anything and succeeds."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def __getattr__(self, name: str) -> Callable[..., bool]:
        return lambda *args, **kwargs: True


class _Waiter:
    def __init__(self) -> None:
        self.got: tuple[Any, ...] | None = None

    def reply(self, result: Any) -> None:
        self.got = ("reply", result)

    def fail(self, code: str, message: str) -> None:
        self.got = ("fail", code, message)


class _Tier:
    def __init__(self, base: Path, every: float | None = 600.0) -> None:
        self.ram, self.disk = base / "ram", base / "ckpt"
        self.ram.mkdir()
        self.disk.mkdir()
        flags: dict[str, Any] = {
            "command": ["train"],
            "memory_every": 5.0,
            "checkpoint_dir": str(self.disk),
        }
        if every is not None:
            flags["every"] = every
        config = load(None, flags, base=base)
        self.jobs: list[tuple[str, Callable[[], Any]]] = []
        worker = _Anything(submit=lambda tag, call, *rest: self.jobs.append((tag, call)))
        events = _Anything(path=base / "events.jsonl")
        place = MemoryPlace(self.ram, "tmpfs", True)
        self.memory = MemoryCopy(config, events, worker, place)  # type: ignore[arg-type]
        self.desk = CheckpointDesk(config, _Anything(), events, _Anything())  # type: ignore[arg-type]
        self.desk.memory_dir = self.ram

    def checkpoint(self, root: Path, step: int) -> Path:
        temp = manifest.new_temp_dir(root, step)
        (temp / "model.pt").write_bytes(b"weights %d" % step)
        path, _ = manifest.commit(temp, step)
        return path

    def memory_save_joined_by_a_waiter(self, waiter: _Waiter) -> None:
        timer = Request(Action.CHECKPOINT, Origin.TIMER, "memory_every")
        self.desk.request(timer, None, None, tier="memory")
        assert self.desk.outstanding is not None
        self.desk.outstanding.delivered = True  # the job has it: a disk request joins it
        asked = Request(Action.CHECKPOINT, Origin.CONTROL, "ckptd checkpoint")
        self.desk.request(asked, None, waiter, tier="disk")  # type: ignore[arg-type]

    def committed(self, ids: list[str], step: int, path: Path) -> None:
        """The arbiter's handling of a ``committed`` message."""
        message = Committed(step, tuple(ids), str(path), None, 10, 0.01, False)
        ack = self.desk.on_committed(Peer(b"rank0", 1, 0), message)
        self.memory.committed(message, persist_now=ack.persist, final=ack.final)
        if ack.held is not None:
            self.memory.await_disk(step, *ack.held)

    def run_persistence(self) -> None:
        for tag, call in [job for job in self.jobs if job[0] == PERSISTED]:
            self.jobs.remove((tag, call))
            self.memory.on_persisted(Finished(tag, call(), None))


def test_the_waiter_is_answered_with_the_disk_copy_once_persisted(tmp_path: Path) -> None:
    tier, waiter = _Tier(tmp_path), _Waiter()
    tier.memory_save_joined_by_a_waiter(waiter)
    assert tier.desk.outstanding is not None
    ram_copy = tier.checkpoint(tier.ram, 40)
    tier.committed([tier.desk.outstanding.id], 40, ram_copy)
    assert waiter.got is None  # in RAM only: not yet
    tier.run_persistence()
    assert waiter.got is not None and waiter.got[0] == "reply"
    answer = waiter.got[1]
    assert answer["tier"] == "disk" and answer["step"] == 40
    assert Path(answer["path"]) == tier.disk / "step-00000040"
    assert Path(answer["memory_path"]) == ram_copy


def test_after_a_rollback_the_waiter_waits_for_its_own_step(tmp_path: Path) -> None:
    """A step persisted before a rollback (then set aside) never answers a waiter of the
    relaunched job: the disk is looked at again at each launch."""
    tier, waiter = _Tier(tmp_path), _Waiter()
    tier.checkpoint(tier.ram, 500)
    tier.memory.persist()
    tier.run_persistence()
    assert tier.memory.persisted_step == 500
    # `ckptd rollback 300`: the disk's step 500 set aside, its RAM copy dropped
    (tier.disk / "step-00000500").rename(tmp_path / "set-aside")
    shutil.rmtree(tier.ram / "step-00000500")
    tier.checkpoint(tier.disk, 300)
    tier.memory.launched(time.monotonic(), tier.disk / "step-00000300")
    assert tier.memory.persisted_step == 300
    tier.memory_save_joined_by_a_waiter(waiter)
    assert tier.desk.outstanding is not None
    tier.committed([tier.desk.outstanding.id], 350, tier.checkpoint(tier.ram, 350))
    assert waiter.got is None
    tier.run_persistence()
    assert waiter.got is not None and waiter.got[1]["step"] == 350


def test_a_stop_that_takes_over_a_disk_request_answers_it_once_on_disk(tmp_path: Path) -> None:
    """The final save of a stop goes to RAM; the waiter of the disk request it took over
    is answered when that final is on disk, not at its RAM commit."""
    tier, waiter = _Tier(tmp_path, every=None), _Waiter()
    asked = Request(Action.CHECKPOINT, Origin.CONTROL, "ckptd checkpoint")
    tier.desk.request(asked, None, waiter, tier="disk")  # type: ignore[arg-type]
    tier.desk.request_final("final-1", "stop", Origin.SIGNAL, time.time() + 60, True, "memory")
    tier.committed(["final-1"], 700, tier.checkpoint(tier.ram, 700))
    # no copy outside the stop's deadline (RAM is pruned, as ever)
    assert waiter.got is None and [tag for tag, _ in tier.jobs] == ["memory_pruned"]
    tier.memory.persist_final(time.monotonic() + 60)  # the Ending's, bounded
    (tag, call), = tier.jobs[1:]
    assert tier.memory.on_final_persisted(Finished(tag, call(), None))[1]
    assert waiter.got is not None and waiter.got[1]["path"] == str(tier.disk / "step-00000700")


def test_at_exit_a_waiter_whose_step_reached_the_disk_is_answered(tmp_path: Path) -> None:
    """The loop ended before a finished persistence was handled: the exit looks at the disk
    before telling anyone the checkpoint is not there."""
    tier, waiter = _Tier(tmp_path), _Waiter()
    tier.memory_save_joined_by_a_waiter(waiter)
    assert tier.desk.outstanding is not None
    tier.committed([tier.desk.outstanding.id], 800, tier.checkpoint(tier.ram, 800))
    for _, call in tier.jobs:  # the worker ran it; its Finished was never handled
        call()
    tier.memory.close()
    assert waiter.got is not None and waiter.got[0] == "reply"
    assert waiter.got[1]["step"] == 800


def test_a_failed_persistence_fails_the_waiter(tmp_path: Path) -> None:
    tier, waiter = _Tier(tmp_path), _Waiter()
    tier.memory_save_joined_by_a_waiter(waiter)
    assert tier.desk.outstanding is not None
    tier.committed([tier.desk.outstanding.id], 9, tier.checkpoint(tier.ram, 9))
    tier.disk.rmdir()
    tier.disk.write_text("not a directory")
    tier.run_persistence()
    assert waiter.got is not None and waiter.got[:2] == ("fail", "checkpoint_failed")
    assert "persisting" in waiter.got[2]
