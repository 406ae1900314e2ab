"""The two contenders of the spot scenario, each a "VM" the schedule can hurt.

Both train with ``bench/spot_trainer.py`` in their own directory and session. A side
is told of three things: a preemption notice with its window, a SIGKILL of the training
process, the loss of the whole VM (every process SIGKILLed at once). A preempted or
lost VM is replaced: a new one starts on the same directories, as a replacement VM
with the same disk would.

- ``CkptdSide``: ``ckptd run --every auto`` around the trainer, preemption notices from a
  fake AWS metadata service (tests/fakes/metadata.py) that ckptd polls.
- ``MemorySide`` (``--memory``): the same, with ``--memory-every auto`` as well: saves go to
  RAM (``--ram-save-time``), ckptd persists them to disk. A lost or replaced VM loses its RAM
  (the memory directory is wiped); a killed training process does not.
- ``LoopSide``: ``while true; do python spot_trainer.py ... && break; done`` in bash, the
  script saving every 60 s of training (every 1200 steps of 50 ms) by itself through the
  standalone client, ``CKPTD_*`` unset; a notice reaches it as the VM's shutdown does:
  SIGTERM to every process (the client's final save), SIGKILL when the window ends.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
TRAINER = Path(__file__).with_name("spot_trainer.py")


def _fake_metadata(provider: str) -> Any:
    """A FakeMetadata from tests/fakes/metadata.py, loaded by path (``tests`` is no package)."""
    spec = importlib.util.spec_from_file_location(
        "spot_fake_metadata", ROOT / "tests" / "fakes" / "metadata.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FakeMetadata(provider)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_all(processes: list[psutil.Process]) -> None:
    """SIGKILL every process of the list and wait until each is gone."""
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=10)


class Side:
    """One VM: a supervisor process (ckptd or bash) and the trainer under it."""

    name = ""

    def __init__(self, base: Path, trainer: list[str]) -> None:
        self.base = base
        base.mkdir(parents=True)
        self.record = base / "record.jsonl"
        self.trainer = [sys.executable, str(TRAINER), str(self.record), *trainer]
        self.log = open(base / "supervisor.log", "ab")  # noqa: SIM115 - closed in close()
        self.process: subprocess.Popen[bytes] | None = None
        self.deadline: float | None = None  # monotonic end of a preemption window
        self.doomed: list[psutil.Process] = []  # the preempted VM's processes
        self.launches: list[float] = []  # Unix times of each VM's start
        self.applied: list[tuple[float, str, str]] = []  # (Unix time, event, what it hit)

    # -- what the schedule does --------------------------------------------------------

    def launch(self) -> None:
        self.deadline = None
        if self.launches:
            self._applied("replaced", "a new VM starts")
        self.launches.append(time.time())
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.base,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill_job(self) -> None:
        """SIGKILL the training process: its supervisor is expected to restart it."""
        job = self._trainer_process()
        if job is None:
            self._applied("kill", "no training process")
            return
        kill_all([job])
        self._applied("kill", f"trainer {job.pid}")

    def lose_vm(self) -> None:
        """SIGKILL everything at once, then the replacement VM starts."""
        self._applied("vm loss", "every process")
        self._kill_vm()
        self.launch()

    def notice(self, window: float) -> None:
        """A preemption notice: the VM goes away ``window`` seconds from now."""
        self.deadline = time.monotonic() + window
        self.doomed = _tree(self.process.pid) if self.process is not None else []
        self._applied("notice", f"{window:.1f} s window")

    def tend(self) -> None:
        """Replace a preempted VM once its processes are gone or its window has ended."""
        if self.deadline is None:
            return
        running = any(_alive(p) for p in self.doomed)
        if running and time.monotonic() < self.deadline:
            return
        if running:
            self._applied("window end", "still running: SIGKILL")
        self._kill_vm()
        self.launch()

    def done(self) -> bool:
        return self.deadline is None and '"event": "done"' in self._tail()

    def close(self) -> None:
        self._kill_vm()
        self.log.close()
        with open(self.base / "schedule.jsonl", "w") as out:
            for at, event, what in self.applied:
                out.write(json.dumps({"t": at, "event": event, "what": what}) + "\n")

    # -- per contender -----------------------------------------------------------------

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("CKPTD_")}

    def interval(self) -> str:
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------------

    def _kill_vm(self) -> None:
        if self.process is None:
            return
        kill_all(_tree(self.process.pid) + self.doomed)
        self.doomed = []
        self.process.wait()

    def _trainer_process(self) -> psutil.Process | None:
        if self.process is None:
            return None
        for process in _tree(self.process.pid)[1:]:
            try:
                if str(TRAINER) in process.cmdline():
                    return process
            except psutil.Error:
                continue
        return None

    def _applied(self, event: str, what: str) -> None:
        self.applied.append((time.time(), event, what))

    def _tail(self) -> str:
        try:
            with open(self.record, "rb") as handle:
                handle.seek(max(0, handle.seek(0, os.SEEK_END) - 4096))
                return handle.read().decode(errors="replace")
        except FileNotFoundError:
            return ""


class CkptdSide(Side):
    name = "ckptd every=auto"

    def __init__(self, base: Path, trainer: list[str], options: list[str], margin: float) -> None:
        super().__init__(base, trainer)
        self.metadata = _fake_metadata("aws")
        self.options = options
        self.config = base / "spot.toml"
        self.config.write_text(
            "[preemption]\n"
            'provider = "aws"\n'
            f'endpoint = "{self.metadata.url}"\n'
            'interval = "0.5s"\n'
            f'margin = "{margin}s"\n'
        )

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "ckptd",
            "run",
            "--config",
            str(self.config),
            "--run-dir",
            str(self.base / "run"),
            "--checkpoint-dir",
            str(self.base / "checkpoints"),
            *self.options,
            "--",
            *self.trainer,
        ]

    def launch(self) -> None:
        with self.metadata._changed:  # the replacement VM has no notice pending
            self.metadata.deadline = None
        super().launch()

    def notice(self, window: float) -> None:
        super().notice(window)
        self.metadata.preempt(window)

    def done(self) -> bool:
        return super().done() and self.process is not None and self.process.poll() is not None

    def close(self) -> None:
        super().close()
        self.metadata.close()

    def interval(self) -> str:
        return "auto"


class MemorySide(CkptdSide):
    name = "ckptd + memory tier"

    def __init__(
        self,
        base: Path,
        trainer: list[str],
        options: list[str],
        margin: float,
        memory_dir: Path,
        ram_save_time: float,
    ) -> None:
        self.memory_dir = memory_dir
        memory = ["--memory-every", "auto", "--memory-dir", str(memory_dir)]
        trainer = [*trainer, "--ram-save-time", str(ram_save_time)]
        super().__init__(base, trainer, [*options, *memory], margin)

    def _kill_vm(self) -> None:
        """The VM's RAM goes with it: its replacement finds the memory directory empty."""
        super()._kill_vm()
        shutil.rmtree(self.memory_dir, ignore_errors=True)

    def interval(self) -> str:
        return "memory auto, disk auto"


class LoopSide(Side):
    def __init__(self, base: Path, trainer: list[str], every: float, step_time: float) -> None:
        steps = round(every / step_time)
        super().__init__(base, [*trainer, "--save-every", str(steps)])
        self.name = f"bash loop, every {every:g} s"
        self.every = every
        self.steps = steps

    def command(self) -> list[str]:
        script = f"while true; do {shlex.join(self.trainer)} && break; done"
        return ["bash", "-c", script]

    def notice(self, window: float) -> None:
        super().notice(window)
        if self.process is not None:
            for process in _tree(self.process.pid):  # the VM's shutdown: SIGTERM to everyone
                try:
                    process.send_signal(signal.SIGTERM)
                except psutil.NoSuchProcess:
                    pass

    def interval(self) -> str:
        return f"{self.every:g} s fixed ({self.steps} steps)"
