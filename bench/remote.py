"""The remote store: upload and resume (download + verify) vs raw fsspec, on moto's S3 server.

``python -m bench.remote`` (about two minutes with 1 GiB on 2 cores). The floor is the same
bytes moved by a plain ``fs.put`` / ``fs.get`` of the same files through the same s3fs, in
the same run, alternating with ckptd's side so that neither always meets a warmer server.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ckptd_client import manifest

from .harness import Row, median
from .report import table

_FILES = 8
_PORT_LINE = re.compile(rb"Running on http://127\.0\.0\.1:(\d+)")
BUCKET = "ckptd-bench"


@contextmanager
def moto_server(log: Path) -> Iterator[dict[str, Any]]:
    """Run moto's S3 server on loopback; yield the fsspec storage options that reach it."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not (match := _PORT_LINE.search(log.read_bytes())):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start: {log.read_text()[-300:]}")
            time.sleep(0.05)
        options = {
            "endpoint_url": f"http://127.0.0.1:{int(match.group(1))}",
            "key": "bench",
            "secret": "bench",
            "client_kwargs": {"region_name": "us-east-1"},
        }
        import s3fs

        s3fs.S3FileSystem(**options).call_s3("create_bucket", Bucket=BUCKET)
        yield options
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _checkpoint(base: Path, total: int) -> Path:
    block = os.urandom(16 << 20)
    size = total // _FILES
    temp = manifest.new_temp_dir(base, 1)
    for index in range(_FILES):
        with open(temp / f"part{index}.bin", "wb") as handle:
            for offset in range(0, size, len(block)):
                handle.write(block[: min(len(block), size - offset)])
    path, _ = manifest.commit(temp, 1)
    return path


# A CPU-bound stand-in for training: steps per second in 0.1 s windows, one line each.
_STEPPER = r"""
import sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    began, count = time.monotonic(), 0
    while time.monotonic() - began < 0.1:
        sum(range(200))
        count += 1
    print(f"{began:.6f} {count / 0.1:.0f}", flush=True)
"""


def training_during_upload_row(base: Path, total: int, seconds: float) -> Row:
    """Steps/s of a CPU-bound training process while ckptd's upload runs, vs just before it.

    The same process, adjacent periods: ``seconds`` without an upload, then ``seconds`` with
    uploads of a ``total``-byte checkpoint running back to back (to a ``file://`` remote on the
    same disk, so no server process competes for the CPU; the upload runs in this process, as
    it does in the daemon's uploader thread).
    """
    from ckptd.remote_store import RemoteStore

    local = _checkpoint(base / "local", total)
    store = RemoteStore(f"file://{base / 'remote'}", {})
    trainer = subprocess.Popen(
        [sys.executable, "-c", _STEPPER, str(2 * seconds)], stdout=subprocess.PIPE, text=True
    )
    started = time.monotonic()
    time.sleep(seconds)  # the quiet period: this process does nothing while it lasts
    switch, uploads = time.monotonic(), 0
    while trainer.poll() is None:
        store.upload(local, timeout=3600)
        store.delete(1)
        uploads += 1
    assert trainer.stdout is not None
    windows = [tuple(map(float, line.split())) for line in trainer.stdout.read().splitlines()]
    before = [rate for at, rate in windows if started + 0.5 <= at and at + 0.1 <= switch]
    during = [rate for at, rate in windows if at >= switch + 0.2]
    ratio = median(during) / median(before) if before and during else None
    return Row(
        "training steps/s while an upload runs",
        f"{median(during):.0f} steps/s ({uploads} uploads of {total >> 20} MiB)" if during else "-",
        f"{median(before):.0f} steps/s with no upload" if before else "-",
        ratio,
        "ratio >= 0.98",
        None if ratio is None else ratio >= 0.98,
        note="one CPU-bound training process; the upload's reads, writes and fsyncs beside it",
        data={"before": before, "during": during},
    )


