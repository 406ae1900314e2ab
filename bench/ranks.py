"""Ranks under torchrun: the client's cost per step, request to all ranks flagged, group restarts.

    python -m bench.ranks [--quick] [--requests 50] [--crashes 3]

Five figures, each from real ``ckptd run -- torchrun`` jobs (gloo on CPU):

- client cost per step (``step()`` + ``should_checkpoint()`` + ``should_stop()``, nothing
  pending), timed in a loop on every rank, 2 ranks (a group) next to 1 rank (no group);
  goal: equal within noise, i.e. no collective and no syscall per step.
- request -> all ranks flagged: from the control request to the moment the last rank's
  ``should_checkpoint()`` turned true, ranks doing one allreduce per step (synchronous
  training); p99 goal < 10 ms. The agreed step is the first step every rank can still
  take, so this includes up to one training step.
- request -> every rank on every node flagged: the same with two ``ckptd run`` (two
  "nodes") around ``torchrun --nnodes 2`` on loopback, the requests alternating between the
  daemons; they reach the other node through torchrun's rendezvous store; p99 goal < 20 ms;
  and request -> the step committed on both nodes (each commits after every node wrote).
- a rank SIGKILLed -> both ranks training again (after ``init_process_group``) under
  ckptd, next to a bare ``torchrun`` start to the same point: the supervision's own cost
  is the difference; most of both is interpreters importing torch and the rendezvous.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from .harness import Row, Tail, median, ms, percentile, records, start_ckptd, stop, wait

# MODE RECORD [ITERATIONS]: "cost" times the client's calls; "train" trains (one allreduce
# per step), notes when a request is first seen and saves at the agreed step.
WORKER = r"""
import json, os, sys, time
import torch, torch.distributed as dist
import ckptd_client

mode, path = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
out = open(path, "a", buffering=1)
def note(event, **fields):
    out.write(json.dumps({"event": event, "rank": rank, "t": time.time(), **fields}) + "\n")
ck = ckptd_client.connect()
note("start", pid=os.getpid())
if mode == "cost":
    iterations = int(sys.argv[3])
    for repeat in range(7):
        began = time.thread_time()  # this thread's CPU time: blind to the other rank's share
        for step in range(iterations):
            ck.step(step)
            if ck.should_checkpoint() or ck.should_stop():
                break
        note("cost", ns=(time.thread_time() - began) / iterations * 1e9)
    ck.close()
    dist.destroy_process_group()
    sys.exit(0)
one = torch.ones(1)
step = 0
while True:
    dist.all_reduce(one)
    time.sleep(0.001)
    ck.step(step)
    if ck.should_checkpoint():
        note("flag", step=step)
        with ck.checkpoint(step) as d:
            (d / f"rank-{rank}.bin").write_bytes(b"x" * 1024)
    if ck.should_stop():
        break
    step += 1
ck.close()
dist.destroy_process_group()
"""


def _torchrun(base: Path, nproc: int, *args: str) -> list[str]:
    script = base / "worker.py"
    script.write_text(WORKER)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "--max-restarts=0",
        str(script),
        *args,
    ]


def cost_row(base: Path, iterations: int) -> Row:
    per_world: dict[int, float] = {}
    for nproc in (1, 2):
        work = base / f"cost-{nproc}"
        work.mkdir()
        record = work / "record.jsonl"
        daemon = start_ckptd(work, _torchrun(work, nproc, "cost", str(record), str(iterations)))
        try:
            daemon.wait(timeout=600)
        finally:
            stop(daemon)
        per_world[nproc] = median([r["ns"] for r in records(record, "cost")])
    ratio = per_world[2] / per_world[1]
    return Row(
        "client cost per step, 2 ranks vs 1",
        f"{per_world[2]:.0f} ns",
        f"{per_world[1]:.0f} ns",
        round(ratio, 3),
        "equal within noise",
        ratio < 1.5,
        "step() + should_checkpoint() + should_stop(), nothing pending; CPU time of the "
        "training thread, median of 7 loops per rank",
        {"ns": per_world},
    )


def latency_row(base: Path, requests: int) -> Row:
    from ckptd_client.control import Controller

    work = base / "latency"
    work.mkdir()
    record = work / "record.jsonl"
    daemon = start_ckptd(work, _torchrun(work, 2, "train", str(record)))
    samples: list[float] = []
    try:
        tail = Tail(record)
        wait(lambda: tail.count("start") == 2, timeout=120)
        with Controller(run_dir=work / "run") as control:
            for index in range(requests):
                sent = time.time()
                control.checkpoint(wait=True, timeout=60)
                wait(lambda index=index: tail.count("flag") >= 2 * (index + 1), timeout=60)
                flags = [r for r in tail.rows if r.get("event") == "flag"][-2:]
                assert len({r["step"] for r in flags}) == 1, flags
                samples.append(max(r["t"] for r in flags) - sent)
            control.stop(wait=True, timeout=120)
    finally:
        stop(daemon)
    p99 = percentile(samples, 0.99)
    return Row(
        "request -> both ranks flagged",
        ms(samples),
        "",
        None,
        "p99 < 10 ms",
        p99 < 0.010,
        f"{len(samples)} control requests; one allreduce + 1 ms per step; same step on both",
        {"seconds": samples},
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def nodes_rows(base: Path, requests: int, nproc: int = 2) -> list[Row]:
    """Two ``ckptd run`` (two "nodes") around ``torchrun --nnodes 2``; requests alternate
    between the two daemons; the time until the last rank of both nodes is flagged, and
    until both nodes' parts are committed (each node commits once every node has written)."""
    from ckptd_client.control import Controller

    endpoint = f"127.0.0.1:{_free_port()}"
    works, daemons = [], []
    record = base / "nodes-record.jsonl"
    for index in (0, 1):
        work = base / f"node{index}"
        work.mkdir()
        script = work / "worker.py"
        script.write_text(WORKER)
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            f"--nproc-per-node={nproc}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id=bench-{os.getpid()}",
            "--max-restarts=0",
            str(script),
            "train",
            str(record),
        ]
        works.append(work)
        daemons.append(start_ckptd(work, command))
    world = 2 * nproc
    samples: list[float] = []
    sent_at: list[float] = []
    try:
        tail = Tail(record)
        wait(lambda: tail.count("start") == world, timeout=180)
        controls = [Controller(run_dir=work / "run") for work in works]
        try:
            for index in range(requests + 1):  # the first one warms up
                sent = time.time()
                controls[index % 2].checkpoint(wait=True, timeout=60)
                wait(lambda index=index: tail.count("flag") >= world * (index + 1), timeout=60)
                flags = [r for r in tail.rows if r.get("event") == "flag"][-world:]
                assert len({r["step"] for r in flags}) == 1, flags
                samples.extend([max(r["t"] for r in flags) - sent] if index else [])
                sent_at.append(sent)
            controls[0].stop(wait=True, timeout=120)
        finally:
            for control in controls:
                control.close()
    finally:
        for daemon in daemons:
            stop(daemon)
    committed = [
        [r["time"] for r in records(work / "run" / "events.jsonl", "checkpoint.committed")]
        for work in works
    ]
    commits = [
        max(committed[0][index], committed[1][index]) - sent_at[index]
        for index in range(1, min(len(sent_at), *map(len, committed)))
    ]
    p99 = percentile(samples, 0.99)
    return [
        Row(
            f"request -> all {world} ranks on 2 nodes flagged",
            ms(samples),
            "",
            None,
            "p99 < 20 ms",
            p99 < 0.020,
            f"{len(samples)} control requests alternating between the two nodes' daemons; "
            "through torchrun's rendezvous store (loopback); same step on every rank",
            {"seconds": samples},
        ),
        Row(
            "request -> committed on both nodes",
            ms(commits),
            "",
            None,
            "-",
            None,
            "each node commits its part once every node has written (counted in the store); "
            "1 KiB per rank",
            {"seconds": commits},
        ),
    ]


