"""A final request answered by an earlier checkpoint holds only for the step it was given at."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ckptd_client import Client
from ckptd_client._messages import CheckpointRequested, Inbox, StopRequested

from conftest import wait_for


class _Channel:
    """Records what the client sends; requests are posted to the inbox as a channel would."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.inbox: Inbox | None = None

    def start(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def post(self, message: CheckpointRequested | StopRequested) -> None:
        assert self.inbox is not None
        self.inbox.post(message)

    def send(self, kind: str, **fields: Any) -> None:
        self.sent.append((kind, fields))

    def close(self) -> None:
        pass


def test_progress_after_a_reused_final_answer_is_saved_before_stopping(tmp_path: Path) -> None:
    """Final request mid-step answered by reuse; the step then finishes: it is saved, then stop."""
    channel = _Channel()
    ck = Client(channel, tmp_path / "ckpt", None, standalone=False)
    try:
        ck.step(100)
        with ck.checkpoint(100) as directory:
            (directory / "w.bin").write_bytes(b"100")
        channel.post(StopRequested("final", "SIGTERM"))  # arrives while step 101 trains
        assert channel.sent[-1][1]["reused"] is True
        ck.step(101)  # step 101 finished: it is not in the reused checkpoint
        assert ck.should_checkpoint(), "step 101 would be lost"
        assert not ck.should_stop()
        with ck.checkpoint(101) as directory:
            (directory / "w.bin").write_bytes(b"101")
        assert ck.should_stop()
        assert not ck.should_checkpoint()
        assert (tmp_path / "ckpt" / "step-00000101" / "ckptd.json").exists()
    finally:
        ck.close()


def test_reused_final_answer_stops_at_once_when_nothing_was_trained_since(tmp_path: Path) -> None:
    """With no progress after the reused answer, should_stop() is true at once, no second save."""
    channel = _Channel()
    ck = Client(channel, tmp_path / "ckpt", None, standalone=False)
    try:
        ck.step(7)
        with ck.checkpoint(7) as directory:
            (directory / "w.bin").write_bytes(b"7")
        channel.post(StopRequested("final", "SIGTERM"))
        ck.step(7)
        assert not ck.should_checkpoint()
        assert ck.should_stop()
    finally:
        ck.close()


def test_stop_without_checkpoint_saves_nothing_not_even_a_pending_request(tmp_path: Path) -> None:
    """A final request with save=False: should_stop() at once, no pending request is saved."""
    channel = _Channel()
    ck = Client(channel, tmp_path / "ckpt", None, standalone=False)
    try:
        ck.step(5)
        with ck.checkpoint(5) as directory:
            (directory / "w.bin").write_bytes(b"5")
        ck.step(6)
        channel.post(CheckpointRequested("periodic", "timer"))
        channel.post(StopRequested("stop", "control", save=False))
        ck.step(7)
        assert not ck.should_checkpoint(), "a stop without a checkpoint must save nothing"
        assert ck.should_stop()
        assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step-00000005"]
    finally:
        ck.close()


def test_a_failed_final_background_save_is_raised_by_should_stop(tmp_path: Path) -> None:
    """The final save fails in the background before should_stop() is asked: it raises, once."""
    channel = _Channel()
    ck = Client(channel, tmp_path / "ckpt", None, standalone=False)

    def write(directory: Path) -> None:
        raise OSError("disk full")

    try:
        ck.step(5)
        channel.post(StopRequested("final", "SIGTERM"))
        assert ck.should_checkpoint()
        ck.checkpoint_async(5, write)
        wait_for(lambda: any(kind == "failed" for kind, _ in channel.sent), "the failure report")
        with pytest.raises(RuntimeError, match="background save failed: disk full"):
            ck.should_stop()
        assert ck.should_stop(), "the final request was answered (by a failure)"
    finally:
        ck.close()
