"""sd_notify without libsystemd: datagrams to ``$NOTIFY_SOCKET`` (a path, or ``@abstract``).

Messages: ``READY=1`` once the job is launched, ``STATUS=`` with the step and the
last checkpoint, ``STOPPING=1``, ``WATCHDOG=1`` at half of ``WATCHDOG_USEC`` (sent
by the supervisor loop itself, so a stuck loop stops the pings), and
``EXTEND_TIMEOUT_USEC=`` while a final save is visibly progressing. Without
``$NOTIFY_SOCKET`` every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

_STATUS_EVERY = 1.0
_SAVE_CHECK_EVERY = 0.25  # how often a final save is looked at (its bytes growing)


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)
        self.watchdog_interval = _watchdog_interval(env)
        self._next_ping = time.monotonic() if self.watchdog_interval else None
        self._ready = False
        self._status = ""
        self._status_sent = 0.0
        self._status_held: str | None = None  # a change not sent yet (at most one a second)
        self._save_bytes = 0
        self._save_checked = 0.0

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def ready(self, status: str) -> None:
        if not self._ready:
            self._ready = True
            self._send(f"READY=1\nSTATUS={status}")
            self._status, self._status_sent = status, time.monotonic()

    def status(self, text: str) -> None:
        """Update STATUS=, at most once a second and only when it changed (a change held
        back is due at :meth:`next_moment`)."""
        now = time.monotonic()
        self._status_held = None
        if text == self._status:
            return
        if now - self._status_sent >= _STATUS_EVERY:
            self._status, self._status_sent = text, now
            self._send(f"STATUS={text}")
        else:
            self._status_held = text

    def stopping(self, status: str) -> None:
        self._status, self._status_sent = status, time.monotonic()
        self._send(f"STOPPING=1\nSTATUS={status}")

    def extend_timeout(self, seconds: float) -> None:
        self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def next_moment(self, stopping: bool) -> float | None:
        """When :meth:`report` has something to send unless the loop calls it sooner: the
        watchdog ping, a held-back STATUS=, the next look at a final save (``stopping``)."""
        if self._socket is None:
            return None
        moments = [self._next_ping]
        if stopping:
            moments.append(self._save_checked + _SAVE_CHECK_EVERY)
        elif self._status_held is not None:
            moments.append(self._status_sent + _STATUS_EVERY)
        present = [m for m in moments if m is not None]
        return min(present) if present else None

    def ping_if_due(self, now: float) -> None:
        """WATCHDOG=1 when half the watchdog interval has passed; call from the loop only."""
        if self._next_ping is not None and self.watchdog_interval and now >= self._next_ping:
            self._next_ping = now + self.watchdog_interval
            self._send("WATCHDOG=1")

    def report(
        self, now: float, status: str, stop_deadline: float | None, written: Callable[[], int],
        beyond: float,
    ) -> None:  # fmt: skip
        """Each loop turn: the watchdog ping, and STATUS= or, while a final save visibly
        writes (``written()`` bytes grow), EXTEND_TIMEOUT_USEC= up to ``stop_deadline + beyond``."""
        self.ping_if_due(now)
        if stop_deadline is None:
            self._save_bytes = 0
            self.status(status)
        elif self.enabled and now - self._save_checked >= _SAVE_CHECK_EVERY:
            self._save_checked = now
            size = written()
            if size > self._save_bytes:
                self.extend_timeout(max(0.0, stop_deadline - now) + beyond)
            self._save_bytes = size

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, message: str) -> None:
        if self._socket is None:
            return
        try:
            self._socket.sendto(message.encode(), self._address)
        except OSError:
            pass  # systemd is gone or busy; supervision goes on without it


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of WATCHDOG_USEC, when the watchdog is meant for this process."""
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
        pid = int(env.get("WATCHDOG_PID", "0") or 0)
    except ValueError:
        return None
    if usec <= 0 or (pid and pid != os.getpid()):
        return None
    return usec / 2 / 1_000_000
