"""The control commands: each one's name, arguments, documentation and handler, in one place.

This one registry serves the control socket, builds the ``ckptd`` subcommands that talk
to a daemon (their help is the command's docstring and its arguments' docs), and
starts each command's section of ``docs/protocol.md`` (checked by the tests against
:func:`reference`). A command that acts on the job only posts a
:class:`~ckptd.requests.Request` carrying its waiter, as a signal or a signal file
does, and the arbiter decides and answers; the others read the daemon and answer at
once.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ckptd import __version__
from ckptd.control.server import ReplyError, Waiter
from ckptd.requests import Action, Origin, Request

LATER = object()  # a handler's result: the reply comes later (the waiter went with a request)

_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string"}


class Supervisor(Protocol):
    """What the commands ask of the daemon (the arbiter, on its own thread)."""

    @property
    def job_name(self) -> str: ...
    @property
    def endpoints(self) -> dict[str, str]: ...
    def post(self, request: Request) -> None: ...
    def status(self) -> dict[str, Any]: ...
    def checkpoints(self) -> list[dict[str, Any]]: ...
    def effective_config(self) -> dict[str, Any]: ...
    def control_rollback(self, step: int) -> dict[str, Any]: ...


Handler = Callable[[Supervisor, dict[str, Any], Waiter], Any]


@dataclass(frozen=True)
class Arg:
    name: str
    type: type
    default: Any
    doc: str
    flag: str | None = None  # the ``ckptd`` flag; None: ``--name`` (a true default: ``--no-name``)

    @property
    def negated(self) -> bool:
        """A boolean that defaults to true: its flag sets it to false."""
        return self.type is bool and self.default is True

    @property
    def cli_flag(self) -> str:
        if self.flag is not None:
            return self.flag
        return ("--no-" if self.negated else "--") + self.name.replace("_", "-")

    @property
    def cli_help(self) -> str:
        """The flag's help: the doc as plain text; a ``--no-`` flag's says what false does."""
        text = plain(self.doc)
        return text.removeprefix("false: ") if self.negated else text


@dataclass(frozen=True)
class ControlCommand:
    name: str
    doc: str  # markdown: the first sentence is the summary
    args: tuple[Arg, ...]
    handler: Handler

    @property
    def summary(self) -> str:
        """The first sentence, as ``ckptd --help`` lists commands: ``ask the job for a ...``."""
        first = plain(" ".join(self.doc.split()).split(". ")[0]).rstrip(".")
        return first[:1].lower() + first[1:]

    def parse(self, raw: Any) -> dict[str, Any]:
        """Checked arguments with defaults filled in; ReplyError("bad_arguments") otherwise."""
        if not isinstance(raw, dict):
            raise ReplyError("bad_arguments", "args must be a JSON object")
        known = {arg.name: arg for arg in self.args}
        if unknown := sorted(set(raw) - set(known)):
            raise ReplyError("bad_arguments", f"{self.name}: unknown argument {unknown[0]!r}")
        parsed = {}
        for name, arg in known.items():
            value = raw.get(name, arg.default)
            if not _is_type(value, arg.type) and not (value is None and arg.default is None):
                raise ReplyError(
                    "bad_arguments",
                    f"{self.name}: {name} must be {arg.type.__name__}, got {value!r}",
                )
            parsed[name] = value
        return parsed


REGISTRY: dict[str, ControlCommand] = {}


def control_command(name: str, *args: Arg) -> Callable[[Handler], Handler]:
    """Register the decorated handler as command ``name``; its docstring documents it."""

    def register(handler: Handler) -> Handler:
        REGISTRY[name] = ControlCommand(
            name, inspect.cleandoc(handler.__doc__ or ""), args, handler
        )
        return handler

    return register


def execute(daemon: Supervisor, name: str, raw_args: Any, waiter: Waiter) -> None:
    """Run one command for ``waiter``; errors become error replies."""
    command = REGISTRY.get(name)
    if command is None:
        raise ReplyError(
            "unknown_command", f"unknown command {name!r}; known: " + ", ".join(sorted(REGISTRY))
        )
    result = command.handler(daemon, command.parse(raw_args), waiter)
    if result is not LATER:
        waiter.reply(result)


def reference(command: ControlCommand) -> str:
    """The start of the command's section of docs/protocol.md: its doc, then its arguments."""
    if not command.args:
        return f"#### `{command.name}`\n\n{command.doc}\n\nArguments: none."
    rows = [
        f"| `{arg.name}` | {_TYPE_NAMES[arg.type]} | `{_json_literal(arg.default)}` | {arg.doc} |"
        for arg in command.args
    ]
    table = "\n".join(["| argument | type | default | meaning |", "|---|---|---|---|", *rows])
    return f"#### `{command.name}`\n\n{command.doc}\n\n{table}"


