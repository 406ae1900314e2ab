"""CLI commands that talk to a running daemon over its control socket.

``checkpoint``, ``stop``, ``restart`` and ``status`` are the control commands of
``ckptd.control.commands``: their help and flags come from that registry; here is only
how each shows its result.

Exit codes: 0 success, 1 the operation failed (e.g. the checkpoint failed),
2 usage or connection error, 3 timeout. Every error is one line.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ckptd import exit_codes, strict_json
from ckptd.cli import status_text
from ckptd.cli.commands import CommandError, command, find_run_dir
from ckptd.control.commands import REGISTRY as CONTROL_COMMANDS
from ckptd.control.commands import plain
from ckptd_client.control import ControlError, Controller, ControlTimeout, endpoints_of

TIMEOUT = 3
Show = Callable[[argparse.Namespace, Any], int]  # a daemon's result -> output, exit status
_SYSTEM_ROOT = Path("/var/lib/ckptd")


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--run-dir", metavar="D", help="the job's run directory")
    where.add_argument(
        "--job", metavar="NAME", help="the job named NAME (under ./.ckptd/, else /var/lib/ckptd/)"
    )
    where.add_argument("--endpoint", metavar="URL", help="a TCP control endpoint")
    parser.add_argument("--server-key", metavar="FILE", help="the daemon's public key (CURVE)")
    parser.add_argument("--client-key", metavar="FILE", help="your .key_secret file (CURVE)")
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="give up after S seconds (exit 3)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def connect(args: argparse.Namespace) -> Controller:
    """A Controller for the daemon the arguments name; CommandError when there is none."""
    keys = {"server_key": args.server_key, "client_key": args.client_key}
    try:
        if args.endpoint:
            return Controller(endpoint=args.endpoint, **keys)
        run_dir = _locate(args)
        control = endpoints_of(run_dir)["control"]
        if control.startswith("ipc://") and not Path(control[6:]).exists():
            raise CommandError(f"no ckptd is running for {run_dir} (no socket at {control[6:]})")
        return Controller(run_dir=run_dir, **keys)
    except (ControlError, KeyError) as exc:
        raise CommandError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot connect: {exc}") from None


def _locate(args: argparse.Namespace) -> Path:
    if args.job:
        for root in (Path(".ckptd"), _SYSTEM_ROOT):
            if (root / args.job).is_dir():
                return root / args.job
        raise CommandError(f"no job {args.job!r} under ./.ckptd/ or {_SYSTEM_ROOT}/")
    return find_run_dir(args.run_dir)


def call(args: argparse.Namespace, name: str, **kwargs: Any) -> Any:
    controller = connect(args)
    limit = args.timeout if args.timeout is not None else (math.inf if kwargs.get("wait") else 10.0)
    try:
        return controller.call(name, timeout=limit, **kwargs)
    except ControlTimeout as exc:
        raise CommandError(f"{exc}; {_no_answer_hint(args)}", TIMEOUT) from None
    except ControlError as exc:
        code = (
            exit_codes.FAILED if exc.code in ("checkpoint_failed", "failed") else exit_codes.USAGE
        )
        raise CommandError(f"{exc} [{exc.code}]", code) from None
    finally:
        controller.close()


def _no_answer_hint(args: argparse.Namespace) -> str:
    if args.client_key:  # with CURVE, a daemon that does not know the key stays silent
        public = Path(args.client_key).with_suffix(".key")
        return (
            "the daemon may be down, or may not know your key: is your public key "
            f"({public}) in its curve_authorized_keys?"
        )
    return "is the daemon running? (ckptd status)"


def _print(args: argparse.Namespace, result: Any, human: str) -> int:
    if args.json:
        strict_json.print_json(result, default=str)
    else:
        print(human)
    return exit_codes.OK


def _daemon_command(name: str) -> Callable[[Show], Show]:
    """``ckptd NAME`` from control command NAME: its help and flags come from the registry; the
    decorated function shows the daemon's result and returns the exit status."""
    control = CONTROL_COMMANDS[name]

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        _target_arguments(parser)
        for arg in control.args:
            if arg.type is bool:
                store = "store_false" if arg.default else "store_true"
                parser.add_argument(arg.cli_flag, dest=arg.name, action=store, help=arg.cli_help)
            elif not arg.cli_flag.startswith("-"):  # a positional argument, named as its flag
                parser.add_argument(arg.cli_flag, type=arg.type, help=arg.cli_help)
            else:
                parser.add_argument(
                    arg.cli_flag, dest=arg.name, type=arg.type, default=arg.default,
                    help=arg.cli_help,
                )  # fmt: skip

    def register(show: Show) -> Show:
        def handler(args: argparse.Namespace) -> int:
            values = {arg.name: getattr(args, arg.name) for arg in control.args}
            return show(args, call(args, name, **values))

        command(name, control.summary, add_arguments, description=plain(control.doc))(handler)
        return show

    return register


