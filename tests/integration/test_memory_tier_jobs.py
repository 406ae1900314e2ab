"""The memory tier with real processes: saves in RAM, persisted by ckptd when the trainer dies,
picked up by the next ckptd when both died, corrupt copies skipped, disk when RAM cannot."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ckptd.storage.memory import RAM_FILESYSTEMS, filesystem_of
from ckptd_client.store import inspect, scan

from conftest import FAKES, Job, wait_for

FAST = ("--restart-delay", "0", "--kill-timeout", "1s")
# A RAM save every second; the disk tier only from RAM, and not within the test by itself.
MEMORY = ("--memory-every", "1s", "--every", "1h", *FAST)


@pytest.fixture
def ram() -> Iterator[Path]:
    """A memory_dir on /dev/shm (tmpfs), removed after the test whatever happened."""
    if filesystem_of(Path("/dev/shm")) not in RAM_FILESYSTEMS:
        pytest.skip("no tmpfs at /dev/shm")
    path = Path("/dev/shm") / f"ckptd-test-{uuid.uuid4().hex[:12]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _memory_commits(job: Job) -> list[dict]:
    return [e for e in job.events("checkpoint.committed") if e.get("tier") == "memory"]


def _trainer_pid(job: Job, attempt: int = 0) -> int:
    return int(job.wait_record("start", attempt + 1)["pid"])


def test_a_killed_trainer_resumes_from_the_ram_checkpoint_newer_than_the_disk(
    job: Job, ram: Path
) -> None:
    """SIGKILL: the newest RAM checkpoint is persisted once the job is gone, before the
    relaunch, which resumes from it; status and events name the tier; SIGTERM then saves to
    RAM, persisted before the exit 0, and clears RAM."""
    job.start_fake("--step-time", "0.01", options=(*MEMORY, "--memory-dir", str(ram)))
    ready = job.wait_event("memory.ready")
    assert ready["dir"] == str(ram) and ready["in_ram"] is True
    pid = _trainer_pid(job)
    wait_for(lambda: len(_memory_commits(job)) >= 2, "two RAM commits")
    assert not [c for c in scan(job.checkpoint_dir) if c.valid]  # the disk has none yet
    status = job.status()
    assert status["memory"]["dir"] == str(ram) and status["memory"]["newest"]["step"] >= 0
    assert status["last_checkpoint"]["tier"] == "memory"
    acknowledged = _memory_commits(job)[-1]["step"]
    os.kill(pid, signal.SIGKILL)
    started = job.wait_event("job.started", 2)
    persisted = job.wait_event("checkpoint.persisted")
    newest = persisted["step"]  # a commit after the one read above may have landed too
    assert persisted["why"] == "the job exited" and newest >= acknowledged
    assert inspect(job.checkpoint_dir / f"step-{newest:08d}", full=True).valid
    assert started["resume_step"] == newest and started["resume_from"].startswith(str(ram))
    assert job.wait_record("start", 2)["resume_step"] == newest
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    final = job.events("checkpoint.committed")[-1]
    assert final["tier"] == "memory" and Path(final["path"]).parent == ram
    assert job.events("memory.cleared") and list(ram.iterdir()) == []  # the dir was named


def test_sigterm_saves_the_final_checkpoint_to_ram_then_persists_it_before_the_exit(
    job: Job, ram: Path
) -> None:
    """SIGTERM with the memory tier: the final save commits in RAM, ckptd persists it to
    checkpoint_dir (checkpoint.persisted before ckptd.exiting), exits 0 and leaves RAM empty."""
    job.start_fake("--step-time", "0.01", options=(*MEMORY, "--memory-dir", str(ram)))
    _trainer_pid(job)
    wait_for(lambda: _memory_commits(job), "a RAM commit")
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    events = job.events()
    names = [e["event"] for e in events]
    # The final save (or, when it reused a RAM checkpoint, the step trained after it)
    final_at = len(names) - 1 - names[::-1].index("checkpoint.committed")
    final = events[final_at]
    assert final_at > names.index("job.stopping")
    assert final["tier"] == "memory" and Path(final["path"]).parent == ram
    persisted_at = names.index("checkpoint.persisted", final_at)
    persisted = events[persisted_at]
    assert persisted["step"] == final["step"] and persisted["why"] == "the final save"
    assert persisted_at < names.index("ckptd.exiting")
    on_disk = job.checkpoint_dir / f"step-{final['step']:08d}"
    assert inspect(on_disk, full=True).valid
    assert job.events("job.stopped")[-1]["final_checkpoint"] is True
    assert list(ram.iterdir()) == []


def test_daemon_and_trainer_killed_the_next_run_uses_the_ram_copy(
    make_job: Callable[..., Job], ram: Path
) -> None:
    """ckptd and its trainer SIGKILLed together: the next ckptd persists the RAM copy it finds
    (same memory_dir), after verifying it, and the job resumes from it."""
    first = make_job("first")
    first.start_fake("--step-time", "0.01", options=(*MEMORY, "--memory-dir", str(ram)))
    wait_for(lambda: len(_memory_commits(first)) >= 1, "a RAM commit")
    first.kill()
    newest = max(c.step for c in scan(ram) if c.valid)
    assert not [c for c in scan(first.checkpoint_dir) if c.valid]
    second = make_job("second")
    second.start_fake("--step-time", "0.01", options=(*MEMORY, "--memory-dir", str(ram)))
    persisted = second.wait_event("checkpoint.persisted")
    assert persisted["step"] == newest and persisted["why"] == "before the launch"
    assert second.wait_event("job.started", 2)["resume_step"] == newest
    second.signal(signal.SIGTERM)
    assert second.wait() == 0


def test_a_corrupt_ram_copy_is_skipped_for_the_one_before_it(
    make_job: Callable[..., Job], ram: Path
) -> None:
    """A RAM checkpoint whose bytes no longer match its manifest is never resumed from: the
    next ckptd drops it (checkpoint.invalid, tier memory) and persists the older one."""
    first = make_job("first")
    first.start_fake("--step-time", "0.01", options=(*MEMORY, "--memory-dir", str(ram)))
    wait_for(lambda: len([c for c in scan(ram) if c.valid]) >= 2, "two RAM checkpoints")
    first.kill()
    older, newer = [c for c in scan(ram) if c.valid][-2:]
    payload = newer.path / "payload.bin"
    data = bytearray(payload.read_bytes())
    data[0] ^= 0xFF
    payload.write_bytes(bytes(data))
    second = make_job("second")
    second.start_fake("--step-time", "0.01", options=(*MEMORY, "--memory-dir", str(ram)))
    invalid = second.wait_event("checkpoint.invalid")
    assert invalid["tier"] == "memory" and invalid["step"] == newer.step
    assert second.wait_event("checkpoint.persisted")["step"] == older.step
    assert second.wait_record("start", 2)["resume_step"] == older.step
    second.signal(signal.SIGTERM)
    assert second.wait() == 0


def test_ram_that_cannot_take_a_save_sends_it_to_disk(job: Job, tmp_path: Path) -> None:
    """The RAM directory stops accepting saves (simulated: a file put in its place, since a
    full tmpfs needs root to mount): the save goes to checkpoint_dir with a
    checkpoint.tier_fallback event, and the job goes on."""
    memory_dir = tmp_path / "ram"
    job.start_fake("--step-time", "0.01", options=(*MEMORY, "--memory-dir", str(memory_dir)))
    ready = job.wait_event("memory.ready")
    assert ready["explicit"] is True
    _trainer_pid(job)
    memory_dir.rename(tmp_path / "ram-gone")
    memory_dir.write_text("RAM is full")
    fallback = job.wait_event("checkpoint.tier_fallback")
    assert str(memory_dir) in fallback["why"] and fallback["tier"] == "disk"
    committed = wait_for(
        lambda: [e for e in job.events("checkpoint.committed") if e["tier"] == "disk"],
        "a commit on disk",
    )[0]
    assert Path(committed["path"]).parent == job.checkpoint_dir
    assert inspect(Path(committed["path"]), full=True).valid
    job.signal(signal.SIGTERM)
    assert job.wait() == 0


def test_without_every_each_ram_save_is_persisted_and_ram_keeps_memory_keep(
    job: Job, ram: Path
) -> None:
    """No `every`: ckptd copies each RAM checkpoint to disk in the background (verified, ready
    to upload) and RAM holds memory_keep of them; `ckptd list` shows both tiers; a `ckptd
    checkpoint` request saves to disk."""
    options = ("--memory-every", "1s", "--memory-keep", "1", "--memory-dir", str(ram), *FAST)
    job.start_fake("--step-time", "0.01", options=options)
    wait_for(lambda: len(job.events("checkpoint.persisted")) >= 2, "two persisted RAM saves")
    for persisted in job.events("checkpoint.persisted"):
        assert persisted["why"] == "background" and Path(persisted["source"]).parent == ram
        assert inspect(Path(persisted["path"]), full=True).valid
    wait_for(lambda: len([c for c in scan(ram) if c.valid]) == 1, "RAM pruned to memory_keep")
    listed = job.cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    tiers = {(c["step"], c["tier"]) for c in json.loads(listed.stdout) if c["valid"]}
    assert {tier for _, tier in tiers} == {"memory", "disk"}
    assert "TIER" in job.cli("list").stdout.splitlines()[0]
    asked = job.cli("checkpoint", "--wait", "--json")
    assert asked.returncode == 0, asked.stderr
    assert Path(json.loads(asked.stdout)["path"]).parent == job.checkpoint_dir
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    assert list(ram.iterdir()) == []


def test_a_waited_request_that_joins_a_ram_save_is_answered_with_its_disk_copy(
    job: Job, ram: Path, tmp_path: Path
) -> None:
    """`ckptd checkpoint --wait` arriving while a RAM save is under way joins it; the answer
    comes once that step is persisted, with the disk copy's path (a checkpoint on disk, as the
    request asked), not the RAM one that a crash of the machine would take with it."""
    release = tmp_path / "release-the-save"
    options = (*MEMORY, "--memory-dir", str(ram))
    job.start_fake("--step-time", "0.01", "--save-until", str(release), options=options)
    started = job.wait_event("checkpoint.started")
    requested = job.events("checkpoint.requested")[0]
    assert requested["request_id"] == started["request_id"] and requested["tier"] == "memory"
    command = [sys.executable, "-m", "ckptd", "checkpoint", "--wait", "--json"]
    waiting = subprocess.Popen(
        [*command, "--run-dir", str(job.run_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        joined = wait_for(
            lambda: [
                e
                for e in job.events("checkpoint.requested")
                if e.get("coalesced_into") and e["tier"] == "disk"  # the timer's join too
            ],
            "the waited request to join the RAM save",
        )[0]
        assert joined["coalesced_into"] == started["request_id"]
        release.touch()
        out, _ = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
        waiting.wait()
    assert waiting.returncode == 0
    answer = json.loads(out)
    committed = _memory_commits(job)[0]
    assert answer["tier"] == "disk" and Path(answer["memory_path"]) == Path(committed["path"])
    assert Path(answer["path"]).parent == job.checkpoint_dir and answer["step"] == committed["step"]
    assert inspect(Path(answer["path"]), full=True).valid
    persisted = [e for e in job.events("checkpoint.persisted") if e["step"] == answer["step"]]
    assert persisted and persisted[0]["path"] == answer["path"]
    job.signal(signal.SIGTERM)
    assert job.wait() == 0


def test_a_memory_dir_that_is_a_link_is_a_one_line_start_error(job: Job, tmp_path: Path) -> None:
    """A memory_dir that is a symlink is refused before anything is launched (exit 2)."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    job.start_fake(options=("--memory-every", "5s", "--memory-dir", str(tmp_path / "link")))
    assert job.wait() == 2
    assert "memory_dir:" in job.log_tail() and "link is not followed" in job.log_tail()
    assert not job.records("start")


