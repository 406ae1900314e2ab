"""Two nodes of one torchrun job on loopback: each a ``ckptd run`` with its own run directory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from ckptd_client.manifest import read_manifest
from ckptd_client.store import inspect

from conftest import FAKES, Job

FAST = ("--restart-delay", "0", "--grace", "60s")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Nodes:
    """Two nodes of one torchrun job; ``start`` launches both daemons (a fresh rendezvous)."""

    def __init__(
        self, base: Path, shared: Path | None, options: tuple[str, ...] = (), nproc: int = 1
    ) -> None:
        self.base = base
        self.options = options
        self.nproc = nproc
        self.nodes: list[Job] = []
        for index in (0, 1):
            (base / f"node{index}").mkdir()
            node = Job(base / f"node{index}", f"node{index}")
            if shared is not None:
                node.checkpoint_dir = shared
            self.nodes.append(node)

    def start(self, *trainer_args: str) -> None:
        endpoint = f"127.0.0.1:{free_port()}"
        for index, node in enumerate(self.nodes):
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--nproc-per-node={self.nproc}",
                f"--node-rank={index}",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint={endpoint}",
                f"--rdzv-id={self.base.name}",
                "--max-restarts=0",
                str(FAKES / "ddp_trainer.py"),
                "--record",
                str(node.record),
                *trainer_args,
            ]
            node.start(command, *FAST, *self.options)

    def wait_connected(self, count: int = 1) -> None:
        for node in self.nodes:
            node.wait_event("client.connected", count)

    def records(self, event: str) -> list[dict]:
        return [row for node in self.nodes for row in node.records(event)]

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


def reference_digests(base: Path, steps: int) -> dict[int, str]:
    """The final weights of each rank after an uninterrupted run of ``steps`` steps."""
    base.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPTD_")}
    record = base / "record.jsonl"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "--max-restarts=0",
            str(FAKES / "ddp_trainer.py"),
            "--record",
            str(record),
            "--sleep",
            "0",
            "--steps",
            str(steps),
        ],
        cwd=base,
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    return {row["rank"]: row["digest"] for row in rows if row["event"] == "done"}


def complete(path: Path, files: set[str], ranks: list[int], world: int = 2) -> None:
    """``path`` verifies in full, holds exactly ``files`` and records ``ranks`` of ``world``."""
    checkpoint = inspect(path, full=True)
    assert checkpoint.valid, checkpoint.reason
    written = read_manifest(path)
    assert {entry.path for entry in written.files} == files
    assert (list(written.ranks or ()), written.world_size) == (ranks, world)
