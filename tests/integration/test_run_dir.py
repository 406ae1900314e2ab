"""The run directory: one daemon per directory, private sockets, deep paths."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from conftest import Job, alive, job_pids, plain_trainer, wait_for


def _run_ckptd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ckptd", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_second_daemon_on_the_same_run_dir_is_refused(make_job: Callable[..., Job]) -> None:
    """While a daemon runs, a second `ckptd run` on its run directory exits 2 with a reason."""
    first = make_job()
    first.start_fake()
    first.wait_event("client.connected")
    second = make_job("second")
    second.start_fake()
    assert second.wait() == 2
    message = second.stderr.read_text().strip()
    assert len(message.splitlines()) == 1
    assert f"in use by ckptd pid {first.pid}" in message
    assert len(first.records("start")) == 1
    first.signal(signal.SIGTERM)
    assert first.wait() == 0


@pytest.mark.parametrize("deep", [False, True], ids=["run_dir", "deep_run_dir"])
def test_a_new_daemon_stops_the_orphaned_job_and_resumes(
    make_job: Callable[..., Job], deep: bool
) -> None:
    """SIGKILL of ckptd leaves its job running; the next ckptd has it save and stop, then resumes.

    Never two trainers on one checkpoint directory: the new job starts only after the
    orphan is gone, and it resumes from the checkpoint the orphan saved on its way out.
    With a deep run directory, the new daemon binds the job socket in the same private
    socket directory, so the orphan's client reconnects and saves.
    """
    first = make_job()
    if deep:
        first.run_dir = first.base / ("d" * 60) / ("e" * 60) / "run"
    first.start_fake()
    orphan = first.wait_record("start")
    first.wait_record("step", count=10)
    os.kill(first.pid, signal.SIGKILL)
    first.process.wait()
    assert psutil.pid_exists(orphan["pid"])
    second = make_job("second")
    second.run_dir = first.run_dir
    second.start_fake()
    adopted = second.wait_event("job.adopted")
    assert adopted["pid"] == orphan["pid"]
    fresh = second.wait_record("start", count=2)
    assert (
        not psutil.pid_exists(orphan["pid"]) or psutil.Process(orphan["pid"]).status() == "zombie"
    )
    saved = [r for r in second.records("saved") if r["pid"] == orphan["pid"]]
    assert saved and fresh["resume_step"] == saved[-1]["step"]
    assert [r["pid"] for r in second.records("stop")] == [orphan["pid"]]
    second.signal(signal.SIGTERM)
    assert second.wait() == 0


def test_orphan_without_the_client_is_signalled_and_replaced(
    make_job: Callable[..., Job], tmp_path: Path
) -> None:
    """An orphan that never speaks to the job channel gets stop_signal, its tree too if needed."""
    pids_file = tmp_path / "pids.json"
    command = plain_trainer(pids_file, "--grandchildren", "2")
    first = make_job()
    first.start(command)
    pids = job_pids(pids_file)
    os.kill(first.pid, signal.SIGKILL)
    first.process.wait()
    pids_file.unlink()
    second = make_job("second")
    second.start(command, "--kill-timeout", "1s")
    second.wait_event("job.adopted")
    fresh = job_pids(pids_file)
    assert fresh["pid"] != pids["pid"]
    for pid in [pids["pid"], *pids["children"]]:
        wait_for(lambda pid=pid: not alive(pid), f"old process {pid} to be gone", 20)
    second.signal(signal.SIGTERM)
    assert second.wait() == 0


def test_sockets_and_run_dir_are_private(job: Job) -> None:
    """The run directory is 0700 and the job channel's socket 0600."""
    job.start_fake()
    job.wait_event("client.connected")
    assert stat.S_IMODE(job.run_dir.stat().st_mode) == 0o700
    socket = job.run_dir / "job.sock"
    assert stat.S_IMODE(socket.stat().st_mode) == 0o600
    assert json.loads((job.run_dir / "endpoints.json").read_text())["job"] == f"ipc://{socket}"
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    assert not socket.exists()