def test_a_hung_trainer_killed_by_ckptd_resumes_from_its_ram_checkpoint(
    job: Job, ram: Path
) -> None:
    """A hang kill is a trainer death like any: the RAM checkpoint taken before the hang is
    persisted before the relaunch and resumed from."""
    job.start_fake(
        "--step-time", "0.02", "--hang-at", "150", "--steps", "200",
        options=(*MEMORY, "--memory-dir", str(ram), "--hang-timeout", "1s"),
    )  # fmt: skip
    job.wait_record("hang")
    assert job.wait() == 0
    assert job.events("job.hung")
    persisted = [e for e in job.events("checkpoint.persisted") if e["why"] == "the job exited"]
    starts = job.records("start")
    assert len(starts) == 2 and persisted and starts[1]["resume_step"] == persisted[0]["step"]
    assert 0 < persisted[0]["step"] < 150
    assert job.records("done")


@pytest.mark.torch
def test_the_ranks_of_one_node_save_one_ram_step_persisted_and_resumed_after_a_kill(
    job: Job, ram: Path
) -> None:
    """torchrun, two ranks on one node: a memory request makes one RAM step with both ranks'
    files, committed once; SIGKILL of a rank persists it and the group resumes from it."""
    pytest.importorskip("torch", reason="the ranks run under torchrun, which needs torch")
    trainer = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "--max-restarts=0", str(FAKES / "ddp_trainer.py"), "--record", str(job.record),
    ]  # fmt: skip
    job.start(trainer, *MEMORY, "--grace", "60s", "--memory-dir", str(ram))
    committed = wait_for(lambda: _memory_commits(job), "a RAM commit of the group")[0]
    assert Path(committed["path"]).parent == ram
    assert (
        len([e for e in job.events("checkpoint.committed") if e["step"] == committed["step"]]) == 1
    )
    assert not job.events("checkpoint.tier_fallback")
    victim = next(r["pid"] for r in job.records("start") if r["rank"] == 1)
    os.kill(victim, signal.SIGKILL)
    persisted = job.wait_event("checkpoint.persisted")
    step = persisted["step"]
    assert persisted["why"] == "the job exited" and step >= committed["step"]
    on_disk = inspect(job.checkpoint_dir / f"step-{step:08d}", full=True)
    assert on_disk.valid, on_disk.reason
    listed = json.loads((on_disk.path / "ckptd.json").read_text())["files"]
    assert {entry["path"] for entry in listed} == {"rank-0.pt", "rank-1.pt"}
    assert job.wait_event("job.started", 2)["resume_step"] == step
    wait_for(lambda: len(job.records("start")) >= 4, "both ranks relaunched")
    assert {r["resume_step"] for r in job.records("start")[2:]} == {step}
    job.wait_event("client.connected", 4)  # a stop before that ends torchrun without a save
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    assert list(ram.iterdir()) == []
