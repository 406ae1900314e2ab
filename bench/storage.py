"""Checkpoint I/O: commit vs raw write+fsync, verify vs raw read, save_async stall vs memcpy."""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import ckptd_client
from ckptd_client import manifest, store

from .harness import Row, Spread, median

_FILES = 8


def _payload(total: int) -> list[bytes]:
    size = total // _FILES
    block = os.urandom(min(size, 16 << 20))
    return [(block * (size // len(block) + 1))[:size] for _ in range(_FILES)]


def _raw_write(directory: Path, parts: list[bytes]) -> float:
    directory.mkdir()
    began = time.perf_counter()
    for index, data in enumerate(parts):
        with open(directory / f"part{index}.bin", "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    fd = os.open(directory, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - began


def ckptd_commit(root: Path, step: int, parts: Sequence[bytes | bytearray]) -> float:
    """One checkpoint of ``parts`` through ckptd_client (write, hash, fsync, manifest, rename)."""
    began = time.perf_counter()
    temp = manifest.new_temp_dir(root, step)
    for index, data in enumerate(parts):
        with ckptd_client.create(temp / f"part{index}.bin") as handle:
            handle.write(data)
    manifest.commit(temp, step)
    return time.perf_counter() - began


def commit_and_resume_rows(base: Path, total: int, rounds: int) -> list[Row]:
    parts = _payload(total)
    raw, ours = [], []
    # A virtual disk writes blocks it has seen before faster than fresh ones: write the size
    # once untimed, and delete each round's files, so that both sides reuse the same blocks.
    _raw_write(base / "warmup", parts)
    shutil.rmtree(base / "warmup")
    for round_ in range(rounds):  # alternate, so that neither always runs on a warmer disk
        raw.append(_raw_write(base / f"raw{round_}", parts))
        shutil.rmtree(base / f"raw{round_}")
        ours.append(ckptd_commit(base / "ckpt", round_ + 1, parts))
        if round_ + 1 < rounds:
            shutil.rmtree(base / "ckpt" / manifest.checkpoint_name(round_ + 1))
    gib = total / (1 << 30)
    digest = manifest.read_manifest(base / "ckpt" / manifest.checkpoint_name(rounds)).hash
    commit = Spread.times(ours, raw)
    rows = [
        Row(
            f"commit of a {gib:.2g} GiB checkpoint ({_FILES} files), write+hash+fsync",
            f"{median(ours):.2f} s ({total / median(ours) / 1e9:.2f} GB/s), best {min(ours):.2f} s",
            f"raw write+fsync {median(raw):.2f} s ({total / median(raw) / 1e9:.2f} GB/s), "
            f"best {min(raw):.2f} s",
            commit.median,
            "ratio >= 0.9",
            commit.median >= 0.9,
            note=f"digest {digest}; ratio = raw time / ckptd time, per alternating round",
            data={"raw": raw, "ckptd": ours},
            spread=commit,
        )
    ]
    verify, read = [], []
    newest = base / "ckpt" / manifest.checkpoint_name(rounds)
    for _ in range(rounds):  # both from the page cache: the same bytes were just written
        began = time.perf_counter()
        chosen = store.newest_valid(base / "ckpt")
        verify.append(time.perf_counter() - began)
        assert chosen is not None and chosen.path == newest
        began = time.perf_counter()
        for file in sorted(newest.glob("part*.bin")):
            with open(file, "rb", buffering=0) as handle:
                while handle.read(1 << 20):
                    pass
        read.append(time.perf_counter() - began)
    resume = Spread.times(verify, read)
    rows.append(
        Row(
            f"resume: newest-valid selection + verification of {gib:.2g} GiB",
            f"{median(verify):.2f} s",
            f"raw read {median(read):.2f} s",
            resume.median,
            "ratio >= 0.8",
            resume.median >= 0.8,
            note="both read the page cache; ratio = raw time / ckptd time, per alternating round",
            data={"verify": verify, "read": read},
            spread=resume,
        )
    )
    return rows


def async_row(base: Path, total: int, rounds: int) -> Row:
    """Training stall of save_async vs save for a torch state, next to a memcpy of it."""
    if importlib.util.find_spec("torch") is None:
        return Row(
            "training stall of save_async vs save",
            "torch not installed",
            "-",
            None,
            "stall <= 1.5x memcpy",
            None,
            note="pip install -e '.[torch]' for this row",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch

        import ckptd_client
        import ckptd_client.torch as helpers
    os.environ.pop("CKPTD_ENDPOINT", None)
    tensors = {f"layer{i}": torch.randn(total // _FILES // 4) for i in range(_FILES)}
    ck = ckptd_client.connect(checkpoint_dir=base / "torch")
    copy_times, async_stalls, sync_times = [], [], []
    try:
        helpers.snapshot(tensors)  # warm the allocator: both sides then reuse its memory
        # The floor: a memcpy into memory already faulted in (stricter than a fresh clone).
        targets = {k: torch.empty_like(v) for k, v in tensors.items()}
        for name, tensor in tensors.items():
            targets[name].copy_(tensor)
        for round_ in range(rounds):
            began = time.perf_counter()
            for name, tensor in tensors.items():
                targets[name].copy_(tensor)
            copy_times.append(time.perf_counter() - began)
            began = time.perf_counter()
            helpers.save_async(ck, 2 * round_, {"model": tensors})
            async_stalls.append(time.perf_counter() - began)
            ck.wait()
            began = time.perf_counter()
            helpers.save(ck, 2 * round_ + 1, {"model": tensors})
            sync_times.append(time.perf_counter() - began)
    finally:
        ck.close()
    stall = Spread.costs(async_stalls, copy_times)
    return Row(
        f"training stall of save_async vs save, {total / (1 << 30):.2g} GiB torch state",
        f"save_async {median(async_stalls):.2f} s (save {median(sync_times):.2f} s)",
        f"memcpy {median(copy_times):.2f} s",
        stall.median,
        "stall <= 1.5x memcpy",
        stall.median <= 1.5,
        spread=stall,
        note="ratio = save_async stall (snapshot, allocation included) / memcpy into "
        "pre-faulted memory",
        data={"async": async_stalls, "sync": sync_times, "memcpy": copy_times},
    )
