"""The client library in-process: the hot path, fork safety, failures, and bad daemons."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

import ckptd_client
from ckptd_client import protocol
from ckptd_client._messages import Inbox

from conftest import wait_for
from stand_in_daemon import receive, stand_in_daemon


@pytest.fixture
def daemon_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[zmq.Socket]:
    """A bare ROUTER socket standing in for the daemon, with the client's env pointing at it."""
    with stand_in_daemon(tmp_path, monkeypatch) as router:
        yield router


def _request(
    router: zmq.Socket, identity: bytes, rid: str, *, final: bool = False, deadline: object = None
) -> None:
    message = protocol.encode("request", id=rid, reason="test", deadline=deadline, final=final)
    router.send_multipart([identity, message])


def test_request_sets_flag_and_commit_is_acknowledged(daemon_socket: zmq.Socket) -> None:
    """A request raises should_checkpoint(); the commit clears it and acks with path and step."""
    ck = ckptd_client.connect()
    try:
        identity, hello = receive(daemon_socket, "hello")
        assert hello["pid"] == os.getpid()
        assert ck.should_checkpoint() is False
        ck.step(7)
        _request(daemon_socket, identity, "r1", final=False, deadline=time.time() + 20)
        wait_for(ck.should_checkpoint, "the flag")
        assert 0 < ck.deadline() <= 20
        with ck.checkpoint(7, metrics={"loss": 1.5}) as directory:
            (directory / "w").write_bytes(b"w")
        assert ck.should_checkpoint() is False and ck.should_stop() is False
        _, started = receive(daemon_socket, "started")
        _, committed = receive(daemon_socket, "committed")
        assert started["ids"] == ["r1"] and committed["ids"] == ["r1"]
        assert committed["step"] == 7 and committed["metrics"] == {"loss": 1.5}
        assert Path(committed["path"]).name == "step-00000007"
    finally:
        ck.close()


def test_final_request_right_after_a_commit_is_satisfied_by_it(daemon_socket: zmq.Socket) -> None:
    """A stop arriving when nothing trained since the last commit needs no second save."""
    ck = ckptd_client.connect()
    try:
        identity, _ = receive(daemon_socket, "hello")
        ck.step(3)
        with ck.checkpoint(3) as directory:
            (directory / "w").write_bytes(b"w")
        _request(daemon_socket, identity, "final", final=True, deadline=None)
        wait_for(ck.should_stop, "should_stop")
        assert not ck.should_checkpoint()
        _, ack = receive(daemon_socket, "committed")
        while ack["ids"] != ["final"]:
            _, ack = receive(daemon_socket, "committed")
        assert ack["reused"] is True and ack["step"] == 3
    finally:
        ck.close()


def test_exception_in_the_block_reports_failure_and_leaves_nothing(
    daemon_socket: zmq.Socket, tmp_path: Path
) -> None:
    """An exception inside checkpoint() removes the directory, reports failed, and propagates."""
    ck = ckptd_client.connect()
    try:
        identity, _ = receive(daemon_socket, "hello")
        _request(daemon_socket, identity, "r", final=False, deadline=None)
        wait_for(ck.should_checkpoint, "the flag")
        with pytest.raises(RuntimeError, match="boom"), ck.checkpoint(1) as directory:
            (directory / "w").write_bytes(b"partial")
            raise RuntimeError("boom")
        _, failed = receive(daemon_socket, "failed")
        assert failed["ids"] == ["r"] and "boom" in failed["error"]
        assert list((tmp_path / "ckpt").iterdir()) == []
    finally:
        ck.close()


def test_garbage_from_the_daemon_is_ignored(daemon_socket: zmq.Socket) -> None:
    """Frames that are not protocol messages never raise in the client or set flags."""
    ck = ckptd_client.connect()
    try:
        identity, _ = receive(daemon_socket, "hello")
        for junk in [b"", b"\xff\xfe", b"[]", b'{"v": 99, "type": "request"}', b"{" * 10]:
            daemon_socket.send_multipart([identity, junk])
        _request(daemon_socket, identity, "ok", final=False, deadline="soon")
        wait_for(ck.should_checkpoint, "the valid request after the junk")
        assert ck.deadline() is None
    finally:
        ck.close()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_finds_the_client_inert(daemon_socket: zmq.Socket) -> None:
    """A process forked from a training process (a data-loader worker) never checkpoints."""
    ck = ckptd_client.connect()
    try:
        identity, _ = receive(daemon_socket, "hello")
        _request(daemon_socket, identity, "r", final=True, deadline=None)
        wait_for(ck.should_checkpoint, "the flag in the parent")
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                ok = not ck.should_checkpoint() and not ck.should_stop()
                try:
                    with ck.checkpoint(1):
                        ok = False
                except RuntimeError:
                    pass
                os.write(write_fd, b"1" if ok else b"0")
            finally:
                os._exit(0)
        os.close(write_fd)
        assert os.read(read_fd, 1) == b"1"
        os.close(read_fd)
        os.waitpid(pid, 0)
        assert ck.should_checkpoint(), "the parent keeps its request"
    finally:
        ck.close()


