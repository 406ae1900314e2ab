"""Command line: parse, dispatch to the command registry. No logic of its own."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from ckptd import exit_codes, redaction
from ckptd.cli import commands
from ckptd.cli import remote as _remote_commands  # noqa: F401 - importing registers them
from ckptd.cli import report as _report_command  # noqa: F401 - importing registers it

BROKEN_PIPE = 128 + signal.SIGPIPE  # the status a shell shows for `ls | head`'s ls
TRACEBACK_VARIABLE = "CKPTD_TRACEBACK"  # set: an internal error shows its traceback


class _Parser(argparse.ArgumentParser):
    """Errors are one line that says what to do, not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(exit_codes.USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ckptd",
        description="Supervise ML training: checkpoint on request, "
        "final save on SIGTERM, resume from the newest valid checkpoint.",
    )
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for command in commands.REGISTRY.values():
        command.add_arguments(
            sub.add_parser(
                command.name,
                help=command.summary,
                description=command.description or command.summary,
            )
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _dispatch(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:
        # The reader went away (`ckptd list | head`): end quietly, as a program killed by
        # SIGPIPE would. Python flushes stdout again at exit, so it goes to /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE


def _dispatch(argv: list[str]) -> int:
    job_command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, job_command = argv[:split], argv[split + 1 :]
    parser = build_parser()
    args = parser.parse_args(_attach_dashed_values(parser, argv))
    args.command = job_command
    try:
        code = commands.REGISTRY[args.command_name].handler(args)
    except commands.CommandError as exc:
        print(f"ckptd {args.command_name}: {redaction.scrub(str(exc))}", file=sys.stderr)
        code = exc.code
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        raise  # the reader went away: main() ends quietly
    except Exception as exc:  # a bug: one line for the user, the traceback when asked for
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        detail = str(exc).splitlines()[0][:300] if str(exc) else ""
        print(
            f"ckptd {args.command_name}: internal error: {type(exc).__name__}: {detail} "
            f"(a bug: {TRACEBACK_VARIABLE}=1 shows where; please report it)",
            file=sys.stderr,
        )
        code = exit_codes.FAILED
    sys.stdout.flush()  # a closed pipe shows here, not in the flush at interpreter exit
    return code


def _attach_dashed_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--every -5s`` becomes ``--every=-5s``.

    argparse takes a value that starts with ``-`` (and is not a plain number) for an
    option and says only "expected one argument"; attached, the value reaches its own
    check, whose message says what is wrong with it.
    """
    sub = next(
        (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None
    )  # argparse keeps its subcommands here; there is no public way to reach them
    command = sub.choices.get(argv[0]) if sub is not None and argv else None
    if command is None:
        return argv
    options = command._option_string_actions
    joined: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        action = options.get(arg)
        following = argv[index + 1] if index + 1 < len(argv) else None
        if (
            action is not None
            and action.nargs is None
            and following is not None
            and following.startswith("-")
            and following not in options
        ):
            joined.append(f"{arg}={following}")
            index += 2
            continue
        joined.append(arg)
        index += 1
    return joined


if __name__ == "__main__":
    sys.exit(main())
