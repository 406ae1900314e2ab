"""What the client tells the daemon when a save cannot even begin, and when it closes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

import ckptd_client
from ckptd_client import protocol

from conftest import wait_for
from stand_in_daemon import receive, send, stand_in_daemon


@pytest.fixture
def daemon_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[zmq.Socket]:
    with stand_in_daemon(tmp_path, monkeypatch) as router:
        yield router


def _blocked_checkpoint_dir(tmp_path: Path) -> None:
    """A file where the checkpoint directory should be: no directory can be made in it."""
    (tmp_path / "ckpt").write_text("not a directory")


def test_a_save_that_cannot_make_its_directory_is_reported(
    daemon_socket: zmq.Socket, tmp_path: Path
) -> None:
    """checkpoint() raises at the block's entry and the daemon gets `failed` for the request."""
    _blocked_checkpoint_dir(tmp_path)
    ck = ckptd_client.connect()
    try:
        identity, _ = receive(daemon_socket, "hello")
        ck.step(4)
        send(daemon_socket, identity, "request", id="r", reason="test", deadline=None, final=False)
        wait_for(ck.should_checkpoint, "the flag")
        with pytest.raises(OSError), ck.checkpoint(4) as directory:
            (directory / "never").write_bytes(b"x")
        _, failed = receive(daemon_socket, "failed")
        assert failed["ids"] == ["r"] and failed["step"] == 4
        assert "Error" in failed["error"]
        assert not ck.should_checkpoint()
    finally:
        ck.close()


def test_a_background_save_that_cannot_make_its_directory_is_reported(
    daemon_socket: zmq.Socket, tmp_path: Path
) -> None:
    """checkpoint_async() raises at once, the daemon gets `failed`, and nothing stays in flight."""
    _blocked_checkpoint_dir(tmp_path)
    ck = ckptd_client.connect()
    try:
        identity, _ = receive(daemon_socket, "hello")
        ck.step(2)
        send(daemon_socket, identity, "request", id="f", reason="stop", deadline=None, final=True)
        wait_for(ck.should_checkpoint, "the flag")
        with pytest.raises(OSError):
            ck.checkpoint_async(2, lambda d: (d / "w").write_bytes(b"w"))
        _, failed = receive(daemon_socket, "failed")
        assert failed["ids"] == ["f"]
        assert ck.should_stop()  # the final request failed: stop, as after any failed save
    finally:
        ck.close()


def test_close_reports_the_last_step(daemon_socket: zmq.Socket) -> None:
    """A step the rate-limited heartbeat has not sent yet goes out with `bye`."""
    ck = ckptd_client.connect()
    receive(daemon_socket, "hello")
    ck.step(1)
    _, heartbeat = receive(daemon_socket, "step")
    assert heartbeat["step"] == 1
    ck.step(2)  # within 100 ms of the heartbeat: not sent on its own
    ck.close()
    _, bye = receive(daemon_socket, "bye")
    assert bye["step"] == 2
    assert bye["v"] == protocol.VERSION


def test_a_step_report_carries_the_loss_of_that_step(
    daemon_socket: zmq.Socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ck.step(n, loss=x) sends x with the report of step n (NaN included); none without it."""
    import math

    ck = ckptd_client.connect()
    try:
        receive(daemon_socket, "hello")
        ck.step(1, loss=2.5)
        _, first = receive(daemon_socket, "step")
        assert (first["step"], first["loss"]) == (1, 2.5)
        ck.step(2, loss=float("nan"))
        _, second = receive(daemon_socket, "step")
        assert second["step"] == 2 and math.isnan(second["loss"])
        ck.step(3)  # the loss recorded belongs to step 2: not sent as step 3's
        _, third = receive(daemon_socket, "step")
        assert third["step"] == 3 and "loss" not in third
    finally:
        ck.close()
    monkeypatch.setenv("CKPTD_SKIP_STEPS", "4-6")
    assert 5 in ck.skip_steps() and 7 not in ck.skip_steps()
