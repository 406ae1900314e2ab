"""What supervision costs while training: the daemon's CPU, and training throughput."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from .harness import Row, median, start_ckptd, stop, trainer_command, wait, wait_connected

THROUGHPUT = r"""
import json, sys, time
import ckptd_client
duration, out = float(sys.argv[1]), sys.argv[2]
ck = ckptd_client.connect()
def work():
    return sum(i * i for i in range(300))
steps, began, warm = 0, time.perf_counter(), None
while True:
    work()
    steps += 1
    ck.step(steps)
    if ck.should_checkpoint():
        with ck.checkpoint(steps) as d:
            (d / "w").write_bytes(b"x")
    now = time.perf_counter()
    if warm is None and now - began > 0.5:
        warm, warm_steps = now, steps
    if warm is not None and now - warm >= duration:
        break
ck.close()
open(out, "w").write(json.dumps({"steps_per_s": (steps - warm_steps) / (now - warm)}))
"""


def cpu_row(base: Path, seconds: float) -> Row:
    """The daemon's CPU time over ``seconds`` of training with a checkpoint every 5 s."""
    daemon = start_ckptd(base, trainer_command(base), "--every", "5s", "--keep-last", "2")
    try:
        wait_connected(base)
        process = psutil.Process(daemon.pid)
        before, began = process.cpu_times(), time.monotonic()
        time.sleep(seconds)
        after, elapsed = process.cpu_times(), time.monotonic() - began
    finally:
        stop(daemon)
    used = (after.user + after.system) - (before.user + before.system)
    share = used / elapsed
    return Row(
        "daemon CPU while training",
        f"{share * 100:.2f}% of a core ({used * 60 / elapsed:.2f} s per minute)",
        "-",
        None,
        "< 1% of one core",
        share < 0.01,
        note=f"{elapsed:.0f} s of training, a checkpoint every 5 s",
        data={"cpu_seconds": used, "elapsed": elapsed},
    )


def throughput_row(base: Path, seconds: float, pairs: int) -> Row:
    """Steps per second of the same script bare and under ckptd, alternated."""
    script = base / "throughput.py"
    script.write_text(THROUGHPUT)
    bare, supervised = [], []
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPTD_")}
    for index in range(pairs):
        out = base / f"bare{index}.json"
        subprocess.run(
            [sys.executable, str(script), str(seconds), str(out)],
            env=env,
            check=True,
            cwd=base,
            stdout=subprocess.DEVNULL,
        )
        bare.append(json.loads(out.read_text())["steps_per_s"])
        where = base / f"ckptd{index}"
        where.mkdir()
        out = where / "result.json"
        daemon = start_ckptd(
            where,
            [sys.executable, str(script), str(seconds), str(out)],
            "--every",
            "5s",
            "--restart",
            "never",
        )
        try:
            daemon.wait(timeout=120)
        finally:
            stop(daemon)
        supervised.append(
            wait(lambda out=out: out.exists() and json.loads(out.read_text()))["steps_per_s"]
        )
    ratio = median(supervised) / median(bare)
    return Row(
        "training steps/s under ckptd vs bare (alternated)",
        f"{median(supervised):,.0f} steps/s",
        f"bare {median(bare):,.0f} steps/s",
        ratio,
        "ratio >= 0.99",
        ratio >= 0.99,
        note=f"{pairs} pairs of {seconds:g} s, ~50 us of Python work per step",
        data={"bare": bare, "ckptd": supervised},
    )
