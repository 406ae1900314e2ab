"""Where a client's requests come from: the daemon's job channel, or stand-ins when standalone.

Each channel runs one daemon thread that turns what it sees (a frame from the daemon, a
signal, a file) into a typed message and posts it to its :class:`~._messages.Inbox`;
the training thread only ever reads flags.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import select
import signal
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import protocol
from ._group import Group
from ._mapped import sweep
from ._messages import CheckpointRequested, Inbox, StopRequested, parse

HEARTBEAT_INTERVAL = 0.1  # between step reports, unless the daemon says (CKPTD_REPORT_EVERY)
_REPORT_EVERY_MAX = 60.0
JOIN_TIMEOUT = 5.0  # close() waits this long for the channel thread, then leaves it to end alone
_POLL_MS = 200
_NODES_POLL_MS = 50  # ranks of several nodes look for each other's requests in the store
_FILE_POLL_SECONDS = 0.25


class _WakePipe:
    """A self-pipe that wakes a channel's thread; closed only once nothing can use it.

    The channel's owner and its thread each hold it; whichever lets go last closes it.
    Closing the descriptors under a thread that still polls them (a join that timed out)
    would let their numbers be reused by another file that the thread then reads, or
    that a later poke writes into.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self._holders = 1
        self._lock = threading.Lock()
        self.closed = False

    def hold(self) -> None:
        with self._lock:
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders or self.closed:
                return
            self.closed = True
            os.close(self.read_fd)
            os.close(self.write_fd)

    def poke(self, data: bytes = b"\0") -> None:
        """Wake the reader; safe in a signal handler (no lock), a no-op once closed."""
        if self.closed:
            return
        try:
            os.write(self.write_fd, data)
        except OSError:
            pass  # the pipe is full: the reader is awake anyway

    def drain(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = os.read(self.read_fd, 4096)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


class DaemonChannel:
    """DEALER socket to the daemon's job channel, owned by one background thread."""

    def __init__(self, endpoint: str, rank: int) -> None:
        self.endpoint = endpoint
        self.rank = rank
        self.group = Group.from_env(os.environ)  # ranks under torchrun agree on their steps
        self.report_every = report_every(os.environ)
        self._outbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._wake = _WakePipe()
        self._inbox: Inbox | None = None

    def start(self, inbox: Inbox) -> None:
        self._inbox = inbox
        self._thread = threading.Thread(
            target=self._run, args=(inbox,), name="ckptd-client", daemon=True
        )
        self._wake.hold()
        self._thread.start()

    def send(self, kind: str, **fields: Any) -> None:
        self._outbox.put(protocol.encode(kind, **fields))
        self._wake.poke()

    def close(self) -> None:
        """Say goodbye and stop the thread; one that does not end in time closes the pipe itself.

        The goodbye carries the last step, which the rate-limited heartbeat may not have sent.
        """
        self.send("bye", step=self._inbox.progress() if self._inbox is not None else None)
        self._closing = True
        self._wake.poke()
        if self._thread is not None:
            self._thread.join(timeout=JOIN_TIMEOUT)
        self._wake.release()

    def _run(self, inbox: Inbox) -> None:
        try:
            self._serve(inbox)
        finally:
            self._wake.release()

    def _serve(self, inbox: Inbox) -> None:
        import zmq  # imported here so a standalone script never loads libzmq

        context = zmq.Context()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.ROUTING_ID, f"{os.getpid()}-{uuid.uuid4().hex[:8]}".encode())
        sock.connect(self.endpoint)
        sizes = (
            {"world_size": self.group.world_size, "local_world_size": self.group.local_world_size}
            if self.group
            else {}
        )
        sock.send(
            protocol.encode(
                "hello", pid=os.getpid(), rank=self.rank, step=inbox.progress(), **sizes
            )
        )
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake.read_fd, zmq.POLLIN)
        # The hello carried the step; the first new one is reported at once, later ones at
        # most every report_every: each report wakes the daemon.
        sent_step, sent_at = inbox.progress(), -math.inf
        nodes = bool(self.group and self.group.nodes)
        poll_ms = _NODES_POLL_MS if nodes else _POLL_MS
        wait_ms = poll_ms
        try:
            while True:
                ready = dict(poller.poll(wait_ms))
                if self._wake.read_fd in ready:
                    self._wake.drain()
                if sock in ready:
                    self._receive_all(sock, inbox, zmq)
                while True:
                    try:
                        sock.send(self._outbox.get_nowait())
                    except queue.Empty:
                        break
                if self._closing:
                    return
                inbox.turn()
                with contextlib.suppress(OSError):
                    sweep()  # mappings of RAM files ckptd removed: their pages go back
                step, now = inbox.progress(), time.monotonic()
                if step != sent_step and now - sent_at >= self.report_every:
                    loss = inbox.loss()  # one read: the training thread replaces the tuple
                    sampled = {"loss": float(loss[1])} if loss and loss[0] == step else {}
                    sock.send(protocol.encode("step", step=step, **sampled))
                    sent_step, sent_at = step, now
                # No report can go before sent_at + report_every: no need to look sooner.
                held = sent_at + self.report_every - now
                wait_ms = poll_ms if nodes or held <= 0 else math.ceil(held * 1000)
        finally:
            sock.close()
            context.term()

    @staticmethod
    def _receive_all(sock: Any, inbox: Inbox, zmq: Any) -> None:
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            message = parse(frame)
            if message is not None:  # else a daemon of another version: ignore what we cannot read
                inbox.post(message)


