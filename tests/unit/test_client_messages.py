"""Daemon frames become typed, frozen messages at the socket; unreadable ones become None."""

from __future__ import annotations

import dataclasses

import pytest

from ckptd_client import protocol
from ckptd_client._messages import (
    Aborted,
    Agreed,
    CheckpointRequested,
    CommitOrdered,
    DaemonMessage,
    Done,
    StopRequested,
    parse,
)

REQUEST = {"id": "r1", "reason": "timer", "deadline": None, "final": False, "save": True}


@pytest.mark.parametrize(
    ("kind", "fields", "message"),
    [
        ("request", REQUEST, CheckpointRequested("r1", "timer")),
        (
            "request",
            {**REQUEST, "final": True, "deadline": 1700000000},
            StopRequested("r1", "timer", 1700000000.0),
        ),
        (
            "request",
            {**REQUEST, "final": True, "save": False},
            StopRequested("r1", "timer", save=False),
        ),
        ("request", {**REQUEST, "joins": "r0"}, CheckpointRequested("r1", "timer", joins="r0")),
        (
            "request",
            {**REQUEST, "deadline": "soon", "joins": 7},
            CheckpointRequested("r1", "timer"),
        ),
        ("request", {**REQUEST, "deadline": True}, CheckpointRequested("r1", "timer")),
        (
            "request",
            {**REQUEST, "tier": "memory", "dir": "/dev/shm/j"},
            CheckpointRequested("r1", "timer", memory_dir="/dev/shm/j"),
        ),
        (
            "request",
            {**REQUEST, "tier": "memory", "dir": "relative/j"},
            CheckpointRequested("r1", "timer"),
        ),
        ("request", {**REQUEST, "tier": "disk", "dir": "/x"}, CheckpointRequested("r1", "timer")),
        ("done", {"id": "r1", "path": "/c/step-1", "step": 1}, Done("r1", "/c/step-1", 1)),
        ("done", {"id": "r1", "path": None, "step": None}, Done("r1")),
        ("done", {"id": "r1", "path": 3, "step": -1}, Done("r1")),
        ("agreed", {"id": "r1", "step": 6}, Agreed("r1", 6)),
        ("commit", {"step": 6}, CommitOrdered(6)),
        ("aborted", {"step": 6, "error": "rank 0: boom"}, Aborted(6, "rank 0: boom")),
        ("agreed", {"id": "r1", "step": True}, None),
        ("commit", {"step": "6"}, None),
        ("aborted", {"error": "no step"}, None),
    ],
)
def test_each_daemon_message_parses_to_its_value(
    kind: str, fields: dict[str, object], message: DaemonMessage | None
) -> None:
    """Each kind gives its typed value; bad optional fields are None, no step drops it."""
    assert parse(protocol.encode(kind, **fields)) == message


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"v": 99, "type": "request"}',
        b"{" * 10,
        b'{"v": 1, "type": "hello"}',
    ],
)
def test_frames_this_client_cannot_read_are_none(frame: bytes) -> None:
    """Junk, another protocol version or a client-side type parse to None, never raise."""
    assert parse(frame) is None


def test_messages_are_frozen() -> None:
    """A parsed message cannot be changed by whoever it is handed to."""
    message = parse(protocol.encode("request", **REQUEST))
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.id = "other"  # type: ignore[misc, union-attr]
