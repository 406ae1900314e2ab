"""Crash -> next process running: ckptd next to supervisord and torchrun, same crashing script."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from .harness import Row, Spread, median, ms, records, start_ckptd, stop, wait

CRASHER = r"""
import json, sys, time
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({"event": "start", "t": time.time()}) + "\n")
    out.write(json.dumps({"event": "crash", "t": time.time()}) + "\n")
sys.exit(1)
"""


def _gaps(record: Path) -> list[float]:
    crashes = [r["t"] for r in records(record, "crash")]
    starts = [r["t"] for r in records(record, "start")]
    return [start - crash for crash, start in zip(crashes, starts[1:], strict=False)]


def _crasher(base: Path) -> list[str]:
    script = base / "crasher.py"
    script.write_text(CRASHER)
    return [sys.executable, str(script), str(base / "record.jsonl")]


def ckptd_restarts(base: Path, restarts: int) -> list[float]:
    daemon = start_ckptd(
        base, _crasher(base), "--restart-delay", "0", "--max-restarts", str(restarts)
    )
    try:
        daemon.wait(timeout=300)
    finally:
        stop(daemon)
    return _gaps(base / "record.jsonl")


def _tool(name: str) -> str | None:
    """A peer's command, from this interpreter's environment first, then PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def supervisord_restarts(base: Path, restarts: int) -> list[float] | None:
    binary = _tool("supervisord")
    if binary is None:
        return None
    conf = base / "supervisord.conf"
    command = " ".join(_crasher(base))
    conf.write_text(
        f"[supervisord]\nnodaemon=true\nuser=root\nlogfile={base}/supervisord.log\n"
        f"pidfile={base}/supervisord.pid\n\n[program:crasher]\ncommand={command}\n"
        "autorestart=true\nstartsecs=0\nstartretries=100000\nexitcodes=0\n"
    )
    process = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait(
            lambda: len(records(base / "record.jsonl", "start")) > restarts,
            timeout=300,
            interval=0.05,
        )
    finally:
        stop(process)
    return _gaps(base / "record.jsonl")[:restarts]


def torchrun_restarts(base: Path, restarts: int) -> list[float] | None:
    binary = _tool("torchrun")
    if binary is None:
        return None
    command = _crasher(base)
    process = subprocess.Popen(
        [
            binary,
            "--standalone",
            "--nproc-per-node",
            "1",
            "--max-restarts",
            str(restarts),
            *command[1:],
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        process.wait(timeout=300)
    finally:
        stop(process)
    return _gaps(base / "record.jsonl")


def interpreter_start(samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import json, sys, time"], check=True)
        times.append(time.perf_counter() - began)
    return times


def restart_rows(base: Path, restarts: int, rounds: int = 4) -> list[Row]:
    """ckptd's restarts in ``rounds`` rounds, each next to interpreter starts; peers once."""
    for name in ("supervisord", "torchrun"):
        (base / name).mkdir()
    ours, python, spread_ours, spread_python = [], [], [], []
    for round_ in range(rounds):
        (base / f"ckptd{round_}").mkdir()
        gaps = ckptd_restarts(base / f"ckptd{round_}", max(1, restarts // rounds))
        starts = interpreter_start(max(1, restarts // rounds))
        ours += gaps
        python += starts
        spread_ours.append(median(gaps))
        spread_python.append(median(starts))
    spread = Spread.costs(spread_ours, spread_python)
    peers = {
        "supervisord": supervisord_restarts(base / "supervisord", restarts),
        "torchrun": torchrun_restarts(base / "torchrun", restarts),
    }
    floor = median(python)
    beats = [name for name, gaps in peers.items() if gaps and median(ours) < median(gaps)]
    described = "; ".join(
        f"{name} {ms(gaps)}" if gaps else f"{name}: not installed" for name, gaps in peers.items()
    )
    rows = [
        Row(
            "crash -> next job process running (restart_delay 0)",
            ms(ours),
            f"python start {ms(python)}; {described}",
            spread.median,
            "<= interpreter start + 100 ms; faster than both peers",
            median(ours) <= floor + 0.1 and len(beats) == sum(bool(g) for g in peers.values()),
            note=f"ratio = ckptd p50 / python start p50, per round ({rounds} rounds)",
            data={"ckptd": ours, "python": python, **{k: v or [] for k, v in peers.items()}},
            spread=spread,
        )
    ]
    return rows
