"""Request latency: touch, ZeroMQ, signals -> the flag in the job; SIGTERM -> final commit."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from ckptd_client.control import Controller

from .harness import (
    Row,
    Spread,
    Tail,
    median,
    ms,
    percentile,
    records,
    start_ckptd,
    stop,
    trainer_command,
    wait,
    wait_connected,
)

Rounds = list[list[float]]  # samples of each round


def request_rows(base: Path, requests: int, rounds: int = 5) -> list[Row]:
    """Rows for touch / ZeroMQ / SIGUSR1 requests, each next to its raw mechanism.

    ``requests`` of each kind in ``rounds`` rounds; each round's floors are measured right
    after it, while the daemon and its job still run, so each round gives one ratio.
    """
    record = base / "record.jsonl"
    daemon = start_ckptd(base, trainer_command(base), "--keep-last", "2")
    kinds = ("file", "usr1", "zmq", "status", "inotify", "zmq_rtt", "signal")
    samples: dict[str, Rounds] = {kind: [] for kind in kinds}
    per_round = max(1, requests // rounds)
    try:
        wait_connected(base)
        trigger = base / "run" / "CHECKPOINT"
        tail = Tail(record)
        with Controller(run_dir=base / "run") as control:
            for _ in range(rounds):
                for kind in kinds:
                    samples[kind].append([])
                for index in range(per_round * 3):
                    kind = ("file", "usr1", "zmq")[index % 3]
                    seen = tail.count("flag")
                    began = time.time()
                    if kind == "file":
                        trigger.touch()
                    elif kind == "usr1":
                        os.kill(daemon.pid, signal.SIGUSR1)
                    else:
                        control.checkpoint()
                    wait(lambda seen=seen: tail.count("flag") > seen, interval=0.0002)
                    samples[kind][-1].append(tail.last("flag")["seen"] - began)
                    # The next request must not join this one: wait until ckptd has its ack.
                    wait(
                        lambda: (
                            control.status()["checkpoint_in_flight"] is None
                            and not trigger.exists()
                        )
                    )
                    # ... and until the trainer has stepped past that commit: a request arriving
                    # before its next step is answered by that checkpoint, unseen by the trainer.
                    wait(lambda seen=seen: tail.count("moved") > seen, interval=0.0002)
                for _ in range(per_round):
                    began = time.perf_counter()
                    control.status()
                    samples["status"][-1].append(time.perf_counter() - began)
                samples["inotify"][-1] += raw_inotify(per_round)
                samples["zmq_rtt"][-1] += raw_zmq(per_round)
                samples["signal"][-1] += raw_signal(per_round)
    finally:
        stop(daemon)
    return [
        _vs(
            "touch CHECKPOINT -> flag set",
            samples["file"],
            samples["inotify"],
            "inotify event (watchdog)",
            goal_ms=20.0,
        ),
        _vs(
            "ckptd checkpoint (ZeroMQ) -> flag set",
            samples["zmq"],
            samples["zmq_rtt"],
            "ZeroMQ ipc round trip",
            goal_ms=5.0,
        ),
        _vs(
            "status round trip over the control socket",
            samples["status"],
            samples["zmq_rtt"],
            "ZeroMQ ipc round trip",
            goal_ms=5.0,
        ),
        _vs(
            "SIGUSR1 -> flag set",
            samples["usr1"],
            samples["signal"],
            "signal to a Python process",
            goal_ms=5.0,
        ),
    ]


def sigterm_rows(base: Path, runs: int, save_seconds: float = 0.2) -> list[Row]:
    """SIGTERM -> flag set, and SIGTERM -> final checkpoint committed minus the save itself."""
    flag, overhead, signals = [], [], []
    for run in range(runs):
        signals.append(raw_signal(3))  # each run next to its own floor
        where = base / f"run{run}"
        where.mkdir()
        daemon = start_ckptd(where, trainer_command(where, "no-crash", str(save_seconds)))
        try:
            wait_connected(where)
            began = time.time()
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
        finally:
            stop(daemon)
        final = records(where / "record.jsonl", "flag")[-1]
        flag.append([final["seen"] - began])
        overhead.append(final["committed"] - began - save_seconds)
    return [
        _vs("SIGTERM -> flag set", flag, signals, "signal to a Python process", goal_ms=5.0),
        Row(
            "SIGTERM -> final checkpoint committed, minus the save",
            ms(overhead),
            "-",
            None,
            "< 100 ms",
            percentile(overhead, 0.99) < 0.1,
            note=f"{runs} runs, a {save_seconds:g} s save each",
            data={"seconds": overhead},
        ),
    ]


def _vs(figure: str, ours: Rounds, floor: Rounds, what: str, goal_ms: float) -> Row:
    """Percentiles over every sample; one ratio of medians per round (the spread)."""
    spread = Spread.costs([median(r) for r in ours], [median(r) for r in floor])
    pooled, pooled_floor = [s for r in ours for s in r], [s for r in floor for s in r]
    return Row(
        figure,
        ms(pooled),
        f"{what}: {ms(pooled_floor)}",
        spread.median if spread.ratios else None,
        f"p99 < {goal_ms:g} ms",
        percentile(pooled, 0.99) * 1e3 < goal_ms,
        note=f"ratio = p50 / floor p50, per round ({len(ours)} rounds)",
        data={"ckptd": ours, "floor": floor},
        spread=spread,
    )


def raw_inotify(samples: int) -> list[float]:
    """Touch-to-event latency of watchdog's inotify observer alone, in this process."""
    directory = Path(tempfile.mkdtemp(prefix="ckptd-inotify-"))
    seen = threading.Event()
    stamp: list[float] = []

    class Handler(FileSystemEventHandler):
        def on_created(self, event):  # type: ignore[no-untyped-def]
            stamp.append(time.time())
            seen.set()

    observer = Observer()
    observer.schedule(Handler(), str(directory), recursive=False)
    observer.start()
    times = []
    try:
        for _ in range(samples):
            seen.clear()
            stamp.clear()
            began = time.time()
            (directory / "CHECKPOINT").touch()
            seen.wait(5)
            times.append(stamp[0] - began)
            (directory / "CHECKPOINT").unlink()
            time.sleep(0.002)
    finally:
        observer.stop()
        observer.join()
        shutil.rmtree(directory, ignore_errors=True)
    return times


