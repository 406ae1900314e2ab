"""The job's lifecycle events: logged, and appended to ``events.jsonl`` in the run directory.

Event names: job.started, job.exited, job.restarting, job.stopped, job.gave_up,
checkpoint.requested, checkpoint.started, checkpoint.committed,
checkpoint.failed, checkpoint.pruned.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from .log import get_logger


class EventLog:
    """Writes each event once to the log and once, as a JSON line, to ``events.jsonl``.

    ``job``, ``attempt`` and ``step`` come from the fields bound for every log line
    (``log.bind``), so the log and the event records can never disagree.
    """

    def __init__(self, path: Path, publish: Callable[[dict[str, Any]], None] | None = None) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        self._file = os.fdopen(fd, "a", buffering=1)
        self._log = get_logger()
        self.publish = publish

    def emit(self, event: str, *, level: str = "info", **fields: Any) -> None:
        bound = structlog.contextvars.get_contextvars()
        record = {
            "time": time.time(),
            "event": event,
            "job": bound.get("job"),
            "attempt": bound.get("attempt"),
            "step": bound.get("step"),
            **fields,
        }
        self._file.write(json.dumps(record, default=str) + "\n")
        getattr(self._log, level)(event, **fields)
        if self.publish is not None:
            self.publish(record)

    def close(self) -> None:
        self._file.close()
