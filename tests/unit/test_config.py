"""Configuration values, defaults and precedence."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ckptd.config import ConfigError, default_name, load
from ckptd.options import parse_duration, parse_signal


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("250ms", 0.25),
        ("1d", 86400.0),
        (" 5 s ", 5.0),
        ("0", 0.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    """Durations accept plain seconds and s/m/h/d/ms suffixes."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "-1s", -3, True, "5 parsecs", [1]])
def test_bad_durations(bad: object) -> None:
    """Anything else is rejected with a message showing the accepted forms."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_signal_names() -> None:
    """Signals are named with or without SIG, any case, or by number."""
    assert parse_signal("usr1") == parse_signal("SIGUSR1") == parse_signal(10) == "SIGUSR1"
    with pytest.raises(ValueError):
        parse_signal("SIGNOPE")


def test_default_name_comes_from_the_script() -> None:
    """`python train.py` is job `train`; `python -m pkg.trainer` is `trainer`."""
    assert default_name(["python", "examples/train.py", "--x"]) == "train"
    assert default_name(["python3", "-u", "-m", "pkg.trainer"]) == "trainer"
    assert default_name(["/usr/bin/my-job", "arg"]) == "my-job"


def test_defaults_and_paths(tmp_path: Path) -> None:
    """With no file, defaults apply and paths are absolute under the working directory."""
    config = load(None, {"command": ["python", "train.py"]}, base=tmp_path)
    assert config.name == "train"
    assert config.run_dir == tmp_path / ".ckptd" / "train"
    assert config.checkpoint_dir == tmp_path / "checkpoints" / "train"
    assert (config.grace, config.kill_timeout, config.keep_last) == (25.0, 5.0, 3)
    assert config.restart == "on-failure" and config.max_restarts == 10


def test_env_merges_file_and_flags(tmp_path: Path) -> None:
    """env from the file and --env flags merge; a flag wins for the same key."""
    path = tmp_path / "c.toml"
    path.write_text('[job]\ncommand = ["x"]\nenv = { A = "1", B = "2" }\n')
    config = load(path, {"env": {"B": "3"}}, base=tmp_path)
    assert config.env == {"A": "1", "B": "3"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("keep_best = 2", "keep_best: needs best_metric"),
        ('name = "../x"', "name:"),
        ('every = "0s"', "every: must be at least 1s"),
        ("command = []", "[job].command"),
        ("[job", "not valid TOML"),
    ],
)
def test_inconsistent_values_name_the_key(tmp_path: Path, body: str, message: str) -> None:
    """Values that are well-typed but unusable together are refused by key."""
    path = tmp_path / "c.toml"
    if body.startswith("["):
        path.write_text(body + "\n")
    elif body.startswith("command"):
        path.write_text("[job]\n" + body + "\n")
    else:
        path.write_text('[job]\ncommand = ["x"]\n' + body + "\n")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load(path, {}, base=tmp_path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), "400d", 1e12])
def test_non_finite_and_endless_durations_are_refused(bad: object) -> None:
    """nan, inf and durations beyond a year are refused rather than overflowing a timer."""
    with pytest.raises(ValueError, match=r"finite|365d"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("grace = nan", "[job].grace: a duration must be a finite number"),
        ("kill_timeout = inf", "[job].kill_timeout: a duration must be a finite number"),
        ('every = "1ms"', "[job].every: must be at least 1s"),
        ('keep_every = "10ms"', "[job].keep_every: must be at least 1s"),
        ("hang_timeout = 0.5", "[job].hang_timeout: must be at least 1s"),
        ('poll_interval = "1ms"', "[job].poll_interval: must be at least 10ms"),
        ("grace = 0", "[job].grace: must be above 0s"),
        ("[preemption]\ninterval = 0.001", "[preemption].interval: must be at least 100ms"),
    ],
)
def test_absurd_durations_name_the_key_and_the_bound(
    tmp_path: Path, body: str, message: str
) -> None:
    """A duration below its sane lower bound is refused with the bound in the message."""
    path = tmp_path / "c.toml"
    path.write_text('[job]\ncommand = ["x"]\n' + body + "\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(path, {}, base=tmp_path)


def test_lowest_sane_values_are_accepted(tmp_path: Path) -> None:
    """The bounds themselves are allowed: every 1s, hang_timeout 1s, poll_interval 10ms."""
    path = tmp_path / "c.toml"
    path.write_text(
        '[job]\ncommand = ["x"]\nevery = "1s"\nhang_timeout = 1\npoll_interval = "10ms"\n'
        'grace = "1ms"\nrestart_delay = 0\nkill_timeout = 0\n'
    )
    config = load(path, {}, base=tmp_path)
    assert (config.every, config.hang_timeout, config.poll_interval) == (1.0, 1.0, 0.01)


def test_config_file_not_utf8_is_one_line(tmp_path: Path) -> None:
    """A config file that is not UTF-8 is a ConfigError naming the file, not a decode traceback."""
    path = tmp_path / "c.toml"
    path.write_bytes(b'[job]\ncommand = ["caf\xe9"]\n')
    with pytest.raises(ConfigError, match=r"c\.toml: not UTF-8 \(byte 21\)"):
        load(path, {}, base=tmp_path)
