"""Slow work off the supervisor loop: verification, leftover kills, pruning, the requeue command.

One worker thread runs submitted calls in order and posts each outcome back to the
loop as a :class:`Finished` value, so the loop stays responsive to signals, stops and
the systemd watchdog while a disk or a process takes its time. The worker never logs
and never touches the arbiter's state: the loop does, when the value arrives.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Finished:
    """The outcome of one submitted call: ``result``, or the ``error`` it raised."""

    tag: str
    result: Any = None
    error: BaseException | None = None
    context: Any = None


_STOP = object()


class Background:
    def __init__(self, post: Callable[[Finished], None]) -> None:
        self._post = post
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="ckptd-background", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._pending > 0

    def submit(self, tag: str, call: Callable[[], Any], context: Any = None) -> None:
        """Run ``call()`` on the worker; its :class:`Finished` is posted when done."""
        with self._lock:
            self._pending += 1
        self._jobs.put((tag, call, context))

    def stop(self, timeout: float = 30.0) -> None:
        """Let queued work finish (up to ``timeout``), then end the thread."""
        self._jobs.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            tag, call, context = job
            try:
                outcome = Finished(tag, result=call(), context=context)
            except Exception as exc:  # handed to the loop, which reports it
                outcome = Finished(tag, error=exc, context=context)
            with self._lock:
                self._pending -= 1
            self._post(outcome)
