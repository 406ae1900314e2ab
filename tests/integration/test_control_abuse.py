"""The control socket under bad input, floods, strangers and other users."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from ckptd_client.control import Controller, ControlTimeout, endpoints_of

from conftest import Job

SEEDS = [
    {"v": 1, "id": "a", "command": "status", "args": {}},
    {"v": 1, "id": "b", "command": "checkpoint", "args": {"wait": False}},
    {"v": 1, "id": "c", "command": "list"},
]


def _mutations(rng: random.Random) -> bytes:
    """One random or mutated frame: junk bytes, broken JSON, wrong types, odd shapes."""
    choice = rng.randrange(9)
    if choice == 0:
        return rng.randbytes(rng.randrange(0, 300))
    if choice == 1:
        text = json.dumps(rng.choice(SEEDS))
        cut = rng.randrange(len(text))
        return (text[:cut] + chr(rng.randrange(32, 0x2FF)) + text[cut + 1 :]).encode(
            errors="replace"
        )
    if choice == 2:
        return b"[" * rng.randrange(1000, 50000)  # nesting deeper than the JSON parser goes
    if choice == 3:
        value = rng.choice([None, 1, -1, 1e308, "x", [], {}, True, "\u0000", "x" * 500])
        message = dict(rng.choice(SEEDS))
        message[rng.choice(["v", "id", "command", "args"])] = value
        return json.dumps(message).encode()
    if choice == 4:
        message = dict(rng.choice(SEEDS), id=f"m{rng.random()}")
        message["args"] = {rng.choice(["wait", "checkpoint", "bogus"]): rng.choice([1, "no", None])}
        return json.dumps(message).encode()
    if choice == 5:
        return json.dumps(
            {"v": 1, "id": f"s{rng.random()}", "command": "stop", "args": {"checkpoint": "sure"}}
        ).encode()  # must be refused: bad type
    if choice == 6:
        return json.dumps(rng.choice([[], "status", 3, None])).encode()
    if choice == 7:
        return b"\xff\xfe" + rng.randbytes(20)
    return json.dumps({"v": 1, "id": "", "command": "status"}).encode()


def test_fuzzed_control_socket_keeps_the_job_healthy(job: Job) -> None:
    """Thousands of random and mutated frames: error replies, no crash, checkpoints still work."""
    job.start_fake(options=("--max-restarts", "0"))
    job.wait_event("client.connected")
    endpoint = endpoints_of(job.run_dir)["control"]
    rng = random.Random(1234)
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    replies = 0
    try:
        for index in range(3000):
            if index % 50 == 0:
                sock.send_multipart([b"a", b"b", b"c"])  # several frames in one message
            sock.send(_mutations(rng))
            while sock.poll(0):
                reply = json.loads(sock.recv())
                assert reply["v"] == 1 and isinstance(reply["ok"], bool)
                replies += 1
        deadline = time.monotonic() + 60
        while replies < 3000 and time.monotonic() < deadline:
            if sock.poll(1000):
                json.loads(sock.recv())
                replies += 1
    finally:
        sock.close()
        context.term()
    assert replies >= 3000, "every frame deserves an answer"
    with Controller(run_dir=job.run_dir) as control:
        assert control.status()["state"] in ("running", "checkpointing")
        assert control.checkpoint(wait=True, timeout=60)["path"]
        control.stop(wait=True, timeout=60)
    assert job.wait() == 0
    assert len(job.records("start")) == 1  # the job itself was never disturbed


def test_oversized_and_unread_traffic_is_bounded(job: Job) -> None:
    """A message over max_message_bytes is dropped; a peer that never reads cannot hurt."""
    job.start_fake()
    job.wait_event("client.connected")
    endpoint = endpoints_of(job.run_dir)["control"]
    context = zmq.Context()
    try:
        big = context.socket(zmq.DEALER)
        big.setsockopt(zmq.LINGER, 0)
        big.connect(endpoint)
        big.send(b"x" * (1 << 20))
        deaf = context.socket(zmq.DEALER)
        deaf.setsockopt(zmq.LINGER, 0)
        deaf.setsockopt(zmq.SNDHWM, 100_000)
        deaf.connect(endpoint)
        for index in range(20_000):
            deaf.send(json.dumps({"v": 1, "id": f"d{index}", "command": "status"}).encode())
        assert not big.poll(500), "an oversized message got an answer"
        with Controller(run_dir=job.run_dir) as control:
            assert control.ping()["pong"] is True
            assert control.checkpoint(wait=True, timeout=60)["path"]
            control.stop(wait=True, timeout=60)
        big.close()
        deaf.close()
    finally:
        context.term()
    assert job.wait() == 0


def test_a_request_id_is_executed_once(job: Job) -> None:
    """Sending the same request id twice runs the command once; the repeat gets duplicate_id."""
    job.start_fake()
    job.wait_event("client.connected")
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoints_of(job.run_dir)["control"])
    try:
        request = json.dumps({"v": 1, "id": "once", "command": "checkpoint", "args": {}}).encode()
        sock.send(request)
        sock.send(request)
        replies = [json.loads(sock.recv()) for _ in range(2) if sock.poll(30_000)]
    finally:
        sock.close()
        context.term()
    assert sorted(r["ok"] for r in replies) == [False, True]
    assert [r["error"]["code"] for r in replies if not r["ok"]] == ["duplicate_id"]
    job.wait_event("checkpoint.committed")
    assert len(job.events("checkpoint.requested")) == 1
    with Controller(run_dir=job.run_dir) as control:
        control.stop(wait=True, timeout=60)
    assert job.wait() == 0


def test_control_socket_is_closed_to_other_users(job: Job) -> None:
    """Another user cannot even connect to the ipc socket (0600 in a 0700 directory)."""
    if os.getuid() != 0:
        pytest.skip("needs root to try as another user (nobody)")
    job.start_fake()
    job.wait_event("client.connected")
    path = endpoints_of(job.run_dir)["control"].removeprefix("ipc://")
    probe = (
        "import os, socket, sys\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(7)\n"
        "sys.exit(0)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe, path], timeout=60)
    assert result.returncode == 7, "another user could connect to the control socket"
    own = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    own.connect(path)  # the owner can
    own.close()
    with Controller(run_dir=job.run_dir) as control:
        control.stop(wait=True, timeout=60)
    assert job.wait() == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_curve_admits_authorized_keys_only(job: Job, tmp_path: Path) -> None:
    """Over TCP with CURVE: an authorized key gets answers, an unknown key gets nothing."""
    keys, authorized = tmp_path / "keys", tmp_path / "authorized"
    authorized.mkdir()
    for name in ("server", "alice", "mallory"):
        result = subprocess.run(
            [sys.executable, "-m", "ckptd", "keygen", str(keys), "--name", name],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    (authorized / "alice.key").write_bytes((keys / "alice.key").read_bytes())
    port = _free_port()
    config = tmp_path / "ckptd.toml"
    config.write_text(
        f'[control]\nbind = "tcp://127.0.0.1:{port}"\n'
        f'curve_secret_key = "{keys / "server.key_secret"}"\n'
        f'curve_authorized_keys = "{authorized}"\n'
    )
    job.start_fake(options=("--config", str(config)))
    job.wait_event("client.connected")
    endpoint = f"tcp://127.0.0.1:{port}"
    with Controller(
        endpoint=endpoint,
        server_key=keys / "server.key",
        client_key=keys / "alice.key_secret",
        timeout=30,
    ) as alice:
        assert alice.status()["state"] in ("running", "checkpointing")
    with (
        Controller(
            endpoint=endpoint,
            server_key=keys / "server.key",
            client_key=keys / "mallory.key_secret",
            timeout=2,
        ) as mallory,
        pytest.raises(ControlTimeout),
    ):
        mallory.status()
    plain = zmq.Context()
    try:
        sock = plain.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send(json.dumps({"v": 1, "id": "x", "command": "status"}).encode())
        assert not sock.poll(2000), "a client without CURVE got an answer"
        sock.close()
    finally:
        plain.term()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ckptd",
            "stop",
            "--wait",
            "--endpoint",
            endpoint,
            "--server-key",
            str(keys / "server.key"),
            "--client-key",
            str(keys / "alice.key_secret"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert job.wait() == 0