def test_deep_run_dir_gets_a_short_socket_path(job: Job) -> None:
    """A run directory too deep for an ipc path still works, through a short private socket."""
    job.run_dir = job.base / ("d" * 60) / ("e" * 60) / "run"
    job.start_fake()
    job.wait_event("client.connected")
    endpoint = json.loads((job.run_dir / "endpoints.json").read_text())["job"]
    socket = Path(endpoint.removeprefix("ipc://"))
    assert len(str(socket)) < 100 and socket.parent != job.run_dir
    assert stat.S_IMODE(socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(socket.parent.stat().st_mode) == 0o700
    (job.run_dir / "CHECKPOINT").touch()
    job.wait_event("checkpoint.committed")
    job.signal(signal.SIGTERM)
    assert job.wait() == 0


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A fresh directory right under /tmp, short enough for sockets (pytest's paths are not)."""
    path = Path(tempfile.mkdtemp(prefix="ckq", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _deep(job: Job) -> Path:
    return job.base / ("d" * 60) / ("e" * 60) / "run"


def test_a_squatted_socket_directory_cannot_block_a_deep_run_dir(job: Job, short_tmp: Path) -> None:
    """Another user's ckptd-<uid> (0777) in the temp directory is ignored; sockets stay private."""
    if os.getuid() != 0:
        pytest.skip("needs root to create the directory as another user (nobody)")
    squatted = short_tmp / f"ckptd-{os.getuid()}"
    squatted.mkdir()
    squatted.chmod(0o777)
    os.chown(squatted, 65534, 65534)
    job.run_dir = _deep(job)
    job.start_fake(env={"TMPDIR": str(short_tmp), "XDG_RUNTIME_DIR": ""})
    job.wait_event("client.connected")
    endpoints = json.loads((job.run_dir / "endpoints.json").read_text())
    sockets = [Path(e.removeprefix("ipc://")) for e in endpoints.values() if e.startswith("ipc:")]
    assert {s.parent for s in sockets} == {sockets[0].parent}
    private = sockets[0].parent
    assert private.parent == short_tmp and private != squatted
    info = private.lstat()
    assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
    assert stat.S_IMODE(info.st_mode) == 0o700
    (job.run_dir / "CHECKPOINT").touch()
    job.wait_event("checkpoint.committed")
    job.signal(signal.SIGTERM)
    assert job.wait() == 0
    assert list(short_tmp.iterdir()) == [squatted]  # the private directory went with the daemon
    assert list(squatted.iterdir()) == []


def test_no_socket_directory_is_one_line(job: Job, tmp_path: Path) -> None:
    """When no private socket directory can be made: one line naming where, exit 2, no job."""
    not_a_directory = tmp_path / "runtime"
    not_a_directory.write_text("")
    job.run_dir = _deep(job)
    job.start_fake(env={"XDG_RUNTIME_DIR": str(not_a_directory)})
    assert job.wait() == 2
    lines = job.stderr.read_text().strip().splitlines()
    assert len(lines) == 1, lines
    assert "socket directory" in lines[0] and str(not_a_directory) in lines[0]
    assert not job.records("start")


def test_bad_config_is_one_line_naming_the_key(tmp_path: Path) -> None:
    """Unknown keys, wrong types and bad durations: exit 2 and one line that names the key."""
    cases = {
        "keep_lsat = 3": "[job].keep_lsat: unknown key",
        'keep_last = "three"': "[job].keep_last: expected a non-negative integer",
        'grace = "soon"': "[job].grace: expected a duration",
        'restart = "sometimes"': "[job].restart: expected one of",
        "[control]\nbind = 1": "[control].bind: expected a string",
        '[control]\nbind = "tcp://0.0.0.0:7561"': "[control].bind: refusing tcp://0.0.0.0:7561",
        '[control]\nbind = "localhost"': "[control].bind: expected tcp://HOST:PORT",
        '[control]\npublish = "tcp://127.0.0.1:7561"': (
            "[control].publish: tcp://127.0.0.1:7561 without CURVE is open to every local user"
        ),
        '[control]\nallow_unauthenticated = "yes"': (
            "[control].allow_unauthenticated: expected true or false"
        ),
        "[server]\nx = 1": "unknown table [server]",
    }
    for body, expected in cases.items():
        config = tmp_path / "ckptd.toml"
        config.write_text(("[job]\n" if not body.startswith("[") else "") + body + "\n")
        result = _run_ckptd("run", "--config", str(config), "--", "true", cwd=tmp_path)
        assert result.returncode == 2, (body, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert expected in result.stderr, (body, result.stderr)
    result = _run_ckptd("run", "--keep-last", "-1", "--", "true", cwd=tmp_path)
    assert result.returncode == 2 and "--keep-last" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = _run_ckptd("run", "--grace", "5 parsecs", "--", "true", cwd=tmp_path)
    assert result.returncode == 2 and "--grace" in result.stderr


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    """A flag wins over the file, the file over the defaults; job.json records the result."""
    config = tmp_path / "ckptd.toml"
    config.write_text('[job]\nname = "fromfile"\nkeep_last = 7\ngrace = "2m"\n')
    result = _run_ckptd(
        "run",
        "--config",
        str(config),
        "--keep-last",
        "4",
        "--",
        sys.executable,
        "-c",
        "pass",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    recorded = json.loads((tmp_path / ".ckptd" / "fromfile" / "job.json").read_text())
    assert recorded["keep_last"] == 4 and recorded["grace"] == 120.0
    assert recorded["checkpoint_dir"] == str(tmp_path / "checkpoints" / "fromfile")


def test_missing_command_is_a_clear_error(tmp_path: Path) -> None:
    """A command that cannot be executed is reported and counted as a failure."""
    result = _run_ckptd("run", "--restart", "never", "--", str(tmp_path / "nope"), cwd=tmp_path)
    assert result.returncode == 127
    assert "cannot start" in result.stderr