def test_standalone_leaves_existing_handlers_alone(tmp_path: Path, monkeypatch) -> None:
    """Standalone, a script's own SIGTERM handler is kept; default ones are restored on close."""
    monkeypatch.delenv("CKPTD_ENDPOINT", raising=False)
    monkeypatch.chdir(tmp_path)

    def mine(signum, frame):  # pragma: no cover - never called
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        ck = ckptd_client.connect()
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL
        ck.close()
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_background_save_commits_after_returning(daemon_socket: zmq.Socket, tmp_path: Path) -> None:
    """checkpoint_async returns at once; the commit and its acknowledgement follow."""
    import threading

    ck = ckptd_client.connect()
    release = threading.Event()

    def write(directory: Path) -> None:
        release.wait(30)
        (directory / "w").write_bytes(b"w")

    try:
        identity, _ = receive(daemon_socket, "hello")
        _request(daemon_socket, identity, "r1")
        wait_for(ck.should_checkpoint, "the flag")
        ck.step(5)
        ck.checkpoint_async(5, write)
        assert not (tmp_path / "ckpt" / "step-00000005").exists()  # returned before writing
        assert ck.should_checkpoint() is False  # the save in flight answers r1
        ck.step(6)  # training moved on; a request now needs a newer checkpoint than step 5
        _request(daemon_socket, identity, "r2", deadline=time.time() + 60)
        wait_for(lambda: ck.deadline() is not None, "r2 to reach the client")
        release.set()
        ck.wait()
        _, committed = receive(daemon_socket, "committed")
        assert committed["ids"] == ["r1"] and committed["step"] == 5
        assert (tmp_path / "ckpt" / "step-00000005" / "w").read_bytes() == b"w"
        wait_for(ck.should_checkpoint, "r2 still wanted: training moved on since it arrived")
    finally:
        ck.close()


def test_background_save_reports_its_snapshot_stall(daemon_socket: zmq.Socket) -> None:
    """A background save tells the daemon how long training waited before it: the snapshot."""
    ck = ckptd_client.connect()
    try:
        identity, _ = receive(daemon_socket, "hello")
        _request(daemon_socket, identity, "r1")
        wait_for(ck.should_checkpoint, "the flag")
        seen = time.monotonic()
        time.sleep(0.2)  # the training thread copying its state: the stall being measured
        ck.checkpoint_async(1, lambda directory: (directory / "w").write_bytes(b"w"))
        upper = time.monotonic() - seen
        ck.wait()
        _, started = receive(daemon_socket, "started")
        assert 0.2 <= started["stall"] <= upper
        _request(daemon_socket, identity, "r2")
        wait_for(ck.should_checkpoint, "the second flag")
        with ck.checkpoint(2) as directory:
            (directory / "w").write_bytes(b"w")
        _, started = receive(daemon_socket, "started")
        assert "stall" not in started  # a synchronous save's stall is its whole span
    finally:
        ck.close()


def test_background_failure_is_raised_at_the_next_call(daemon_socket: zmq.Socket) -> None:
    """A failed background save is reported to the daemon and raised in the training thread."""
    ck = ckptd_client.connect()

    def write(directory: Path) -> None:
        raise OSError("disk full")

    try:
        identity, _ = receive(daemon_socket, "hello")
        _request(daemon_socket, identity, "r")
        wait_for(ck.should_checkpoint, "the flag")
        ck.checkpoint_async(1, write)
        _, failed = receive(daemon_socket, "failed")
        assert failed["ids"] == ["r"] and "disk full" in failed["error"]
        with pytest.raises(RuntimeError, match="background save failed: disk full"):
            ck.step(2)
        ck.step(3)  # raised once, then training may go on
    finally:
        ck.close()


def test_should_stop_waits_for_the_final_background_save(daemon_socket: zmq.Socket) -> None:
    """A final checkpoint taken in the background: should_stop() returns once it committed."""
    ck = ckptd_client.connect()
    try:
        identity, _ = receive(daemon_socket, "hello")
        ck.step(9)
        _request(daemon_socket, identity, "final", final=True)
        wait_for(ck.should_checkpoint, "the flag")

        def write(directory: Path) -> None:
            time.sleep(0.5)
            (directory / "w").write_bytes(b"w")

        ck.checkpoint_async(9, write)
        assert ck.should_stop() is True  # blocked until the commit
        _, committed = receive(daemon_socket, "committed")
        assert committed["ids"] == ["final"]
    finally:
        ck.close()


