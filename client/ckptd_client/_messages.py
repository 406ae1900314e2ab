"""What a channel's thread hands the client: daemon messages as frozen values, parsed once.

The daemon's JSON is read at the socket, here, and nowhere else: every later step sees
a typed value whose fields have the types they claim. A frame this protocol version
cannot read, or a message without the step it must name, is dropped (a daemon of another
version; the client never raises on the channel's thread). The standalone channel builds
the same values from signals and files, so the client has one way in for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import protocol


@dataclass(frozen=True)
class CheckpointRequested:
    """``request`` without ``final``: save once more; training goes on."""

    id: str
    reason: str
    deadline: float | None = None  # wall-clock time (time.time()) of the daemon's hard stop
    joins: str | None = None  # group: the earlier request whose agreed save answers this one too
    memory_dir: str | None = None  # the memory tier's: saved below this directory (RAM)


@dataclass(frozen=True)
class StopRequested:
    """``request`` with ``final``: save (unless ``save`` is false), then stop."""

    id: str
    reason: str
    deadline: float | None = None
    save: bool = True  # false: ``ckptd stop --no-checkpoint``, nothing more is saved
    joins: str | None = None
    memory_dir: str | None = None  # the final save goes to RAM first (the daemon persists it)


@dataclass(frozen=True)
class Done:
    """Another rank committed request ``id`` (``step`` names it in a group), or the daemon no
    longer holds it (neither ``path`` nor ``step``)."""

    id: str
    path: str | None = None
    step: int | None = None


@dataclass(frozen=True)
class Agreed:
    """Group: every rank saves request ``id`` at ``step``."""

    id: str
    step: int


@dataclass(frozen=True)
class CommitOrdered:
    """Group: every rank has written its part of ``step``; this rank commits it (``commit``)."""

    step: int


@dataclass(frozen=True)
class Aborted:
    """Group: a rank failed, the shared directory of ``step`` is not committed."""

    step: int
    error: str


DaemonMessage = CheckpointRequested | StopRequested | Done | Agreed | CommitOrdered | Aborted


@dataclass(frozen=True)
class Inbox:
    """All a channel's thread may do to its client.

    ``post`` applies one message (under the client's lock); ``progress`` is the step the
    training thread reported last (a read, no lock); ``turn`` runs on every turn of the
    thread's loop (the store traffic of ranks on several nodes); ``loss`` is the
    ``(step, loss)`` the training thread gave last (a read, no lock).
    """

    post: Callable[[DaemonMessage], None]
    progress: Callable[[], int | None]
    turn: Callable[[], None] = lambda: None
    loss: Callable[[], tuple[int, float] | None] = lambda: None  # (step, loss) last given


def parse(frame: bytes) -> DaemonMessage | None:
    """The message in one frame from the daemon, or None when this client cannot read it."""
    try:
        message = protocol.decode(frame, protocol.DAEMON_TYPES)
    except protocol.ProtocolError:
        return None
    return from_fields(message)


def from_fields(message: dict[str, Any]) -> DaemonMessage | None:
    """The typed value of a decoded daemon message (see :mod:`ckptd_client.protocol`)."""
    kind, step = message["type"], _step_or_none(message.get("step"))
    if kind == "request":
        rid, reason = str(message.get("id")), str(message.get("reason", ""))
        deadline = _number_or_none(message.get("deadline"))
        joins = _text_or_none(message.get("joins"))
        if message.get("final"):
            save = message.get("save") is not False
            return StopRequested(rid, reason, deadline, save, joins, _memory_dir(message))
        return CheckpointRequested(rid, reason, deadline, joins, _memory_dir(message))
    if kind == "done":
        return Done(str(message.get("id")), _text_or_none(message.get("path")), step)
    if step is None:
        return None  # the group messages below all name a step
    if kind == "agreed":
        return Agreed(str(message.get("id")), step)
    if kind == "commit":
        return CommitOrdered(step)
    if kind == "aborted":
        return Aborted(step, str(message.get("error")))
    return None


def _memory_dir(message: dict[str, Any]) -> str | None:
    """The directory of a memory-tier request (``tier: "memory"``, an absolute ``dir``)."""
    where = message.get("dir")
    usable = message.get("tier") == "memory" and isinstance(where, str) and where.startswith("/")
    return where if usable else None


def _step_or_none(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _number_or_none(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
