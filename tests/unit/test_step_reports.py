"""Step reports: as few as the daemon's hang watch needs, each one a wake-up of the daemon."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import zmq

import ckptd_client
from ckptd.config import load
from ckptd.progress.health import report_interval
from ckptd_client._channels import HEARTBEAT_INTERVAL, report_every

from stand_in_daemon import receive, stand_in_daemon


@pytest.fixture
def daemon_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[zmq.Socket]:
    """A bare ROUTER socket standing in for the daemon, with the client's env pointing at it."""
    with stand_in_daemon(tmp_path, monkeypatch) as router:
        yield router


def test_a_fast_job_reports_its_step_at_most_every_report_interval(
    daemon_socket: zmq.Socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CKPTD_REPORT_EVERY=1, a job stepping every millisecond sends a step report a second."""
    monkeypatch.setenv("CKPTD_REPORT_EVERY", "1")
    ck = ckptd_client.connect()
    done = threading.Event()

    def train() -> None:
        step = 0
        while not done.is_set():
            step += 1
            ck.step(step)
            time.sleep(0.001)

    trainer = threading.Thread(target=train)
    try:
        receive(daemon_socket, "hello")
        trainer.start()
        arrivals = []
        for _ in range(3):
            receive(daemon_socket, "step")
            arrivals.append(time.monotonic())
    finally:
        done.set()
        if trainer.is_alive():
            trainer.join()
        ck.close()
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    # Sent a second apart by the client's clock; their delivery may jitter a little.
    assert min(gaps) >= 0.8, gaps


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, HEARTBEAT_INTERVAL),
        ("0.5", 0.5),
        ("1", 1.0),
        ("", HEARTBEAT_INTERVAL),
        ("soon", HEARTBEAT_INTERVAL),
        ("0", HEARTBEAT_INTERVAL),
        ("-1", HEARTBEAT_INTERVAL),
        ("nan", HEARTBEAT_INTERVAL),
        ("inf", HEARTBEAT_INTERVAL),
        ("1e9", HEARTBEAT_INTERVAL),
    ],
)
def test_report_interval_read_from_the_environment(value: str | None, seconds: float) -> None:
    """CKPTD_REPORT_EVERY is taken when it is a sane number of seconds, else the 0.1 s default."""
    env = {} if value is None else {"CKPTD_REPORT_EVERY": value}
    assert report_every(env) == seconds


@pytest.mark.parametrize(
    ("flags", "seconds"),
    [
        ({}, 1.0),  # hang_timeout "auto" with hang_min 30 s
        ({"hang_min": 1.0}, 0.2),
        ({"hang_timeout": 1.0}, 0.2),
        ({"hang_timeout": 2.5}, 0.5),
        ({"hang_timeout": 600.0}, 1.0),
        ({"hang_timeout": None}, 1.0),
    ],
)
def test_report_interval_follows_the_hang_watch(
    tmp_path: Path, flags: dict[str, object], seconds: float
) -> None:
    """Five reports within the shortest hang timeout that may apply, and at least one a second."""
    config = load(None, {"command": ["python", "train.py"], **flags}, base=tmp_path)
    if "hang_timeout" in flags and flags["hang_timeout"] is None:
        config = replace(config, hang_timeout=None)  # no hang watch (a flag of None: not given)
    assert report_interval(config) == pytest.approx(seconds)