@_daemon_command("checkpoint")
def checkpoint(args: argparse.Namespace, result: Any) -> int:
    if args.wait and "path" in result:
        human = (
            f"committed step {result['step']}: {result['path']} "
            f"({result.get('bytes')} bytes in {result.get('seconds')} s)"
        )
    elif "forwarded" in result:
        human = f"forwarded to the job as {result['forwarded']}"
    else:
        joined = result.get("coalesced_into")
        human = f"requested {result['request_id']}" + (f" (joins {joined})" if joined else "")
    return _print(args, result, human)


@_daemon_command("stop")
def stop(args: argparse.Namespace, result: Any) -> int:
    if args.wait:
        saved = "yes" if result.get("final_checkpoint") else "no"
        human = f"stopped; final checkpoint: {saved}; ckptd exit code {result.get('exit_code')}"
        _print(args, result, human)
        return exit_codes.OK if result.get("exit_code") == 0 else exit_codes.FAILED
    return _print(args, result, "stopping")


@_daemon_command("restart")
def restart(args: argparse.Namespace, result: Any) -> int:
    return _print(args, result, "restarting")


@_daemon_command("rollback")
def rollback(args: argparse.Namespace, result: Any) -> int:
    return _print(args, result, f"rolling back to {result.get('path')}")


@_daemon_command("status")
def status(args: argparse.Namespace, result: Any) -> int:
    return _print(args, result, status_text.render(result))


@command("events", "follow the live event stream (ends when ckptd exits)", _target_arguments)
def events(args: argparse.Namespace) -> int:
    controller = connect(args)
    try:
        for event in controller.events(timeout=args.timeout):
            if args.json:
                strict_json.print_json(event, indent=None)
                sys.stdout.flush()
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(event.get("time", 0)))
                extra = " ".join(
                    f"{k}={v}"
                    for k, v in event.items()
                    if k not in ("time", "event", "job", "v") and v is not None
                )
                print(f"{stamp} {event.get('event')} {extra}", flush=True)
            if event.get("event") == "ckptd.exiting":
                break
    except ControlError as exc:
        raise CommandError(str(exc)) from None
    finally:
        controller.close()
    return exit_codes.OK


def _keygen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="where to write NAME.key and NAME.key_secret")
    parser.add_argument("--name", default="ckptd", help="file name stem (default: ckptd)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing key pair (clients that know its public key stop working)",
    )


@command("keygen", "write a CURVE key pair for the TCP control socket", _keygen_arguments)
def keygen(args: argparse.Namespace) -> int:
    from ckptd.control.keys import KeyPairExists, write_key_pair

    if not args.name or "/" in args.name or args.name.startswith("."):
        raise CommandError(f"--name {args.name!r}: a plain file name stem, like ckptd")
    try:
        public, secret = write_key_pair(Path(args.directory), args.name, force=args.force)
    except KeyPairExists as exc:
        raise CommandError(
            f"{exc.filename} exists; --force replaces the key pair (whoever uses the old one "
            "is locked out)"
        ) from None
    except OSError as exc:
        raise CommandError(f"cannot write the key pair: {exc.strerror or exc}") from None
    print(f"public key: {public}\nsecret key: {secret} (0600: keep it private)")
    return exit_codes.OK
