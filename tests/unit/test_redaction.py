"""The redaction rule: which values count as secret, and where they are cut out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ckptd import config, redaction


@pytest.fixture(autouse=True)
def _forget() -> Iterator[None]:
    yield
    redaction._known = ()


def _job(tmp_path: Path, body: str, env: dict[str, str] | None = None) -> config.JobConfig:
    path = tmp_path / "ckptd.toml"
    path.write_text(body)
    return config.load(path, {"command": ["python", "train.py"], "env": env}, base=tmp_path)


def test_env_values_and_secret_named_options_are_hidden(tmp_path: Path) -> None:
    """Every env value; storage options under secret-like names at any depth; URL passwords."""
    job = _job(
        tmp_path,
        '[storage]\nremote = "file:///tmp/bucket"\n[storage.options]\n'
        'account_key = "k-123456"\nregion_name = "eu-west-1"\nanon = false\n'
        'headers = { Authorization = "Bearer abcdef", Accept = "json" }\n'
        'client_kwargs = { aws_secret_access_key = "s-abcdef", verify = true }\n'
        '[preemption]\nendpoint = "http://user:hunter22@127.0.0.1:9"\n',
        env={"HF_TOKEN": "hf_abcdef", "OMP_NUM_THREADS": "4"},
    )
    redaction.configure(job)
    shown = redaction.redact_config(job)
    assert shown["env"] == {"HF_TOKEN": "<redacted>", "OMP_NUM_THREADS": "<redacted>"}
    options = shown["storage"]["options"]
    assert options["account_key"] == "<redacted>" and options["region_name"] == "eu-west-1"
    assert options["anon"] is False
    assert options["headers"] == {"Authorization": "<redacted>", "Accept": "json"}
    assert options["client_kwargs"] == {"aws_secret_access_key": "<redacted>", "verify": True}
    assert shown["preemption"]["endpoint"] == "http://user:<redacted>@127.0.0.1:9"
    assert shown["command"] == ["python", "train.py"] and shown["keep_last"] == 3


def test_learned_secrets_are_cut_out_of_any_text(tmp_path: Path) -> None:
    """Secret values (six characters and more) vanish from nested text; other text stays."""
    job = _job(
        tmp_path,
        '[storage]\nremote = "file:///tmp/bucket"\n[storage.options]\nsecret = "s3cr3t-value"\n',
        env={"WANDB_API_KEY": "wk-0123456789", "SHORT_TOKEN": "abc", "DATA": "plain-value"},
    )
    redaction.configure(job)
    event = {
        "error": "refused wk-0123456789 and s3cr3t-value",
        "nested": [{"why": "retry with s3cr3t-value"}, 3, None],
        "path": Path("/data/s3cr3t-value/x"),
        "other": "abc plain-value ftp://bob:pw-9@host/f",
    }
    assert redaction.scrub(event) == {
        "error": "refused <redacted> and <redacted>",
        "nested": [{"why": "retry with <redacted>"}, 3, None],
        "path": "/data/<redacted>/x",
        "other": "abc plain-value ftp://bob:<redacted>@host/f",
    }
    assert redaction.scrub(Path("/data/ok")) == Path("/data/ok")
