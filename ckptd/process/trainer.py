"""The job process: launch it in its own session, notice when it ends, take its whole tree down.

The daemon marks itself a child subreaper, so descendants orphaned by the job
are re-parented to it instead of to init: they stay findable, and they are
reaped here. The main process is reaped only through its ``Popen`` (one owner
of its ``waitpid``); everything else through ``waitid`` on other pids.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

import psutil

from ckptd.process.restart_policy import ExitStatus

_PR_SET_CHILD_SUBREAPER = 36


class LaunchError(RuntimeError):
    """The command could not be started at all (not found, not executable)."""


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux); return whether it worked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class Trainer:
    """One launched job process and every process below it."""

    def __init__(
        self, process: subprocess.Popen[bytes] | None, adopted: psutil.Process | None = None
    ) -> None:
        self._process = process
        self._adopted = adopted
        self.pid = process.pid if process is not None else adopted.pid if adopted else -1
        self._known: dict[int, psutil.Process] = {}
        self.status: ExitStatus | None = None

    @property
    def adopted(self) -> bool:
        """Left running by an earlier daemon: not our child, its exit status unknowable."""
        return self._adopted is not None

    @classmethod
    def adopt(cls, pid: int, started: float | None) -> Trainer | None:
        """Take charge of a job process a dead daemon left behind; None when it is gone."""
        try:
            process = psutil.Process(pid)
            if started is not None and abs(process.create_time() - started) > 1.0:
                return None  # the pid was reused by an unrelated process
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            return None
        trainer = cls(None, adopted=process)
        trainer._remember_tree()
        return trainer

    @classmethod
    def launch(
        cls, command: list[str], env: Mapping[str, str], cwd: Path, pass_fds: Iterable[int] = ()
    ) -> Trainer:
        try:
            process = subprocess.Popen(
                command, cwd=cwd, env=dict(env), start_new_session=True, pass_fds=tuple(pass_fds)
            )
        except OSError as exc:
            raise LaunchError(f"cannot start {command[0]!r}: {exc.strerror or exc}") from None
        return cls(process)

    def poll(self) -> ExitStatus | None:
        """Reap whatever has exited; return the main process's status once it has."""
        if self.status is None:
            if self._process is not None:
                if (code := self._process.poll()) is not None:
                    self.status = ExitStatus.from_returncode(code)
            elif _running(self._adopted):
                self._remember_tree()  # its children go to init when it dies: know them first
            else:
                self.status = ExitStatus()  # not our child: its status went to its new parent
        _reap_others(self.pid)
        return self.status

    def signal_main(self, signum: int) -> None:
        """Signal the main process only (not its group: data-loader workers stay untouched)."""
        if self.status is None:
            try:
                if self._process is not None:
                    self._process.send_signal(signum)
                elif self._adopted is not None:
                    self._adopted.send_signal(signum)
            except (ProcessLookupError, psutil.Error):
                pass

    def signal_tree(self, signum: int) -> None:
        """Signal the process group and every descendant seen so far, re-parented ones included."""
        self._remember_tree()
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass
        for process in list(self._known.values()):
            try:
                process.send_signal(signum)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                self._known.pop(process.pid, None)

    def alive_tree(self) -> list[psutil.Process]:
        """Processes of the tree still running (zombies count as gone)."""
        self._remember_tree()
        for process in list(self._known.values()):
            if not _running(process):
                self._known.pop(process.pid, None)
        return list(self._known.values())

    def kill_leftovers(self, timeout: float) -> int:
        """After the main process ended: SIGTERM the rest of its tree, SIGKILL after ``timeout``.

        Blocks at most about ``timeout``; returns how many processes had to be stopped.
        """
        leftovers = self.alive_tree()
        if not leftovers:
            return 0
        self.signal_tree(signal.SIGTERM)
        _, still = psutil.wait_procs(leftovers, timeout=timeout)
        if still or self.alive_tree():
            self.signal_tree(signal.SIGKILL)
            psutil.wait_procs(self.alive_tree(), timeout=timeout)
        _reap_others(self.pid)
        return len(leftovers)

    def _remember_tree(self) -> None:
        found: list[psutil.Process] = []
        for root in (self.pid, os.getpid()):
            try:
                found.extend(psutil.Process(root).children(recursive=True))
            except psutil.NoSuchProcess:
                continue
        try:
            if self.status is None:
                found.append(psutil.Process(self.pid))
        except psutil.NoSuchProcess:
            pass
        for process in found:
            self._known.setdefault(process.pid, process)


def _running(process: psutil.Process | None) -> bool:
    try:
        return process is not None and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _reap_others(main_pid: int) -> None:
    """Reap exited children of the daemon other than the main job process."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid == main_pid:
            return
        try:
            os.waitpid(info.si_pid, 0)
        except ChildProcessError:
            return
