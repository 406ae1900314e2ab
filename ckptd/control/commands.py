"""The control commands: each one's name, arguments, documentation and handler, in one place.

This registry serves the control socket and the CLI, and ``docs/protocol.md``
is checked against it. A handler either answers at once (returns a result) or
keeps the waiter and answers later (returns :data:`LATER`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckptd import __version__
from ckptd.control.server import ReplyError, Waiter

if TYPE_CHECKING:
    from ckptd.supervisor.arbiter import Arbiter

LATER = object()


@dataclass(frozen=True)
class Arg:
    name: str
    type: type
    default: Any
    doc: str


@dataclass(frozen=True)
class ControlCommand:
    name: str
    doc: str
    args: tuple[Arg, ...]
    handler: Callable[[Arbiter, dict[str, Any], Waiter], Any]

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


def control_command(name: str, doc: str, *args: Arg) -> Callable[..., Any]:
    def register(handler: Callable[[Arbiter, dict[str, Any], Waiter], Any]) -> Any:
        REGISTRY[name] = ControlCommand(name, doc, args, handler)
        return handler

    return register


def execute(arbiter: Arbiter, name: str, raw_args: Any, waiter: Waiter) -> None:
    """Run one command for ``waiter``; errors become error replies."""
    command = REGISTRY.get(name)
    if command is None:
        raise ReplyError(
            "unknown_command", f"unknown command {name!r}; known: " + ", ".join(sorted(REGISTRY))
        )
    result = command.handler(arbiter, command.parse(raw_args), waiter)
    if result is not LATER:
        waiter.reply(result)


def _is_type(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


@control_command("ping", "Liveness check. Result: version, pid, job name, endpoints.")
def ping(arbiter: Arbiter, args: dict[str, Any], waiter: Waiter) -> Any:
    return {
        "pong": True,
        "version": __version__,
        "pid": os.getpid(),
        "job": arbiter.config.name,
        "endpoints": arbiter.endpoints,
    }


@control_command(
    "checkpoint",
    "Ask the job for a checkpoint. Joins one already in flight. Without wait the result is "
    "{request_id, coalesced_into}; with wait the reply comes once it committed (request_id, "
    "path, step, metrics, bytes, seconds) or failed (error code checkpoint_failed).",
    Arg("wait", bool, False, "reply only when the checkpoint committed or failed"),
)
def checkpoint(arbiter: Arbiter, args: dict[str, Any], waiter: Waiter) -> Any:
    return arbiter.control_checkpoint(waiter if args["wait"] else None)


@control_command(
    "stop",
    "Final checkpoint, then stop the job without restart; ckptd exits. Result: {stopping: "
    "true}; with wait the reply comes when the job has stopped (final_checkpoint, exit_code).",
    Arg("checkpoint", bool, True, "false: stop without a final checkpoint"),
    Arg("wait", bool, False, "reply only when the job has stopped"),
)
def stop(arbiter: Arbiter, args: dict[str, Any], waiter: Waiter) -> Any:
    return arbiter.control_stop(args["checkpoint"], waiter if args["wait"] else None)


@control_command(
    "restart",
    "Final checkpoint, then relaunch the job from it (not counted as a failure). Result: "
    "{restarting: true}.",
)
def restart(arbiter: Arbiter, args: dict[str, Any], waiter: Waiter) -> Any:
    return arbiter.control_restart()


@control_command(
    "rollback",
    "Final checkpoint of the current state, then relaunch the job from checkpoint step; every "
    "newer checkpoint (that final one included) is set aside under .branches/<time>/, never "
    "deleted. Result: {rolling_back: true, step, path}.",
    Arg("step", int, None, "the step of the checkpoint to go back to"),
)
def rollback(arbiter: Arbiter, args: dict[str, Any], waiter: Waiter) -> Any:
    if args["step"] is None or args["step"] < 0:
        raise ReplyError("bad_arguments", "rollback: step must be a non-negative integer")
    return arbiter.control_rollback(args["step"])


@control_command(
    "status",
    "State, pid, attempt, restarts left, step, last checkpoint and its age, unsaved steps and "
    "seconds, seconds to the next periodic checkpoint, uptime.",
)
def status(arbiter: Arbiter, args: dict[str, Any], waiter: Waiter) -> Any:
    return arbiter.status()


@control_command("list", "The checkpoints on disk: name, path, step, time, bytes, metrics, valid.")
def list_checkpoints(arbiter: Arbiter, args: dict[str, Any], waiter: Waiter) -> Any:
    return arbiter.checkpoints()


@control_command("config", "The effective configuration of the job (after file and flags).")
def config(arbiter: Arbiter, args: dict[str, Any], waiter: Waiter) -> Any:
    return arbiter.effective_config()
