"""The spot scenario's schedule: what happens when, and what anyone could reach on it."""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass
from itertools import pairwise


@dataclass(frozen=True)
class Event:
    at: float  # seconds after the first launch
    kind: str  # "notice", "kill" or "vm loss"
    window: float = 0.0  # a notice's time before the VM goes


@dataclass(frozen=True)
class Scenario:
    seconds: float  # span of the schedule
    step_time: float
    save_time: float  # what writing a checkpoint takes
    snapshot: float  # > 0: background saves, stalling training this long; 0: synchronous
    steps: int  # the fixed amount of work
    window: tuple[float, float]  # bounds of a notice's window
    margin: float  # ckptd's [preemption] margin
    mtbf: str  # ckptd's prior
    every_min: str
    baseline_every: float
    every: dict[str, float]  # mean seconds between events of each kind; 0: none


def scenario(args: argparse.Namespace) -> Scenario:
    seconds = args.minutes * 60
    step_time = 0.05
    quick = args.quick
    return Scenario(
        seconds=seconds,
        step_time=step_time,
        save_time=0.2 if quick else 0.5,
        snapshot=0.0 if args.saves == "sync" else (0.02 if quick else 0.05),
        steps=int(seconds * 0.8 / step_time),  # about the schedule's span at 0.8 goodput
        window=(6.0, 8.0) if quick else (10.0, 20.0),
        margin=2.0 if quick else 5.0,
        mtbf=args.mtbf,
        every_min="2s" if quick else "5s",
        baseline_every=60.0,
        every={"notice": args.notice_every, "kill": args.kill_every, "vm loss": args.vm_every},
    )


def schedule(seed: int, s: Scenario) -> list[Event]:
    """Events at random times, as many of each kind as ``s.every`` asks for over the span.

    At least one notice and one kill when their kind is on; events keep 5 s apart and
    out of a notice's window (and the 5 s after it).
    """
    rng = random.Random(seed)
    counts = {
        kind: (int(s.seconds // every) if kind == "vm loss" else max(1, round(s.seconds / every)))
        for kind, every in s.every.items()
        if every > 0
    }
    lead = min(10.0, s.seconds / 4)  # the first launch and first save come first
    for _ in range(10_000):
        events = sorted(
            (
                Event(
                    round(rng.uniform(lead, s.seconds), 2),
                    kind,
                    round(rng.uniform(*s.window), 1) if kind == "notice" else 0.0,
                )
                for kind, n in counts.items()
                for _ in range(n)
            ),
            key=lambda e: e.at,
        )
        if all(b.at - a.at >= max(5.0, a.window + 5.0) for a, b in pairwise(events)):
            return events
    raise SystemExit("spot: no schedule fits these minutes; give it more --minutes")


def bounds(s: Scenario, events: list[Event], restart: float) -> dict[str, float]:
    """What anyone could reach on this schedule, given one restart cost of ``restart`` seconds.

    Every notice costs a final save that the job waits for in full, and a restart; so does
    the end of the work. ``oracle``: saves right before each kill it knows of in advance
    (one stall and one restart per kill). ``young_daly``: no foreknowledge, the best fixed
    interval for the kills' rate, whose expected waste is sqrt(2 x stall x work x kills).
    """
    work = s.steps * s.step_time
    stall = s.snapshot or s.save_time
    whole = s.snapshot + s.save_time
    kills = sum(1 for e in events if e.kind != "notice")
    notices = len(events) - kills
    fixed = notices * (whole + restart) + kills * restart + whole
    periodic = math.sqrt(2 * stall * work * kills)
    return {
        "oracle": work / (work + fixed + kills * stall),
        "young_daly": work / (work + fixed + periodic),
        "young_daly_interval": math.sqrt(2 * stall * work / kills) if kills else 0.0,
    }
