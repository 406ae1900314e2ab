"""`ckptd run` refuses what it cannot serve with one line and exit 2, before launching anything."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ckptd.cli import preflight
from ckptd.config import load

USAGE = 2


def _run(base: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """`ckptd run OPTIONS -- python -c pass` in ``base``; the job must never start."""
    marker = base / "job-ran"
    argv = [sys.executable, "-m", "ckptd", "run", *options, "--"]
    argv += [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    result = subprocess.run(argv, cwd=base, capture_output=True, text=True, timeout=60)
    assert not marker.exists(), "the job was launched despite the error"
    return result


def _assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == USAGE, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount small tmpfs file systems under tmp_path (root only); unmount them afterwards."""
    mounted: list[Path] = []

    def mount(name: str, options: str = "size=64k") -> Path:
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False)


def _remount_read_only(point: Path) -> None:
    done = subprocess.run(["mount", "-o", "remount,ro", str(point)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot remount read-only: {done.stderr.strip()}")


def _fill(point: Path) -> None:
    fd = os.open(point / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_checkpoint_dir_that_is_a_file(tmp_path: Path) -> None:
    """A regular file where checkpoint_dir should be is named in one line, exit 2."""
    (tmp_path / "ckpt").write_text("not a directory")
    result = _run(tmp_path, "--checkpoint-dir", "ckpt")
    _assert_one_line_error(result, "checkpoint_dir", "not a directory")


def test_checkpoint_dir_on_a_read_only_file_system(
    tmp_path: Path, mount_tmpfs: Callable[..., Path]
) -> None:
    """An existing checkpoint_dir on a read-only mount is refused before the job starts."""
    point = mount_tmpfs("ro")
    (point / "ckpt").mkdir()
    _remount_read_only(point)
    result = _run(tmp_path, "--checkpoint-dir", str(point / "ckpt"))
    _assert_one_line_error(result, "checkpoint_dir", "read-only file system")


def test_full_run_dir_at_start(tmp_path: Path, mount_tmpfs: Callable[..., Path]) -> None:
    """A run directory on a full file system is a one-line error (exit 2), not a traceback."""
    point = mount_tmpfs("full")
    _fill(point)
    result = _run(tmp_path, "--run-dir", str(point / "run"))
    _assert_one_line_error(result, "run_dir", "no space left on device")


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    """A config file in another encoding is named with the offending byte."""
    (tmp_path / "ckptd.toml").write_bytes('[job]\nname = "d\xe9j\xe0"\n'.encode("latin-1"))
    result = _run(tmp_path, "--config", "ckptd.toml")
    _assert_one_line_error(result, "ckptd.toml", "not UTF-8")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_durations_in_toml(tmp_path: Path, value: str) -> None:
    """TOML's nan and inf are refused as durations, naming the key."""
    (tmp_path / "ckptd.toml").write_text(f"[job]\ngrace = {value}\n")
    result = _run(tmp_path, "--config", "ckptd.toml")
    _assert_one_line_error(result, "[job].grace", "finite")


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--every", "1ms", "at least 1s"),
        ("--hang-timeout", "0.5", "at least 1s"),
        ("--poll-interval", "1ms", "at least 10ms"),
        ("--grace", "0", "above 0s"),
        ("--grace", "nan", "duration"),
        ("--kill-timeout", "inf", "duration"),
    ],
)
def test_absurd_flag_values(tmp_path: Path, flag: str, value: str, needle: str) -> None:
    """Durations below their sane bound (or not numbers) are refused with the bound."""
    result = _run(tmp_path, flag, value)
    _assert_one_line_error(result, flag, needle)


def test_missing_cwd_is_named(tmp_path: Path) -> None:
    """A --cwd that does not exist is named, instead of a launch retried with backoff."""
    missing = tmp_path / "nowhere"
    result = _run(tmp_path, "--cwd", str(missing))
    _assert_one_line_error(result, "cwd", str(missing))


def test_preflight_creates_the_directories_and_leaves_no_probe(tmp_path: Path) -> None:
    """Pre-flight creates checkpoint_dir and a private run_dir, and removes its probe files."""
    config = load(None, {"command": ["x"]}, base=tmp_path)
    preflight.check(config)
    assert os.listdir(config.checkpoint_dir) == [] and os.listdir(config.run_dir) == []
    assert stat.S_IMODE(config.run_dir.stat().st_mode) == 0o700
