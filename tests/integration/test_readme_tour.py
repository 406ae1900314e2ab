"""The README's first command and its tour, run as written on a fresh copy of the repository.

The commands are parsed out of README.md, so this test follows the README: the first
``sh`` block (a fresh virtualenv, the bundled example under ckptd) and the tour's block,
line by line. "terminal 1" lines run in a background shell, "terminal 2" lines one by one;
a terminal's ``. .venv/bin/activate`` carries over to its later lines. Two guards keep the
test to its own processes on a shared machine: ``pkill`` only matches children of the
tour's daemon, and ``ckptd events`` (which runs until Ctrl-C) gets SIGINT once it has
shown an event.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from conftest import ROOT, wait_for

_IGNORED = shutil.ignore_patterns(
    ".git", ".venv", ".ckptd", "checkpoints", "__pycache__", "*.egg-info", ".*_cache", "build"
)
_COMMAND_TIMEOUT = 120.0
_SETUP_TIMEOUT = 600.0  # a virtualenv, pip install -e ., and 2000 steps on a loaded machine


@dataclass
class Terminal:
    """The lines one terminal of the tour runs, in order."""

    setup: list[str] = field(default_factory=list)  # `. .venv/bin/activate`: kept for each line
    commands: list[tuple[str, str]] = field(default_factory=list)  # (command, its comment)


def _sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def _first_command() -> str:
    lines = [line for line in _sh_blocks((ROOT / "README.md").read_text())[0].splitlines() if line]
    assert len(lines) == 1, f"the README's first block is one command: {lines}"
    return lines[0]


def _tour() -> tuple[list[tuple[int, str, str]], dict[int, Terminal]]:
    """The tour's command lines in order, as (terminal, command, comment), and each terminal."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A 30-second tour", 1)[1]
    block = _sh_blocks(section)[0]
    terminal, steps, terminals = 0, [], {}
    for line in block.splitlines():
        if not line.strip():
            continue
        heading = re.match(r"#\s*terminal (\d+):", line)
        if heading:
            terminal = int(heading.group(1))
            continue
        if line.startswith("#"):
            continue  # a comment on what follows
        command, _, comment = line.partition("  #")
        command = command.strip()
        assert terminal in (1, 2), f"a tour line outside terminal 1 or 2: {line}"
        term = terminals.setdefault(terminal, Terminal())
        if command.startswith(". ") or command.startswith("source "):
            term.setup.append(command)
        else:
            term.commands.append((command, comment.strip("# ").strip()))
            steps.append((terminal, command, comment))
    return steps, terminals


@pytest.fixture
def fresh_copy(tmp_path: Path) -> Path:
    """The repository as a fresh clone has it: no virtualenv, no run or checkpoint directory."""
    copy = tmp_path / "ckptd"
    shutil.copytree(ROOT, copy, ignore=_IGNORED, symlinks=True)
    return copy


@pytest.fixture
def clean_env() -> dict[str, str]:
    """The environment of a new terminal: no virtualenv active, nothing of this test run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CKPTD_", "PYTEST_"))}
    for key in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(key, None)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    return env


class Tour:
    """Runs the tour's lines in ``cwd``; kills whatever it started at the end."""

    def __init__(self, cwd: Path, env: dict[str, str], terminals: dict[int, Terminal]) -> None:
        self.cwd, self.env, self.terminals = cwd, env, terminals
        self.first: subprocess.Popen[bytes] | None = None
        self.first_out = cwd.parent / "terminal-1.out"

    def script(self, terminal: int, command: str) -> str:
        daemon = self.daemon_pid()
        guard = f'pkill() {{ command pkill -P {daemon} "$@"; }}\n' if daemon else ""
        setup = "".join(line + "\n" for line in self.terminals[terminal].setup)
        return "set -e\n" + guard + setup + command

    def start_terminal_1(self, command: str) -> None:
        with open(self.first_out, "ab") as out:
            self.first = subprocess.Popen(
                ["bash", "-c", self.script(1, command)], cwd=self.cwd, env=self.env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def output_1(self) -> str:
        return self.first_out.read_text(errors="replace") if self.first_out.exists() else ""

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", self.script(2, command)], cwd=self.cwd, env=self.env,
            capture_output=True, text=True, timeout=_COMMAND_TIMEOUT,
        )  # fmt: skip

    def status(self) -> dict | None:
        venv_ckptd = self.cwd / ".venv" / "bin" / "ckptd"
        result = subprocess.run(
            [str(venv_ckptd), "status", "--json", "--timeout", "5"],
            cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT,
        )  # fmt: skip
        return json.loads(result.stdout) if result.returncode == 0 else None

    def daemon_pid(self) -> int | None:
        if self.first is None or self.first.poll() is not None:
            return None
        status = self.status()
        return status["daemon_pid"] if status else None

    def wait_terminal_1(self) -> int:
        assert self.first is not None
        return self.first.wait(timeout=_COMMAND_TIMEOUT)

    def kill(self) -> None:
        if self.first is None or self.first.poll() is not None:
            return
        tree = psutil.Process(self.first.pid).children(recursive=True)
        os.killpg(self.first.pid, signal.SIGKILL)
        for process in tree:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        self.first.wait()
        psutil.wait_procs(tree, timeout=10)


