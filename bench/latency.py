"""Latency figures of the core daemon, measured with real processes; prints how to reproduce.

    python bench/latency.py [--requests 200]

- touch CHECKPOINT -> the training process sees should_checkpoint() (and -> committed)
- SIGUSR1 to ckptd, and `checkpoint` over the control socket -> should_checkpoint()
- `status` round trip over the control socket, next to a bare ZeroMQ ipc round trip
- SIGTERM to ckptd -> final checkpoint committed (the save itself is ~a 1 KiB file)
- job crash -> next job process running (restart_delay 0), next to the interpreter's own start
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

from ckptd_client.control import Controller

TRAINER = r"""
import json, os, sys, time
import ckptd_client
out = open(sys.argv[1], "a", buffering=1)
attempt = os.environ["CKPTD_ATTEMPT"]
out.write(json.dumps({"event": "start", "t": time.time(), "attempt": attempt}) + "\n")
crash = len(sys.argv) > 2
ck = ckptd_client.connect()
step = 0
while True:
    if crash:
        out.write(json.dumps({"event": "crash", "t": time.time()}) + "\n")
        sys.exit(1)
    time.sleep(0.0005)
    step += 1
    ck.step(step)
    if ck.should_checkpoint():
        seen = time.time()
        with ck.checkpoint(step) as d:
            (d / "w").write_bytes(b"x" * 1024)
        out.write(json.dumps({"event": "flag", "t": seen, "committed": time.time()}) + "\n")
    if ck.should_stop():
        out.write(json.dumps({"event": "stop", "t": time.time()}) + "\n")
        break
"""


def _records(path: Path, event: str) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["event"] == event]


def _wait(condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.001)
    return value


def _start(
    base: Path, record: Path, *extra: str, options: tuple[str, ...] = ()
) -> subprocess.Popen:
    script = base / "trainer.py"
    script.write_text(TRAINER)
    argv = [
        sys.executable,
        "-m",
        "ckptd",
        "run",
        "--run-dir",
        str(base / "run"),
        "--checkpoint-dir",
        str(base / "ckpt"),
        "--keep-last",
        "2",
        *options,
        "--",
        sys.executable,
        str(script),
        str(record),
        *extra,
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"p50 {statistics.median(ordered) * 1000:7.2f} ms   p99 {p99 * 1000:7.2f} ms   "
        f"(n={len(ordered)})"
    )


def request_latency(base: Path, requests: int) -> dict[str, list[float]]:
    record = base / "record.jsonl"
    daemon = _start(base, record)
    try:
        _wait(lambda: record.exists() and _records(record, "start"))
        _wait(
            lambda: (
                (base / "run" / "events.jsonl").exists()
                and "client.connected" in (base / "run" / "events.jsonl").read_text()
            )
        )
        file_flag, file_commit, usr1_flag, zmq_flag, status_rtt = [], [], [], [], []
        trigger = base / "run" / "CHECKPOINT"
        control = Controller(run_dir=base / "run")
        for index in range(requests * 3):
            count = len(_records(record, "flag"))
            began = time.time()
            if index % 3 == 0:
                trigger.touch()
            elif index % 3 == 1:
                os.kill(daemon.pid, signal.SIGUSR1)
            else:
                control.checkpoint()
            row = _wait(
                lambda count=count: (
                    len(_records(record, "flag")) > count and _records(record, "flag")[-1]
                )
            )
            if index % 3 == 0:
                _wait(lambda: not trigger.exists())
                file_flag.append(row["t"] - began)
                file_commit.append(time.time() - began)
            else:
                (usr1_flag if index % 3 == 1 else zmq_flag).append(row["t"] - began)
            time.sleep(0.01)  # let the commit's acknowledgement land before the next request
        for _ in range(requests):
            began = time.perf_counter()
            control.status()
            status_rtt.append(time.perf_counter() - began)
        control.close()
        began = time.time()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        final = _records(record, "flag")[-1]["committed"] - began
        return {
            "file_flag": file_flag,
            "file_commit": file_commit,
            "usr1_flag": usr1_flag,
            "zmq_flag": zmq_flag,
            "status_rtt": status_rtt,
            "sigterm_commit": [final],
        }
    finally:
        daemon.kill()
        daemon.wait()


def restart_latency(base: Path, restarts: int) -> list[float]:
    record = base / "record.jsonl"
    daemon = _start(
        base, record, "crash", options=("--restart-delay", "0", "--max-restarts", str(restarts))
    )
    try:
        daemon.wait(timeout=120)
    finally:
        daemon.kill()
        daemon.wait()
    crashes = [r["t"] for r in _records(record, "crash")]
    starts = [r["t"] for r in _records(record, "start")]
    return [start - crash for crash, start in zip(crashes, starts[1:], strict=False)]


_IMPORTS = "import json, os, sys, time, ckptd_client"


def interpreter_start(samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", _IMPORTS], check=True)
        times.append(time.perf_counter() - began)
    return times


def zmq_round_trip(samples: int) -> list[float]:
    """The floor: a bare DEALER/ROUTER echo over ipc, in this process."""
    context = zmq.Context()
    path = Path(tempfile.mkdtemp(prefix="ckptd-zmq-")) / "echo.sock"
    router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    router.bind(f"ipc://{path}")
    dealer.connect(f"ipc://{path}")

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
    shutil.rmtree(path.parent, ignore_errors=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--restarts", type=int, default=30)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="ckptd-bench-"))
    try:
        (base / "a").mkdir()
        (base / "b").mkdir()
        requests = request_latency(base / "a", args.requests)
        restarts = restart_latency(base / "b", args.restarts)
        python = interpreter_start(args.restarts)
        floor = zmq_round_trip(args.requests)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"touch CHECKPOINT -> should_checkpoint()   {_percentiles(requests['file_flag'])}")
    print(f"touch CHECKPOINT -> committed, file gone  {_percentiles(requests['file_commit'])}")
    print(f"SIGUSR1 -> should_checkpoint()            {_percentiles(requests['usr1_flag'])}")
    print(f"Controller.checkpoint() -> flag set       {_percentiles(requests['zmq_flag'])}")
    print(f"status round trip (ipc)                   {_percentiles(requests['status_rtt'])}")
    print(f"bare zmq ipc round trip (the floor)       {_percentiles(floor)}")
    final_ms = requests["sigterm_commit"][0] * 1000
    print(f"SIGTERM -> final checkpoint committed     {final_ms:7.2f} ms")
    print(f"crash -> next job running (delay 0)       {_percentiles(restarts)}")
    print(f"python -c '{_IMPORTS}' {_percentiles(python)}  (the floor of the line above)")
    print(
        f"reproduce: python bench/latency.py --requests {args.requests} --restarts {args.restarts}"
    )


if __name__ == "__main__":
    main()
