"""Why a commit is slower or faster than a raw write+fsync: ``python -m bench.commit_probe``.

Interleaved runs of each side (the order rotates every round, so neither always follows the
same one), each with a profile: wall time, this process's CPU time (every thread), the
device's written sectors and busy time (``/proc/diskstats``), and the peak of dirty plus
writeback memory sampled every 10 ms. Bytes the device wrote beyond the run's own are
other processes' writes (or the file system's journal) competing for the same disk.

Sides: ``raw`` (write, flush, fsync each file in turn), ``ckptd`` (``ckptd_client.create``
then ``manifest.commit``, as a training script saves), ``ckptd-nowb`` (the same without the
writeback started at each file's close), ``raw-wb`` (raw plus that writeback).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ckptd_client
from ckptd_client import _digest, manifest

from .storage import _FILES, _payload

SIDES = ("raw", "ckptd", "ckptd-nowb", "raw-wb")


def _device(path: Path) -> str | None:
    """The /proc/diskstats name of the block device holding ``path`` (whole disk or part)."""
    major, minor = os.major(os.stat(path).st_dev), os.minor(os.stat(path).st_dev)
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if int(fields[0]) == major and int(fields[1]) == minor:
            return fields[2]
    return None


def _disk(device: str | None) -> tuple[int, int]:
    """(sectors written, ms spent doing I/O) of ``device`` so far."""
    if device is None:
        return 0, 0
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if fields[2] == device:
            return int(fields[9]), int(fields[12])
    return 0, 0


def _dirty_kib() -> int:
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Dirty", "Writeback"):
            values[key] = int(rest.split()[0])
    return sum(values.values())


@contextmanager
def _profile(device: str | None, into: dict[str, Any]) -> Iterator[None]:
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], _dirty_kib())

    sampler = threading.Thread(target=sample, daemon=True)
    sectors, busy = _disk(device)
    cpu, load = os.times(), os.getloadavg()[0]
    sampler.start()
    began = time.perf_counter()
    try:
        yield
    finally:
        into["seconds"] = time.perf_counter() - began
        done.set()
        sampler.join()
        after, (sectors2, busy2) = os.times(), _disk(device)
        into["cpu_seconds"] = (after.user + after.system) - (cpu.user + cpu.system)
        into["device_mib"] = (sectors2 - sectors) * 512 / (1 << 20)
        into["device_busy"] = (busy2 - busy) / 1000
        into["peak_dirty_mib"] = peak[0] / 1024
        into["load"] = load


def _write_raw(directory: Path, parts: list[bytes], writeback: bool) -> None:
    directory.mkdir()
    for index, data in enumerate(parts):
        with open(directory / f"part{index}.bin", "wb") as handle:
            handle.write(data)
            handle.flush()
            if writeback:
                _digest.start_writeback(handle.fileno())
            os.fsync(handle.fileno())
    fd = os.open(directory, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def _commit(root: Path, step: int, parts: list[bytes], writeback: bool) -> None:
    libc = _digest._libc
    if not writeback:
        _digest._libc = None
    try:
        temp = manifest.new_temp_dir(root, step)
        for index, data in enumerate(parts):
            with ckptd_client.create(temp / f"part{index}.bin") as handle:
                handle.write(data)
        manifest.commit(temp, step)
    finally:
        _digest._libc = libc


def probe(
    base: Path, total: int, rounds: int, sides: tuple[str, ...], sync: bool = True
) -> dict[str, Any]:
    """Every side once per round, in an order that rotates each round; profiles per run."""
    parts = _payload(total)
    device = _device(base)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    _write_raw(base / "warmup", parts, False)  # see storage.py: recycle the same blocks
    shutil.rmtree(base / "warmup")
    ckpt = base / "ckpt"
    ckpt.mkdir()
    actions: dict[str, Callable[[int], None]] = {
        "raw": lambda n: _write_raw(base / f"raw{n}", parts, False),
        "raw-wb": lambda n: _write_raw(base / f"raw{n}", parts, True),
        "ckptd": lambda n: _commit(ckpt, n, parts, True),
        "ckptd-nowb": lambda n: _commit(ckpt, n, parts, False),
    }
    for round_ in range(rounds):
        shift = round_ % len(sides)
        for side in sides[shift:] + sides[:shift]:
            if sync:  # each run starts with nothing dirty, its own or other processes'
                os.sync()
            record: dict[str, Any] = {"round": round_}
            with _profile(device, record):
                actions[side](round_)
            runs[side].append(record)
            for leftover in (*base.glob("raw*"), *ckpt.iterdir()):
                shutil.rmtree(leftover)
    return {"device": device, "bytes": total, "files": _FILES, "runs": runs}


def summary(result: dict[str, Any]) -> str:
    runs = result["runs"]
    size = result["bytes"]
    lines = [
        f"{size >> 20} MiB in {result['files']} files on {result['device']}; per side: "
        "best / median seconds, median CPU s, device MiB written, disk busy s, peak dirty MiB"
    ]
    for side, records in runs.items():
        seconds = [r["seconds"] for r in records]
        lines.append(
            f"  {side:11} best {min(seconds):.2f}  median {statistics.median(seconds):.2f}  "
            f"range {min(seconds):.2f}-{max(seconds):.2f}  "
            f"cpu {statistics.median(r['cpu_seconds'] for r in records):.2f}  "
            f"device {statistics.median(r['device_mib'] for r in records):.0f}  "
            f"busy {statistics.median(r['device_busy'] for r in records):.2f}  "
            f"dirty {statistics.median(r['peak_dirty_mib'] for r in records):.0f}"
        )
    if "raw" in runs and "ckptd" in runs:
        pairs = [
            r["seconds"] / c["seconds"] for r, c in zip(runs["raw"], runs["ckptd"], strict=True)
        ]
        lines.append(
            f"  raw/ckptd per round: best {max(pairs):.2f}, median {statistics.median(pairs):.2f}, "
            f"range {min(pairs):.2f}-{max(pairs):.2f} ({len(pairs)} rounds)"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.commit_probe", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--sides", default=",".join(SIDES), help=f"of {','.join(SIDES)}")
    parser.add_argument(
        "--no-sync", action="store_true", help="no sync(2) before each run (as python -m bench)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write every run's profile here")
    args = parser.parse_args()
    sides = tuple(args.sides.split(","))
    if unknown := set(sides) - set(SIDES):
        parser.error(f"unknown sides: {', '.join(sorted(unknown))}")
    root = Path(__file__).resolve().parent.parent
    scratch = str(root) if shutil.disk_usage(root).free > (8 << 30) else None
    work = Path(tempfile.mkdtemp(prefix="ckptd-commit-", dir=scratch))
    try:
        result = probe(work, args.size_mib << 20, args.rounds, sides, not args.no_sync)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(summary(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