def crash_row(base: Path, crashes: int) -> Row:
    work = base / "crash"
    work.mkdir()
    record = work / "record.jsonl"
    daemon = start_ckptd(work, _torchrun(work, 2, "train", str(record)), "--restart-delay", "0")
    gaps: list[float] = []
    try:
        tail = Tail(record)
        for crash in range(crashes):
            wait(lambda crash=crash: tail.count("start") == 2 * (crash + 1), timeout=120)
            victim = [r for r in tail.rows if r.get("event") == "start"][-1]["pid"]
            killed = time.time()
            os.kill(victim, signal.SIGKILL)
            wait(lambda crash=crash: tail.count("start") == 2 * (crash + 2), timeout=120)
            gaps.append(max(r["t"] for r in tail.rows[-4:] if r.get("event") == "start") - killed)
    finally:
        stop(daemon)
    bare: list[float] = []
    for attempt in range(crashes):
        work = base / f"bare-{attempt}"
        work.mkdir()
        began = time.time()
        process = subprocess.Popen(
            _torchrun(work, 2, "train", str(work / "record.jsonl")),
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if not k.startswith("CKPTD_")},
            start_new_session=True,
        )
        try:
            wait(lambda work=work: len(records(work / "record.jsonl", "start")) == 2, timeout=120)
            bare.append(max(r["t"] for r in records(work / "record.jsonl", "start")) - began)
        finally:
            # torchrun starts its ranks in sessions of their own: the group kill misses them.
            ranks = psutil.Process(process.pid).children(recursive=True)
            os.killpg(process.pid, signal.SIGKILL)
            for rank in ranks:
                try:
                    rank.kill()
                except psutil.NoSuchProcess:
                    pass
            process.wait()
            psutil.wait_procs(ranks, timeout=10)
    overhead = median(gaps) - median(bare)
    return Row(
        "rank SIGKILLed -> group training again",
        f"{median(gaps) * 1e3:.0f} ms",
        f"{median(bare) * 1e3:.0f} ms bare torchrun start",
        round(median(gaps) / median(bare), 3),
        "bare start + < 1 s",
        overhead < 1.0,
        "torchrun notices, stops the group and exits; ckptd relaunches (no backoff)",
        {"seconds": gaps, "bare_seconds": bare},
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ranks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--crashes", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    try:
        import torch  # noqa: F401
    except ImportError:
        print("bench.ranks needs torch (pip install ckptd[torch])", file=sys.stderr)
        return 2
    requests = args.requests or (3 if args.quick else 50)
    crashes = args.crashes or (1 if args.quick else 3)
    base = Path(tempfile.mkdtemp(prefix="ckptd-bench-ranks-"))
    try:
        rows = [
            cost_row(base, 2_000 if args.quick else 200_000),
            latency_row(base, requests),
            *nodes_rows(base, requests),
            crash_row(base, crashes),
        ]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for row in rows:
        met = {True: "yes", False: "NO", None: "-"}[row.met]
        print(f"{row.figure:42} {row.ckptd:28} {row.baseline:34} {row.goal:22} {met}")
        print(f"{'':42} {row.note}")
    if args.out is not None:
        args.out.write_text(json.dumps([row.as_dict() for row in rows], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
