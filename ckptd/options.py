"""The value kinds of configuration keys: how each is checked in TOML and parsed from a flag."""

from __future__ import annotations

import math
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
MAX_DURATION = 365 * 86400.0  # beyond a year a duration is a typo, and timers overflow


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``1.5``, ``"90s"``, ``"30m"``, ``"2h"``, ``"250ms"``, ``"1d"``.

    Negative, not-a-number, infinite and longer-than-a-year values are refused.
    """
    if isinstance(value, bool):
        raise ValueError(f'expected a duration like 90, "90s", "30m", got {value!r}')
    if isinstance(value, (int, float)):
        seconds = float(value)
        if math.isnan(seconds) or math.isinf(seconds):
            raise ValueError(f"a duration must be a finite number of seconds, got {value!r}")
        if seconds < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
    elif isinstance(value, str) and value.strip().startswith("-"):
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f'expected a duration like 90, "90s", "30m", "2h", got {value!r}')
    if seconds > MAX_DURATION:
        raise ValueError(f"a duration cannot exceed 365d, got {value!r}")
    return seconds


def format_seconds(seconds: float) -> str:
    """``"10ms"``, ``"1s"``, ``"2.5s"``: how a bound is shown in an error."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def parse_signal(value: Any) -> str:
    """Canonical signal name (``"SIGUSR1"``) from ``"SIGUSR1"``, ``"usr1"`` or ``10``."""
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            return signal.Signals(value).name
        if isinstance(value, str):
            name = value.strip().upper()
            name = name if name.startswith("SIG") else "SIG" + name
            return signal.Signals[name].name
    except (KeyError, ValueError):
        pass
    raise ValueError(f'expected a signal name like "SIGUSR1", got {value!r}')


@dataclass(frozen=True)
class Kind:
    """How a value of one key is validated (TOML) and parsed (command-line text)."""

    describe: str
    check: Callable[[Any], Any]
    parse_text: Callable[[str], Any]


def _strict(python_type: type, describe: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, python_type):
            raise ValueError(f"expected {describe}, got {value!r}")
        return value

    return check


def _non_negative(value: Any) -> int:
    number = _strict(int, "a non-negative integer")(value)
    if number < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return int(number)


def _text_int(text: str) -> int:
    try:
        return _non_negative(int(text))
    except ValueError:
        raise ValueError(f"expected a non-negative integer, got {text!r}") from None


def _string_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a non-empty list of strings, got {value!r}")
    return list(value)


def _string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"expected a table of strings, got {value!r}")
    return dict(value)


def _env_pairs(text: str) -> dict[str, str]:
    key, sep, val = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return {key: val}


def choice(*allowed: str) -> Kind:
    def check(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        return str(value)

    return Kind(" | ".join(allowed), check, check)


def _positive(value: Any) -> int:
    number = _strict(int, "a positive integer")(value)
    if number < 1:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return int(number)


def _text_positive(text: str) -> int:
    try:
        return _positive(int(text))
    except ValueError:
        raise ValueError(f"expected a positive integer, got {text!r}") from None


STRING = Kind("text", _strict(str, "a string"), str)
COUNT = Kind("integer >= 0", _non_negative, _text_int)
POSITIVE = Kind("integer >= 1", _positive, _text_positive)
DURATION = Kind("duration", parse_duration, parse_duration)


def duration(minimum: float, *, why: str = "") -> Kind:
    """A duration of at least ``minimum`` seconds (above zero when ``minimum`` is 0).

    A value below it is refused with the bound and ``why`` in the message, so that
    ``--every 1ms`` says what it may be instead of hammering the job.
    """
    bound = "above 0s" if minimum == 0 else f"at least {format_seconds(minimum)}"
    reason = f" ({why})" if why else ""

    def check(value: Any) -> float:
        seconds = parse_duration(value)
        if (seconds <= 0) if minimum == 0 else (seconds < minimum):
            raise ValueError(f"must be {bound}{reason}, got {value!r}")
        return seconds

    return Kind(f"duration, {bound}", check, check)


def or_auto(kind: Kind) -> Kind:
    """``kind``, or the word ``"auto"`` (ckptd chooses the value from what it measures)."""

    def check(value: Any) -> Any:
        return "auto" if value == "auto" else kind.check(value)

    def parse_text(text: str) -> Any:
        return "auto" if text == "auto" else kind.parse_text(text)

    return Kind(f'"auto" or {kind.describe}', check, parse_text)


SIGNAL = Kind("signal name", parse_signal, parse_signal)
STRING_LIST = Kind("list of strings", _string_list, lambda text: [text])
STRING_MAP = Kind("table of strings", _string_map, _env_pairs)
