"""The rank-group half of the client: the agreed step and the one shared directory per save.

Mixed into :class:`~ckptd_client._client.Client`; these methods run only when the
process is a rank of a torchrun group (``_rounds`` is set), see ``_group``.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import manifest
from ._group import Outcome, Rounds

if TYPE_CHECKING:
    from ._client import Channel


class GroupSaves:
    """Saves of a rank group; the attributes are the client's own (see ``Client.__init__``)."""

    checkpoint_dir: Path
    lineage: manifest.Lineage
    _channel: Channel
    _lock: threading.Lock
    _rounds: Rounds | None
    _step: int | None
    _stop_ready: bool
    _last_commit: dict[str, Any] | None
    _async_error: BaseException | None
    _in_flight: threading.Thread | None
    _final_in_flight: bool

    @property
    def in_group(self) -> bool:
        """This process is one rank of a torchrun group (``WORLD_SIZE`` > 1) under ckptd."""
        return self._rounds is not None

    def shared_directory(self, step: int) -> Path:
        """The directory every rank of the group gets from ``checkpoint(step)``, created now.

        For helpers that must start writing before ``checkpoint_async`` (DCP's
        ``async_save`` plans on the calling thread); outside a group there is none.
        """
        if self._rounds is None:
            raise RuntimeError("ckptd_client: shared_directory() needs torchrun's WORLD_SIZE > 1")
        return self._rounds.group.shared_dir(self.checkpoint_dir, step)

    def _round_due(self) -> bool:
        assert self._rounds is not None
        save, stop = self._rounds.due(self._step)
        if stop:
            self._stop_ready = True
        return save

    @contextmanager
    def _group_checkpoint(
        self, rounds: Rounds, step: int, metrics: dict[str, Any]
    ) -> Iterator[Path]:
        ids, _ = rounds.claim(step)
        shared = self._shared_dir(rounds, ids, step)
        self._channel.send("started", ids=ids, step=step)
        began = time.monotonic()
        try:
            yield shared
        except BaseException as exc:  # the others may still write: they remove the directory
            self._group_failed(rounds, ids, step, f"{type(exc).__name__}: {exc}", report=True)
            raise
        self._finish_group_save(rounds, step, metrics, ids, shared, began)

    def _group_checkpoint_async(
        self,
        rounds: Rounds,
        step: int,
        write: Callable[[Path], None],
        metrics: dict[str, Any],
    ) -> None:
        ids, final = rounds.claim(step)
        shared = self._shared_dir(rounds, ids, step)
        self._final_in_flight = final
        self._channel.send("started", ids=ids, step=step)
        self._in_flight = threading.Thread(
            target=self._save_group_in_background,
            args=(rounds, step, write, metrics, ids, shared),
            name="ckptd-save",
        )
        self._in_flight.start()

    def _save_group_in_background(
        self,
        rounds: Rounds,
        step: int,
        write: Callable[[Path], None],
        metrics: dict[str, Any],
        ids: list[str],
        shared: Path,
    ) -> None:
        began = time.monotonic()
        try:
            try:
                write(shared)
            except BaseException as exc:
                self._group_failed(rounds, ids, step, f"{type(exc).__name__}: {exc}", report=True)
                raise
            self._finish_group_save(rounds, step, metrics, ids, shared, began)
        except BaseException as exc:  # reported already; raised in the training thread
            self._async_error = exc

    def _shared_dir(self, rounds: Rounds, ids: list[str], step: int) -> Path:
        """The group's directory of ``step``; when this rank cannot make it, the save fails on
        every rank (the daemon and the others are told), then the error propagates."""
        try:
            return rounds.group.shared_dir(self.checkpoint_dir, step)
        except BaseException as exc:
            self._group_failed(rounds, ids, step, f"{type(exc).__name__}: {exc}", report=True)
            raise

    def _finish_group_save(
        self,
        rounds: Rounds,
        step: int,
        metrics: dict[str, Any],
        ids: list[str],
        shared: Path,
        began: float,
    ) -> None:
        """This rank's part is written: wait for the others, then commit once or hear who did."""
        self._channel.send("written", ids=ids, step=step)
        outcome = rounds.await_outcome(step)
        if outcome.kind == "aborted":  # every rank has stopped writing by now
            shutil.rmtree(shared, ignore_errors=True)
            self._group_failed(rounds, ids, step, outcome.error, report=False)
            raise manifest.CommitError(f"checkpoint of step {step} not committed: {outcome.error}")
        if outcome.kind == "done":
            path, size = Path(outcome.path or ""), 0
            report = False
        else:
            elsewhere = rounds.other_nodes_wrote(step)
            if elsewhere is not None:
                shutil.rmtree(shared, ignore_errors=True)
                self._group_failed(rounds, ids, step, f"another node: {elsewhere}", report=True)
                raise manifest.CommitError(
                    f"checkpoint of step {step} not committed: another node: {elsewhere}"
                )
            try:
                path, written = rounds.commit(shared, step, metrics, self.lineage)
            except BaseException as exc:
                self._group_failed(rounds, ids, step, f"{type(exc).__name__}: {exc}", report=True)
                raise
            size, report = written.size, True
        record = commit_record(path, step, metrics, size, time.monotonic() - began)
        with self._lock:
            if rounds.finish(ids):
                self._stop_ready = True
            self._last_commit = record
            if report:
                self._channel.send("committed", ids=ids, **record)

    def _group_failed(
        self, rounds: Rounds, ids: list[str], step: int, error: str, *, report: bool
    ) -> None:
        rounds.abandon(step, f"rank {rounds.group.rank}: {error}" if report else error)
        with self._lock:
            if rounds.finish(ids):
                self._stop_ready = True
            if report:
                self._channel.send("failed", ids=ids, step=step, error=error)

    # -- called by the channel thread ------------------------------------------------

    def _poll_group(self) -> None:
        if self._rounds is not None:
            self._rounds.poll()

    def _on_agreed(self, rid: str, step: int) -> None:
        if self._rounds is not None:
            self._rounds.on_agreed(rid, step)

    def _on_group_outcome(self, step: int, outcome: Outcome) -> None:
        if self._rounds is not None:
            self._rounds.on_outcome(step, outcome)


def commit_record(
    path: Path, step: int, metrics: dict[str, Any], size: int, seconds: float, reused: bool = False
) -> dict[str, Any]:
    return {
        "path": str(path),
        "step": step,
        "metrics": metrics,
        "bytes": size,
        "seconds": round(seconds, 6),
        "reused": reused,
    }
