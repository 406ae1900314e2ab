"""The divergence guard with real daemons: a NaN loss sends the job back before it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conftest import Job


def _guard(base: Path, **keys: object) -> Path:
    lines = ["[guard]"]
    for key, value in keys.items():
        lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}")
    path = base / "guard.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_nan_rolls_back_before_it_and_skips_the_window_like_a_run_told_to(
    make_job: Callable[..., Job], tmp_path: Path
) -> None:
    """Bad data at step 60 makes the loss NaN: job.diverged, relaunch from the checkpoint before
    the divergence with CKPTD_SKIP_STEPS, and the result equals a run that skipped that window."""
    job = make_job("guarded")
    config = _guard(tmp_path, nonfinite="rollback")
    job.start_fake(
        "--steps", "200", "--save-every", "5", "--step-time", "0.02", "--bad-data-at", "60",
        options=("--config", str(config), "--keep-last", "0"),
    )  # fmt: skip
    assert job.wait() == 0, job.log_tail()
    diverged = job.events("job.diverged")
    assert len(diverged) == 1
    event = diverged[0]
    assert event["rule"] == "nonfinite" and event["loss"] == "nan" and event["action"] == "rollback"
    first, last = (int(x) for x in event["skip"].split("-"))
    assert first <= 60 <= last == event["step"]
    assert event["resume_step"] < first and event["resume_step"] % 5 == 0
    starts = job.records("start")
    assert [s["resume_step"] for s in starts][1] == event["resume_step"]
    skipped = [r["step"] for r in job.records("skipped")]
    assert skipped == list(range(first, last + 1))
    rolled = job.events("job.rolled_back")[-1]
    assert rolled["step"] == event["resume_step"]
    done = job.records("done")[-1]
    assert 60 not in done["trained"]

    plain = make_job("plain")
    plain.record = tmp_path / "plain.jsonl"
    plain.checkpoint_dir = tmp_path / "plain-ckpt"
    plain.run_dir = tmp_path / "plain-run"
    plain.start_fake(
        "--steps", "200", "--step-time", "0.001", "--bad-data-at", "60",
        options=("--env", f"CKPTD_SKIP_STEPS={event['skip']}"),
    )  # fmt: skip
    assert plain.wait() == 0, plain.log_tail()
    assert plain.records("done")[-1]["trained"] == done["trained"]


def test_past_the_rollback_limit_ckptd_stops_with_exit_5(job: Job, tmp_path: Path) -> None:
    """With rollback_limit = 0 a NaN stops the job at once, without a final save: exit 5."""
    config = _guard(tmp_path, nonfinite="rollback", rollback_limit=0)
    job.start_fake(
        "--save-every", "5", "--step-time", "0.02", "--bad-data-at", "30",
        options=("--config", str(config)),
    )  # fmt: skip
    assert job.wait() == 5, job.log_tail()
    event = job.events("job.diverged")[-1]
    assert event["action"] == "stop" and "rollback_limit = 0" in event["why"]
    stopped = job.events("job.stopped")[-1]
    assert stopped["why"] == "diverged" and stopped["final_checkpoint"] is False
    assert len(job.records("start")) == 1


def test_a_spike_rolls_back_too(job: Job, tmp_path: Path) -> None:
    """The spike rule trips on a loss far above the window's mean (a huge finite loss)."""
    config = _guard(tmp_path, spike=6.0, spike_window=5, rollback_limit=0)
    job.start_fake(
        "--save-every", "5", "--step-time", "0.05", "--bad-data-at", "130",
        options=("--config", str(config)), env={"FAKE_BAD_LOSS": "1e6"},
    )  # fmt: skip
    assert job.wait() == 5, job.log_tail()
    event = job.events("job.diverged")[-1]
    assert event["rule"] == "spike" and event["loss"] == 1e6 and event["step"] >= 130


def test_early_stopping_after_patience_keeps_the_best(job: Job, tmp_path: Path) -> None:
    """monitor/mode/patience: two commits without improvement stop the job with a final save
    (job.stopped {why: early_stop}, exit 0); keep_best keeps the best one."""
    config = _guard(tmp_path, monitor="loss", mode="max", patience=2)
    job.start_fake(
        "--save-every", "5", "--step-time", "0.02",
        options=("--config", str(config), "--keep-last", "1", "--keep-best", "1"),
    )  # fmt: skip
    assert job.wait() == 0, job.log_tail()
    early = job.events("job.early_stop")[-1]
    assert early["best_step"] == 5 and "patience 2" in early["reason"]
    stopped = job.events("job.stopped")[-1]
    assert stopped["why"] == "early_stop" and stopped["final_checkpoint"] is True
    assert (tmp_path / "ckpt" / "step-00000005").is_dir()
