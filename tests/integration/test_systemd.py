"""systemd integration: sd_notify messages to a real datagram socket, and the unit file."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import FAKES, ROOT, Job, wait_for


class FakeSystemd:
    """A datagram socket standing in for systemd's notify socket; collects what arrives."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def collect(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def lines(self) -> list[str]:
        return [line for message in self.collect() for line in message.splitlines()]

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_ready_status_watchdog_stopping_in_order(job: Job, abstract: bool) -> None:
    """READY=1 after launch, STATUS= and WATCHDOG=1 while running, then STOPPING=1 and EXTEND."""
    address = f"@ckptd-test-{id(job)}" if abstract else str(job.base / "notify.sock")
    systemd = FakeSystemd(address)
    try:
        job.start(
            [*_fake(job), "--save-time", "1.5", "--payload", "4096"],
            env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"},
        )
        wait_for(lambda: "READY=1" in systemd.lines(), "READY=1")
        wait_for(lambda: systemd.lines().count("WATCHDOG=1") >= 3, "watchdog pings")
        wait_for(
            lambda: any(
                line.startswith("STATUS=running") and "step" in line for line in systemd.lines()
            ),
            "a STATUS with the step",
        )
        job.signal(signal.SIGTERM)
        assert job.wait() == 0
        lines = systemd.lines()
    finally:
        systemd.close()
    ready, stopping = lines.index("READY=1"), lines.index("STOPPING=1")
    assert ready < stopping
    assert any(line.startswith("EXTEND_TIMEOUT_USEC=") for line in lines[stopping:])
    assert "WATCHDOG=1" in lines[ready:stopping]


def _fake(job: Job) -> list[str]:
    return [sys.executable, str(FAKES / "trainer.py"), "--record", str(job.record)]


def test_job_does_not_inherit_the_notify_socket(job: Job, tmp_path: Path) -> None:
    """NOTIFY_SOCKET and WATCHDOG_* are the daemon's: the job does not see them."""
    dump = tmp_path / "env.txt"
    systemd = FakeSystemd(str(tmp_path / "notify.sock"))
    try:
        job.start(
            [
                sys.executable,
                "-c",
                "import os, sys; open(sys.argv[1], 'w').write("
                "' '.join(k for k in os.environ if 'NOTIFY' in k or 'WATCHDOG' in k))",
                str(dump),
            ],
            "--restart",
            "never",
            env={"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "1000000"},
        )
        assert job.wait() == 0
    finally:
        systemd.close()
    assert dump.read_text() == ""


def test_unit_file_verifies() -> None:
    """`systemd-analyze verify` accepts the template unit (as an instance) without warnings."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    with tempfile.TemporaryDirectory() as directory:
        unit = Path(directory) / "ckptd@example.service"
        unit.write_text((ROOT / "systemd" / "ckptd@.service").read_text())
        result = subprocess.run(
            [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 0, result.stderr
    assert "ckptd@example.service" not in result.stderr, result.stderr
