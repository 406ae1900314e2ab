"""Strict JSON: what every JSON that ckptd writes goes through, and how it reads JSON back.

Python's ``json`` writes ``NaN``, ``Infinity`` and ``-Infinity``, which JSON (RFC 8259)
does not have: ``jq``, JavaScript's ``JSON.parse``, Go and most other parsers reject the
whole document. Every writer in ckptd (``events.jsonl`` and the event stream, the control
socket's replies, the run directory's files, ``--json`` output, the report's data block)
uses :func:`dumps` or :func:`print_json`, which never write them:

- a non-finite float *value* is written as ``null``, and the path of each one
  (``metrics.loss``, ``ranks[1].step``) is passed to ``warn`` once per document;
- a non-finite float used as a *key* is written as the string Python would have written.

``warn`` defaults to a ``json.nonfinite`` warning in the log; :func:`print_json` (the
commands' ``--json`` output) warns on stderr instead, so stdout stays one JSON document.
:func:`loads` is the matching reader: ``NaN``, ``Infinity`` and numbers too large for a
float (``1e400``) are a ``ValueError``, like any other text that is not JSON.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from typing import Any

import structlog

__all__ = ["Warn", "dumps", "finite", "loads", "log_serializer", "print_json"]

Warn = Callable[[list[str]], None]


def dumps(value: Any, *, warn: Warn | None = None, **options: Any) -> str:
    """``json.dumps(value, **options)`` without NaN or Infinity (see the module)."""
    try:
        return json.dumps(value, allow_nan=False, **options)
    except ValueError:
        pass  # a non-finite float somewhere (or a value `default` turned into one)
    cleaned, paths = finite(value)
    default = options.get("default")
    if default is not None:
        options["default"] = lambda obj: finite(default(obj), paths, "?")[0]
    text = json.dumps(cleaned, allow_nan=False, **options)
    if paths:
        (warn or _log_warning)(paths)
    return text


def finite(value: Any, paths: list[str] | None = None, where: str = "") -> tuple[Any, list[str]]:
    """``value`` with every non-finite float replaced by None, and where they were."""
    found = [] if paths is None else paths
    return _clean(value, where, found), found


def loads(text: str | bytes) -> Any:
    """Parse strict JSON: ``NaN``, ``Infinity`` and ``1e400`` raise ValueError."""
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


def print_json(value: Any, *, indent: int | None = 2, default: Any = None) -> None:
    """Print ``value`` as one strict JSON document on stdout; warnings go to stderr."""
    print(dumps(value, warn=_stderr_warning, indent=indent, default=default))


def log_serializer(value: Any, **options: Any) -> str:
    """For structlog's JSON renderer: a log line is the warning channel, so none is added."""
    return dumps(value, warn=_quiet, **options)


def _clean(value: Any, where: str, paths: list[str]) -> Any:
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        paths.append(where or "(the value)")
        return None
    if isinstance(value, dict):
        return {
            _key(k): _clean(v, f"{where}.{k}" if where else str(k), paths) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_clean(v, f"{where}[{i}]", paths) for i, v in enumerate(value)]
    return value


def _key(key: Any) -> Any:
    if isinstance(key, float) and not math.isfinite(key):
        return json.dumps(key)  # "NaN", "Infinity", "-Infinity": what Python writes as a key
    return key


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:20]} is out of a float's range")
    return number


def _log_warning(paths: list[str]) -> None:
    structlog.get_logger("ckptd").warning(
        "json.nonfinite", keys=paths[:20], what="NaN or Infinity written as null"
    )


def _quiet(paths: list[str]) -> None:
    pass


def _stderr_warning(paths: list[str]) -> None:
    shown = ", ".join(paths[:10]) + (f" and {len(paths) - 10} more" if len(paths) > 10 else "")
    print(f"ckptd: warning: NaN or Infinity written as null: {shown}", file=sys.stderr)
