"""Who may talk to the daemon over TCP: the opt-in without CURVE, key files, key changes."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import zmq
import zmq.auth

from ckptd_client.control import Controller, ControlTimeout

from conftest import DEADLINE, Job


def _ckptd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ckptd", *args], capture_output=True, text=True, timeout=timeout
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _keygen(directory: Path, *names: str) -> None:
    for name in names:
        result = _ckptd("keygen", str(directory), "--name", name)
        assert result.returncode == 0, result.stderr


def test_loopback_tcp_without_curve_needs_the_opt_in(job: Job, tmp_path: Path) -> None:
    """A loopback bind without CURVE: exit 2 naming the key, unless opted in; then a warning."""
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    config = tmp_path / "ckptd.toml"
    config.write_text(f'[control]\nbind = "{endpoint}"\n')
    refused = _ckptd("run", "--config", str(config), "--", "true")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "[control].bind" in refused.stderr
    assert "allow_unauthenticated" in refused.stderr and "every local user" in refused.stderr

    config.write_text(f'[control]\nbind = "{endpoint}"\nallow_unauthenticated = true\n')
    job.start_fake(options=("--config", str(config)))
    warning = job.wait_event("control.unauthenticated")
    assert warning["endpoints"] == [endpoint]
    job.wait_event("job.started")  # "starting" until the launch is prepared
    with Controller(endpoint=endpoint, timeout=30) as anyone:
        assert anyone.status()["state"] in ("running", "checkpointing")
        anyone.stop(wait=True, timeout=DEADLINE)
    assert job.wait() == 0


def test_a_tcp_port_in_use_is_one_line(tmp_path: Path) -> None:
    """A bind to a TCP port someone else holds: exit 2 with one line naming it, no traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        endpoint = f"tcp://127.0.0.1:{holder.getsockname()[1]}"
        config = tmp_path / "ckptd.toml"
        config.write_text(f'[control]\nbind = "{endpoint}"\nallow_unauthenticated = true\n')
        result = _ckptd(
            "run", "--run-dir", str(tmp_path / "run"), "--config", str(config), "--", "true"
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"ckptd: cannot bind {endpoint}: Address already in use\n"
    assert not list((tmp_path / "run").glob("*.sock"))


def test_keygen_never_overwrites_and_creates_the_secret_private(tmp_path: Path) -> None:
    """keygen refuses an existing pair without --force; the secret is 0600 with no chmod."""
    keys = tmp_path / "keys"
    _keygen(keys, "server")
    before = {p.name: p.read_bytes() for p in keys.iterdir()}
    again = _ckptd("keygen", str(keys), "--name", "server")
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert "--force" in again.stderr and "server.key" in again.stderr
    assert {p.name: p.read_bytes() for p in keys.iterdir()} == before

    # Under umask 0 and with chmod disabled, only the mode given at creation protects it.
    probe = (
        "import os, sys\n"
        "os.umask(0)\n"
        "os.chmod = lambda *args, **kwargs: None\n"
        "from ckptd.cli.main import main\n"
        "sys.exit(main(['keygen', sys.argv[1], '--name', 'server', '--force']))\n"
    )
    forced = subprocess.run(
        [sys.executable, "-c", probe, str(keys)], capture_output=True, text=True, timeout=60
    )
    assert forced.returncode == 0, forced.stderr
    assert stat.S_IMODE((keys / "server.key_secret").stat().st_mode) == 0o600
    assert (keys / "server.key_secret").read_bytes() != before["server.key_secret"]
    public, secret = zmq.auth.load_certificate(str(keys / "server.key_secret"))
    assert secret is not None and zmq.auth.load_certificate(str(keys / "server.key"))[0] == public
    assert sorted(p.name for p in keys.iterdir()) == ["server.key", "server.key_secret"]


def test_key_files_open_to_others_are_refused(tmp_path: Path) -> None:
    """A secret key others can read, or a key directory others can write: exit 2, one line."""
    keys, authorized = tmp_path / "keys", tmp_path / "authorized"
    _keygen(keys, "server")
    authorized.mkdir()
    config = tmp_path / "ckptd.toml"
    config.write_text(
        f'[control]\nbind = "tcp://127.0.0.1:{_free_port()}"\n'
        f'curve_secret_key = "{keys / "server.key_secret"}"\n'
        f'curve_authorized_keys = "{authorized}"\n'
    )
    (keys / "server.key_secret").chmod(0o644)
    result = _ckptd("run", "--config", str(config), "--", "true")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "[control].curve_secret_key" in result.stderr and "chmod 600" in result.stderr
    (keys / "server.key_secret").chmod(0o600)
    authorized.chmod(0o777)
    result = _ckptd("run", "--config", str(config), "--", "true")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "[control].curve_authorized_keys" in result.stderr and "writable" in result.stderr


@contextmanager
def _subscriber(endpoint: str, keys: Path, name: str) -> Iterator[zmq.Socket]:
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    public, secret = zmq.auth.load_certificate(str(keys / f"{name}.key_secret"))
    sub.curve_publickey, sub.curve_secretkey = public, secret
    sub.curve_serverkey = zmq.auth.load_certificate(str(keys / "server.key"))[0]
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    try:
        yield sub
    finally:
        sub.close()
        context.term()


def _drain(sub: zmq.Socket, wait_ms: int = 200) -> list[str]:
    names = []
    while sub.poll(wait_ms):
        names.append(json.loads(sub.recv_multipart()[-1])["event"])
    return names


def _until_received(job: Job, sub: zmq.Socket, wanted: str | None = None) -> list[str]:
    """Ask for checkpoints until ``sub`` receives events (``wanted`` among them, when given):
    a subscriber joins late, and other events (``job.progress``) may come first."""
    received: list[str] = []
    for _ in range(int(DEADLINE)):
        (job.run_dir / "CHECKPOINT").touch()
        received += _drain(sub, 1000)
        if received and (wanted is None or wanted in received):
            return received
    raise AssertionError(f"{wanted or 'no event'} never reached the subscriber ({received}); "
                         f"log: {job.log_tail()}")  # fmt: skip


def test_key_changes_take_effect_without_a_restart(job: Job, tmp_path: Path) -> None:
    """An added key is let in; a removed key's open connections get no answer and no event."""
    keys, authorized = tmp_path / "keys", tmp_path / "authorized"
    _keygen(keys, "server", "alice", "bob")
    authorized.mkdir()
    (authorized / "alice.key").write_bytes((keys / "alice.key").read_bytes())
    control, events = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    config = tmp_path / "ckptd.toml"
    config.write_text(
        f'[control]\nbind = "{control}"\npublish = "{events}"\n'
        f'curve_secret_key = "{keys / "server.key_secret"}"\n'
        f'curve_authorized_keys = "{authorized}"\n'
    )
    job.start_fake(options=("--config", str(config)))
    job.wait_event("client.connected")

    def controller(name: str, timeout: float) -> Controller:
        return Controller(
            endpoint=control,
            server_key=keys / "server.key",
            client_key=keys / f"{name}.key_secret",
            timeout=timeout,
        )

    with controller("bob", 2) as bob, pytest.raises(ControlTimeout):
        bob.status()
    unknown = _ckptd(
        "status", "--endpoint", control, "--server-key", str(keys / "server.key"),
        "--client-key", str(keys / "bob.key_secret"), "--timeout", "2",
    )  # fmt: skip
    assert unknown.returncode == 3 and "curve_authorized_keys" in unknown.stderr
    assert "bob.key" in unknown.stderr

    (authorized / "bob.key").write_bytes((keys / "bob.key").read_bytes())
    with (
        controller("bob", 30) as bob,
        controller("alice", 2) as alice,
        _subscriber(events, keys, "alice") as alice_events,
        _subscriber(events, keys, "bob") as bob_events,
    ):
        assert bob.status()["job"] == alice.status()["job"]  # both in, over open connections
        _until_received(job, alice_events)
        _until_received(job, bob_events)

        (authorized / "alice.key").unlink()
        _drain(alice_events)
        _drain(bob_events)
        with pytest.raises(ControlTimeout):
            alice.status()  # the same connection that was answered a moment ago
        _until_received(job, bob_events, "checkpoint.committed")  # bob reconnected
        assert _drain(alice_events, 1000) == []
        assert bob.status()["job"]
    revoked = [
        json.loads(line) for line in job.stderr.read_text().splitlines() if "revoked" in line
    ]
    assert revoked and revoked[0]["event"] == "control.key_revoked"
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
