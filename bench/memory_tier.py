"""The memory tier: what a save costs the trainer in RAM vs on disk, for the same state.

Each round, interleaved: a memcpy of the state (the floor of any save), the client's commit
of it into a tmpfs directory (what ``with ck.checkpoint(step)`` does for a request of the
memory tier: write, hash, fsync, manifest, rename), the same commit into a disk directory,
and the daemon's persistence of the RAM copy to disk (``ckptd.storage.persist``, off the
trainer's path). Files go out through ``ckptd_client.create`` as the torch helpers write
them; RAM is pruned as ckptd prunes it (``memory_keep`` 1), so each RAM save after the first
writes over the spare pages of the checkpoint pruned before it (``ckptd_client._spare``),
through the mapping this process kept of them (``ckptd_client._mapped``); the untimed
warm-up saves bring it to that steady state.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

from ckptd.storage.memory import RAM_FILESYSTEMS, filesystem_of, prune
from ckptd.storage.persist import persist
from ckptd_client import manifest, protocol

from .harness import Row, Spread, median
from .storage import ckptd_commit

_FILES = 8
_WARM_STEPS = 4


def _state(total: int) -> list[bytearray]:
    block = bytes(range(256)) * 4096  # 1 MiB, not all zeros (a page of zeros costs nothing)
    size = total // _FILES
    return [bytearray((block * (size // len(block) + 1))[:size]) for _ in range(_FILES)]


def _raw_write(directory: Path, parts: list[bytearray]) -> float:
    """The same bytes written to plain files in ``directory``: no hash, no fsync, no manifest."""
    directory.mkdir()
    began = time.perf_counter()
    for index, data in enumerate(parts):
        with open(directory / f"part{index}.bin", "wb") as handle:
            handle.write(data)
    elapsed = time.perf_counter() - began
    shutil.rmtree(directory)
    return elapsed


def _memcpy(parts: list[bytearray], targets: list[bytearray]) -> float:
    began = time.perf_counter()
    for source, target in zip(parts, targets, strict=True):
        target[:] = source
    return time.perf_counter() - began


def stall_rows(base: Path, total: int, rounds: int) -> list[Row]:
    """Rows: a RAM save's stall vs a memcpy of the state, and vs a disk save of it."""
    ram_root = Path("/dev/shm")
    if filesystem_of(ram_root) not in RAM_FILESYSTEMS:
        return [
            Row("memory-tier save stall", "no tmpfs at /dev/shm", "-", None, "-", None)
        ]  # fmt: skip
    ram = ram_root / f"ckptd-bench-{uuid.uuid4().hex[:8]}"
    disk = base / "disk"
    persisted = base / "persisted"
    parts = _state(total)
    targets = [bytearray(len(p)) for p in parts]
    copies, in_ram, on_disk, persists, raw = [], [], [], [], []
    was = os.environ.get(protocol.ENV_MEMORY_DIR)
    os.environ[protocol.ENV_MEMORY_DIR] = str(ram)  # as ckptd tells its job
    try:
        _memcpy(parts, targets)  # fault the targets in: the floor is a copy into ready memory
        ckptd_commit(disk, 0, parts)  # warm both directories and the allocator, untimed
        for warm in range(_WARM_STEPS):  # a trainer's steady state, as ckptd prunes RAM:
            ckptd_commit(ram, warm, parts)  # the pruned files come back as spares, and from
            prune(ram, 1)  # their second time on, through the mappings kept for them
        for round_ in range(1, rounds + 1):
            step = round_ + _WARM_STEPS - 1  # RAM's, past the warm-up steps
            copies.append(_memcpy(parts, targets))
            raw.append(_raw_write(ram / f"raw-{round_}", parts))
            in_ram.append(ckptd_commit(ram, step, parts))
            on_disk.append(ckptd_commit(disk, round_, parts))
            persists.append(persist(ram / manifest.checkpoint_name(step), persisted).seconds)
            prune(ram, 1)  # as ckptd with memory_keep 1: the pruned files become spares
            shutil.rmtree(disk / manifest.checkpoint_name(round_ - 1), ignore_errors=True)
            shutil.rmtree(persisted / manifest.checkpoint_name(step - 1), ignore_errors=True)
    finally:
        if was is None:
            os.environ.pop(protocol.ENV_MEMORY_DIR, None)
        else:
            os.environ[protocol.ENV_MEMORY_DIR] = was
        shutil.rmtree(ram, ignore_errors=True)
        for directory in (disk, persisted):
            shutil.rmtree(directory, ignore_errors=True)
    gib = total / (1 << 30)
    versus_copy = Spread.costs(in_ram, copies)
    versus_disk = Spread.times(in_ram, on_disk)
    data = {"memcpy": copies, "ram": in_ram, "disk": on_disk, "persist": persists, "raw": raw}
    return [
        Row(
            f"trainer stall per memory-tier save, {gib:.2g} GiB ({_FILES} files) into tmpfs",
            f"{median(in_ram):.3f} s, best {min(in_ram):.3f} s",
            f"memcpy {median(copies):.3f} s, best {min(copies):.3f} s",
            versus_copy.median,
            "stall <= 1.2x memcpy",
            versus_copy.median <= 1.2,
            note="ratio = RAM save / memcpy into pre-faulted memory, per interleaved round; "
            "the save writes over the pruned checkpoint's pages, through the mapping the "
            f"trainer kept of them (steady state after {_WARM_STEPS} untimed saves), and "
            "hashes every byte; a "
            f"plain write of the same bytes to new tmpfs files took {median(raw):.3f} s "
            "(fresh tmpfs pages are allocated and zeroed)",
            data=data,
            spread=versus_copy,
        ),
        Row(
            f"trainer stall per save, memory tier vs disk, {gib:.2g} GiB",
            f"RAM {median(in_ram):.3f} s, best {min(in_ram):.3f} s",
            f"disk {median(on_disk):.3f} s, best {min(on_disk):.3f} s",
            versus_disk.median,
            "disk / RAM >= 2",
            versus_disk.median >= 2,
            note=f"ratio = disk save / RAM save per interleaved round; ckptd's background copy "
            f"of the RAM save to disk (verified) took {median(persists):.3f} s, off the "
            "trainer's path",
            data=data,
            spread=versus_disk,
        ),
    ]
