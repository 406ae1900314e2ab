"""What supervision costs while training: the daemon's CPU, and training throughput."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

from ckptd_client.control import Controller

from .harness import (
    Row,
    Spread,
    median,
    start_ckptd,
    stop,
    trainer_command,
    wait,
    wait_connected,
)

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
        warm, warm_steps, warm_cpu = now, steps, time.process_time()
    if warm is not None and now - warm >= duration:
        break
cpu = time.process_time() - warm_cpu
ck.close()
done = steps - warm_steps
result = {"steps_per_s": done / (now - warm), "steps_per_cpu_s": done / cpu}
open(out, "w").write(json.dumps(result))
"""


def cpu_row(base: Path, seconds: float) -> Row:
    """The daemon's CPU time and its loop's wake-ups over ``seconds`` of training with a
    checkpoint every 5 s; the CPU of each of its threads, to say what costs."""
    daemon = start_ckptd(base, trainer_command(base), "--every", "5s", "--keep-last", "2")
    try:
        wait_connected(base)
        process = psutil.Process(daemon.pid)
        with Controller(run_dir=base / "run") as control:
            turns = control.status()["wakeups"]
            before, threads, began = process.cpu_times(), _thread_cpu(daemon.pid), time.monotonic()
            time.sleep(seconds)
            after, elapsed = process.cpu_times(), time.monotonic() - began
            threads = {
                tid: cpu - threads.get(tid, 0.0) for tid, cpu in _thread_cpu(daemon.pid).items()
            }
            turns = control.status()["wakeups"] - turns
    finally:
        stop(daemon)
    used = (after.user + after.system) - (before.user + before.system)
    share, main = used / elapsed, threads.get(daemon.pid, 0.0) / elapsed
    return Row(
        "daemon CPU while training",
        f"{share * 100:.2f}% of a core ({used * 60 / elapsed:.2f} s per minute), "
        f"{turns / elapsed:.1f} wake-ups/s",
        "-",
        None,
        "< 1% of one core",
        share < 0.01,
        note=f"{elapsed:.0f} s of training, a checkpoint every 5 s; the loop's thread "
        f"{main * 100:.2f}%, the {len(threads) - 1} others {(share - main) * 100:.2f}%",
        data={"cpu_seconds": used, "elapsed": elapsed, "wakeups": turns, "threads": threads},
    )


def _thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of ``pid`` (/proc/<pid>/task/<tid>/stat: utime + stime)."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return found


