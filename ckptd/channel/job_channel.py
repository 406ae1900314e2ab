"""The daemon's end of the job channel: a ROUTER socket on a private ipc path.

Owned by the arbiter's thread only. Each frame is parsed once (``messages.parse``)
into a typed message; bad frames are dropped with a (rate-limited) warning; nothing a
peer sends can stop the loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import zmq

from ckptd.channel.messages import BadMessage, Bye, ClientMessage, Hello, parse
from ckptd.log import get_logger
from ckptd.run_dir import bind_private, remove_socket
from ckptd_client import protocol

_HWM = 1000
_WARN_EVERY = 10.0


@dataclass
class Peer:
    """One connected training process (one rank)."""

    identity: bytes
    pid: int | None = None
    rank: int | None = None
    known: bool = False  # the arbiter has seen it (a reconnected client may skip its hello)
    local_world_size: int | None = None  # set by a rank of a torchrun group: ranks on this node
    world_size: int | None = None
    step: int | None = None
    last_report: float | None = None  # wall-clock time of its last message

    @property
    def in_group(self) -> bool:
        """A rank that takes requests at an agreed step and saves into a shared directory."""
        return self.local_world_size is not None


class JobChannel:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.peers: dict[bytes, Peer] = {}
        self._context = zmq.Context()
        self.socket = self._context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        self.socket.setsockopt(zmq.SNDHWM, _HWM)
        self.socket.setsockopt(zmq.RCVHWM, _HWM)
        bind_private(self.socket, endpoint)
        self._log = get_logger()
        self._last_warning = -_WARN_EVERY

    def receive(self) -> list[tuple[Peer, ClientMessage]]:
        """Every message waiting now, with the peer that sent it (registered on first contact)."""
        received: list[tuple[Peer, ClientMessage]] = []
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return received
            if len(frames) != 2:
                self._warn("job_channel.bad_frame", reason=f"{len(frames)} frames")
                continue
            identity, frame = frames
            try:
                message = parse(frame)
            except BadMessage as exc:
                self._warn("job_channel.bad_message", reason=str(exc))
                continue
            except protocol.ProtocolError as exc:
                self._warn("job_channel.bad_frame", reason=str(exc))
                continue
            peer = self.peers.setdefault(identity, Peer(identity))
            peer.last_report = time.time()
            if message.step is not None:
                peer.step = message.step
            if isinstance(message, Hello):
                peer.pid, peer.rank = message.pid, message.rank
                peer.world_size = message.world_size
                peer.local_world_size = message.local_world_size
            elif isinstance(message, Bye):
                self.peers.pop(identity, None)
            received.append((peer, message))

    def send(self, peer: Peer, kind: str, **fields: Any) -> bool:
        """Send to one peer; a peer that is gone is forgotten and False returned."""
        try:
            self.socket.send_multipart(
                [peer.identity, protocol.encode(kind, **fields)], zmq.NOBLOCK
            )
            return True
        except zmq.ZMQError:
            self.peers.pop(peer.identity, None)
            return False

    def broadcast(self, kind: str, *, skip: Peer | None = None, **fields: Any) -> int:
        """Send to every connected peer but ``skip``; return how many got it."""
        return sum(
            self.send(peer, kind, **fields)
            for peer in list(self.peers.values())
            if peer is not skip
        )

    def group(self) -> list[Peer]:
        """The connected ranks of a torchrun group, by rank."""
        return sorted((p for p in self.peers.values() if p.in_group), key=lambda p: p.rank or 0)

    def group_size(self) -> int:
        """How many ranks of the group this daemon expects (its node's), 0 without a group."""
        return max((p.local_world_size or 0 for p in self.peers.values()), default=0)

    def forget_peers(self) -> None:
        """The job's processes are gone: whoever connects next is a new peer."""
        self.peers.clear()

    def close(self) -> None:
        self.socket.close(linger=0)
        self._context.term()
        remove_socket(self.endpoint)

    def _warn(self, event: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            self._log.warning(event, **fields)
