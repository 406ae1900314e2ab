"""Request sources: each turns what it sees into a Request and posts it to the arbiter.

A source never acts on the job itself; it only calls ``post``, which is safe
from any thread and from a signal handler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ckptd.requests import Request

Post = Callable[[Request], None]


class RequestSource(Protocol):
    def start(self, post: Post) -> None: ...
    def stop(self) -> None: ...


__all__ = ["Post", "RequestSource"]
