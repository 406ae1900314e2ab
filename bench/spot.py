"""Goodput on a spot schedule: ckptd with ``every = "auto"`` next to a bash restart loop.

``python -m bench.spot [--minutes 3] [--seed N] [--saves async|sync] [--quick]``

Both contenders run at the same time, on the same machine, and train the same fixed
amount of work (``bench/spot_trainer.py``: steps of a fixed time, saves of 0.5 s written
in the background after a 50 ms snapshot, or with ``--saves sync`` with training waiting
for all of it). One seeded schedule hits both at the same moments: preemption notices
(a short window before the VM goes), SIGKILLs of the training process, and losses of the
whole VM (everything SIGKILLed); a preempted or lost VM is replaced at once on the same
disk (see ``bench/spot_sides.py``).

Ground truth, the same for both: ``goodput = steps of the final result x step time /
wall time``, the wall time running from the first launch to the moment the finished
result was saved. Steps trained more than once count as lost. ckptd's own
``ckptd report --json`` figure is printed next to it (it leaves out the time between two
daemons, when no ckptd ran).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from ckptd.process.trainer import become_subreaper

from .harness import records
from .spot_schedule import Event, Scenario, bounds, scenario, schedule
from .spot_sides import CkptdSide, LoopSide, MemorySide, Side, kill_all

GOAL = 0.97
_TICK = 0.05


def run(sides: list[Side], events: list[Event], s: Scenario) -> float:
    """Launch every side, apply the schedule to each, until all have finished their work."""
    began = time.monotonic()
    for side in sides:
        side.launch()
    pending = list(events)
    give_up = began + max(3 * s.seconds, 60.0)
    while not all(side.done() for side in sides):
        now = time.monotonic()
        if now > give_up:
            print("spot: not finished in time; the figures count what was saved", flush=True)
            break
        while pending and now - began >= pending[0].at:
            event = pending.pop(0)
            window = f" ({event.window:g} s window)" if event.kind == "notice" else ""
            print(f"  t={now - began:6.1f} s  {event.kind}{window}", flush=True)
            for side in sides:
                if side.done():
                    continue
                if event.kind == "notice":
                    side.notice(event.window)
                elif event.kind == "kill":
                    side.kill_job()
                else:
                    side.lose_vm()
        for side in sides:
            side.tend()
        time.sleep(_TICK)
    return time.time()


@dataclass(frozen=True)
class Figures:
    name: str
    goodput: float
    steps_kept: int
    steps_lost: int
    trained: int
    saves: int
    save_seconds: float
    wall: float
    interval: str
    restart_seconds: list[float]
    applied: list[tuple[float, str, str]]
    own: dict[str, Any] | None = None  # ckptd report --json
    step_time: float = 0.0

    @property
    def other(self) -> float:
        """Wall time neither trained nor saving: starts, restarts, waits."""
        return self.wall - self.trained * self.step_time - self.save_seconds


def figures(side: Side, s: Scenario, ended: float) -> Figures:
    rows = records(side.record)
    steps = [r for r in rows if r["event"] == "step"]
    saves = [r for r in rows if r["event"] == "saved"]
    stalls = [r for r in rows if r["event"] == "stalled"]
    done = [r for r in rows if r["event"] == "done"]
    end = done[-1]["t"] if done else ended
    kept = s.steps if done else max((r["step"] + 1 for r in saves), default=0)
    wall = end - side.launches[0]
    return Figures(
        name=side.name,
        goodput=kept * s.step_time / wall,
        steps_kept=kept,
        steps_lost=len(steps) - kept,
        trained=len(steps),
        saves=len(saves),
        save_seconds=sum(r["t"] - r["began"] for r in stalls),
        wall=wall,
        interval=_interval(side),
        restart_seconds=_restarts(side, rows),
        applied=side.applied,
        own=_own_report(side) if isinstance(side, CkptdSide) else None,
        step_time=s.step_time,
    )


def _restarts(side: Side, rows: list[dict[str, Any]]) -> list[float]:
    """From the first launch, each kill and VM loss: seconds to the next step trained."""
    steps = [r["t"] for r in rows if r["event"] == "step"]
    gaps = [steps[0] - side.launches[0]] if steps else []
    for at, event, what in side.applied:
        if event in ("kill", "vm loss") and not what.startswith("no "):
            later = [t for t in steps if t > at]
            if later:
                gaps.append(later[0] - at)
    return gaps


def _interval(side: Side) -> str:
    if not isinstance(side, CkptdSide):
        return side.interval()
    if isinstance(side, MemorySide):
        chosen = [
            r["every"]
            for r in records(side.base / "run" / "events.jsonl", "memory.interval")
            if isinstance(r.get("every"), (int, float))
        ]
        first = f"{chosen[0]:.1f} s, last {chosen[-1]:.1f} s" if chosen else "1 s (no change)"
        return f"RAM auto, first {first}"
    chosen = [
        r["every"]
        for r in records(side.base / "run" / "events.jsonl", "checkpoint.interval")
        if isinstance(r.get("every"), (int, float))
    ]
    if not chosen:
        return "auto (no choice logged)"
    return f"auto, first {chosen[0]:.1f} s, last {chosen[-1]:.1f} s ({len(chosen)} choices)"


def _own_report(side: Side) -> dict[str, Any] | None:
    result = subprocess.run(
        [sys.executable, "-m", "ckptd", "report", "--run-dir", str(side.base / "run"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        return dict(json.loads(result.stdout))
    except ValueError:
        return None


def table(results: list[Figures]) -> str:
    header = (
        "contender", "goodput", "steps kept", "steps lost", "saves", "save s", "other s",
        "wall s", "interval",
    )  # fmt: skip
    cells = [header] + [
        (
            f.name,
            f"{f.goodput:.3f}",
            str(f.steps_kept),
            str(f.steps_lost),
            str(f.saves),
            f"{f.save_seconds:.1f}",
            f"{f.other:.1f}",
            f"{f.wall:.1f}",
            f.interval,
        )
        for f in results
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(header))) for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.spot", description=__doc__)
    parser.add_argument("--minutes", type=float, default=3.0, help="span of the schedule (3)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the schedule (1)")
    parser.add_argument("--quick", action="store_true", help="short windows and saves: smoke test")
    parser.add_argument("--mtbf", default="10m", help="ckptd's prior MTBF (10m)")
    parser.add_argument("--notice-every", type=float, default=60.0, help="s per notice (60)")
    parser.add_argument("--kill-every", type=float, default=90.0, help="s per process kill (90)")
    parser.add_argument("--vm-every", type=float, default=0.0, help="s per VM loss (0: none)")
    parser.add_argument(
        "--saves",
        choices=("async", "sync"),
        default="async",
        help="async: background saves stalling training for a 50 ms snapshot (default); "
        "sync: training waits for the whole save",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="a third contender: ckptd with the memory tier (memory_every = auto), saves in "
        "RAM taking a tenth of a disk save",
    )
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--keep", type=Path, help="leave the run directories and records here")
    args = parser.parse_args()
    become_subreaper()  # orphans of a SIGKILLed ckptd come back here, to be killed
    s = scenario(args)
    events = schedule(args.seed, s)
    command = "python -m bench.spot " + " ".join(sys.argv[1:])
    print(
        f"spot: {s.steps} steps x {s.step_time * 1e3:.0f} ms = {s.steps * s.step_time:.0f} s of "
        f"work, saves of {s.save_time} s "
        + (f"(in the background after a {s.snapshot} s snapshot)" if s.snapshot else "(sync)")
        + f", {len(events)} events over {s.seconds:.0f} s "
        f"(seed {args.seed})",
        flush=True,
    )
    trainer = ["--steps", str(s.steps), "--step-time", str(s.step_time)]
    trainer += ["--save-time", str(s.save_time), "--snapshot", str(s.snapshot)]
    options = [
        "--every", "auto", "--every-min", s.every_min, "--mtbf", s.mtbf,
        "--restart-delay", "0", "--max-restarts", "1000",
    ]  # fmt: skip
    work = args.keep or Path(tempfile.mkdtemp(prefix="ckptd-spot-"))
    sides: list[Side] = []
    try:
        sides = [
            CkptdSide(work / "ckptd", trainer, options, s.margin),
            LoopSide(work / "loop", trainer, s.baseline_every, s.step_time),
        ]
        if args.memory:
            ram = _ram_dir(work)
            ram_save = s.snapshot or s.save_time / 10
            sides.append(MemorySide(work / "memory", trainer, options, s.margin, ram, ram_save))
        ended = run(sides, events, s)
        results = [figures(side, s, ended) for side in sides]
    finally:
        for side in sides:
            side.close()
        _kill_leftovers()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        if args.memory:
            shutil.rmtree(_ram_dir(work), ignore_errors=True)
    report(results, s, events, command, args.out)
    return 0


def report(
    results: list[Figures], s: Scenario, events: list[Event], command: str, out: Path | None
) -> None:
    ours, loop, *more = results
    restart = statistics.median(loop.restart_seconds) if loop.restart_seconds else 0.5
    limits = bounds(s, events, restart)
    if out is not None:
        out.write_text(
            json.dumps(
                {
                    "command": command,
                    "scenario": asdict(s),
                    "events": [asdict(e) for e in events],
                    "results": [{**asdict(f), "other": f.other} for f in results],
                    "bounds": limits,
                    "restart": restart,
                    "goal": GOAL,
                    "met": ours.goodput >= GOAL,
                },
                indent=1,
            )
            + "\n"
        )
    print()
    print(table(results))
    if ours.own:
        own = ours.own
        print(
            f"\nckptd report --json: goodput {own.get('ratio', 0):.3f} (productive "
            f"{own.get('productive', 0):.1f} s, saving {own.get('saving', 0):.1f} s, lost "
            f"{own.get('lost', 0):.1f} s, restarting {own.get('restarting', 0):.1f} s, "
            f"offline {own.get('offline', 0):.1f} s, {own.get('failures', 0)} failures, "
            f"{own.get('preemptions', 0)} preemptions)"
        )
    print(
        f"\nbest anyone could do on this schedule ({len(events)} events, one restart "
        f"{restart:.2f} s as measured on the loop): oracle {limits['oracle']:.3f} "
        f"(saves right before each kill it knows of); without foreknowledge about "
        f"{limits['young_daly']:.3f} ("
        + (
            f"Young/Daly interval {limits['young_daly_interval']:.1f} s for these kills)"
            if limits["young_daly_interval"]
            else "no kills: no periodic save needed)"
        )
    )
    met = ours.goodput >= GOAL
    verdict = "met" if met else "NOT met"
    print(f"goal: ckptd goodput >= {GOAL}: {verdict} ({ours.goodput:.3f})", end="")
    if not met and limits["oracle"] < GOAL:
        print(f"; out of reach on this schedule: even the oracle gets {limits['oracle']:.3f}")
    else:
        print()
    print(f"ckptd / loop: {ours.goodput / loop.goodput:.2f}x")
    for memory in more:
        above = memory.goodput > limits["young_daly"]
        print(
            f"ckptd + memory tier: {memory.goodput:.3f}, {memory.goodput / loop.goodput:.2f}x "
            f"the loop, {memory.goodput / ours.goodput:.2f}x ckptd without it; "
            f"{'above' if above else 'not above'} the disk-only Young/Daly bound "
            f"{limits['young_daly']:.3f}"
        )
    print(f"\nreproduce: {command}")


def _ram_dir(work: Path) -> Path:
    """The memory side's memory_dir: on /dev/shm when it is a tmpfs, else beside the run."""
    from ckptd.storage.memory import RAM_FILESYSTEMS, filesystem_of

    shm = Path("/dev/shm")
    if filesystem_of(shm) in RAM_FILESYSTEMS:
        return shm / f"ckptd-spot-{abs(hash(str(work))) % 10**8:08d}"
    return work / "ram"


def _kill_leftovers() -> None:
    """Anything still below this process (adopted orphans included) is SIGKILLed and reaped."""
    kill_all(psutil.Process().children(recursive=True))


if __name__ == "__main__":
    raise SystemExit(main())