def throughput_row(base: Path, seconds: float, pairs: int) -> Row:
    """Steps per second of the same script bare and under ckptd, run side by side.

    The CPU speed of this kind of VM drifts by tens of percent within seconds, so the two
    runs of a pair share the same seconds, each pinned to its own core, swapping cores
    from pair to pair; bare-vs-bare pairs measured the same way give the noise floor.
    """
    script = base / "throughput.py"
    script.write_text(THROUGHPUT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPTD_")}
    cores = sorted(os.sched_getaffinity(0))[:2]
    ratios, control = [], []
    for index in range(pairs):
        first, second = (cores[index % 2], cores[(index + 1) % 2]) if len(cores) > 1 else (0, 0)
        bare_out, other_out = base / f"bare{index}.json", base / f"other{index}.json"
        where = base / f"ckptd{index}"
        where.mkdir()
        bare = _pinned([sys.executable, str(script), str(seconds), str(bare_out)], env, first)
        if index % 3 == 2:  # every third pair: bare against bare, the noise floor
            other = _pinned(
                [sys.executable, str(script), str(seconds), str(other_out)], env, second
            )
        else:
            command = [
                sys.executable,
                "-m",
                "ckptd",
                "run",
                "--run-dir",
                str(where / "run"),
                "--checkpoint-dir",
                str(where / "ckpt"),
                "--every",
                "5s",
                "--restart",
                "never",
                "--",
                sys.executable,
                str(script),
                str(seconds),
                str(other_out),
            ]
            other = _pinned(command, env, second)
        for process in (bare, other):
            process.wait(timeout=120)
        ratio = _rate(other_out) / _rate(bare_out)
        (control if index % 3 == 2 else ratios).append(ratio)
    pairs, floor = Spread(tuple(ratios)), Spread(tuple(control)) if control else None
    return Row(
        "training steps/s under ckptd vs bare (side by side)",
        f"ratio {pairs.median:.3f}",
        f"bare vs bare (noise floor): {floor.text()}" if floor else "-",
        pairs.median,
        "ratio >= 0.99",
        pairs.median >= 0.99,
        note=f"{len(ratios)} pairs of {seconds:g} s, cores swapped each pair, ~25 us Python steps",
        data={"ratios": ratios, "control": control},
        spread=pairs,
    )


def _pinned(command: list[str], env: dict[str, str], core: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
    )


def _rate(path: Path) -> float:
    return float(wait(lambda: path.exists() and json.loads(path.read_text()))["steps_per_s"])


def hot_path_row(calls: int = 2_000_000, rounds: int = 5) -> Row:
    """What the client costs per training step: ck.step() + ck.should_checkpoint(), in
    ``rounds`` rounds each next to the floor (an attribute write and read)."""
    import ckptd_client

    os.environ.pop("CKPTD_ENDPOINT", None)
    ck = ckptd_client.connect(checkpoint_dir=Path(os.devnull).parent / "nonexistent-ckptd")

    class Plain:
        flag = False

    plain = Plain()
    ours, floor = [], []
    per_round = max(1, calls // rounds)
    try:
        for _ in range(rounds):
            began = time.perf_counter()
            for step in range(per_round):
                ck.step(step)
                ck.should_checkpoint()
            ours.append((time.perf_counter() - began) / per_round)
            began = time.perf_counter()
            for step in range(per_round):
                plain.flag = step > -1
                _ = plain.flag
            floor.append((time.perf_counter() - began) / per_round)
    finally:
        ck.close()
    spread = Spread.costs(ours, floor)
    return Row(
        "client cost per step: step() + should_checkpoint()",
        f"{median(ours) * 1e9:.0f} ns",
        f"an attribute write + read: {median(floor) * 1e9:.0f} ns",
        spread.median,
        "no syscall, no lock",
        None,
        note="two method calls; < 1% of any step longer than 20 us",
        data={"ckptd_s": ours, "floor_s": floor},
        spread=spread,
    )


STEPS = r"""
import sys
import ckptd_client
steps = int(sys.argv[1])
ck = ckptd_client.connect()
def work():
    return sum(i * i for i in range(300))
for step in range(steps):
    work()
    ck.step(step)
    if ck.should_checkpoint():
        with ck.checkpoint(step) as d:
            (d / "w").write_bytes(b"x")
ck.close()
"""


def instructions_row(base: Path, steps: int) -> Row:
    """Instructions per training step, bare and under ckptd, counted by callgrind.

    Counting does not drift with the CPU's speed the way seconds do on a VM. Runs of
    ``steps`` and ``2 * steps`` are subtracted, which cancels start-up. The client's
    background thread is counted too; as callgrind slows the process ~50x while that
    thread wakes on wall-clock timers, its share is overstated here, so the ratio is a
    lower bound of the real one.
    """
    valgrind = shutil.which("valgrind")
    if valgrind is None or steps == 0:
        why = "valgrind not installed" if valgrind is None else "skipped (--quick)"
        return Row(
            "instructions per step under ckptd vs bare (callgrind)",
            why,
            "-",
            None,
            "ratio >= 0.99",
            None,
        )
    script = base / "steps.py"
    script.write_text(STEPS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPTD_")}
    counts: dict[str, list[int]] = {"bare": [], "ckptd": []}
    for label in ("bare", "ckptd"):
        for n in (steps, 2 * steps):
            out = base / f"{label}-{n}.callgrind"
            command = [
                valgrind,
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                str(script),
                str(n),
            ]
            if label == "bare":
                subprocess.run(
                    command,
                    env={**env, "CKPTD_CHECKPOINT_DIR": str(base / "c")},
                    check=True,
                    cwd=base,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            else:
                where = base / f"run-{n}"
                daemon = start_ckptd(where, command, "--restart", "never")
                daemon.wait(timeout=600)
            counts[label].append(_callgrind_total(out))
    bare = (counts["bare"][1] - counts["bare"][0]) / steps
    ours = (counts["ckptd"][1] - counts["ckptd"][0]) / steps
    ratio = bare / ours
    return Row(
        "instructions per step under ckptd vs bare (callgrind)",
        f"{ours:,.0f} instructions/step",
        f"bare {bare:,.0f} instructions/step",
        ratio,
        "ratio >= 0.99",
        ratio >= 0.99,
        note=f"runs of {steps} and {2 * steps} steps subtracted; ratio = bare / ckptd, "
        "a lower bound (see bench/overhead.py)",
        data={"bare": counts["bare"], "ckptd": counts["ckptd"]},
    )


def _callgrind_total(path: Path) -> int:
    for line in wait(lambda: path.exists() and path.read_text()).splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise ValueError(f"no totals in {path}")
