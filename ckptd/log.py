"""structlog set-up: one event per line, JSON off a terminal, job/attempt/step on every line."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

__all__ = ["bind", "configure", "get_logger"]


def configure(json_output: bool | None = None, stream: Any = None) -> None:
    """Log to ``stream`` (stderr): JSON unless it is a terminal, or as ``json_output`` says."""
    stream = stream or sys.stderr
    if json_output is None:
        json_output = not stream.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    _route_stdlib_logging(stream, shared, renderer)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


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
