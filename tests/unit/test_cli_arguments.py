"""Command-line arguments that argparse alone would answer badly."""

from __future__ import annotations

import pytest

from ckptd.cli import main as cli


def _error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    code = exited.value.code
    return code if isinstance(code, int) else -1, capsys.readouterr().err


@pytest.mark.parametrize("value", ["-5s", "-1m", "-0.5"])
def test_a_negative_duration_flag_says_it_is_negative(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--every -5s` is one line saying a duration cannot be negative (exit 2)."""
    code, err = _error_of(["run", "--every", value, "--", "python", "train.py"], capsys)
    assert code == 2
    assert err.strip() == (
        f"ckptd run: error: argument --every: a duration cannot be negative, got {value!r} "
        "(see ckptd run --help)"
    )


def test_a_flag_followed_by_another_flag_still_lacks_its_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--name --every 5s`: --name has no value; the next flag is not taken for one."""
    code, err = _error_of(["run", "--name", "--every", "5s", "--", "x"], capsys)
    assert code == 2
    assert "argument --name: expected one argument" in err


def test_an_empty_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """`--name ""` is a config error, not silently the script's name."""
    assert cli.main(["run", "--name", "", "--", "python", "train.py"]) == 2
    assert capsys.readouterr().err.strip() == "ckptd run: config error: name: must not be empty"
