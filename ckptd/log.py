"""structlog set-up: one event per line, JSON off a terminal, job/attempt/step on every line."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

from ckptd.strict_json import log_serializer

from . import redaction

__all__ = ["SafeStream", "bind", "configure", "get_logger"]


class SafeStream:
    """Where log lines go: whole lines, one ``write(2)`` each, and never an exception.

    A reader of stderr that went away (EPIPE) or a full disk under a redirected stderr
    must not end supervision: what cannot be written is dropped. A line cut short by
    a failing write is ended before the next one, so no two records share a line.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None  # e.g. a StringIO under a test runner
        self._pending = ""
        self._torn = False
        self.dropped = 0

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            lines, _, self._pending = self._pending.rpartition("\n")
            self._write_line(lines + "\n")
        return len(text)

    def flush(self) -> None:
        pass  # every complete line is written at once

    def isatty(self) -> bool:
        try:
            return bool(self._stream.isatty())
        except (AttributeError, OSError, ValueError):
            return False

    def _write_line(self, line: str) -> None:
        data = (("\n" if self._torn else "") + line).encode(errors="replace")
        if self._fd is None:
            try:
                self._stream.write(data.decode())
                self._stream.flush()
            except (OSError, ValueError):
                self.dropped += 1
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
            self._torn = False
        except OSError:
            self._torn = len(view) != len(data)
            self.dropped += 1


def configure(json_output: bool | None = None, stream: Any = None) -> None:
    """Log to ``stream`` (stderr): JSON unless it is a terminal, or as ``json_output`` says."""
    stream = SafeStream(stream or sys.stderr)
    if json_output is None:
        json_output = not stream.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=log_serializer)
        if json_output
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _hide_secrets,
    ]
    _route_stdlib_logging(stream, shared, renderer)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def _hide_secrets(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Cut the job's secrets out of every line (ckptd's own and libraries' records)."""
    if event.get("exc_info"):  # the traceback becomes text here, so it is cleaned too
        event = dict(structlog.processors.format_exc_info(logger, method, event))
    cleaned: dict[str, Any] = redaction.scrub(event)
    return cleaned


def bind(**fields: Any) -> None:
    """Bind fields (job, attempt, step) to every following log line of this process."""
    structlog.contextvars.bind_contextvars(**fields)


def get_logger() -> Any:
    return structlog.get_logger("ckptd")


def _route_stdlib_logging(stream: Any, shared: list[Any], renderer: Any) -> None:
    """Libraries' stdlib log records (watchdog, ...) become one structured line each too."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # watchdog's inotify emitter logs an error when its thread is stopped mid-read, which
    # happens on every clean shutdown; nothing is lost, so that logger is kept quiet.
    logging.getLogger("watchdog.observers.inotify").setLevel(logging.CRITICAL)
