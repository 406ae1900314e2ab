"""[metrics] listen: the Prometheus endpoint, scraped over HTTP on loopback."""

from __future__ import annotations

import math
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckptd import config
from ckptd.reporting.prometheus import Metrics, parse_listen

pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    served = Metrics("train")
    yield served
    served.close()


def _scrape(address: tuple[str, int]) -> dict[str, float]:
    host, port = address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_scrape_shows_what_the_arbiter_reported(metrics: Metrics) -> None:
    """Every figure set from the loop is served in the exposition format."""
    address = metrics.start("127.0.0.1:0")
    now = time.time()
    metrics.job_started(attempt=0, resume_step=None, now=now - 30)
    metrics.stepped(99)
    metrics.committed(step=90, seconds=1.5, now=now - 10)
    metrics.stepped(120)
    metrics.failed()
    metrics.job_exited()
    metrics.job_started(attempt=1, resume_step=90, now=now - 5)
    metrics.stepped(95)
    metrics.hung()
    metrics.read_goodput(lambda: 0.93)
    metrics.set_hang_budgets({"step": 12.5, "save": 300.0, "first_step": 1800.0})
    metrics.set_interval(600.0)
    got = _scrape(address)
    assert got["ckptd_step"] == 95 and got["ckptd_attempt"] == 1 and got["ckptd_job_up"] == 1
    assert got["ckptd_unsaved_steps"] == 5
    assert 5 <= got["ckptd_unsaved_seconds"] < 60
    assert got["ckptd_last_checkpoint_step"] == 90
    assert 10 <= got["ckptd_last_checkpoint_age_seconds"] < 60
    assert got["ckptd_last_save_seconds"] == 1.5
    assert got["ckptd_save_seconds_count"] == 1 and got["ckptd_save_seconds_sum"] == 1.5
    assert got["ckptd_checkpoints_total{outcome=committed}"] == 1
    assert got["ckptd_checkpoints_total{outcome=failed}"] == 1
    assert got["ckptd_restarts_total"] == 1
    assert got["ckptd_hang_timeouts_total"] == 1
    assert got["ckptd_hang_timeout_seconds{phase=step}"] == 12.5
    assert got["ckptd_goodput_ratio"] == 0.93
    assert got["ckptd_checkpoint_interval_seconds"] == 600
    assert got["ckptd_info{name=train}"] == 1


def test_before_any_checkpoint_the_age_is_not_a_number(metrics: Metrics) -> None:
    """No commit yet: the age is NaN (not 0, which would look healthy)."""
    got = _scrape(metrics.start("127.0.0.1:0"))
    assert math.isnan(got["ckptd_last_checkpoint_age_seconds"])
    assert math.isnan(got["ckptd_goodput_ratio"])
    assert math.isnan(got["ckptd_checkpoint_interval_seconds"])
    assert got["ckptd_unsaved_seconds"] == 0 and got["ckptd_job_up"] == 0


def test_close_stops_serving_even_with_a_silent_client(metrics: Metrics) -> None:
    """A client that connects and sends nothing does not keep the server (or a thread) up."""
    host, port = metrics.start("127.0.0.1:0")
    with socket.create_connection((host, port), timeout=5):
        metrics.close()
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=2).close()
    metrics.close()  # twice is harmless


def test_a_busy_port_is_one_clear_error(metrics: Metrics) -> None:
    """The address already in use: an OSError naming it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            metrics.start(f"127.0.0.1:{port}")


def test_listen_addresses() -> None:
    """HOST:PORT with an IP address, [::1], localhost, or no host for all addresses."""
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    assert parse_listen(":9464") == ("0.0.0.0", 9464)
    assert parse_listen("localhost:1") == ("localhost", 1)
    for bad in ("9464", "127.0.0.1:http", "127.0.0.1:70000", "example.com:9464"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_metrics_table_in_the_config(tmp_path: Path) -> None:
    """[metrics] listen is read from the file; a bad address is a one-line config error."""
    good = tmp_path / "good.toml"
    good.write_text('[metrics]\nlisten = "127.0.0.1:9464"\n')
    loaded = config.load(good, {"command": ["python", "train.py"]}, base=tmp_path)
    assert loaded.metrics.listen == "127.0.0.1:9464"
    assert config.load(None, {"command": ["x"]}, base=tmp_path).metrics.listen is None
    bad = tmp_path / "bad.toml"
    bad.write_text('[metrics]\nlisten = "everywhere"\n')
    with pytest.raises(config.ConfigError, match=r"^\[metrics\]\.listen: expected HOST:PORT"):
        config.load(bad, {"command": ["x"]}, base=tmp_path)


def test_the_memory_tier_figures_are_read_at_scrape_time(metrics: Metrics) -> None:
    """The newest RAM step and the backlog come from the memory tier's status; NaN without."""
    address = metrics.start("127.0.0.1:0")
    got = _scrape(address)
    assert math.isnan(got["ckptd_memory_checkpoint_step"])
    assert math.isnan(got["ckptd_memory_backlog_steps"])
    metrics.read_memory(lambda: {"newest": {"step": 42}, "backlog_steps": 7})
    got = _scrape(address)
    assert got["ckptd_memory_checkpoint_step"] == 42 and got["ckptd_memory_backlog_steps"] == 7
