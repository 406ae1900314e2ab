"""The [storage] table, the --remote flag and the URLs they accept."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptd import config
from ckptd.storage.remote.url import redact


def _load(tmp_path: Path, text: str | None, **flags: object) -> config.JobConfig:
    path = None
    if text is not None:
        path = tmp_path / "ckptd.toml"
        path.write_text(text)
    return config.load(path, {"command": ["python", "train.py"], **flags}, base=tmp_path)


def test_storage_table_with_options_passed_verbatim(tmp_path: Path) -> None:
    """[storage] keys are parsed and [storage.options] reaches the config untouched."""
    job = _load(
        tmp_path,
        '[storage]\nremote = "s3://b/p"\nupload_timeout = "2m"\nkeep_remote = 4\n'
        '[storage.options]\nendpoint_url = "http://127.0.0.1:9000"\n'
        'client_kwargs = { region_name = "eu-west-1" }\n',
    )
    assert job.storage == config.StorageConfig(
        "s3://b/p",
        120.0,
        4,
        {"endpoint_url": "http://127.0.0.1:9000", "client_kwargs": {"region_name": "eu-west-1"}},
    )


def test_defaults_and_the_flag_winning_over_the_file(tmp_path: Path) -> None:
    """No remote by default; --remote overrides the file; a plain path becomes file://."""
    assert _load(tmp_path, None).storage == config.StorageConfig()
    job = _load(tmp_path, '[storage]\nremote = "s3://b/p"\n', remote="shared/ckpt")
    assert job.storage.remote == f"file://{tmp_path}/shared/ckpt"


@pytest.mark.parametrize(
    ("text", "flags", "message"),
    [
        (None, {"remote": "nope://b/x"}, "[storage].remote: unknown protocol 'nope' in nope://b/x"),
        ('[storage]\nupload_timeout = "10ms"\n', {}, "upload_timeout: must be at least 1s"),
        ("[storage]\noptions = 3\n", {}, "[storage].options: expected a table"),
        ('[storage]\nbucket = "x"\n', {}, "[storage].bucket: unknown key"),
    ],
)
def test_bad_storage_settings_are_one_line_errors(
    tmp_path: Path, text: str | None, flags: dict[str, object], message: str
) -> None:
    """Unknown protocols, tiny timeouts and unknown keys name what is wrong, in one line."""
    with pytest.raises(config.ConfigError) as caught:
        _load(tmp_path, text, **flags)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_credentials_in_a_url_are_never_shown() -> None:
    """A user:password part of a URL is replaced before the URL reaches a message."""
    assert redact("ftp://user:secret@host/path") == "ftp://***@host/path"
    assert redact("s3://bucket/prefix") == "s3://bucket/prefix"
    with pytest.raises(config.ConfigError) as caught:
        config.load(None, {"command": ["x"], "remote": "nope://u:secret@h/p"})
    assert "secret" not in str(caught.value)