@pytest.fixture
def tour(fresh_copy: Path, clean_env: dict[str, str]) -> Iterator[Tour]:
    _, terminals = _tour()
    running = Tour(fresh_copy, clean_env, terminals)
    yield running
    running.kill()


def _count(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text))


def test_the_readme_runs_as_written_on_a_fresh_clone(tour: Tour) -> None:
    """The first command trains the example to the end; then every tour line works in order."""
    first = subprocess.run(
        ["bash", "-c", _first_command()], cwd=tour.cwd, env=tour.env,
        capture_output=True, text=True, timeout=_SETUP_TIMEOUT,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    assert "done: 2000 steps" in first.stdout, first.stdout[-2000:]

    steps, _ = _tour()
    assert [t for t, _, _ in steps][:1] == [1], "the tour starts with terminal 1's ckptd run"
    run_line = steps[0][1]
    for terminal, command, comment in steps:
        if terminal == 1:
            tour.start_terminal_1(command)
            wait_for(lambda: _training(tour), "terminal 1 to train")
            wait_for(tour.daemon_pid, "the daemon to answer")
        elif "Ctrl-C" in comment:
            _follow_then_interrupt(tour, command)
        elif command.startswith("pkill"):
            resumed = _count("resumed from", tour.output_1()) + 1
            result = tour.run(command)
            assert result.returncode == 0, f"{command}: {result.stderr}"
            wait_for(lambda n=resumed: _count("resumed from", tour.output_1()) >= n, "a relaunch")
            wait_for(lambda: (tour.status() or {}).get("state") == "running", "running again")
        else:
            result = tour.run(command)
            assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
            _check_as_described(tour, command, result.stdout)
    assert tour.wait_terminal_1() == 0, tour.output_1()[-2000:]
    final = re.findall(r"stopping at step (\d+)", tour.output_1())[-1]

    # "Run the same `ckptd run` again and training continues from the final checkpoint."
    tour.start_terminal_1(run_line)
    wait_for(lambda: f"(step {final})" in tour.output_1(), f"a resume from step {final}")
    stop = next(command for _, command, _ in steps if command.startswith("ckptd stop"))
    wait_for(tour.daemon_pid, "the daemon to answer")
    assert tour.run(stop).returncode == 0
    assert tour.wait_terminal_1() == 0


def _training(tour: Tour) -> bool:
    """Terminal 1 prints steps; it has not ended (``ckptd: command not found``, a finished run)."""
    assert tour.first is not None
    assert tour.first.poll() is None, f"terminal 1 ended: {tour.output_1()[-2000:]}"
    return re.search(r"^step \d+ loss", tour.output_1(), re.M) is not None


def _check_as_described(tour: Tour, command: str, out: str) -> None:
    """What the tour's comments promise for the commands with a visible result."""
    if command.startswith("ckptd checkpoint --wait"):
        assert re.match(r"committed step \d+: .*/checkpoints/train/step-\d{8} ", out), out
    elif command.startswith("touch ") and command.endswith("/CHECKPOINT"):
        signal_file = tour.cwd / command.split()[1]
        wait_for(lambda: not signal_file.exists(), "the CHECKPOINT file to go once committed")
    elif command == "ckptd list":
        assert out.split("\n", 1)[0].split() == ["NAME", "STEP", "TIME", "SIZE", "VALID", "METRICS"]
    elif command == "ckptd status":
        assert re.search(r"^state\s+running", out, re.M), out


def _follow_then_interrupt(tour: Tour, command: str) -> None:
    """A command that follows live output: it shows an event, then Ctrl-C ends it quietly."""
    out = tour.cwd.parent / "follow.out"
    with open(out, "wb") as sink:
        follower = subprocess.Popen(
            ["bash", "-c", tour.script(2, "exec " + command)], cwd=tour.cwd, env=tour.env,
            stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        request = tour.cwd / ".ckptd" / "train" / "CHECKPOINT"

        def shown() -> bool:
            if not request.exists():
                request.touch()  # an event to show (again, until the stream is subscribed)
            return "checkpoint.committed" in out.read_text(errors="replace")

        wait_for(shown, f"{command} to show an event")
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=_COMMAND_TIMEOUT) == 130
        assert "Traceback" not in out.read_text(errors="replace")
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
