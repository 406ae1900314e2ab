"""Cloud preemption notices from fake metadata servers, SLURM's warning signal."""

from __future__ import annotations

import json
import signal
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.metadata import FakeMetadata

from ckptd.sources.cloud_notices import GceWatcher

from conftest import FAKES, Job, wait_for


@pytest.fixture
def metadata(request: pytest.FixtureRequest) -> Iterator[FakeMetadata]:
    server = FakeMetadata(request.param)
    yield server
    server.close()


def _config(tmp_path: Path, provider: str, endpoint: str, margin: str) -> Path:
    path = tmp_path / "ckptd.toml"
    path.write_text(
        f'[preemption]\nprovider = "{provider}"\nendpoint = "{endpoint}"\n'
        f'interval = "0.2s"\nmargin = "{margin}"\ntimeout = "1s"\n'
    )
    return path


def _final_before_deadline(job: Job, deadline: float) -> dict:
    final = job.events("preemption.final")
    assert len(final) == 1, job.log_tail()
    outcome = final[0]
    assert outcome["steps_lost"] == 0
    assert outcome["seconds_before_deadline"] > 0
    committed = [
        e for e in job.events("checkpoint.committed") if e["path"] == outcome["final_checkpoint"]
    ]
    assert committed and committed[0]["time"] < deadline
    assert len(job.records("start")) == 1, "a preempted job must not be restarted"
    return outcome


@pytest.mark.parametrize("metadata", ["aws"], indirect=True)
def test_aws_spot_notice_checkpoints_now_and_saves_last_before_the_deadline(
    job: Job, tmp_path: Path, metadata: FakeMetadata
) -> None:
    """AWS (2 min in life, 8 s here): one checkpoint at once, the final one as late as safe.

    The notice stays up for the whole window and is polled many times: it is acted on once.
    """
    job.start_fake(options=("--config", str(_config(tmp_path, "aws", metadata.url, "2s"))))
    job.wait_event("client.connected")
    deadline = metadata.preempt(8.0)
    noticed = job.wait_event("preemption.noticed")
    assert noticed["provider"] == "aws" and abs(noticed["deadline"] - deadline) < 1.5
    polls_at_notice = _polls(metadata, "spot/instance-action")
    assert job.wait() == 0
    outcome = _final_before_deadline(job, deadline)
    assert _polls(metadata, "spot/instance-action") - polls_at_notice >= 5, (
        "the notice was not polled again"
    )
    assert len(job.events("preemption.noticed")) == 1
    commits = job.events("checkpoint.committed")
    assert len(commits) == 2, f"expected one early checkpoint and the final one: {commits}"
    assert commits[0]["time"] - noticed["time"] < 2.0  # the early one, at once
    assert commits[-1]["time"] > commits[0]["time"] + 2.0  # the final one, later
    assert outcome["steps_saved"] > 0
    assert any(r.startswith("PUT /latest/api/token") for r in metadata.requests)


@pytest.mark.parametrize("metadata", ["aws"], indirect=True)
def test_notice_under_periodic_saves_takes_only_the_final_checkpoint(
    job: Job, tmp_path: Path, metadata: FakeMetadata
) -> None:
    """With a periodic interval running, a notice adds the final save and no early one."""
    config = _config(tmp_path, "aws", metadata.url, "2s")
    job.start_fake(options=("--config", str(config), "--every", "1h"))
    job.wait_event("client.connected")
    deadline = metadata.preempt(6.0)
    job.wait_event("preemption.noticed")
    assert job.wait() == 0
    _final_before_deadline(job, deadline)
    commits = job.events("checkpoint.committed")
    assert len(commits) == 1, f"expected the final checkpoint only: {commits}"


def _polls(metadata: FakeMetadata, path: str) -> int:
    return sum(path in r for r in metadata.requests)


@pytest.mark.parametrize("metadata", ["aws"], indirect=True)
def test_aws_rebalance_recommendation_is_one_plain_checkpoint(
    job: Job, tmp_path: Path, metadata: FakeMetadata
) -> None:
    """AWS rebalance recommendation: one checkpoint, however often polled; the job runs on."""
    job.start_fake(options=("--config", str(_config(tmp_path, "aws", metadata.url, "2s"))))
    job.wait_event("client.connected")
    metadata.rebalance = True
    committed = job.wait_event("checkpoint.committed")
    polls = _polls(metadata, "recommendations/rebalance")
    wait_for(
        lambda: _polls(metadata, "recommendations/rebalance") >= polls + 5, "more rebalance polls"
    )
    job.wait_record("step", count=committed["step"] + 20)
    assert len(job.events("checkpoint.committed")) == 1
    assert [e["reason"] for e in job.events("checkpoint.requested")] == [
        "aws rebalance recommendation"
    ]
    assert not job.events("preemption.noticed") and not job.events("job.stopping")
    assert job.process is not None and job.process.poll() is None
    job.signal(signal.SIGTERM)
    assert job.wait() == 0


@pytest.mark.parametrize("metadata", ["aws"], indirect=True)
def test_status_shows_the_pending_preemption_deadline(
    job: Job, tmp_path: Path, metadata: FakeMetadata
) -> None:
    """While a notice is pending, `ckptd status` (and --json) shows its deadline, seconds left."""
    job.start_fake(options=("--config", str(_config(tmp_path, "aws", metadata.url, "5s"))))
    job.wait_event("client.connected")
    deadline = metadata.preempt(120.0)
    noticed = job.wait_event("preemption.noticed")
    pending = job.status()["preemption"]
    queried = time.time()
    assert pending["provider"] == "aws"
    assert abs(pending["deadline"] - deadline) < 1.5  # AWS gives whole seconds
    answered = pending["deadline"] - pending["seconds_left"]  # the daemon's clock when asked
    assert noticed["time"] - 0.01 <= answered <= queried + 0.01
    human = job.cli("status")
    assert "aws terminate: deadline in" in human.stdout, human.stdout
    job.signal(signal.SIGTERM)
    assert job.wait() == 0


