"""Shared fixtures: real ckptd daemons in temporary directories, and a leak check.

The test process makes itself a child subreaper, so every process a test starts
(grandchildren of a SIGKILLed daemon included) stays its descendant; any still
alive after a test fails that test and is killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from ckptd.process.trainer import become_subreaper

ROOT = Path(__file__).resolve().parent.parent
FAKES = ROOT / "tests" / "fakes"
EXAMPLES = ROOT / "examples"
DEADLINE = 60.0  # generous: a loaded 2-core machine is slow, and a pass returns early

become_subreaper()


def wait_for(
    condition: Callable[[], Any], what: str, timeout: float = DEADLINE, interval: float = 0.02
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def plain_trainer(pids: Path, *flags: str) -> list[str]:
    """The command of the fake job that does not use the client (tests/fakes/plain_trainer.py)."""
    return [sys.executable, str(FAKES / "plain_trainer.py"), "--pids", str(pids), *flags]


def job_pids(pids: Path) -> dict[str, Any]:
    """Wait for plain_trainer to record its pid and its children's; return them."""
    return wait_for(lambda: pids.exists() and json.loads(pids.read_text()), f"pids in {pids}")


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line being written right now
    return rows


class Job:
    """One ``ckptd run`` in its own session, with its run and checkpoint directories."""

    def __init__(self, base: Path, name: str = "job") -> None:
        self.base = base
        self.run_dir = base / "run"
        self.checkpoint_dir = base / "ckpt"
        self.record = base / "record.jsonl"
        self.stdout = base / f"{name}.out"
        self.stderr = base / f"{name}.err"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, command: list[str], *options: str, env: dict[str, str] | None = None) -> Job:
        argv = [
            sys.executable,
            "-m",
            "ckptd",
            "run",
            "--run-dir",
            str(self.run_dir),
            "--checkpoint-dir",
            str(self.checkpoint_dir),
            *options,
            "--",
            *command,
        ]
        with open(self.stdout, "ab") as out, open(self.stderr, "ab") as err:
            self.process = subprocess.Popen(
                argv,
                cwd=self.base,
                stdout=out,
                stderr=err,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        return self

    def start_fake(
        self, *fake_args: str, options: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> Job:
        command = [
            sys.executable,
            str(FAKES / "trainer.py"),
            "--record",
            str(self.record),
            *fake_args,
        ]
        return self.start(command, *options, env=env)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        rows = read_jsonl(self.run_dir / "events.jsonl")
        return [r for r in rows if name is None or r["event"] == name]

    def records(self, name: str | None = None) -> list[dict[str, Any]]:
        return [r for r in read_jsonl(self.record) if name is None or r["event"] == name]

    def wait_event(self, name: str, count: int = 1, timeout: float = DEADLINE) -> dict[str, Any]:
        return wait_for(
            lambda: len(self.events(name)) >= count and self.events(name)[count - 1],
            f"event {name} x{count}; log tail: {self.log_tail()}",
            timeout,
        )

    def wait_record(self, name: str, count: int = 1, timeout: float = DEADLINE) -> dict[str, Any]:
        return wait_for(
            lambda: len(self.records(name)) >= count and self.records(name)[count - 1],
            f"record {name} x{count}; log tail: {self.log_tail()}",
            timeout,
        )

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = DEADLINE) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"ckptd did not exit within {timeout}s; log tail: {self.log_tail()}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``ckptd ARGS --run-dir <this job's run dir>``, its output captured."""
        return subprocess.run(
            [sys.executable, "-m", "ckptd", *args, "--run-dir", str(self.run_dir)],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )

    def status(self) -> dict[str, Any]:
        """``ckptd status --json`` of this job (fails the test when it does not answer)."""
        result = self.cli("status", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def log_tail(self, lines: int = 8) -> str:
        text = self.stderr.read_text(errors="replace") if self.stderr.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the daemon and every process below it (the job has its own session)."""
        if self.process is not None and self.process.poll() is None:
            try:
                tree = psutil.Process(self.process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                tree = []
            os.killpg(self.process.pid, signal.SIGKILL)
            for process in tree:
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    pass
            self.process.wait()
            psutil.wait_procs(tree, timeout=10)


@pytest.fixture
def make_job(tmp_path: Path) -> Iterator[Callable[..., Job]]:
    jobs: list[Job] = []

    def make(name: str = "job") -> Job:
        job = Job(tmp_path, name)
        jobs.append(job)
        return job

    yield make
    for job in jobs:
        job.kill()


@pytest.fixture
def job(make_job: Callable[..., Job]) -> Job:
    return make_job()


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves a process or a thread behind (and kill what it left)."""
    threads_before = set(threading.enumerate())
    yield
    me = psutil.Process()
    deadline = time.monotonic() + 10
    leftovers = me.children(recursive=True)
    while leftovers and time.monotonic() < deadline:
        _, leftovers = psutil.wait_procs(leftovers, timeout=0.2)
        leftovers = [p for p in leftovers if alive(p.pid)]
    described = [f"{p.pid} {_cmdline(p)}" for p in leftovers]
    for process in leftovers:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(leftovers, timeout=5)
    assert not described, f"test left processes behind: {described}"
    wait_for(lambda: not _new_threads(threads_before), "threads started by the test to end", 10)


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())[:200]
    except psutil.Error:
        return "?"


def _new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]
