"""Wire format of the job channel between the daemon and training processes.

One ZeroMQ message per frame: a UTF-8 JSON object with ``"v"`` (the protocol
version) and ``"type"``. The daemon binds a ROUTER socket; each training
process connects one DEALER socket.

Client to daemon:
  ``hello``      {pid, rank, step, world_size, local_world_size}
                                               first message after connecting; the world
                                               sizes only under torchrun (a rank group)
  ``step``       {step}                        a new step, at most every CKPTD_REPORT_EVERY
                                               seconds (0.1 when unset); none while the
                                               step stands still
  ``started``    {ids, step, stall?}           a checkpoint save began; a background save
                                               adds how long training waited for it (s); ``tier``:
                                               ``memory`` (in RAM), or ``disk`` with
                                               ``fallback``: why a memory-tier request
                                               went to disk
  ``committed``  {ids, step, path, metrics, bytes, seconds}
  ``failed``     {ids, step, error}
  ``propose``    {id, at}                      group: the first step at which this rank can
                                               still take request ``id``
  ``written``    {ids, step}                   group: this rank's part of the shared
                                               directory of ``step`` is written
  ``bye``        {step}                        the process is closing the channel; its last step

Daemon to client:
  ``request``    {id, reason, deadline, final, save, joins, tier?, dir?}
                                               a checkpoint is wanted; ``final`` means stop
                                               after it; ``joins``: the earlier request of
                                               the group whose agreed save answers it too;
                                               ``tier`` ``memory``: save it below ``dir``
                                               (RAM), the daemon persists it
  ``agreed``     {id, step}                    group: every rank saves request ``id`` at ``step``
  ``commit``     {step}                        group: every rank has written ``step``; commit it
  ``aborted``    {step, error}                 group: a rank failed, ``step`` is not committed
  ``done``       {id, path, step}              another rank committed ``id`` (group: ``step``)
"""

from __future__ import annotations

import json
from typing import Any

VERSION = 1

TMP_PREFIX = ".tmp-"  # a checkpoint directory being written: ``.tmp-step-N-...``

ENV_ENDPOINT = "CKPTD_ENDPOINT"
ENV_CHECKPOINT_DIR = "CKPTD_CHECKPOINT_DIR"
ENV_RESUME_FROM = "CKPTD_RESUME_FROM"
ENV_RESUME_STEP = "CKPTD_RESUME_STEP"
ENV_ATTEMPT = "CKPTD_ATTEMPT"
ENV_RUN_DIR = "CKPTD_RUN_DIR"
ENV_JOB = "CKPTD_JOB"
ENV_CHECKPOINT_MODE = "CKPTD_CHECKPOINT_MODE"  # octal, e.g. "0700"; empty: the umask decides
ENV_REPORT_EVERY = "CKPTD_REPORT_EVERY"  # seconds between step reports the daemon needs
ENV_LINEAGE = "CKPTD_LINEAGE"  # the lineage id every manifest of this run records
ENV_MEMORY_DIR = "CKPTD_MEMORY_DIR"  # the node's memory tier directory; empty without one

# Set by torchrun (torch.distributed.elastic) for each worker; a rank group when WORLD_SIZE > 1.
ENV_RANK = "RANK"
ENV_WORLD_SIZE = "WORLD_SIZE"
ENV_LOCAL_RANK = "LOCAL_RANK"
ENV_LOCAL_WORLD_SIZE = "LOCAL_WORLD_SIZE"
ENV_RUN_ID = "TORCHELASTIC_RUN_ID"
ENV_RESTART_COUNT = "TORCHELASTIC_RESTART_COUNT"

CLIENT_TYPES = frozenset(
    {"hello", "step", "started", "committed", "failed", "propose", "written", "incomplete", "bye"}
)
DAEMON_TYPES = frozenset({"request", "agreed", "commit", "aborted", "done"})

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
