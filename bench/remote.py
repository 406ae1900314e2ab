"""The remote store: upload and resume (download + verify) vs raw fsspec, on moto's S3 server.

``python -m bench.remote`` (about three minutes with 1 GiB on 2 cores). The floor is the same
bytes moved by a plain ``fs.put`` / ``fs.get`` of the same files through the same s3fs, in
the same run, alternating with ckptd's side so that neither always meets a warmer server:
each upload starts from the same server state, and downloads go in ABBA order.
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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ckptd_client import manifest

from .harness import Row, Spread, median
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
while True:
    began, count = time.monotonic(), 0
    while time.monotonic() - began < 0.1:
        sum(range(200))
        count += 1
    print(f"{began:.6f} {count / 0.1:.0f}", flush=True)
"""
_WINDOW = 0.1
_SETTLE = 0.5  # after an upload ends, its writeback may still run: not a quiet window yet


class _BackToBack:
    """ckptd's uploader (its own thread, as in the daemon) sending one checkpoint repeatedly."""

    def __init__(self, store: Any, local: Path) -> None:
        from ckptd.storage.remote.uploader import Uploaded, Uploader

        self.store, self.local, self.count = store, local, 0
        self._uploaded = Uploaded
        self._event = threading.Event()
        self._failure: str | None = None
        self.uploader = Uploader(store, self._post).start()

    def _post(self, outcome: Any) -> None:
        if not isinstance(outcome, self._uploaded):
            self._failure = str(outcome)
        self._event.set()

    def until(self, end: float) -> None:
        """Upload back to back until ``end`` (monotonic); the last one runs to its end."""
        while time.monotonic() < end:
            self._event.clear()
            self.uploader.submit(self.local, 1)
            if not self._event.wait(3600) or self._failure:
                raise RuntimeError(f"upload failed: {self._failure}")
            self.store.delete(1)  # so that the next one is a full upload again
            self.count += 1


def training_during_upload_row(base: Path, total: int, seconds: float, periods: int = 4) -> Row:
    """Steps/s of a CPU-bound training process while ckptd's uploader runs, vs while it rests.

    ``periods`` quiet periods alternate with as many busy ones, ``seconds`` / ``periods``
    each (a busy one lasts until its last upload ends), so that a change in the machine's
    other load hits both sides. Busy: uploads of a ``total``-byte checkpoint back to back
    by ckptd's uploader thread, to a ``file://`` remote on the same disk (so no server
    process competes for the CPU). The trainer runs in a session of its own, as the
    daemon launches it. Only 0.1 s windows wholly inside a period count; a quiet period's
    first ``_SETTLE`` s count for neither side.
    """
    from ckptd.storage.remote.store import RemoteStore

    local = _checkpoint(base / "local", total)
    store = RemoteStore(f"file://{base / 'remote'}", {})
    uploads = _BackToBack(store, local)
    trainer = subprocess.Popen(
        [sys.executable, "-c", _STEPPER],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert trainer.stdout is not None
        trainer.stdout.readline()  # started
        quiet: list[tuple[float, float]] = []
        busy: list[tuple[float, float]] = []
        length = seconds / periods
        for _ in range(periods):
            began = time.monotonic()
            time.sleep(length)
            quiet.append((began + _SETTLE, time.monotonic()))
            began = time.monotonic()
            uploads.until(began + length)
            busy.append((began, time.monotonic()))
    finally:
        uploads.uploader.close()
        trainer.terminate()
        output, _ = trainer.communicate()
    windows = [tuple(map(float, line.split())) for line in output.splitlines()]

    def inside(spans: list[tuple[float, float]]) -> list[float]:
        return [r for at, r in windows if any(a <= at and at + _WINDOW <= b for a, b in spans)]

    before, during = inside(quiet), inside(busy)
    pairs = [(inside([b]), inside([q])) for b, q in zip(busy, quiet, strict=True)]
    spread = Spread.rates(
        [median(b) for b, q in pairs if b and q], [median(q) for b, q in pairs if b and q]
    )
    ratio = spread.median if spread.ratios else None
    return Row(
        "training steps/s while an upload runs",
        f"{median(during):.0f} steps/s ({uploads.count} uploads of {total >> 20} MiB)"
        if during
        else "-",
        f"{median(before):.0f} steps/s with no upload" if before else "-",
        ratio,
        "ratio >= 0.98",
        None if ratio is None else ratio >= 0.98,
        note="one CPU-bound training process; periods with and without uploads alternate; "
        "ratio per pair of periods",
        data={"before": before, "during": during},
        spread=spread,
    )


def remote_rows(base: Path, total: int, rounds: int) -> list[Row]:
    """Upload and download+verify of a ``total``-byte checkpoint, each next to raw fsspec;
    training steps/s while an upload runs."""
    small = total < (64 << 20)
    training = training_during_upload_row(
        base / "training", total, 2.0 if small else 8.0, 1 if small else 4
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
    from ckptd.storage.remote.store import RemoteStore

    local = _checkpoint(base / "local", total)
    files = sorted(str(p) for p in local.glob("part*.bin"))
    with moto_server(base / "moto.log") as options:
        store = RemoteStore(f"s3://{BUCKET}/ckptd", options)
        fs = store.fs
        raw_root = f"{BUCKET}/raw"
        remote_files = [f"{raw_root}/{Path(f).name}" for f in files]
        up_raw: list[float] = []
        up_ours: list[float] = []
        down_raw: list[float] = []
        down_ours: list[float] = []

        def upload(side: str) -> None:
            if side == "raw":
                fs.put(files, remote_files)
            else:
                assert store.upload(local, timeout=3600).bytes >= total

        def remove(side: str) -> None:
            if side == "raw":
                fs.rm(raw_root, recursive=True)
            else:
                store.delete(1)

        for side in ("raw", "ours"):  # warm up the server and both clients' connections
            upload(side)
            remove(side)
        for round_ in range(rounds):
            # Alternate which side goes first; each upload starts from the same server state
            # (the one before it is deleted first: a server holding one more GiB is slower).
            for side in ("raw", "ours") if round_ % 2 == 0 else ("ours", "raw"):
                began = time.perf_counter()
                upload(side)
                (up_raw if side == "raw" else up_ours).append(time.perf_counter() - began)
                remove(side)
        for side in ("raw", "ours"):
            upload(side)
        for round_ in range(rounds):
            # ABBA: in every round each side goes first once and second once.
            first, second = ("raw", "ours") if round_ % 2 == 0 else ("ours", "raw")
            order = (first, second, second, first)
            for index, side in enumerate(order):
                into = base / f"{side}-{round_}-{index}"
                began = time.perf_counter()
                if side == "raw":
                    into.mkdir()
                    fs.get(remote_files, [str(into / Path(f).name) for f in remote_files])
                    down_raw.append(time.perf_counter() - began)
                else:
                    assert store.download(1, into, timeout=3600).valid
                    down_ours.append(time.perf_counter() - began)
                shutil.rmtree(into)
        for side in ("raw", "ours"):
            remove(side)
    gib = total / (1 << 30)
    up, down = Spread.times(up_ours, up_raw), Spread.times(down_ours, down_raw)
    up_ratio, down_ratio = up.median, down.median
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
            spread=up,
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
            spread=down,
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
