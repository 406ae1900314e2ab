"""The [metrics] endpoint of a running daemon, scraped over HTTP on loopback."""

from __future__ import annotations

import signal
import socket
import urllib.request
from pathlib import Path

import pytest

from conftest import Job, wait_for

pytest.importorskip("prometheus_client", reason="needs the metrics extra (prometheus_client)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()
    except OSError:
        return ""


def test_a_running_job_is_visible_to_prometheus(job: Job, tmp_path: Path) -> None:
    """The job is up, its step moves and a committed checkpoint is counted."""
    port = _free_port()
    config = tmp_path / "metrics.toml"
    config.write_text(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    job.start_fake(options=("--config", str(config)))
    job.wait_event("client.connected")
    wait_for(lambda: "ckptd_job_up 1.0" in _scrape(port), "the job to be up in the metrics")
    (job.run_dir / "CHECKPOINT").touch()
    job.wait_event("checkpoint.committed")
    wait_for(
        lambda: 'ckptd_checkpoints_total{outcome="committed"} 1.0' in _scrape(port),
        "the commit to be counted",
    )
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    assert _scrape(port) == "", "the endpoint outlived the daemon"