def remote_rows(base: Path, total: int, rounds: int) -> list[Row]:
    """Upload and download+verify of a ``total``-byte checkpoint, each next to raw fsspec;
    training steps/s while an upload runs."""
    training = training_during_upload_row(
        base / "training", total, 1.0 if total < (64 << 20) else 8.0
    )
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("s3fs") is None:
        return [
            training,
            Row(
                "upload to / resume from S3",
                "moto or s3fs not installed",
                "-",
                None,
                "ratio >= 0.9",
                None,
                note="pip install -e '.[test,s3]' for these rows",
            ),
        ]
    from ckptd.remote_store import RemoteStore

    local = _checkpoint(base / "local", total)
    files = sorted(str(p) for p in local.glob("part*.bin"))
    with moto_server(base / "moto.log") as options:
        store = RemoteStore(f"s3://{BUCKET}/ckptd", options)
        fs = store.fs
        raw_root = f"{BUCKET}/raw"
        remote_files = [f"{raw_root}/{Path(f).name}" for f in files]
        up_raw, up_ours, down_raw, down_ours = [], [], [], []
        fs.put(files, remote_files)  # warm up the server and both clients' connections, untimed
        store.upload(local, timeout=3600)
        fs.rm(raw_root, recursive=True)
        store.delete(1)
        for round_ in range(rounds):
            # alternate which side goes first, so that neither always meets a warmer server
            for side in ("raw", "ours") if round_ % 2 == 0 else ("ours", "raw"):
                began = time.perf_counter()
                if side == "raw":
                    fs.put(files, remote_files)
                    up_raw.append(time.perf_counter() - began)
                else:
                    assert store.upload(local, timeout=3600).bytes >= total
                    up_ours.append(time.perf_counter() - began)
            for side in ("raw", "ours") if round_ % 2 == 0 else ("ours", "raw"):
                into = base / f"{side}-{round_}"
                began = time.perf_counter()
                if side == "raw":
                    into.mkdir()
                    fs.get(remote_files, [str(into / Path(f).name) for f in remote_files])
                    down_raw.append(time.perf_counter() - began)
                else:
                    assert store.download(1, into, timeout=3600).valid
                    down_ours.append(time.perf_counter() - began)
                shutil.rmtree(into)
            fs.rm(raw_root, recursive=True)
            store.delete(1)
    gib = total / (1 << 30)
    up_ratio = median(up_raw) / median(up_ours)
    down_ratio = median(down_raw) / median(down_ours)
    return [
        Row(
            f"upload of a {gib:.2g} GiB checkpoint ({_FILES} files) to S3 (moto, loopback)",
            f"{median(up_ours):.2f} s ({total / median(up_ours) / 1e6:.0f} MB/s)",
            f"raw fs.put {median(up_raw):.2f} s ({total / median(up_raw) / 1e6:.0f} MB/s)",
            up_ratio,
            "ratio >= 0.9",
            up_ratio >= 0.9,
            note="ckptd: manifest last, parallel files and multipart parts, bounded attempt; "
            "ratio = raw time / ckptd time",
            data={"raw": up_raw, "ckptd": up_ours},
        ),
        Row(
            f"resume from S3: download + full verification of {gib:.2g} GiB",
            f"{median(down_ours):.2f} s",
            f"raw fs.get {median(down_raw):.2f} s",
            down_ratio,
            "ratio >= 0.9",
            down_ratio >= 0.9,
            note="ckptd also fsyncs, hashes every file and renames into place; "
            "ratio = raw time / ckptd time",
            data={"raw": down_raw, "ckptd": down_ours},
        ),
        training,
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.remote", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024, help="checkpoint size (1024)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ckptd-bench-remote-"))
    try:
        rows = remote_rows(work, args.size_mib << 20, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows))
    print(f"\nreproduce: python -m bench.remote {' '.join(sys.argv[1:])}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
