"""One rank of a torchrun group in-process, a bare ROUTER socket playing the daemon."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

import ckptd_client
from ckptd_client import CommitError

from conftest import wait_for
from stand_in_daemon import receive, send, stand_in_daemon


@pytest.fixture
def daemon_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[zmq.Socket]:
    """A ROUTER socket standing in for the daemon; the env makes the client rank 1 of 2."""
    for name, value in [
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("TORCHELASTIC_RUN_ID", "run-a"),
    ]:
        monkeypatch.setenv(name, value)
    with stand_in_daemon(tmp_path, monkeypatch) as router:
        yield router


def _request(router: zmq.Socket, identity: bytes, rid: str, **fields: object) -> None:
    defaults = {"reason": "test", "deadline": None, "final": False, "save": True}
    send(router, identity, "request", id=rid, **{**defaults, **fields})


def test_rank_proposes_its_step_and_saves_exactly_at_the_agreed_one(
    daemon_socket: zmq.Socket,
) -> None:
    """hello names the group; a request is proposed at once; the flag rises at the agreed step."""
    ck = ckptd_client.connect()
    try:
        identity, hello = receive(daemon_socket, "hello")
        assert (hello["rank"], hello["world_size"], hello["local_world_size"]) == (1, 2, 2)
        ck.step(4)
        assert ck.should_checkpoint() is False  # step 4 is decided: the next step is proposed
        _request(daemon_socket, identity, "r1")
        _, propose = receive(daemon_socket, "propose")
        assert (propose["id"], propose["at"]) == ("r1", 5)
        assert ck.should_checkpoint() is False  # before the proposed step: no wait
        send(daemon_socket, identity, "agreed", id="r1", step=6)
        ck.step(5)
        wait_for(lambda: ck._group.rounds.current.agreed == 6, "the agreed step")
        assert ck.should_checkpoint() is False
        ck.step(6)
        assert ck.should_checkpoint() is True
    finally:
        ck.close()


def test_rank_past_its_proposal_waits_for_the_agreed_step(daemon_socket: zmq.Socket) -> None:
    """A rank that outruns the round trip blocks in should_checkpoint() until `agreed` comes."""
    ck = ckptd_client.connect()
    try:
        identity, _ = receive(daemon_socket, "hello")
        ck.step(10)
        _request(daemon_socket, identity, "r1")
        _, propose = receive(daemon_socket, "propose")
        assert propose["at"] == 10  # step 10 is not decided yet: it can still be taken
        ck.step(11)
        answers: list[bool] = []
        waiter = threading.Thread(target=lambda: answers.append(ck.should_checkpoint()))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and answers == []
        send(daemon_socket, identity, "agreed", id="r1", step=11)
        waiter.join(10)
        assert answers == [True]
    finally:
        ck.close()


def test_shared_directory_is_committed_by_the_rank_told_to_commit(
    daemon_socket: zmq.Socket, tmp_path: Path
) -> None:
    """written, then `commit`: this rank commits the shared directory and acks it; then a final."""
    ck = ckptd_client.connect()
    try:
        identity, _ = receive(daemon_socket, "hello")
        ck.step(2)
        _request(daemon_socket, identity, "r1")
        receive(daemon_socket, "propose")
        send(daemon_socket, identity, "agreed", id="r1", step=3)
        ck.step(3)
        wait_for(ck.should_checkpoint, "the flag at the agreed step")
        threading.Timer(0.3, lambda: send(daemon_socket, identity, "commit", step=3)).start()
        with ck.checkpoint(3) as directory:
            assert directory == ck.shared_directory(3)
            assert directory.name.startswith(".tmp-step-00000003-group-")
            (directory / "rank-1.bin").write_bytes(b"1")
        _, written = receive(daemon_socket, "written")
        assert (written["ids"], written["step"]) == (["r1"], 3)
        _, committed = receive(daemon_socket, "committed")
        assert committed["ids"] == ["r1"] and Path(committed["path"]).name == "step-00000003"
        assert (tmp_path / "ckpt" / "step-00000003" / "rank-1.bin").read_bytes() == b"1"
        assert ck.should_checkpoint() is False and ck.should_stop() is False

        _request(daemon_socket, identity, "stop", final=True, save=False)
        receive(daemon_socket, "propose")
        send(daemon_socket, identity, "agreed", id="stop", step=4)
        ck.step(4)
        wait_for(ck.should_stop, "a stop without a save at the agreed step")
        assert ck.should_checkpoint() is False
    finally:
        ck.close()


def test_another_ranks_failure_raises_here_and_a_final_joins_the_save(
    daemon_socket: zmq.Socket, tmp_path: Path
) -> None:
    """`aborted` raises CommitError in this rank's block exit; a joined final then stops it."""
    ck = ckptd_client.connect()
    try:
        identity, _ = receive(daemon_socket, "hello")
        ck.step(0)
        _request(daemon_socket, identity, "r1")
        receive(daemon_socket, "propose")
        send(daemon_socket, identity, "agreed", id="r1", step=1)
        _request(daemon_socket, identity, "final", final=True, joins="r1")
        _, joined = receive(daemon_socket, "propose")
        assert joined["id"] == "final"
        ck.step(1)
        wait_for(ck.should_checkpoint, "the flag")
        error = "rank 0: OSError: disk full"
        threading.Timer(
            0.3, lambda: send(daemon_socket, identity, "aborted", step=1, error=error)
        ).start()
        with pytest.raises(CommitError, match=error), ck.checkpoint(1) as directory:
            (directory / "rank-1.bin").write_bytes(b"1")
        assert not list((tmp_path / "ckpt").iterdir())
        assert ck.should_stop() is True  # the final request was answered (by a failure)
    finally:
        ck.close()
