"""How fast uploads go, and whether ``upload_timeout`` lets one finish.

Fed by the uploader's thread after each upload, and after each attempt cut at its timeout
(the bytes it moved still tell the bandwidth); read from any thread. Thread-safe.
"""

from __future__ import annotations

import collections
import threading

from ckptd.storage.remote.outcomes import UploadTimeoutShort

__all__ = ["UploadMeter"]

_MEASUREMENTS = 3  # the last few uploads: the link as it is now


class UploadMeter:
    def __init__(self, upload_timeout: float) -> None:
        self.upload_timeout = upload_timeout
        self._lock = threading.Lock()
        self._recent: collections.deque[tuple[int, float]] = collections.deque(maxlen=_MEASUREMENTS)
        self._short = False

    def measured(self, size: int, seconds: float) -> None:
        """``size`` bytes went up in ``seconds`` (a whole upload or an attempt cut short)."""
        if size > 0 and seconds > 0:
            with self._lock:
                self._recent.append((size, seconds))

    @property
    def bandwidth(self) -> float | None:
        """Bytes per second of the last few measurements (None before the first)."""
        with self._lock:
            sent = sum(size for size, _ in self._recent)
            seconds = sum(seconds for _, seconds in self._recent)
        return sent / seconds if sent and seconds > 0 else None

    def expected_seconds(self, size: int) -> float | None:
        """How long ``size`` bytes should take to upload at the measured bandwidth."""
        bandwidth = self.bandwidth
        return size / bandwidth if bandwidth else None

    def too_short(self, step: int, size: int) -> UploadTimeoutShort | None:
        """The warning when an upload of ``size`` bytes cannot finish within upload_timeout at
        the measured bandwidth; given once each time that becomes so, None otherwise."""
        bandwidth = self.bandwidth
        expected = size / bandwidth if bandwidth else None
        short = expected is not None and expected > self.upload_timeout
        with self._lock:
            warn, self._short = short and not self._short, short
        if not warn or bandwidth is None or expected is None:
            return None
        return UploadTimeoutShort(
            step, size, round(expected, 3), self.upload_timeout, round(bandwidth)
        )
