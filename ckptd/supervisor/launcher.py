"""Launching the job: the job lock, the resume point, the environment, the process.

:meth:`Launcher.prepare` does the slow part (waiting for an earlier job's processes to
let go of the job lock, removing interrupted commits, verifying the resume point in
full and moving aside every checkpoint that fails) and runs on the background worker;
:meth:`Launcher.start` only spawns the process, on the loop. Neither emits events:
they return values that the arbiter reports.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from ckptd.config import JobConfig
from ckptd.integrity.signer import remove_signature_temporaries
from ckptd.process.trainer import Trainer
from ckptd.progress.health import report_interval, stacks_file
from ckptd.run_dir import Orphan, RunDir, RunDirError
from ckptd.storage import retention
from ckptd.storage.branches import GoBackError, SetAside, bring_back, check_target, set_aside_newer
from ckptd.storage.job_identity import multi_node, node_group
from ckptd.storage.memory import drop_newer, ram_copy_of
from ckptd.storage.persist import Pickup, persist_newest
from ckptd.supervisor.signatures import (
    sign_then_upload,
    signature_problem,
    signer_of,
    verifier_of,
)
from ckptd_client import protocol
from ckptd_client._stacks import ENV_STACKS_FILE
from ckptd_client.manifest import (
    ManifestError,
    lineage_after,
    new_lineage_id,
    read_manifest,
    remove_temporaries,
)
from ckptd_client.skip_steps import ENV_SKIP_STEPS
from ckptd_client.store import Checkpoint, inspect, newest_valid, scan

if TYPE_CHECKING:
    from ckptd.supervisor.remote_copy import (  # imported (with fsspec) only with a remote
        RemoteCopy,
        RemoteSetAside,
    )

_SYSTEMD_ONLY = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})  # not the job's


@dataclass(frozen=True)
class Quarantined:
    """A checkpoint that failed full verification, moved out of the ``step-N`` namespace."""

    checkpoint: Checkpoint
    moved_to: Path | None  # None when it could not be moved (it is then left in place)


@dataclass(frozen=True)
class Prepared:
    """What a launch resumes from, and what was cleaned up on the way."""

    resume: Checkpoint | None
    removed: list[Path] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    strays_killed: list[int] = field(default_factory=list)
    downloaded: bool = False  # the resume point came from the remote store
    remote_rejected: list[Checkpoint] = field(default_factory=list)
    remote_error: str | None = None
    lineage: str = ""  # CKPTD_LINEAGE: inherited from the resume point, or new
    went_back: WentBack | None = None  # resumed from a chosen checkpoint, not the newest
    memory: Pickup | None = None  # the memory tier's newest, persisted before this launch


@dataclass(frozen=True)
class WentBack:
    """A launch from a chosen checkpoint (``--resume-from``, ``rollback``)."""

    step: int
    path: Path
    chosen: Path  # as named (a branch's path when it was brought back)
    set_aside: SetAside
    remote_branch: str | None = None  # where the remote's newer checkpoints went
    remote_set_aside: list[int] = field(default_factory=list)  # their steps


class Launcher:
    def __init__(
        self,
        config: JobConfig,
        run_dir: RunDir,
        endpoint: str,
        remote: RemoteCopy | None = None,
        memory_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.endpoint = endpoint
        self.remote = remote
        self.memory_dir = memory_dir  # the memory tier's, when it is on
        self.attempt = -1
        self.verifier = verifier_of(config.integrity)
        self.go_back: Path | None = None  # the next launch resumes from this checkpoint
        self.skip_steps = ""  # CKPTD_SKIP_STEPS: set after a divergence, for every later launch
        # The nodes of one multi-node job start one lineage (each node's parts are one history).
        group = node_group(config.job_id, config.command)
        self.fresh_lineage = None if group is None else shared_lineage(config.name, group)

    def prepare(self) -> Prepared:
        """Take the job lock, clean the checkpoint directory, find the newest valid checkpoint.

        Blocking (a full hash of the resume candidate; up to ``kill_timeout`` for an
        earlier job's processes): runs on the background worker. Raises RunDirError
        when an earlier job will not let go of the job lock.
        """
        strays = self._take_job_lock()
        removed = remove_temporaries(self.config.checkpoint_dir)
        removed += retention.sweep_pruned(self.config.checkpoint_dir)
        removed += remove_signature_temporaries(self.config.checkpoint_dir)
        # First: a RAM checkpoint newer than the disk is persisted (a going back sets it aside).
        pickup = self._persist_memory(removed)
        quarantined: list[Quarantined] = []
        went_back = None
        resume: Checkpoint | None
        if self.go_back is not None:
            target, self.go_back = self.go_back, None
            resume, went_back = self._go_back(target)
            if self.memory_dir is not None:  # never persisted again past the point gone back to
                removed += drop_newer(self.memory_dir, resume.step)
        else:
            resume = self._newest_trusted(quarantined)
        prepared = Prepared(
            resume, removed, quarantined, strays,
            lineage=_lineage(resume, self.fresh_lineage), went_back=went_back, memory=pickup,
        )  # fmt: skip
        if went_back is not None and self.remote is None:
            return prepared
        if self.remote is None:
            return replace(prepared, resume=self._from_ram(resume))
        # A newer checkpoint in the bucket (a replaced VM) is downloaded and verified first;
        # on several nodes, one newer than the newest this node has for the whole job.
        anchor = resume if self.fresh_lineage is None else newest_whole(self.config.checkpoint_dir)
        fetched = self.remote.prepare(self.config.checkpoint_dir, anchor, self.signature_problem)
        downloaded = fetched.checkpoint is not None and (
            resume is None or fetched.checkpoint.step >= resume.step
        )
        if downloaded:
            resume = fetched.checkpoint
            prepared = replace(prepared, lineage=_lineage(resume, self.fresh_lineage))
        local = [c for c in scan(self.config.checkpoint_dir) if c.valid]
        self.remote.follow(prepared.lineage, resume.step if resume else None, local)
        return replace(
            prepared,
            resume=resume if downloaded or went_back else self._from_ram(resume),
            downloaded=downloaded,
            remote_rejected=fetched.rejected,
            remote_error=fetched.error,
        )

    def _persist_memory(self, removed: list[Path]) -> Pickup | None:
        """The memory tier's newest checkpoint newer than the disk's, persisted (and signed,
        with a signing key) before a launch: a trainer died, or an earlier ckptd with it."""
        if self.memory_dir is None:
            return None
        removed += remove_temporaries(self.memory_dir)  # the job is held down: none is live
        mode = int(self.config.checkpoint_mode, 8) if self.config.checkpoint_mode else None
        several = multi_node(self.config.job_id, self.config.command)
        pickup = persist_newest(
            self.memory_dir, self.config.checkpoint_dir, mode, every_newer=several
        )
        signer = signer_of(self.config.integrity)
        for done in [pickup.persisted, *pickup.older]:
            if signer is not None and done is not None and done.copied:
                # An error leaves it unsigned: refused below with a verify key, reported then.
                sign_then_upload(signer, done.path, done.step, None)
        return pickup

    def _from_ram(self, resume: Checkpoint | None) -> Checkpoint | None:
        """The resume point's RAM copy when it is the same checkpoint and verifies in full (the
        launch reads memory, not the disk); never under a verify key (RAM holds no signature)."""
        if resume is None or self.memory_dir is None or self.verifier is not None:
            return resume
        return ram_copy_of(resume, self.memory_dir) or resume

    def signature_problem(self, path: Path) -> str | None:
        """Why ``path`` may not be resumed under ``verify_key`` (None: it may, or no key)."""
        return signature_problem(self.verifier, path)

    def _go_back(self, target: Path) -> tuple[Checkpoint, WentBack]:
        """Resume from ``target`` (verified in full, and its signature with ``verify_key``);
        every newer checkpoint is set aside first. Raises GoBackError, nothing moved."""
        check_target(target)
        checked = inspect(target, full=True)
        if not checked.valid:
            raise GoBackError(f"{target} does not verify: {checked.reason}")
        if (problem := self.signature_problem(target)) is not None:
            raise GoBackError(f"{target}: {problem}")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        # The bucket first: a remote that cannot be reached refuses the launch, nothing moved.
        remote = self._set_aside_remote(checked.step, stamp)
        aside = set_aside_newer(self.config.checkpoint_dir, checked.step, stamp)
        home = bring_back(target, self.config.checkpoint_dir)
        if remote is not None:  # an upload that began before the local renames: it goes too
            late = self._set_aside_remote(checked.step, stamp)
            assert late is not None
            remote = replace(remote, branch=remote.branch or late.branch,
                             steps=sorted({*remote.steps, *late.steps}))  # fmt: skip
        went = WentBack(
            checked.step,
            home,
            target,
            aside,
            remote.branch if remote is not None else None,
            remote.steps if remote is not None else [],
        )
        return replace(checked, path=home), went

    def _set_aside_remote(self, step: int, stamp: str) -> RemoteSetAside | None:
        """The bucket's checkpoints above ``step`` to its ``.branches/<stamp>/`` (None: no
        remote). GoBackError when the remote cannot be reached or another daemon leases it."""
        return None if self.remote is None else self.remote.set_aside_newer(step, stamp)

    def _newest_trusted(self, quarantined: list[Quarantined]) -> Checkpoint | None:
        """The newest checkpoint that verifies in full, and whose signature verifies when
        ``verify_key`` is set; each one that fails is moved aside (into ``quarantined``)."""
        while True:
            rejected: list[Checkpoint] = []
            resume = newest_valid(self.config.checkpoint_dir, rejected=rejected)
            quarantined += [_quarantine(bad) for bad in rejected]
            problem = None if resume is None else self.signature_problem(resume.path)
            if problem is None:
                return resume
            assert resume is not None
            moved = _quarantine(replace(resume, valid=False, reason=problem))
            quarantined.append(moved)
            if moved.moved_to is None:  # cannot be moved: never resumed; older ones are not
                return None  # tried either, so that a failing rename cannot loop forever

    def start(self, prepared: Prepared) -> Trainer:
        """Spawn the job (its own session; it inherits the job lock). Raises LaunchError."""
        self.attempt += 1
        trainer = Trainer.launch(
            self.config.command,
            self.environment(prepared.resume, prepared.lineage),
            self.config.cwd,
            pass_fds=[self.run_dir.lock_fd],
        )
        self.run_dir.record_holder(trainer.pid)
        return trainer

    def adopt(self, orphan: Orphan | None) -> Trainer | None:
        """Take charge of a job left running by a dead daemon; None when there is none."""
        if orphan is None or orphan.pid is None:
            return None
        trainer = Trainer.adopt(orphan.pid, orphan.started)
        if trainer is not None:
            self.attempt += 1
        return trainer

    def environment(self, resume: Checkpoint | None, lineage: str = "") -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_ONLY}
        return {
            **inherited,
            **self.config.env,
            protocol.ENV_ENDPOINT: self.endpoint,
            protocol.ENV_CHECKPOINT_DIR: str(self.config.checkpoint_dir),
            protocol.ENV_RESUME_FROM: str(resume.path) if resume else "",
            protocol.ENV_RESUME_STEP: str(resume.step) if resume else "",
            protocol.ENV_ATTEMPT: str(self.attempt),
            protocol.ENV_RUN_DIR: str(self.run_dir.path),
            protocol.ENV_JOB: self.config.name,
            protocol.ENV_CHECKPOINT_MODE: self.config.checkpoint_mode or "",
            protocol.ENV_REPORT_EVERY: f"{report_interval(self.config):g}",
            protocol.ENV_LINEAGE: lineage or new_lineage_id(),
            protocol.ENV_MEMORY_DIR: str(self.memory_dir) if self.memory_dir is not None else "",
            ENV_SKIP_STEPS: self.skip_steps or self.config.env.get(ENV_SKIP_STEPS, ""),
            ENV_STACKS_FILE: str(stacks_file(self.run_dir.path, self.attempt)),
        }

    def _take_job_lock(self) -> list[int]:
        """The lock the job inherits; stray holders from an earlier job are killed first."""
        if self.run_dir.has_job_lock or self.run_dir.take_job_lock(self.config.kill_timeout):
            return []
        strays = self.run_dir.lock_holders()
        for process in strays:
            try:
                process.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(strays, timeout=self.config.kill_timeout)
        if not self.run_dir.take_job_lock(self.config.kill_timeout):
            raise RunDirError(f"{self.run_dir.path}: the job lock is still held by an earlier job")
        return [p.pid for p in strays]


def _lineage(resume: Checkpoint | None, fresh: str | None = None) -> str:
    """The lineage id a launch from ``resume`` writes: the one it records, or ``fresh``
    (a new one when None) on a fresh start."""
    try:
        if resume is None and fresh is not None:
            return fresh
        return lineage_after(resume.path if resume is not None else None).id
    except (OSError, ManifestError):  # verified moments ago; gone since: a history of its own
        return fresh or new_lineage_id()


def shared_lineage(name: str, group: str) -> str:
    """The lineage id every node of one multi-node job starts afresh with."""
    return "nodes-" + hashlib.sha256(f"{name}\0{group}".encode()).hexdigest()[:24]


def newest_whole(checkpoint_dir: Path) -> Checkpoint | None:
    """The newest checkpoint here that holds every rank's part (not one node's part only)."""
    for candidate in reversed(scan(checkpoint_dir)):
        try:
            if candidate.valid and read_manifest(candidate.path).complete:
                return candidate
        except (OSError, ManifestError):
            continue
    return None


def _quarantine(checkpoint: Checkpoint) -> Quarantined:
    """``step-N`` becomes ``step-N.corrupt-<time>``: kept for a person, never resumed or pruned."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = checkpoint.path.with_name(f"{checkpoint.name}.corrupt-{stamp}")
    try:
        os.rename(checkpoint.path, target)
    except OSError:
        return Quarantined(checkpoint, None)
    return Quarantined(checkpoint, target)
