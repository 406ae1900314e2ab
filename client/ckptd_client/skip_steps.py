"""The steps a relaunched job is told to skip: ``CKPTD_SKIP_STEPS``.

After a divergence ckptd relaunches the job from a checkpoint before it and names the
steps whose data led to it, as inclusive windows: ``"1200-1250"``, several separated by
commas (``"1200-1250,3400-3410"``), a single step as ``"77"``. A script skips them by
advancing its data without training on it::

    skip = ck.skip_steps()
    for step in range(start, total):
        batch = next(batches)
        if step in skip:
            continue

Pure: no I/O besides reading the variable in :func:`from_environment`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

ENV_SKIP_STEPS = "CKPTD_SKIP_STEPS"
_WINDOW = re.compile(r"^(\d+)(?:-(\d+))?$")
_MAX_WINDOWS = 1000


@dataclass(frozen=True, order=True)
class SkipWindow:
    """Steps ``first`` to ``last``, both included."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if self.first < 0 or self.last < self.first:
            raise ValueError(f"skip window {self.first}-{self.last} is empty or negative")

    def __contains__(self, step: object) -> bool:
        return isinstance(step, int) and self.first <= step <= self.last

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def text(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


class SkipSteps(tuple[SkipWindow, ...]):
    """Windows sorted and merged where they touch; ``step in skips`` says whether to skip."""

    def __new__(cls, windows: Iterable[SkipWindow] = ()) -> SkipSteps:
        merged: list[SkipWindow] = []
        for window in sorted(windows):
            if merged and window.first <= merged[-1].last + 1:
                last = max(merged[-1].last, window.last)
                merged[-1] = SkipWindow(merged[-1].first, last)
            else:
                merged.append(window)
        return super().__new__(cls, merged)

    def __contains__(self, step: object) -> bool:
        return any(step in window for window in self)

    def steps(self) -> Iterator[int]:
        for window in self:
            yield from range(window.first, window.last + 1)

    def text(self) -> str:
        """The ``CKPTD_SKIP_STEPS`` form; empty when there is nothing to skip."""
        return ",".join(window.text() for window in self)


def parse_skip_steps(text: str) -> SkipSteps:
    """Read ``CKPTD_SKIP_STEPS``; ValueError naming the part that is not ``N`` or ``A-B``."""
    text = text.strip()
    if not text:
        return SkipSteps()
    parts = [part.strip() for part in text.split(",")]
    if len(parts) > _MAX_WINDOWS:
        raise ValueError(f"{ENV_SKIP_STEPS} has {len(parts)} windows (at most {_MAX_WINDOWS})")
    windows = []
    for part in parts:
        match = _WINDOW.match(part)
        if match is None:
            raise ValueError(f"{ENV_SKIP_STEPS}: {part!r} is not a step or a range A-B")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise ValueError(f"{ENV_SKIP_STEPS}: range {part!r} ends before it starts")
        windows.append(SkipWindow(first, last))
    return SkipSteps(windows)


def format_skip_steps(windows: Iterable[SkipWindow]) -> str:
    return SkipSteps(windows).text()


def from_environment() -> SkipSteps:
    """The windows in ``CKPTD_SKIP_STEPS`` (none when unset or empty)."""
    return parse_skip_steps(os.environ.get(ENV_SKIP_STEPS, ""))
