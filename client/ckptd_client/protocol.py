"""Wire format of the job channel between the daemon and training processes.

One ZeroMQ message per frame: a UTF-8 JSON object with ``"v"`` (the protocol
version) and ``"type"``. The daemon binds a ROUTER socket; each training
process connects one DEALER socket.

Client to daemon:
  ``hello``      {pid, rank, step}            first message after connecting
  ``step``       {step}                        progress heartbeat, rate limited
  ``started``    {ids, step}                   a checkpoint save began
  ``committed``  {ids, step, path, metrics, bytes, seconds}
  ``failed``     {ids, step, error}
  ``bye``        {}                            the process is closing the channel

Daemon to client:
  ``request``    {id, reason, deadline, final} a checkpoint is wanted; ``final``
                                               means stop after it
  ``done``       {id, path, step}              another rank committed ``id``
"""

from __future__ import annotations

import json
from typing import Any

VERSION = 1

ENV_ENDPOINT = "CKPTD_ENDPOINT"
ENV_CHECKPOINT_DIR = "CKPTD_CHECKPOINT_DIR"
ENV_RESUME_FROM = "CKPTD_RESUME_FROM"
ENV_RESUME_STEP = "CKPTD_RESUME_STEP"
ENV_ATTEMPT = "CKPTD_ATTEMPT"
ENV_RUN_DIR = "CKPTD_RUN_DIR"
ENV_JOB = "CKPTD_JOB"

CLIENT_TYPES = frozenset({"hello", "step", "started", "committed", "failed", "bye"})
DAEMON_TYPES = frozenset({"request", "done"})

MAX_MESSAGE_BYTES = 64 * 1024


class ProtocolError(ValueError):
    """A frame that is not a valid message of this protocol."""


def encode(kind: str, **fields: Any) -> bytes:
    """Serialize one message."""
    return json.dumps({"v": VERSION, "type": kind, **fields}, separators=(",", ":")).encode()


def decode(frame: bytes, allowed: frozenset[str]) -> dict[str, Any]:
    """Parse one frame; raise ProtocolError unless it is a known message type."""
    if len(frame) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(frame)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        message = json.loads(frame)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("message is not a JSON object")
    if message.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {message.get('v')!r}")
    if message.get("type") not in allowed:
        raise ProtocolError(f"unknown message type {message.get('type')!r}")
    return message
