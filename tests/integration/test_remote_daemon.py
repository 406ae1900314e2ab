"""`ckptd run --remote`: uploads after commits, the final one before exit, resume on a fresh VM."""

from __future__ import annotations

import json
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from remote_fixtures import MotoServer, moto, tree  # noqa: F401 - moto is a fixture

from conftest import FAKES, Job

pytest.importorskip("s3fs", reason="needs the s3 extra (s3fs) and moto[server]")


def _config(path: Path, url: str, options: dict[str, object], timeout: str = "20s") -> Path:
    lines = [f'[storage]\nremote = "{url}"\nupload_timeout = "{timeout}"\n[storage.options]']
    for key, value in options.items():
        lines.append(f"{key} = {_toml(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def machines(tmp_path: Path) -> Iterator[Callable[[str], Job]]:
    """Jobs each on its own "machine" (base directory); all killed at the end."""
    made: list[Job] = []

    def make(name: str) -> Job:
        base = tmp_path / name
        base.mkdir()
        made.append(Job(base, name))
        return made[-1]

    yield make
    for job in made:
        job.kill()


def _toml(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def _fake(job: Job, *flags: str) -> list[str]:
    return [sys.executable, str(FAKES / "trainer.py"), "--record", str(job.record), *flags]


def test_a_replacement_vm_resumes_from_the_bucket_bit_exact(
    moto: MotoServer,  # noqa: F811 - the fixture
    tmp_path: Path,
    machines: Callable[[str], Job],
) -> None:
    """Stop uploads the final checkpoint (exit 0); an empty machine downloads and resumes it."""
    config = _config(tmp_path / "storage.toml", moto.url("spot"), moto.options)
    first = machines("vm1")
    first.start(_fake(first, "--payload", "300000"), "--config", str(config), "--every", "1s")
    first.wait_event("remote.uploaded")
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    final = first.events("checkpoint.committed")[-1]
    assert first.events("remote.final")[-1]["uploaded"] is True
    assert first.events("job.stopped")[-1]["final_remote"] is True
    local = first.checkpoint_dir / f"step-{final['step']:08d}"

    second = machines("vm2")  # a fresh disk
    second.start(_fake(second, "--steps", str(final["step"] + 3)), "--config", str(config))
    assert second.wait() == 0
    assert second.records("start")[0]["resume_step"] == final["step"]
    assert second.events("remote.downloaded")[0]["step"] == final["step"]
    assert tree(second.checkpoint_dir / local.name) == tree(local)


def test_a_stop_whose_upload_cannot_land_exits_1_with_the_reason(
    tmp_path: Path, machines: Callable[[str], Job]
) -> None:
    """A remote that never answers: training is not slowed, the stop is bounded, exit 1."""
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(64)
        port = blackhole.getsockname()[1]
        options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "k", "secret": "s"}
        config = _config(tmp_path / "storage.toml", "s3://ckptd-test/run", options, "2s")
        job = machines("vm")
        job.start(_fake(job), "--config", str(config), "--grace", "3s", "--kill-timeout", "1s")
        job.wait_event("client.connected", timeout=90)
        job.wait_record("step", count=20)
        job.signal(signal.SIGTERM)
        assert job.wait(timeout=90) == 1
    final = job.events("remote.final")[-1]
    assert final["uploaded"] is False and "local only" in final["why"]
    stopped = job.events("job.stopped")[-1]
    assert stopped["final_checkpoint"] is True and stopped["final_remote"] is False
    assert job.events("remote.unreachable") or job.events("remote.failed")


def test_a_missing_bucket_is_one_line_exit_2(
    moto: MotoServer,  # noqa: F811 - the fixture
    tmp_path: Path,
    machines: Callable[[str], Job],
) -> None:
    """A remote whose bucket does not exist: one line naming the URL, exit 2, nothing launched."""
    config = _config(tmp_path / "storage.toml", "s3://no-such-bucket/run", moto.options)
    job = machines("vm")
    job.start(_fake(job), "--config", str(config))
    assert job.wait() == 2
    assert not job.records("start")
    assert "no-such-bucket" in job.stderr.read_text()
