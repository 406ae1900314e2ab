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
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def bind(**fields: Any) -> None:
    """Bind fields (job, attempt, step) to every following log line of this process."""
    structlog.contextvars.bind_contextvars(**fields)


def get_logger() -> Any:
    return structlog.get_logger("ckptd")
