"""Run-directory files are opened only when regular: a FIFO, link or device is refused at once."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from ckptd.run_dir import NotRegularFile, open_regular, read_regular, write_private


@pytest.mark.parametrize("flags", [os.O_RDONLY, os.O_WRONLY | os.O_APPEND | os.O_CREAT, os.O_RDWR])
def test_a_fifo_is_refused_without_waiting_for_a_peer(tmp_path: Path, flags: int) -> None:
    """Read, append or read-write: a FIFO with no one at the other end is refused, not waited on."""
    fifo = tmp_path / "events.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFile, match="is a FIFO, not a regular file") as caught:
        open_regular(fifo, flags)
    assert caught.value.filename == str(fifo) and str(fifo) in str(caught.value)


def test_links_directories_and_sockets_are_refused(tmp_path: Path) -> None:
    """A symlink (even to a regular file), a directory and a unix socket are not opened."""
    target = tmp_path / "target.json"
    target.write_text("{}")
    os.symlink(target, tmp_path / "job.json")
    (tmp_path / "dir.json").mkdir()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "sock.json"))
    try:
        for name, kind, flags in (
            ("job.json", "symlink", os.O_RDONLY),
            ("job.json", "symlink", os.O_WRONLY | os.O_CREAT),
            ("dir.json", "directory", os.O_RDONLY),
            ("dir.json", "directory", os.O_WRONLY),
            ("sock.json", "socket", os.O_RDONLY),
        ):
            with pytest.raises(NotRegularFile, match=kind):
                open_regular(tmp_path / name, flags)
    finally:
        listener.close()
    with pytest.raises(NotRegularFile, match="character device"):
        open_regular("/dev/null")


def test_a_regular_file_opens_blocking(tmp_path: Path) -> None:
    """A regular file opens blocking and close-on-exec; a missing one is FileNotFoundError."""
    path = tmp_path / "hang_budget.json"
    fd = open_regular(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        assert os.get_blocking(fd) and not os.get_inheritable(fd)
    finally:
        os.close(fd)
    write_private(path, '{"step": 1}')
    assert read_regular(path) == '{"step": 1}'
    assert os.stat(path).st_mode & 0o777 == 0o600
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "missing")
    with pytest.raises(ValueError, match="larger"):
        read_regular(path, limit=4)


def test_write_private_replaces_a_fifo_without_opening_it(tmp_path: Path) -> None:
    """job.json is replaced by rename: a FIFO there is never opened, so nothing waits."""
    path = tmp_path / "job.json"
    os.mkfifo(path)
    write_private(path, "{}")
    assert path.is_file() and read_regular(path) == "{}"
