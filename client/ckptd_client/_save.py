"""One save of a process on its own (no rank group): a fresh directory, committed atomically.

A save settles what happens to it (started, committed, failed) with the client's
decisions, which tell the daemon; it never touches the client itself. A background
save's failure is settled with the exception, so the client holds it for training to
raise before the daemon hears of the failure.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from . import manifest
from ._decisions import Commit, Event, SaveCommitted, SaveFailed, SaveStarted

Settle = Callable[[Event], object]


class Underway(Protocol):
    """A save that has begun (this one, or a rank group's): ``fail`` or ``commit`` ends it."""

    directory: Path

    def fail(self, error: BaseException) -> None: ...
    def commit(self, metrics: dict[str, Any]) -> None: ...


def describe(error: BaseException) -> str:
    """An exception as the daemon's ``failed`` message carries it."""
    return f"{type(error).__name__}: {error}"


class Save:
    """Made by :meth:`begin`; ``fail`` or ``commit`` ends it (on the saving thread)."""

    def __init__(
        self,
        directory: Path,
        step: int,
        lineage: manifest.Lineage,
        settle: Settle,
        background: bool,
    ) -> None:
        self.directory = directory
        self.step = step
        self._lineage = lineage
        self._settle = settle
        self._background = background
        self._began = time.monotonic()

    @classmethod
    def begin(
        cls,
        checkpoint_dir: Path,
        step: int,
        lineage: manifest.Lineage,
        settle: Settle,
        *,
        background: bool,
        memory_dir: str | None = None,
    ) -> Save:
        """Make the save's directory and claim the requests it answers.

        ``memory_dir``: the requests asked for the memory tier: the directory is made there
        (RAM), or, when that fails, in ``checkpoint_dir`` with the reason told to the daemon.
        When no directory can be made (a read-only or missing checkpoint directory), the
        requests it would have answered fail, the daemon is told, and the error propagates.
        """
        fallback = None
        if memory_dir is not None:
            try:
                directory = manifest.new_temp_dir(Path(memory_dir), step)
            except OSError as exc:
                fallback = describe(exc)
            else:
                settle(SaveStarted(step, time.monotonic(), background, tier="memory"))
                return cls(directory, step, lineage, settle, background)
        try:
            directory = manifest.new_temp_dir(checkpoint_dir, step)
        except BaseException as exc:
            settle(SaveFailed(step, describe(exc)))
            raise
        settle(SaveStarted(step, time.monotonic(), background, fallback=fallback))
        return cls(directory, step, lineage, settle, background)

    def fail(self, error: BaseException) -> None:
        """Writing failed: remove the directory and report; the caller raises ``error``."""
        shutil.rmtree(self.directory, ignore_errors=True)
        raised = error if self._background else None
        self._settle(SaveFailed(self.step, describe(error), raised))

    def commit(self, metrics: dict[str, Any]) -> None:
        """Commit what was written; on failure remove it, report, and raise."""
        try:
            path, written = manifest.commit(self.directory, self.step, metrics, self._lineage)
        except BaseException as exc:
            self.fail(exc)
            raise
        seconds = time.monotonic() - self._began
        self._settle(SaveCommitted(Commit(str(path), self.step, metrics, written.size, seconds)))


def write_and_commit(
    save: Underway, write: Callable[[Path], None], metrics: dict[str, Any]
) -> None:
    """A background save's thread; its failure is settled by the save, for training to raise."""
    try:
        write(save.directory)
    except BaseException as exc:
        save.fail(exc)
        return
    try:
        save.commit(metrics)
    except BaseException:
        return  # settled as the save failed: training raises it at its next call
