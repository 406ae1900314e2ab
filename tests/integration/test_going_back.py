"""Going back to a chosen checkpoint: `ckptd run --resume-from`, `ckptd rollback`, `list --all`."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

from ckptd_client import manifest

from conftest import Job


def _saves_to_30(job: Job) -> None:
    job.start_fake("--steps", "31", "--save-every", "5", "--step-time", "0.005",
                   options=("--keep-last", "0"))  # fmt: skip
    assert job.wait() == 0, job.log_tail()


def _top_level(ckpt: Path) -> list[str]:
    return sorted(p.name for p in ckpt.iterdir() if p.name.startswith("step-"))


def test_resume_from_sets_newer_checkpoints_aside_and_later_runs_stay_there(
    make_job: Callable[..., Job], tmp_path: Path
) -> None:
    """--resume-from 15 resumes at 15; 20-30 go to .branches/<time>/ (listed by --all), a
    plain run afterwards resumes from 15 too, and naming a branch's checkpoint brings it back."""
    _saves_to_30(make_job("first"))
    ckpt = tmp_path / "ckpt"
    second = make_job("second")
    second.record = tmp_path / "second.jsonl"
    second.start_fake("--steps", "18", options=("--resume-from", "15", "--keep-last", "0"))
    assert second.wait() == 0, second.log_tail()
    assert second.records("start")[0]["resume_step"] == 15
    assert [r["step"] for r in second.records("step")] == [16, 17]
    went = second.events("job.rolled_back")[-1]
    assert went["step"] == 15 and went["set_aside"] == [
        manifest.checkpoint_name(s) for s in (20, 25, 30)
    ]
    branch = Path(went["branch"])
    assert branch.parent == ckpt / ".branches"
    assert sorted(p.name for p in branch.iterdir()) == went["set_aside"]
    assert _top_level(ckpt) == [manifest.checkpoint_name(s) for s in (5, 10, 15)]

    listed = json.loads(second.cli("list", "--all", "--json").stdout)
    assert {c["step"]: c["branch"] for c in listed} == {
        5: None, 10: None, 15: None, 20: branch.name, 25: branch.name, 30: branch.name,
    }  # fmt: skip
    assert all(c["valid"] for c in listed)
    assert "step-00000030" not in second.cli("list").stdout

    third = make_job("third")
    third.record = tmp_path / "third.jsonl"
    third.start_fake("--steps", "17")
    assert third.wait() == 0, third.log_tail()
    assert third.records("start")[0]["resume_step"] == 15

    fourth = make_job("fourth")
    fourth.record = tmp_path / "fourth.jsonl"
    fourth.start_fake("--steps", "32", options=("--resume-from", str(branch / "step-00000030")))
    assert fourth.wait() == 0, fourth.log_tail()
    assert fourth.records("start")[0]["resume_step"] == 30
    assert (ckpt / "step-00000030").is_dir() and not (branch / "step-00000030").exists()


def test_resume_from_a_missing_or_broken_checkpoint_is_refused(
    make_job: Callable[..., Job], tmp_path: Path
) -> None:
    """A step with no checkpoint is exit 2 before anything runs; a corrupt one is exit 2 at
    launch, with nothing set aside."""
    _saves_to_30(make_job("first"))
    missing = make_job("missing")
    missing.record = tmp_path / "missing.jsonl"
    missing.start_fake(options=("--resume-from", "7"))
    assert missing.wait() == 2
    assert "--resume-from: no checkpoint at" in missing.stderr.read_text()
    (tmp_path / "ckpt" / "step-00000010" / "payload.bin").write_bytes(b"changed")
    broken = make_job("broken")
    broken.record = tmp_path / "broken.jsonl"
    broken.start_fake(options=("--resume-from", "10"))
    assert broken.wait() == 2
    failed = broken.events("job.launch_failed")[-1]
    assert "does not verify" in failed["error"]
    assert not broken.record.exists()
    assert not (tmp_path / "ckpt" / ".branches").exists()


def test_rollback_saves_the_current_state_aside_and_relaunches_from_the_step(
    job: Job, tmp_path: Path
) -> None:
    """`ckptd rollback STEP` on a running job: final save, newer checkpoints (it included) set
    aside, relaunch from STEP; the rolled-back-to checkpoint survives retention."""
    job.start_fake("--save-every", "5", "--step-time", "0.1", options=("--keep-last", "3"))
    job.wait_record("saved", count=3)
    kept = [int(name[5:]) for name in _top_level(tmp_path / "ckpt")]
    target = kept[-2]  # two more saves before retention could reach it: the command is sooner
    done = job.cli("rollback", str(target))
    assert done.returncode == 0, done.stderr
    assert "rolling back to" in done.stdout
    went = job.wait_event("job.rolled_back")
    assert went["step"] == target
    restarted = job.wait_record("start", count=2)
    assert restarted["resume_step"] == target and restarted["attempt"] == 1
    final = job.events("checkpoint.committed")[-1]
    assert Path(final["path"]).name in went["set_aside"]
    assert all(Path(went["branch"], name).is_dir() for name in went["set_aside"])
    saved = len(job.records("saved"))
    job.wait_record("saved", count=saved + 4)  # retention ran four times since
    assert (tmp_path / "ckpt" / manifest.checkpoint_name(target)).is_dir()
    job.signal(signal.SIGTERM)
    assert job.wait() == 0


def test_rollback_to_a_step_without_checkpoint_is_an_error(job: Job) -> None:
    """A rollback to a step that has no checkpoint fails with no_checkpoint; the job runs on."""
    job.start_fake("--save-every", "5", "--step-time", "0.02")
    job.wait_record("saved")
    done = job.cli("rollback", "3")
    assert done.returncode != 0 and "no checkpoint at" in done.stderr
    assert job.status()["state"] in ("running", "checkpointing")
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
