"""sd_notify: a STATUS= change held back by the once-a-second limit goes out when due."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckptd.supervisor.systemd import Notifier

from conftest import wait_for


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def _received(sock: socket.socket) -> list[str]:
    lines = []
    while True:
        try:
            lines.append(sock.recv(4096).decode())
        except BlockingIOError:
            return lines


def test_held_status_is_due_at_next_moment(tmp_path: Path, systemd: socket.socket) -> None:
    """A second STATUS= within a second is held, next_moment() says when, report() then sends it."""
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    try:
        assert notifier.next_moment(stopping=False) is None  # no watchdog, nothing held
        notifier.status("running: step 1")
        assert _received(systemd) == ["STATUS=running: step 1"]
        notifier.status("running: step 2")
        due = notifier.next_moment(stopping=False)
        assert due is not None and due > time.monotonic()
        assert _received(systemd) == []

        def report() -> list[str]:
            notifier.report(time.monotonic(), "running: step 2", None, lambda: 0, 0.0)
            return _received(systemd)

        assert wait_for(report, "the held STATUS=") == ["STATUS=running: step 2"]
        assert time.monotonic() >= due
        assert notifier.next_moment(stopping=False) is None
    finally:
        notifier.close()


def test_no_socket_no_moments() -> None:
    """Without $NOTIFY_SOCKET the notifier never asks the loop to wake, even with a watchdog."""
    notifier = Notifier({"WATCHDOG_USEC": "400000"})
    notifier.status("running")
    notifier.status("running: step 2")
    assert notifier.next_moment(stopping=False) is None
    assert notifier.next_moment(stopping=True) is None
