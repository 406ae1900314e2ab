"""A bare ROUTER socket standing in for the daemon's job channel, for the client's unit tests."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import zmq

from ckptd_client import protocol


@contextmanager
def stand_in_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[zmq.Socket]:
    """Bind the socket and point the client's environment (CKPTD_*) at it."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path}/j.sock"
    router.bind(endpoint)
    monkeypatch.setenv("CKPTD_ENDPOINT", endpoint)
    monkeypatch.setenv("CKPTD_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.delenv("CKPTD_RESUME_FROM", raising=False)
    try:
        yield router
    finally:
        router.close()
        context.term()


def receive(router: zmq.Socket, kind: str) -> tuple[bytes, dict]:
    """The next message of ``kind`` from a client (others are skipped); fails after 30 s."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if router.poll(100):
            identity, frame = router.recv_multipart()
            message = json.loads(frame)
            if message["type"] == kind:
                return identity, message
    pytest.fail(f"no {kind} message")


def send(router: zmq.Socket, identity: bytes, kind: str, **fields: object) -> None:
    router.send_multipart([identity, protocol.encode(kind, **fields)])
