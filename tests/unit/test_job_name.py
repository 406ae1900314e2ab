"""The job's name: what a name may be, and the default taken from the command."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptd.config import ConfigError, default_name, load


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("a" * 80, "at most 64 characters, got 80"),
        (".", "'.' is not a name"),
        ("..", "'..' is not a name"),
        ("", "must not be empty"),
        ("a/b", "must be letters, digits"),
        (".hidden", "start with a letter"),
    ],
)
def test_a_bad_name_gets_its_own_reason(tmp_path: Path, name: str, message: str) -> None:
    """--name of 80 letters, '.', '..' or '' is refused with the reason that applies."""
    with pytest.raises(ConfigError, match="name: .*" + message.replace(".", r"\.")):
        load(None, {"command": ["python", "train.py"], "name": name}, base=tmp_path)


def test_the_longest_name_is_accepted(tmp_path: Path) -> None:
    """64 characters is the bound itself."""
    config = load(None, {"command": ["python", "train.py"], "name": "a" * 64}, base=tmp_path)
    assert config.name == "a" * 64


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (["python", "examples/train.py", "--x"], "train"),
        (["python3", "-u", "-m", "pkg.trainer"], "trainer"),
        (["/usr/bin/my-job", "arg"], "my-job"),
        (["python", "-W", "ignore", "train.py"], "train"),
        (["torchrun", "--nproc-per-node", "2", "--max-restarts", "0", "examples/train_ddp.py"],
         "train_ddp"),
        (["torchrun", "--standalone", "--nproc_per_node=2", "train_ddp.py", "--steps", "5"],
         "train_ddp"),
        (["torchrun", "--nnodes", "2", "-m", "pkg.sharded"], "sharded"),
        (["/opt/venv/bin/torchrun", "--nproc-per-node", "8", "run_me"], "run_me"),
        ([".venv/bin/python", "-m", "torch.distributed.run", "--nproc-per-node", "2", "ddp.py"],
         "ddp"),
        (["python", "-m", "torch.distributed.launch", "--use-env", "job.py"], "job"),
        (["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "train_hf.py"],
         "train_hf"),
        (["torchrun", "--nproc-per-node", "2"], "torchrun"),
    ],
)  # fmt: skip
def test_the_default_name_is_the_script_behind_a_launcher(command: list[str], name: str) -> None:
    """The default name is the training script's, also under torchrun or accelerate launch."""
    assert default_name(command) == name
