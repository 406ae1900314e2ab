"""Goodput so far, recomputed off the arbiter's loop.

Accounting reads the whole ``events.jsonl`` (a week of a busy job is about half a
second), too slow for the supervisor loop. A thread recomputes it every ``every``
seconds (after 1, 2, 4, ... seconds at first, while the figures of a young job move
fast) and keeps the newest result, an immutable :class:`~ckptd.reporting.goodput.Goodput` that the
loop (``ckptd status``) and the metrics read without a lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from ckptd.reporting.goodput import Goodput, goodput_of
from ckptd.reporting.history import read_events

__all__ = ["GoodputWatch"]


class GoodputWatch:
    """``start()`` a thread that refreshes :attr:`latest`; ``close()`` ends it."""

    def __init__(
        self,
        events: Path,
        every: float = 60.0,
        on_result: Callable[[Goodput], None] | None = None,
    ) -> None:
        self.events = events
        self.every = every
        self.on_result = on_result
        self.latest: Goodput | None = None
        self.error: str | None = None  # why the last refresh failed (the file unreadable)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ckptd-goodput", daemon=True)
        self._thread.start()

    def refresh(self) -> Goodput | None:
        """Recompute now (the live job's unsaved tail up to this moment); None if unreadable."""
        try:
            result = goodput_of(read_events(self.events), now=time.time())
        except OSError as exc:
            self.error = f"{self.events}: {exc.strerror or exc}"
            return None
        except (ValueError, KeyError, TypeError) as exc:  # a bug must not end the thread
            self.error = f"{self.events}: {type(exc).__name__}: {exc}"
            return None
        self.latest, self.error = result, None
        if self.on_result is not None:
            self.on_result(result)
        return result

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        wait = min(1.0, self.every)  # a young job's figures change fast: look often at first
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(wait)
            wait = min(wait * 2, self.every)
