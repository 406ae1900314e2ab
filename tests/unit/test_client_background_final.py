"""A final request that arrives while a background save is in flight (over a real socket)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

import ckptd_client
from ckptd_client import protocol

from conftest import wait_for
from stand_in_daemon import receive, stand_in_daemon


@pytest.fixture
def daemon_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[zmq.Socket]:
    with stand_in_daemon(tmp_path, monkeypatch) as router:
        yield router


def _request(router: zmq.Socket, identity: bytes, rid: str, *, final: bool = False) -> None:
    deadline = time.time() + 60 if final else None  # the client's deadline(): final only
    message = protocol.encode("request", id=rid, reason="test", deadline=deadline, final=final)
    router.send_multipart([identity, message])


def _final_during_a_save_of_step_100(
    router: zmq.Socket, ck: ckptd_client.Client
) -> threading.Event:
    """Step 100 saved in the background (held until the event is set); then a final request."""
    identity, _ = receive(router, "hello")
    ck.step(100)
    _request(router, identity, "r1")
    wait_for(ck.should_checkpoint, "the first request")
    release = threading.Event()

    def write(directory: Path) -> None:
        release.wait(30)
        (directory / "w").write_bytes(b"100")

    ck.checkpoint_async(100, write)
    _request(router, identity, "final", final=True)  # arrives while step 101 trains
    wait_for(lambda: ck.deadline() is not None, "the final request to reach the client")
    return release


def test_a_step_trained_after_the_save_that_answered_the_final_request_is_saved(
    daemon_socket: zmq.Socket, tmp_path: Path
) -> None:
    """The save of step 100 answers the final request; step 101 then finishes: it is saved
    before should_stop() is true."""
    ck = ckptd_client.connect()
    try:
        _final_during_a_save_of_step_100(daemon_socket, ck).set()
        ck.wait()
        ck.step(101)
        assert ck.should_checkpoint(), "step 101 would be lost"
        assert not ck.should_stop()
        ck.checkpoint_async(101, lambda directory: (directory / "w").write_bytes(b"101"))
        assert ck.should_stop()
        assert (tmp_path / "ckpt" / "step-00000101" / "ckptd.json").exists()
        assert not ck.should_checkpoint()
    finally:
        ck.close()


def test_the_save_that_waited_for_the_one_in_flight_is_the_final_one(
    daemon_socket: zmq.Socket, tmp_path: Path
) -> None:
    """Step 101 picks the final request up while step 100 is still being written: once 101
    is saved the job stops (no further save is asked for)."""
    ck = ckptd_client.connect()
    try:
        release = _final_during_a_save_of_step_100(daemon_socket, ck)
        ck.step(101)
        assert ck.should_checkpoint()
        release.set()
        ck.checkpoint_async(101, lambda directory: (directory / "w").write_bytes(b"101"))
        assert ck.should_stop()
        assert (tmp_path / "ckpt" / "step-00000101" / "ckptd.json").exists()
        ck.step(101)
        assert not ck.should_checkpoint() and ck.should_stop()
    finally:
        ck.close()


def test_without_progress_after_the_save_the_job_stops_at_once(daemon_socket: zmq.Socket) -> None:
    """Nothing trained after the save that answered the final request: no second save."""
    ck = ckptd_client.connect()
    try:
        _final_during_a_save_of_step_100(daemon_socket, ck).set()
        ck.wait()
        assert not ck.should_checkpoint()
        assert ck.should_stop()
    finally:
        ck.close()