def plain(markdown: str) -> str:
    """Documentation text for a terminal: without markdown's backticks."""
    return markdown.replace("`", "")


def _json_literal(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _is_type(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _post(daemon: Supervisor, waiter: Waiter, action: Action, reason: str, **fields: Any) -> Any:
    """Hand the command to the arbiter as a request; it answers ``waiter``."""
    daemon.post(Request(action, Origin.CONTROL, reason, reply_to=waiter, **fields))
    return LATER


@control_command("ping")
def ping(daemon: Supervisor, args: dict[str, Any], waiter: Waiter) -> Any:
    """Liveness check."""
    return {
        "pong": True,
        "version": __version__,
        "pid": os.getpid(),
        "job": daemon.job_name,
        "endpoints": daemon.endpoints,
    }


@control_command(
    "checkpoint", Arg("wait", bool, False, "reply only when the checkpoint committed or failed")
)
def checkpoint(daemon: Supervisor, args: dict[str, Any], waiter: Waiter) -> Any:
    """Ask the job for a checkpoint. A request while another is in flight joins it (one save
    answers both)."""
    return _post(daemon, waiter, Action.CHECKPOINT, "control", wait=args["wait"])


@control_command(
    "stop",
    Arg("checkpoint", bool, True, "`false`: stop without a final checkpoint"),
    Arg("wait", bool, False, "reply only when the job has stopped"),
)
def stop(daemon: Supervisor, args: dict[str, Any], waiter: Waiter) -> Any:
    """Final checkpoint, then stop the job without restart; the daemon exits afterwards."""
    return _post(daemon, waiter, Action.STOP, "control", wait=args["wait"], save=args["checkpoint"])


@control_command("restart")
def restart(daemon: Supervisor, args: dict[str, Any], waiter: Waiter) -> Any:
    """Final checkpoint, then relaunch the job from it at once. Not counted against
    `max_restarts`."""
    return _post(daemon, waiter, Action.RESTART, "restart")


@control_command(
    "rollback",
    Arg("step", int, None, "the step of the checkpoint to go back to", flag="step"),
)
def rollback(daemon: Supervisor, args: dict[str, Any], waiter: Waiter) -> Any:
    """Final checkpoint of the current state, then a relaunch from the checkpoint of `step`;
    every newer checkpoint is set aside, never deleted."""
    if args["step"] is None or args["step"] < 0:
        raise ReplyError("bad_arguments", "rollback: step must be a non-negative integer")
    return daemon.control_rollback(args["step"])


@control_command("status")
def status(daemon: Supervisor, args: dict[str, Any], waiter: Waiter) -> Any:
    """State, pid, attempt, step, last checkpoint and unsaved work: what a crash now would
    cost."""
    return daemon.status()


@control_command("list")
def list_checkpoints(daemon: Supervisor, args: dict[str, Any], waiter: Waiter) -> Any:
    """The checkpoints on disk, as the daemon sees them."""
    return daemon.checkpoints()


@control_command("config")
def config(daemon: Supervisor, args: dict[str, Any], waiter: Waiter) -> Any:
    """The effective configuration of the job (after file and flags)."""
    return daemon.effective_config()
