"""The job's lifecycle events: logged, appended to ``events.jsonl``, published.

Writing an event never raises: supervision must outlive a full run directory
(ENOSPC), a broken disk (EIO) or a vanished stderr reader (EPIPE). A record that
cannot be written whole is cut back off the file (no torn line for the next record
to be glued to) and dropped; the first drop is logged once, and so is the recovery
with the number of records lost in between.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from ckptd.log import get_logger
from ckptd.redaction import scrub
from ckptd.run_dir import open_regular

from . import strict_json


class EventLog:
    """Writes each event once to the log and once, as a JSON line, to ``events.jsonl``.

    Records are strict JSON (:mod:`ckptd.strict_json`): a NaN or an infinity in a field
    is written, and published, as null, with an ``events.nonfinite`` warning naming it.

    ``job``, ``attempt`` and ``step`` come from the fields bound for every log line
    (``log.bind``), so the log and the event records can never disagree.
    """

    def __init__(self, path: Path, publish: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path = path
        self._fd: int | None = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._log = get_logger()
        self.publish = publish
        self.dropped = 0

    def emit(self, event: str, *, level: str = "info", **fields: Any) -> None:
        bound = structlog.contextvars.get_contextvars()
        fields = scrub(fields)  # the log line, the file and the stream: one cleaned copy
        record = {
            "time": time.time(),
            "event": event,
            "job": bound.get("job"),
            "attempt": bound.get("attempt"),
            "step": bound.get("step"),
            **fields,
        }
        record, nonfinite = strict_json.finite(record)  # the file and the stream: strict JSON
        if nonfinite:
            self._log.warning("events.nonfinite", of=event, keys=nonfinite, written="null")
        self._append(strict_json.dumps(record, default=str) + "\n")
        try:
            getattr(self._log, level)(event, **fields)
        except Exception:
            pass  # the log stream is safe (log.SafeStream); a renderer bug must not stop us
        if self.publish is not None:
            self.publish(record)

    def _append(self, line: str) -> None:
        if self._fd is None:
            return
        data = line.encode()
        try:
            size = os.fstat(self._fd).st_size
        except OSError as exc:
            self._dropped(exc)
            return
        try:
            written = os.write(self._fd, data)
        except OSError as exc:
            self._dropped(exc)
            return
        if written != len(data):  # a short write on a full disk: take the fragment back
            try:
                os.ftruncate(self._fd, size)
            except OSError:
                pass
            self._dropped(OSError(28, "short write (disk full?)"))
            return
        if self.dropped:
            self._log.warning("events.recovered", path=str(self.path), dropped=self.dropped)
            self.dropped = 0

    def _dropped(self, exc: OSError) -> None:
        if self.dropped == 0:
            self._log.warning(
                "events.write_failed",
                path=str(self.path),
                error=exc.strerror or str(exc),
                what="event records are dropped until writes succeed again",
            )
        self.dropped += 1

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None
