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

from .log import get_logger


class EventLog:
    """Writes each event once to the log and once, as a JSON line, to ``events.jsonl``."""

    def __init__(
        self, path: Path, job: str, publish: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        self._file = os.fdopen(fd, "a", buffering=1)
        self._job = job
        self._log = get_logger()
        self.publish = publish
        self.attempt = 0
        self.step: int | None = None

    def emit(self, event: str, *, level: str = "info", **fields: Any) -> None:
        record = {
            "time": time.time(),
            "event": event,
            "job": self._job,
            "attempt": self.attempt,
            "step": self.step,
            **fields,
        }
        self._file.write(json.dumps(record, default=str) + "\n")
        getattr(self._log, level)(event, **fields)
        if self.publish is not None:
            self.publish(record)

    def close(self) -> None:
        self._file.close()
