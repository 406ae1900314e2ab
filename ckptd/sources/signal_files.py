"""``CHECKPOINT`` and ``STOP`` files in the run directory, watched with watchdog.

inotify on local disks; a polling observer for network file systems, where
inotify never hears of changes made on another host. A file already present at
start counts as a request. Files are only tested for existence (lstat) and later
unlinked by the arbiter: never opened, never followed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from ckptd.log import get_logger
from ckptd.requests import Action, Origin, Request
from ckptd.run_dir import CHECKPOINT_FILE, STOP_FILE
from ckptd.sources import Post

_ACTIONS = {CHECKPOINT_FILE: Action.CHECKPOINT, STOP_FILE: Action.STOP}
# Only names appearing matter: with this filter inotify does not even report the writes to
# events.jsonl next to them, each of which would wake the observer's threads.
_APPEARING: list[type[FileSystemEvent]] = [
    FileCreatedEvent, DirCreatedEvent, FileMovedEvent, DirMovedEvent,
]  # fmt: skip


class _Handler(FileSystemEventHandler):
    def __init__(self, post: Post) -> None:
        self._post = post

    def on_created(self, event: FileSystemEvent) -> None:
        self._appeared(event.src_path)

    def on_moved(self, event: FileSystemEvent) -> None:
        self._appeared(event.dest_path)

    def _appeared(self, raw: str | bytes) -> None:
        # Only creation counts: touching a file that is still there repeats a pending request.
        # Whether it still exists when acted on is the arbiter's to check (events arrive late).
        name = os.path.basename(os.fsdecode(raw))
        if name in _ACTIONS:
            self._post(Request(_ACTIONS[name], Origin.FILE, f"{name} file"))


class SignalFiles:
    def __init__(self, directory: Path, watch: str = "inotify", poll_interval: float = 1.0) -> None:
        self.directory = directory
        self.watch = watch
        self.poll_interval = poll_interval
        self._observer: Any = None

    def start(self, post: Post) -> None:
        handler = _Handler(post)
        self._observer = self._start_observer(handler)
        for name, action in _ACTIONS.items():
            if os.path.lexists(self.directory / name):
                post(Request(action, Origin.FILE, f"{name} file (present at start)"))

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def _start_observer(self, handler: _Handler) -> Any:
        if self.watch == "inotify":
            observer = Observer()
            try:
                observer.schedule(
                    handler, str(self.directory), recursive=False, event_filter=_APPEARING
                )
                observer.start()
                return observer
            except OSError as exc:  # e.g. the inotify watch limit is reached
                get_logger().warning(
                    "signal_files.inotify_unavailable", error=str(exc), fallback="poll"
                )
        observer = PollingObserver(timeout=self.poll_interval)
        observer.schedule(handler, str(self.directory), recursive=False, event_filter=_APPEARING)
        observer.start()
        return observer
