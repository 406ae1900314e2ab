"""The job's name: the default one taken from its command, and what a name may be.

A name becomes a directory (``.ckptd/<name>``, ``checkpoints/<name>``) and a log field,
so it is one path component of at most 64 safe characters. The default is the training
script's name, also behind a launcher (``torchrun``, ``python -m torch.distributed.run``,
``accelerate launch``): ``train_ddp`` for ``torchrun --nproc-per-node 2 train_ddp.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["MAX_LENGTH", "default_name", "launcher_options", "name_problem"]

MAX_LENGTH = 64
_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

# Launchers whose first positional argument is the training script (or module with -m).
_LAUNCHER_MODULES = frozenset({"torch.distributed.run", "torch.distributed.launch"})
# Their options that take no value (anything else starting with "-" takes the next token,
# unless written --option=value): torchrun's own, and accelerate launch's common ones.
_LAUNCHER_FLAGS = frozenset(
    {
        "-h", "--help", "--standalone", "-m", "--module", "--no-python", "--no_python",
        "--run-path", "--run_path", "--virtual-local-rank", "--virtual_local_rank",
        "--use-env", "--use_env", "-q", "--quiet", "--cpu", "--multi-gpu", "--multi_gpu",
        "--tpu", "--use-deepspeed", "--use_deepspeed", "--use-fsdp", "--use_fsdp",
        "--use-megatron-lm", "--use_megatron_lm", "--same-network", "--same_network",
        "--enable-cpu-affinity", "--enable_cpu_affinity", "--downcast-bf16", "--downcast_bf16",
        "--debug",
    }
)  # fmt: skip
_PYTHON_VALUE_OPTIONS = frozenset({"-W", "-X", "--check-hash-based-pycs"})


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a job (one clause), or None when it can."""
    if not name:
        return "must not be empty"
    if name in (".", ".."):
        return f"{name!r} is not a name (it would name a directory above or at the run's own)"
    if len(name) > MAX_LENGTH:
        return f"must be at most {MAX_LENGTH} characters, got {len(name)}"
    if not _SAFE.match(name):
        return (
            f"{name!r} must be letters, digits, '.', '_' or '-', and start with a letter, "
            "a digit or '_'"
        )
    return None


def default_name(command: list[str]) -> str:
    """``train`` for ``python train.py``, ``trainer`` for ``python -m pkg.trainer``,
    ``train_ddp`` for ``torchrun --nproc-per-node 2 train_ddp.py``."""
    program = Path(command[0]).name
    args = command[1:]
    if program.startswith("python"):
        module, rest = _python_target(args)
        if module is None:
            return _sanitize(Path(rest[0]).stem) if rest else _sanitize(program)
        if module not in _LAUNCHER_MODULES:
            return _sanitize(module.rsplit(".", 1)[-1])
        args = rest
    elif program == "accelerate" and args[:1] == ["launch"]:
        args = args[1:]
    elif program != "torchrun":
        return _sanitize(Path(command[0]).stem)
    return _launched_script(args) or _sanitize(program)


def launcher_options(command: list[str]) -> dict[str, str] | None:
    """torchrun's options in ``command`` (``--rdzv_id=x`` is ``{"rdzv-id": "x"}``; a flag maps
    to ""), up to the script; None when ``command`` does not start torchrun."""
    if not command:
        return None
    program, args = Path(command[0]).name, command[1:]
    if program.startswith("python"):
        module, args = _python_target(args)
        if module not in _LAUNCHER_MODULES:
            return None
    elif program != "torchrun":
        return None
    options: dict[str, str] = {}
    index = 0
    while index < len(args) and args[index].startswith("-") and args[index] != "--":
        arg = args[index]
        key, has_value, value = arg.lstrip("-").partition("=")
        key = key.replace("_", "-")
        if has_value or arg in _LAUNCHER_FLAGS:
            options[key] = value
            index += 1
        else:
            options[key] = args[index + 1] if index + 1 < len(args) else ""
            index += 2
    return options


def _python_target(args: list[str]) -> tuple[str | None, list[str]]:
    """``(module, its arguments)`` for ``-m module``, else ``(None, [script, ...])``."""
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "-m" and index + 1 < len(args):
            return args[index + 1], args[index + 2 :]
        if not arg.startswith("-") or arg == "-":
            return None, args[index:]
        index += 2 if arg in _PYTHON_VALUE_OPTIONS else 1
    return None, []


def _launched_script(args: list[str]) -> str | None:
    """The name of the script (or ``-m`` module) a launcher runs, from its arguments."""
    for arg in args:
        if arg.endswith(".py") and not arg.startswith("-"):
            return _sanitize(Path(arg).stem)
    module = False
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            index += 1
            break
        if not arg.startswith("-"):
            break
        module = module or arg in ("-m", "--module")
        index += 1 if arg in _LAUNCHER_FLAGS or "=" in arg else 2
    if index >= len(args):
        return None
    target = args[index]
    return _sanitize(target.rsplit(".", 1)[-1] if module else Path(target).stem)


def _sanitize(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".-") or "job"
    return cleaned[:MAX_LENGTH]
