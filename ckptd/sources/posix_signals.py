"""POSIX signals to the daemon, turned into requests.

SIGTERM, SIGINT and SIGHUP ask for a final checkpoint and a stop (the arbiter
turns a second one during the stop into "stop now"); SIGUSR1 asks for a
checkpoint; SIGCHLD only wakes the loop so a crash is seen at once. Under SLURM a
configured warning signal (``[slurm] requeue_signal``) means final checkpoint, requeue. Handlers
only post: no logging, no locks, no raising. Previous handlers come back on stop().
"""

from __future__ import annotations

import signal
from types import FrameType

from ckptd.requests import Action, Origin, Request
from ckptd.sources import Post

_ACTIONS = {
    signal.SIGTERM: Action.STOP,
    signal.SIGINT: Action.STOP,
    signal.SIGHUP: Action.STOP,
    signal.SIGUSR1: Action.CHECKPOINT,
    signal.SIGCHLD: Action.WAKE,
}


class PosixSignals:
    def __init__(
        self, wakeup_fd: int | None = None, requeue_signal: signal.Signals | None = None
    ) -> None:
        self._wakeup_fd = wakeup_fd
        self._actions = dict(_ACTIONS)
        if requeue_signal is not None:
            self._actions[requeue_signal] = Action.REQUEUE
        self._previous: dict[int, object] = {}
        self._previous_wakeup: int | None = None
        self._post: Post | None = None

    def start(self, post: Post) -> None:
        self._post = post
        for signum in self._actions:
            previous = signal.getsignal(signum)
            if signum == signal.SIGHUP and previous == signal.SIG_IGN:
                continue  # started under nohup: keep ignoring hangups
            self._previous[signum] = previous
            signal.signal(signum, self._handle)
        if self._wakeup_fd is not None:
            self._previous_wakeup = signal.set_wakeup_fd(self._wakeup_fd, warn_on_full_buffer=False)

    def stop(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]
        self._previous.clear()
        if self._previous_wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            self._previous_wakeup = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._post is not None:
            name = signal.Signals(signum).name
            self._post(Request(self._actions[signal.Signals(signum)], Origin.SIGNAL, name))
