"""Shared pieces of the benchmark: result rows, statistics, daemons, and the measured trainer."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# A trainer that records, with wall-clock times, when it started, when it first saw each
# request, when its saves committed, and its first step after each. Arguments: RECORD
# [crash] [save-seconds].
TRAINER = r"""
import json, os, sys, time
import ckptd_client
out = open(sys.argv[1], "a", buffering=1)
def note(event, **fields):
    out.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
note("start", attempt=os.environ.get("CKPTD_ATTEMPT"))
if len(sys.argv) > 2 and sys.argv[2] == "crash":
    note("crash")
    sys.exit(1)
save_seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
ck = ckptd_client.connect()
step, saved = 0, False
while True:
    time.sleep(0.0005)
    step += 1
    ck.step(step)
    if saved:
        note("moved", step=step)  # past the commit: a request now is not answered by it
        saved = False
    if ck.should_checkpoint():
        seen = time.time()
        with ck.checkpoint(step) as d:
            (d / "w").write_bytes(b"x" * 1024)
            if save_seconds:
                time.sleep(save_seconds)
        note("flag", seen=seen, committed=time.time(), step=step)
        saved = True
    if ck.should_stop():
        note("stop", step=step)
        break
ck.close()
"""


@dataclass(frozen=True)
class Spread:
    """The ratios of interleaved pairs: each is one ckptd run over the floor run beside it.

    A VM's speed swings within seconds, so one ratio of two medians can say anything; the
    median of the pairs' ratios, the best one and their range show what the code reaches
    and how much of the difference is the machine.
    """

    ratios: tuple[float, ...]
    higher_is_better: bool = True

    @classmethod
    def times(cls, ours: list[float], floor: list[float]) -> Spread:
        """Durations of the same work: ``floor[i] / ours[i]``, higher is better."""
        return cls(tuple(f / o for o, f in zip(ours, floor, strict=True) if o > 0), True)

    @classmethod
    def rates(cls, ours: list[float], floor: list[float]) -> Spread:
        """Rates (steps/s): ``ours[i] / floor[i]``, higher is better."""
        return cls(tuple(o / f for o, f in zip(ours, floor, strict=True) if f > 0), True)

    @classmethod
    def costs(cls, ours: list[float], floor: list[float]) -> Spread:
        """A latency or a stall next to its floor: ``ours[i] / floor[i]``, lower is better."""
        return cls(tuple(o / f for o, f in zip(ours, floor, strict=True) if f > 0), False)

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def best(self) -> float:
        return max(self.ratios) if self.higher_is_better else min(self.ratios)

    def text(self) -> str:
        return (
            f"{self.median:.2f} (best {self.best:.2f}, range {min(self.ratios):.2f}-"
            f"{max(self.ratios):.2f}, {len(self.ratios)} pairs)"
        )


@dataclass
class Row:
    """One line of the results table: ckptd's figure next to its floor or peer.

    ``ratio`` is the median of ``spread`` when the row has interleaved pairs.
    """

    figure: str
    ckptd: str
    baseline: str
    ratio: float | None
    goal: str
    met: bool | None
    note: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    spread: Spread | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(samples: list[float]) -> str:
    """'p50 1.23 / p99 4.56 ms' for a list of seconds."""
    return (
        f"p50 {percentile(samples, 0.5) * 1e3:.2f} / p99 {percentile(samples, 0.99) * 1e3:.2f} ms"
    )


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def records(path: Path, event: str | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if event is None or row.get("event") == event:
            rows.append(row)
    return rows


class Tail:
    """New JSON lines of a growing file, read incrementally (cheap enough to poll often)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.rows: list[dict[str, Any]] = []

    def count(self, event: str) -> int:
        self._read()
        return sum(1 for row in self.rows if row.get("event") == event)

    def last(self, event: str) -> dict[str, Any]:
        return [row for row in self.rows if row.get("event") == event][-1]

    def _read(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        self.rows += [json.loads(line) for line in lines if line.strip()]


def wait(condition: Callable[[], Any], timeout: float = 60.0, interval: float = 0.001) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not met in time")
        time.sleep(interval)
    return value


def start_ckptd(
    base: Path, command: list[str], *options: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``ckptd run`` with its run and checkpoint directories under ``base``."""
    argv = [
        sys.executable,
        "-m",
        "ckptd",
        "run",
        "--run-dir",
        str(base / "run"),
        "--checkpoint-dir",
        str(base / "ckpt"),
        *options,
        "--",
        *command,
    ]
    return subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def trainer_command(base: Path, *args: str) -> list[str]:
    script = base / "trainer.py"
    script.write_text(TRAINER)
    return [sys.executable, str(script), str(base / "record.jsonl"), *args]


def wait_connected(base: Path) -> None:
    events = base / "run" / "events.jsonl"
    wait(lambda: events.exists() and "client.connected" in events.read_text(), timeout=60)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
