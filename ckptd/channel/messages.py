"""What a training process says, parsed once at the socket into frozen values.

:func:`parse` is the only reader of a client's raw JSON (``docs/protocol.md``, section
3). A frame that is not a message of the protocol raises ``protocol.ProtocolError``;
a message whose ``step`` or ``ids`` cannot be used raises :class:`BadMessage`, naming
the field (the channel drops either with a warning, and the daemon goes on). Any other
field of the wrong type, or out of range, becomes None: a commit is still a commit
when its ``bytes`` are garbage. Past this module, fields have the types declared here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ckptd_client import protocol

MAX_STALL = 86_400.0  # a snapshot said to have held training up longer is not a measurement

Ids = tuple[str, ...]


class BadMessage(ValueError):
    """A message of a known type whose ``step`` or ``ids`` is unusable."""


@dataclass(frozen=True)
class Hello:
    """The first message of a process: who it is (a rank of a torchrun group: its sizes)."""

    step: int | None
    pid: int | None
    rank: int | None
    world_size: int | None
    local_world_size: int | None


@dataclass(frozen=True)
class StepReport:
    """Training reached ``step``; ``loss``: the loss the script reported with it (NaN and inf
    kept: the divergence guard looks for them), None when absent or not a number."""

    step: int | None
    loss: float | None = None


@dataclass(frozen=True)
class Started:
    """A save of ``step`` began, answering ``ids``; ``stall``: a background save's snapshot
    (seconds training waited), None unless a number in [0, a day]."""

    step: int | None
    ids: Ids
    stall: float | None
    tier: str | None = None  # "memory": the save is in RAM; "disk" with ``fallback``
    fallback: str | None = None  # why a request of the memory tier was saved to disk


@dataclass(frozen=True)
class Committed:
    """A save committed (``reused``: an existing checkpoint already held ``step``)."""

    step: int | None
    ids: Ids
    path: str | None
    metrics: dict[str, Any] | None
    bytes: int | None
    seconds: float | None
    reused: bool
    final: bool = False  # a group save of a final round (the stop may be another node's)


@dataclass(frozen=True)
class Failed:
    """A save raised (a rank of a group: its part, or the commit)."""

    step: int | None
    ids: Ids
    error: str


@dataclass(frozen=True)
class Propose:
    """A rank can still take request ``id`` at step ``at`` (None: it could not say)."""

    step: int | None
    id: str | None
    at: int | None


@dataclass(frozen=True)
class Written:
    """A rank's part of the shared directory of ``step`` is written."""

    step: int | None
    ids: Ids


@dataclass(frozen=True)
class Incomplete:
    """Ranks on several nodes resume from ``resume_step`` (None: a fresh start) because
    ``step``, the newest some rank has, lacks the parts of the ``missing`` ranks."""

    step: int | None
    missing: tuple[int, ...]
    resume_step: int | None


@dataclass(frozen=True)
class Bye:
    """The process closes the channel; ``step`` is its last."""

    step: int | None


ClientMessage = (
    Hello | StepReport | Started | Committed | Failed | Propose | Written | Incomplete | Bye
)


def _loss(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def parse(frame: bytes) -> ClientMessage:
    """One frame as a typed message; ProtocolError or BadMessage (naming the field) otherwise."""
    raw = protocol.decode(frame, protocol.CLIENT_TYPES)
    step = raw.get("step")
    if step is not None and _count(step) is None:
        raise BadMessage(f"step {step!r} is not a non-negative integer")
    ids = raw.get("ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise BadMessage("ids is not a list of strings")
    return _PARSERS[raw["type"]](raw, step, tuple(ids))


def _hello(raw: dict[str, Any], step: int | None, ids: Ids) -> Hello:
    return Hello(
        step,
        pid=_integer(raw.get("pid")),
        rank=_integer(raw.get("rank")),
        world_size=_size(raw.get("world_size")),
        local_world_size=_size(raw.get("local_world_size")),
    )


def _started(raw: dict[str, Any], step: int | None, ids: Ids) -> Started:
    stall = _seconds(raw.get("stall"))
    tier = raw.get("tier") if raw.get("tier") in ("memory", "disk") else None
    fallback = raw.get("fallback") if isinstance(raw.get("fallback"), str) else None
    stall = stall if stall is not None and stall <= MAX_STALL else None
    return Started(step, ids, stall, tier, fallback[:500] if fallback else None)


def _committed(raw: dict[str, Any], step: int | None, ids: Ids) -> Committed:
    path, metrics = raw.get("path"), raw.get("metrics")
    return Committed(
        step,
        ids,
        path=path if isinstance(path, str) else None,
        metrics=metrics if isinstance(metrics, dict) else None,
        bytes=_count(raw.get("bytes")),
        seconds=_seconds(raw.get("seconds")),
        reused=bool(raw.get("reused")),
        final=raw.get("final") is True,
    )


def _failed(raw: dict[str, Any], step: int | None, ids: Ids) -> Failed:
    return Failed(step, ids, error=str(raw.get("error")))


def _propose(raw: dict[str, Any], step: int | None, ids: Ids) -> Propose:
    rid = raw.get("id")
    return Propose(step, id=rid if isinstance(rid, str) else None, at=_count(raw.get("at")))


def _incomplete(raw: dict[str, Any], step: int | None, ids: Ids) -> Incomplete:
    missing = raw.get("missing")
    ranks = [_count(rank) for rank in missing] if isinstance(missing, list) else []
    return Incomplete(
        step, tuple(rank for rank in ranks if rank is not None), _count(raw.get("resume_step"))
    )


_PARSERS: dict[str, Callable[[dict[str, Any], int | None, Ids], ClientMessage]] = {
    "hello": _hello,
    "step": lambda raw, step, ids: StepReport(step, _loss(raw.get("loss"))),
    "started": _started,
    "committed": _committed,
    "failed": _failed,
    "propose": _propose,
    "written": lambda raw, step, ids: Written(step, ids),
    "incomplete": _incomplete,
    "bye": lambda raw, step, ids: Bye(step),
}


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _count(value: Any) -> int | None:
    """A non-negative integer, else None."""
    number = _integer(value)
    return number if number is not None and number >= 0 else None


def _size(value: Any) -> int | None:
    number = _integer(value)
    return number if number is not None and number > 0 else None


def _seconds(value: Any) -> float | None:
    """A finite, non-negative number of seconds (NaN, infinities, huge integers: None)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