@pytest.mark.parametrize("metadata", ["gcp"], indirect=True)
def test_gce_preemption_during_a_hanging_get_is_acted_on_at_once(
    job: Job, tmp_path: Path, metadata: FakeMetadata
) -> None:
    """GCE (30 s, no time given): auto finds GCE; a flip while a GET hangs is seen at once."""
    job.start_fake(options=("--config", str(_config(tmp_path, "auto", metadata.url, "27s"))))
    job.wait_event("client.connected")
    # Hanging on anything but `preempted` itself: the flip must not wait for that GET to end.
    wait_for(
        lambda: any(not path.endswith("/preempted") for path in metadata.hanging),
        "a hanging GET on another key than preempted",
    )
    deadline = metadata.preempt(30.0)
    assert metadata.preempted_at is not None
    noticed = job.wait_event("preemption.noticed", timeout=15)
    assert noticed["provider"] == "gcp"
    assert noticed["time"] - metadata.preempted_at < 5.0, "noticed late in a 30 s window"
    stopping = job.wait_event("job.stopping", timeout=15)
    assert stopping["time"] - metadata.preempted_at < 10.0
    assert job.wait() == 0
    _final_before_deadline(job, deadline)


@pytest.mark.parametrize("metadata", ["gcp"], indirect=True)
def test_gce_watcher_sees_a_change_made_between_two_gets(metadata: FakeMetadata) -> None:
    """A flip between two GETs is answered at once (last_etag), then not reported again."""
    watcher = GceWatcher(metadata.url, timeout=2.0, hang=20.0)
    assert watcher.poll() == []  # the state now, and its ETag
    metadata.preempt(30.0)
    started = time.monotonic()
    notices = watcher.poll()
    assert [n.kind for n in notices] == ["preempted"]
    assert time.monotonic() - started < 5.0, "waited for the next change instead"
    metadata.start_maintenance()
    started = time.monotonic()
    assert [n.kind for n in watcher.poll()] == ["maintenance-event"]
    assert time.monotonic() - started < 5.0
    watcher.hang = 1.0
    assert watcher.poll() == []  # nothing new: the same notices are not repeated


@pytest.mark.parametrize("metadata", ["azure"], indirect=True)
def test_azure_preempt_event_is_saved_then_approved(
    job: Job, tmp_path: Path, metadata: FakeMetadata
) -> None:
    """Azure: act on this VM's Preempt event only; approve it once the final save is done."""
    job.start_fake(options=("--config", str(_config(tmp_path, "azure", metadata.url, "2s"))))
    job.wait_event("client.connected")
    wait_for(lambda: metadata.requests.count("GET /metadata/scheduledevents") >= 3, "polls")
    assert not job.events("preemption.noticed"), "another VM's event was taken for ours"
    deadline = metadata.preempt(6.0)
    assert job.wait() == 0
    _final_before_deadline(job, deadline)
    wait_for(lambda: metadata.acks, "the approval POST", 10)
    assert metadata.acks == [{"StartRequests": [{"EventId": "evt-1"}]}]


@pytest.mark.parametrize("metadata", ["aws"], indirect=True)
def test_bad_metadata_answers_are_logged_once_and_harmless(
    job: Job, tmp_path: Path, metadata: FakeMetadata
) -> None:
    """A body that is not JSON and an unreachable service are logged (rate limited), no crash."""
    metadata.garbage = True
    metadata.preempt(3600)
    job.start_fake(options=("--config", str(_config(tmp_path, "aws", metadata.url, "5s"))))
    job.wait_event("client.connected")
    wait_for(lambda: len([r for r in metadata.requests if "instance-action" in r]) >= 10, "polls")
    metadata.close()  # now the service is gone entirely
    job.wait_record("step", count=len(job.records("step")) + 20)
    lines = [
        json.loads(line) for line in job.stderr.read_text().splitlines() if line.startswith("{")
    ]
    warnings = [line for line in lines if line["event"] == "preemption.metadata_unavailable"]
    kinds = [w["error"].split(":")[0] for w in warnings]
    assert warnings and len(kinds) == len(set(kinds)), kinds  # once per kind of error per minute
    assert not job.events("preemption.noticed")
    job.signal(signal.SIGTERM)
    assert job.wait() == 0


def test_slurm_warning_signal_saves_requeues_and_exits(job: Job, tmp_path: Path) -> None:
    """Under SLURM, the configured warning signal: final checkpoint, requeue command, exit 0."""
    log = tmp_path / "scontrol.log"
    scontrol = tmp_path / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IXUSR)
    config = tmp_path / "ckptd.toml"
    config.write_text(
        f'[slurm]\nrequeue_signal = "SIGUSR2"\n'
        f'requeue_command = ["{scontrol}", "requeue", "$SLURM_JOB_ID"]\n'
    )
    job.start([*_fake(job)], "--config", str(config), env={"SLURM_JOB_ID": "4242"})
    job.wait_record("step", count=5)
    job.signal(signal.SIGUSR2)
    assert job.wait() == 0
    assert log.read_text().split() == ["requeue", "4242"]
    assert job.records("saved")[-1]["step"] == job.records("step")[-1]["step"]
    assert job.events("job.requeued")


def _fake(job: Job) -> list[str]:
    return [sys.executable, str(FAKES / "trainer.py"), "--record", str(job.record)]