def test_standalone_connect_keeps_a_live_writers_temp_dir(tmp_path: Path, monkeypatch) -> None:
    """connect() without a daemon removes the .tmp- dirs of gone writers only."""
    from ckptd_client import manifest

    monkeypatch.delenv("CKPTD_ENDPOINT", raising=False)
    monkeypatch.delenv("CKPTD_RUN_DIR", raising=False)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    live = ckpt / f".tmp-step-00000004-{manifest._HOST_ID}-{os.getpid()}-0a0b0c0d"
    dead = ckpt / f".tmp-step-00000003-{manifest._HOST_ID}-{int(gone.stdout)}-0a0b0c0d"
    for path in (live, dead):
        path.mkdir()
        (path / "model.pt").write_bytes(b"half")
    ck = ckptd_client.connect(checkpoint_dir=ckpt)
    ck.close()
    assert (live / "model.pt").read_bytes() == b"half", "another writer's save was deleted"
    assert not dead.exists()


class _RecordingInbox:
    """Stands in for a client's inbox on a channel: records the requests the channel posts."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.inbox = Inbox(self._post, lambda: None)

    def _post(self, message: object) -> None:
        self.requests.append(getattr(message, "reason", repr(message)))


def test_checkpoint_file_is_one_request_while_it_is_acknowledged(
    tmp_path: Path, monkeypatch
) -> None:
    """A poll that runs while a CHECKPOINT-file request is acknowledged raises no second request."""
    from ckptd_client import _channels

    (tmp_path / "CHECKPOINT").touch()
    channel = _channels.StandaloneChannel(tmp_path)
    client = _RecordingInbox()
    channel._poll_files(client.inbox)  # the channel thread's work, run here to order it
    assert client.requests == ["CHECKPOINT file"]
    racing: list[threading.Thread] = []
    remove = _channels._remove_quietly

    def remove_while_polling(path: Path) -> None:
        # The channel thread polls right when the acknowledgement removes the file.
        racing.append(threading.Thread(target=channel._poll_files, args=(client.inbox,)))
        racing[0].start()
        racing[0].join(timeout=0.5)
        remove(path)

    monkeypatch.setattr(_channels, "_remove_quietly", remove_while_polling)
    try:
        channel.send("committed", ids=[channel._file_request], step=1)
        racing[0].join(timeout=30)
        assert not racing[0].is_alive()
        assert client.requests == ["CHECKPOINT file"], "the same file was taken twice"
        assert not (tmp_path / "CHECKPOINT").exists()
    finally:
        channel.close()


def test_close_leaves_the_wake_pipe_to_a_thread_that_outlives_the_join(
    tmp_path: Path, monkeypatch
) -> None:
    """DaemonChannel.close() never closes descriptors a still-running thread polls."""
    from ckptd_client import _channels

    monkeypatch.setattr(_channels, "JOIN_TIMEOUT", 0.2, raising=False)
    release = threading.Event()

    def slow_progress() -> int:  # read by the thread before it polls
        release.wait(30)
        return 0

    channel = _channels.DaemonChannel(f"ipc://{tmp_path}/nobody.sock", rank=0)
    channel.start(Inbox(lambda message: None, slow_progress))
    channel.close()
    thread = channel._thread
    assert thread is not None and thread.is_alive(), "the thread should still be stuck"
    read_fd, write_fd = channel._wake.read_fd, channel._wake.write_fd
    os.fstat(read_fd)  # still open: the thread will poll it
    os.fstat(write_fd)
    release.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert channel._wake.closed, "the thread closes the pipe once it is the last one using it"


def test_connect_registers_close_at_exit(daemon_socket: zmq.Socket, monkeypatch) -> None:
    """connect() has close() run at interpreter exit (the last acks are sent); close() undoes it."""
    import atexit

    registered: list[object] = []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(atexit, "unregister", registered.remove)
    ck = ckptd_client.connect()
    assert registered == [ck.close]
    ck.close()
    assert registered == []


def test_commits_record_the_daemons_lineage_and_the_resume_point(
    daemon_socket: zmq.Socket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ckptd every manifest records CKPTD_LINEAGE and the resume point's step and digest."""
    from ckptd_client import manifest

    temp = manifest.new_temp_dir(tmp_path / "ckpt", 5)
    (temp / "w").write_bytes(b"w")
    resume, _ = manifest.commit(temp, 5, {}, manifest.Lineage("older"))
    monkeypatch.setenv("CKPTD_RESUME_FROM", str(resume))
    monkeypatch.setenv("CKPTD_LINEAGE", "from-the-daemon")
    ck = ckptd_client.connect()
    try:
        with ck.checkpoint(6) as directory:
            (directory / "w").write_bytes(b"v")
    finally:
        ck.close()
    written = manifest.read_manifest(tmp_path / "ckpt" / "step-00000006").lineage
    digest = manifest.manifest_digest((resume / "ckptd.json").read_bytes())
    assert written == manifest.Lineage("from-the-daemon", 5, digest)
