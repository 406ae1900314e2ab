"""What a background save costs training, as the daemon measures it for every = "auto"."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from conftest import Job, wait_for

_LYING_CLIENT = """
import os, time, zmq
socket = zmq.Context().socket(zmq.DEALER)
socket.connect(os.environ["CKPTD_ENDPOINT"])
socket.send(b'{"v":1,"type":"hello","pid":%d,"rank":0,"step":1}' % os.getpid())
socket.send(b'{"v":1,"type":"started","ids":[],"step":1,"stall":1e400}')
socket.send(b'{"v":1,"type":"step","step":2}')
socket.send(b'{"v":1,"type":"committed","ids":[],"step":1,"path":"/x","metrics":{},'
            b'"bytes":1,"seconds":0.5}')
while True:
    time.sleep(1)
"""


def _strict(text: str) -> object:
    def refuse(constant: str) -> object:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_a_background_save_between_step_reports_costs_only_its_snapshot(job: Job) -> None:
    """Slow steps: no step report falls inside a 1 s background save; it still costs its
    snapshot, not its whole duration."""
    job.start_fake(
        "--step-time", "2.5", "--save-time", "1.0", "--background",
        options=("--every", "auto", "--every-min", "1s"),
    )  # fmt: skip
    interval = job.wait_event("checkpoint.interval", timeout=60)
    assert job.events("checkpoint.committed")[0]["seconds"] >= 1.0
    assert interval["save_cost"] < 0.5, interval
    job.signal(signal.SIGTERM)
    assert job.wait() == 0


def test_a_stall_that_is_not_a_finite_number_is_ignored(job: Job, tmp_path: Path) -> None:
    """A client reporting an infinite stall: the event log and status stay strict JSON."""
    script = tmp_path / "lying_client.py"
    script.write_text(_LYING_CLIENT)
    job.start([sys.executable, str(script)], "--every", "auto", "--every-min", "1s")
    started = job.wait_event("checkpoint.started")
    assert "stall" not in started, started
    job.wait_event("checkpoint.committed")
    status = wait_for(lambda: job.cli("status", "--json"), "ckptd status")
    assert status.returncode == 0, status.stderr
    assert isinstance(_strict(status.stdout), dict)
    for line in (job.run_dir / "events.jsonl").read_text().splitlines():
        _strict(line)