def raw_zmq(samples: int) -> list[float]:
    """A bare DEALER/ROUTER echo over ipc."""
    context = zmq.Context()
    directory = Path(tempfile.mkdtemp(prefix="ckptd-zmq-"))
    router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    router.bind(f"ipc://{directory}/echo.sock")
    dealer.connect(f"ipc://{directory}/echo.sock")

    def echo() -> None:
        for _ in range(samples):
            router.send_multipart(router.recv_multipart())

    thread = threading.Thread(target=echo)
    thread.start()
    times = []
    for _ in range(samples):
        began = time.perf_counter()
        dealer.send(b'{"v":1}')
        dealer.recv()
        times.append(time.perf_counter() - began)
    thread.join()
    router.close(linger=0)
    dealer.close(linger=0)
    context.term()
    shutil.rmtree(directory, ignore_errors=True)
    return times


SIGNAL_PROBE = r"""
import os, signal, sys, time
def handle(signum, frame):
    os.write(1, repr(time.time()).encode() + b"\n")
signal.signal(signal.SIGUSR1, handle)
os.write(1, b"ready\n")
while True:
    time.sleep(0.0005)
"""


def raw_signal(samples: int) -> list[float]:
    """SIGUSR1 to a Python process busy in the same kind of loop, until its handler ran."""
    probe = subprocess.Popen([sys.executable, "-c", SIGNAL_PROBE], stdout=subprocess.PIPE)
    assert probe.stdout is not None
    times = []
    try:
        probe.stdout.readline()
        for _ in range(samples):
            began = time.time()
            probe.send_signal(signal.SIGUSR1)
            times.append(float(probe.stdout.readline()) - began)
    finally:
        probe.kill()
        probe.wait()
    return times