class StandaloneChannel:
    """Without a daemon: SIGTERM/SIGINT stop, SIGUSR1 and a CHECKPOINT file checkpoint.

    Handlers go only where Python's default is in place, so a script's own
    handlers are never replaced. A second SIGTERM/SIGINT acts as the default would.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self, run_dir: Path | None) -> None:
        self.run_dir = run_dir
        self._wake = _WakePipe()
        self._previous: dict[int, Any] = {}
        self._stop_signalled = False
        # The CHECKPOINT file's request: set by the channel thread, cleared by whichever
        # thread acknowledges it; the lock keeps one file from becoming two requests.
        self._file_lock = threading.Lock()
        self._file_request: str | None = None
        self._closing = False
        self._thread: threading.Thread | None = None

    def start(self, inbox: Inbox) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                current = signal.getsignal(signum)
                if current in (signal.SIG_DFL, signal.default_int_handler):
                    self._previous[signum] = current
                    signal.signal(signum, self._on_signal)
        self._thread = threading.Thread(
            target=self._run, args=(inbox,), name="ckptd-client", daemon=True
        )
        self._wake.hold()
        self._thread.start()

    def send(self, kind: str, **fields: Any) -> None:
        if kind not in ("committed", "failed"):
            return
        with self._file_lock:
            if self._file_request is not None and self._file_request in fields.get("ids", ()):
                # The file goes before the request is forgotten: a poll in between must
                # not take the same file for a new request (a second, needless save).
                if self.run_dir is not None:
                    _remove_quietly(self.run_dir / "CHECKPOINT")
                self._file_request = None

    def close(self) -> None:
        self._closing = True
        self._wake.poke()
        if self._thread is not None:
            self._thread.join(timeout=JOIN_TIMEOUT)
        if threading.current_thread() is threading.main_thread():
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)
        self._previous.clear()
        self._wake.release()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum != signal.SIGUSR1:
            if self._stop_signalled:
                previous = self._previous.get(signum, signal.SIG_DFL)
                signal.signal(signum, previous)
                if callable(previous):
                    previous(signum, frame)
                else:
                    os.kill(os.getpid(), signum)
                return
            self._stop_signalled = True
        self._wake.poke(bytes([signum]))

    def _run(self, inbox: Inbox) -> None:
        try:
            self._serve(inbox)
        finally:
            self._wake.release()

    def _serve(self, inbox: Inbox) -> None:
        while not self._closing:
            readable, _, _ = select.select([self._wake.read_fd], [], [], _FILE_POLL_SECONDS)
            for signum in self._wake.drain() if readable else b"":
                if signum == signal.SIGUSR1:
                    inbox.post(CheckpointRequested(uuid.uuid4().hex, "SIGUSR1"))
                elif signum:
                    inbox.post(StopRequested(uuid.uuid4().hex, signal.Signals(signum).name))
            self._poll_files(inbox)

    def _poll_files(self, inbox: Inbox) -> None:
        if self.run_dir is None:
            return
        new_request = None
        with self._file_lock:
            if self._file_request is None and os.path.lexists(self.run_dir / "CHECKPOINT"):
                self._file_request = new_request = uuid.uuid4().hex
        if new_request is not None:  # outside the lock: acknowledging it may call send()
            inbox.post(CheckpointRequested(new_request, "CHECKPOINT file"))
        if not self._stop_signalled and os.path.lexists(self.run_dir / "STOP"):
            self._stop_signalled = True
            _remove_quietly(self.run_dir / "STOP")
            inbox.post(StopRequested(uuid.uuid4().hex, "STOP file"))


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def report_every(env: Mapping[str, str]) -> float:
    """Seconds between two step reports: ``CKPTD_REPORT_EVERY`` as the daemon set it for the
    hang watch it runs, or the protocol's default when it is absent or not a sane number."""
    try:
        seconds = float(env.get(protocol.ENV_REPORT_EVERY, ""))
    except ValueError:
        return HEARTBEAT_INTERVAL
    return seconds if 0 < seconds <= _REPORT_EVERY_MAX else HEARTBEAT_INTERVAL
