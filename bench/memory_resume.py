"""The memory tier's resume: trainer SIGKILLed -> its first step again, from RAM vs from disk.

A torch trainer holds a state of ``size`` bytes and saves it with ``torch.save`` when asked.
Each round, alternating the sides, a fresh ``ckptd run``:

- *RAM*: ``--memory-every`` asks for a save into the memory tier (``--every 1h``: the disk
  holds nothing newer), the trainer is SIGKILLed right after it committed; ckptd persists the
  RAM copy to disk before the relaunch (docs/memory-tier.md), which loads it from RAM.
- *disk*: ``ckptd checkpoint --wait`` saves to ``checkpoint_dir``; the files are then dropped
  from the page cache (``posix_fadvise(DONTNEED)``: what a disk holds after a while, or after
  a reboot), the trainer SIGKILLed, the relaunch loads them from the disk.

Measured: from the SIGKILL to the relaunched trainer's first step, and the part of it before
the launch (ckptd's preparation: persistence, verification). Both sides pay the interpreter
and ``import torch``, which is most of the time at this size on a small machine.
``python -m bench.memory_resume [--size-mib N] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .harness import Row, Spread, median, records, start_ckptd, stop, wait

TRAINER = r"""
import json, os, sys, time
import torch
import ckptd_client
record, size = sys.argv[1], int(sys.argv[2])
out = open(record, "a", buffering=1)
ck = ckptd_client.connect()
began = time.perf_counter()
last = ck.restore()
state = torch.load(last.path / "state.pt") if last else {"w": torch.ones(size // 4)}
loaded = time.perf_counter() - began
step = last.step + 1 if last else 0
out.write(json.dumps({"event": "first_step", "t": time.time(), "step": step, "load": loaded,
                      "pid": os.getpid(), "resumed": bool(last)}) + "\n")
while True:
    time.sleep(0.01)
    state["w"][0] += 1
    ck.step(step)
    if ck.should_checkpoint():
        with ck.checkpoint(step) as d:
            torch.save(state, d / "state.pt")
    if ck.should_stop():
        break
    step += 1
ck.close()
"""


def _drop_cache(directory: Path) -> None:
    """Evict a committed (fsynced, so clean) checkpoint's pages from the page cache."""
    for path in directory.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _events(base: Path, event: str) -> list[dict]:
    return records(base / "run" / "events.jsonl", event)


def _one(base: Path, size: int, memory: bool) -> tuple[float, float, float]:
    """(SIGKILL -> first step again, SIGKILL -> relaunch, restore() + torch.load) in seconds."""
    base.mkdir()
    script = base / "trainer.py"
    script.write_text(TRAINER)
    record = base / "record.jsonl"
    command = [sys.executable, str(script), str(record), str(size)]
    options = ["--restart-delay", "0", "--grace", "120s"]
    ram = Path("/dev/shm") / f"ckptd-bench-resume-{os.getpid()}-{base.name}"
    if memory:
        options += ["--memory-every", "2s", "--every", "1h", "--memory-dir", str(ram)]
        options += ["--memory-keep", "1"]
    daemon = start_ckptd(base, command, *options)
    try:
        wait(lambda: records(record, "first_step"), timeout=120, interval=0.05)
        if memory:
            committed = wait(
                lambda: [
                    e for e in _events(base, "checkpoint.committed") if e.get("tier") == "memory"
                ],
                timeout=120,
                interval=0.05,
            )[0]
        else:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "ckptd",
                    "checkpoint",
                    "--run-dir",
                    str(base / "run"),
                    "--wait",
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
            committed = _events(base, "checkpoint.committed")[0]
            _drop_cache(Path(committed["path"]))
        victim = records(record, "first_step")[0]["pid"]
        killed = time.time()
        os.kill(victim, signal.SIGKILL)
        again = wait(lambda: records(record, "first_step")[1:], timeout=180, interval=0.005)[0]
        started = _events(base, "job.started")[1]
        assert again["resumed"] and again["step"] == committed["step"] + 1, (again, committed)
        return again["t"] - killed, started["time"] - killed, again["load"]
    finally:
        stop(daemon)
        shutil.rmtree(ram, ignore_errors=True)  # a named memory_dir is emptied, not removed


def resume_row(base: Path, size: int, rounds: int) -> Row:
    """Row: SIGKILL -> first step again with a ``size`` torch state, RAM vs a cold disk."""
    try:
        import torch  # noqa: F401
    except ImportError:
        figure = "trainer SIGKILL -> first step again, from RAM vs a cold disk"
        return Row(figure, "needs torch (pip install -e '.[torch]')", "-", None, "-", None)
    ram_times, disk_times, ram_launch, disk_launch, ram_load, disk_load = [], [], [], [], [], []
    for round_ in range(rounds):
        for memory in (round_ % 2 == 0, round_ % 2 == 1):  # the first side alternates
            name = f"{'ram' if memory else 'disk'}-{round_}"
            total, launch, load = _one(base / name, size, memory)
            (ram_times if memory else disk_times).append(total)
            (ram_launch if memory else disk_launch).append(launch)
            (ram_load if memory else disk_load).append(load)
    spread = Spread.times(ram_times, disk_times)
    mib = size >> 20
    return Row(
        f"trainer SIGKILL -> first step again, {mib} MiB torch state, from RAM vs a cold disk",
        f"RAM {median(ram_times):.2f} s, best {min(ram_times):.2f} s",
        f"disk {median(disk_times):.2f} s, best {min(disk_times):.2f} s",
        spread.median,
        "disk / RAM >= 2",
        spread.median >= 2,
        note=f"ratio = disk time / RAM time per round; of which before the launch (ckptd's "
        f"preparation): RAM {median(ram_launch):.2f} s (persisting the RAM copy to disk first), "
        f"disk {median(disk_launch):.2f} s (verifying the cold copy); restore() + torch.load "
        f"in the trainer: RAM {median(ram_load):.2f} s, disk {median(disk_load):.2f} s (this "
        "VM's disk reads a file dropped from the page cache at memory speed); the rest is the "
        "interpreter and import torch",
        data={
            "ram": ram_times,
            "disk": disk_times,
            "ram_launch": ram_launch,
            "disk_launch": disk_launch,
            "ram_load": ram_load,
            "disk_load": disk_load,
        },
        spread=spread,
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_resume", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ckptd-bench-resume-") as work:
        row = resume_row(Path(work), args.size_mib << 20, args.rounds)
    print(row)
    again = f"--size-mib {args.size_mib} --rounds {args.rounds}"
    print(f"reproduce: python -m bench.memory_resume {again}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
