"""The command registry: each command's name, arguments, documentation and handler in one place.

``cli/main.py`` builds its parser from this table; docs/commands.md's command list
is checked against it. The commands that talk to a daemon are made from the control
registry (``cli/remote.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckptd import config as config_module
from ckptd import exit_codes, strict_json
from ckptd.run_dir import JOB_FILE, NotRegularFile, read_regular
from ckptd.storage import branches
from ckptd.storage.branches import BRANCHES_DIR
from ckptd.storage.memory import expected_path
from ckptd.storage.node_parts import part_of
from ckptd.storage.remote import listing as remote_listing
from ckptd_client.store import Checkpoint, inspect, scan

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Handler
    description: str | None = None  # ``ckptd NAME --help``; None: the summary


REGISTRY: dict[str, Command] = {}


def command(
    name: str,
    summary: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    description: str | None = None,
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        REGISTRY[name] = Command(name, summary, add_arguments, handler, description)
        return handler

    return register


class CommandError(Exception):
    """A one-line error for the user; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = exit_codes.USAGE) -> None:
        super().__init__(message)
        self.code = code


# -- run ---------------------------------------------------------------------------------


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML file with a [job] table")
    parser.add_argument(
        "--resume-from",
        metavar="STEP|PATH",
        help="start from this checkpoint (verified) instead of the newest; newer ones are set "
        "aside under checkpoint_dir/.branches/<time>/, and the remote's under its .branches/ "
        "(a branch's checkpoint is brought back)",
    )
    for option in config_module.JOB_OPTIONS:
        if option.key == "command":
            continue
        parser.add_argument(
            option.flag,
            dest=option.key,
            metavar=option.key.upper(),
            type=_flag_type(option),
            action="append" if option.key == "env" else "store",
            help=f"{option.help} [{option.kind.describe}]",
        )


def _flag_type(option: config_module.Option) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return option.kind.parse_text(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = option.key
    return parse


@command(
    "run",
    "supervise one job in the foreground: ckptd run [OPTIONS] -- CMD [ARGS...]",
    _run_arguments,
)
def run(args: argparse.Namespace) -> int:
    from ckptd import log
    from ckptd.cli import preflight
    from ckptd.supervisor import daemon

    flags = {o.key: getattr(args, o.key, None) for o in config_module.JOB_OPTIONS}
    if flags["env"]:
        flags["env"] = {k: v for pair in flags["env"] for k, v in pair.items()}
    flags["command"] = args.command or None
    try:
        job = config_module.load(args.config, flags)
        preflight.check(job)
    except config_module.ConfigError as exc:
        raise CommandError(f"config error: {exc}") from None
    if args.resume_from:
        job = _with_resume_from(job, args.resume_from)
    log.configure()
    return daemon.supervise(job)


def _with_resume_from(job: config_module.JobConfig, value: str) -> config_module.JobConfig:
    """The job with ``--resume-from`` resolved to a checkpoint path that exists (else exit 2)."""
    target = branches.target_of(job.checkpoint_dir, value)
    try:
        branches.check_target(target)
    except branches.GoBackError as exc:
        raise CommandError(f"--resume-from: {exc}") from None
    return dataclasses.replace(job, resume_from=str(target))


# -- list / verify -----------------------------------------------------------------------


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    _run_dir_argument(parser)
    parser.add_argument(
        "dir",
        nargs="?",
        help="a checkpoint directory (instead of --run-dir), or a remote store's URL "
        "(s3://bucket/prefix, gs://, az://, any fsspec URL)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also check every file's digest (a remote checkpoint is downloaded to a temporary "
        "directory)",
    )
    _key_argument(parser)
    parser.add_argument(
        "--all",
        action="store_true",
        help="also the checkpoints set aside by --resume-from and rollback (.branches/, in a "
        "remote store too)",
    )


@command("list", "checkpoints: name, step, time, size, metrics, valid", _list_arguments)
def list_checkpoints(args: argparse.Namespace) -> int:
    verifier = _verifier(args)
    verdicts: dict[Path, Any] = {}
    tiers: dict[Path, str] = {}  # with a memory tier: which tier each checkpoint is in
    if remote_listing.is_remote(args.dir):
        judge = _judge(verifier, verdicts)
        full = args.verify or verifier is not None  # a signature is checked on a download
        directory, found = args.dir, _remote(remote_listing.scan_remote, args.dir, full, judge)
        aside: list[tuple[str, Any]] = []
        if args.all:
            aside = _remote(remote_listing.scan_remote_branches, args.dir, full, judge)
    else:
        run_dir = None if args.dir else find_run_dir(args.run_dir)
        directory = Path(args.dir) if run_dir is None else checkpoint_dir_of(run_dir)
        found = scan(directory, full=args.verify)
        if run_dir is not None and (ram := memory_dir_of(run_dir, directory)) is not None:
            found, tiers = _with_memory_tier(found, scan(ram, full=args.verify))
        aside = branches.branch_checkpoints(directory, full=args.verify) if args.all else []
    branch_of = {c.path: name for name, c in aside}
    found += [c for _, c in aside]
    if verifier is not None and remote_listing.is_remote(args.dir):
        verdicts = {c.path: verdicts.get(c.path) or _not_downloaded(c) for c in found}
    elif verifier is not None:
        verdicts = {c.path: verifier.check(c.path) for c in found}
    parts = {} if remote_listing.is_remote(args.dir) else {c.path: part_of(c) for c in found}
    if args.json:
        tier_of = (lambda c: {"tier": tiers.get(c.path, "disk")}) if tiers else (lambda c: {})
        strict_json.print_json(
            [
                _listed(
                    {
                        **_with_branch(
                            _with_signature(c.to_json(), verdicts.get(c.path)), branch_of, c
                        ),
                        **tier_of(c),
                    },
                    parts.get(c.path),
                )
                for c in found
            ]
        )
        return exit_codes.OK
    if not found:
        print(f"no checkpoints in {directory}")
        return exit_codes.OK
    signed = ("SIGNATURE",) if verifier else ()
    tier = ("TIER",) if tiers else ()
    ranks = any(parts.values())  # a multi-node job's directory: which ranks' parts each holds
    rank_column = ("RANKS",) if ranks else ()
    rows = [("NAME", "STEP", "TIME", "SIZE", "VALID", *signed, *tier, *rank_column, "METRICS")]
    for c in found:
        verdict = verdicts.get(c.path)
        rows.append(
            (
                f"{BRANCHES_DIR}/{branch_of[c.path]}/{c.name}" if c.path in branch_of else c.name,
                str(c.step),
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.time)) if c.time else "-",
                human_bytes(c.bytes),
                "yes" if c.valid else f"NO ({c.reason})",
                *((verdict.text(),) if verdict is not None else ()),
                *((tiers.get(c.path, "disk"),) if tiers else ()),
                *((_ranks_text(parts.get(c.path)),) * ranks),
                " ".join(f"{k}={_metric_text(v)}" for k, v in sorted(c.metrics.items())),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = (cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True))
        print("  ".join(cells) + "  " + row[-1])
    return exit_codes.OK


def _listed(listed: dict[str, Any], part: dict[str, Any] | None) -> dict[str, Any]:
    """A checkpoint's JSON, with the ranks' parts it holds when a multi-node job wrote it."""
    return {**listed, **({"part": part} if part else {})}


def _ranks_text(part: dict[str, Any] | None) -> str:
    """``all 4`` for a whole-job step; ``0-1 of 4`` for one node's part."""
    if not part:
        return "-"
    if part["complete"]:
        return f"all {part['world_size']}"
    held = part["ranks"]
    shown = (
        f"{held[0]}-{held[-1]}"
        if len(held) > 1 and held == list(range(held[0], held[-1] + 1))
        else ", ".join(map(str, held))
    )
    return f"{shown} of {part['world_size']}"


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        help="one checkpoint directory, or a remote one's URL (s3://bucket/prefix/step-N, "
        "gs://, az://, any fsspec URL)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    _key_argument(parser)


@command(
    "verify",
    "check one checkpoint against its manifest (exit 1 if it does not verify)",
    _verify_arguments,
)
def verify(args: argparse.Namespace) -> int:
    verifier = _verifier(args)
    verdicts: dict[Path, Any] = {}
    if remote_listing.is_remote(args.path):
        judge = _judge(verifier, verdicts)
        checked = _remote(remote_listing.inspect_remote, args.path, judge)
    else:
        checked = inspect(Path(args.path), full=True)
    verdict = None
    if verifier is not None and remote_listing.is_remote(args.path):
        verdict = verdicts.get(checked.path) or _not_downloaded(checked)
    elif verifier is not None:
        verdict = verifier.check(checked.path)
    good = checked.valid and (verdict is None or verdict.ok)
    if args.json:
        strict_json.print_json(_with_signature(checked.to_json(), verdict))
    elif not checked.valid:
        print(f"invalid: {checked.path}: {checked.reason}")
    elif verdict is not None and not verdict.ok:
        print(f"invalid: {checked.path}: signature {verdict.text()}")
    else:
        signed = f", signed-ok by {verifier.fingerprint}" if verifier else ""
        print(f"ok: {checked.path} (step {checked.step}, {human_bytes(checked.bytes)}{signed})")
    return exit_codes.OK if good else exit_codes.FAILED


def _key_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key",
        metavar="PUB",
        help="also check each checkpoint's model.sig against this PEM public key "
        "(signed-ok, unsigned, mismatch; a remote one is downloaded to a temporary directory)",
    )


def _verifier(args: argparse.Namespace) -> Any:
    """The Verifier of ``--key``; None without it. A key that cannot be used: exit 2."""
    if not args.key:
        return None
    from ckptd import integrity

    try:
        return integrity.Verifier(Path(args.key))
    except (integrity.KeyProblem, integrity.SigningUnavailable) as exc:
        raise CommandError(f"--key: {exc}") from None


def _judge(verifier: Any, verdicts: dict[Path, Any]) -> Callable[[Path, Path], None] | None:
    """What checks each downloaded remote copy's signature into ``verdicts`` (by remote path)."""
    if verifier is None:
        return None

    def judge(where: Path, copy: Path) -> None:
        verdicts[where] = verifier.check(copy)

    return judge


def _not_downloaded(checkpoint: Any) -> Any:
    """The signature verdict on a remote checkpoint that did not verify (never downloaded)."""
    from ckptd import integrity

    reason = f"checkpoint: {checkpoint.reason or 'not checked'}"
    return integrity.Verdict(integrity.SignatureStatus.MISMATCH, reason)


def _with_branch(record: dict[str, Any], branch_of: dict[Path, str], c: Any) -> dict[str, Any]:
    """``branch``: the ``.branches/`` entry a set-aside checkpoint is in (None: not set aside)."""
    return {**record, "branch": branch_of.get(c.path)} if branch_of else record


def _with_signature(record: dict[str, Any], verdict: Any) -> dict[str, Any]:
    if verdict is None:
        return record
    return {**record, "signature": {"status": verdict.status.value, "reason": verdict.reason}}


# -- helpers -----------------------------------------------------------------------------


def _remote(function: Callable[..., Any], *args: Any) -> Any:
    try:
        return function(*args)
    except remote_listing.RemoteListingError as exc:
        raise CommandError(str(exc)) from None


def _run_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-dir",
        metavar="D",
        help="the job's run directory (default: the only job under .ckptd/)",
    )


def find_run_dir(given: str | None) -> Path:
    if given:
        path = Path(given)
        if not path.is_dir():
            raise CommandError(f"no run directory at {path}")
        return path
    root = Path(".ckptd")
    jobs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if len(jobs) == 1:
        return jobs[0]
    if not jobs:
        raise CommandError("no job under .ckptd/ here; give --run-dir")
    raise CommandError(
        f"several jobs under .ckptd/ ({', '.join(p.name for p in jobs)}); give --run-dir"
    )


def checkpoint_dir_of(run_dir: Path) -> Path:
    """The checkpoint directory a daemon recorded in its run directory."""
    try:
        recorded = strict_json.loads(read_regular(run_dir / JOB_FILE))
        return Path(recorded["checkpoint_dir"])
    except NotRegularFile as exc:
        raise CommandError(str(exc)) from None
    except (OSError, ValueError, KeyError, TypeError):
        raise CommandError(f"{run_dir} has no job.json; give the checkpoint directory") from None


def memory_dir_of(run_dir: Path, checkpoint_dir: Path) -> Path | None:
    """The memory tier's directory of the job recorded in ``run_dir``; None without one (or
    when it is gone, or a link)."""
    try:
        recorded = strict_json.loads(read_regular(run_dir / JOB_FILE))
        if not recorded.get("memory_every"):
            return None
        named = recorded.get("memory_dir")
        path = expected_path(
            str(recorded["name"]), checkpoint_dir, Path(named) if named else None
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError, AttributeError, NotRegularFile):
        return None
    return path if path is not None and path.is_dir() and not path.is_symlink() else None


def _with_memory_tier(
    on_disk: list[Checkpoint], in_ram: list[Checkpoint]
) -> tuple[list[Checkpoint], dict[Path, str]]:
    """Both tiers' checkpoints, oldest step first (disk before RAM), and each one's tier."""
    tiers = {**{c.path: "memory" for c in in_ram}, **{c.path: "disk" for c in on_disk}}
    return sorted([*on_disk, *in_ram], key=lambda c: (c.step, tiers[c.path])), tiers


def _metric_text(value: Any) -> str:
    """A metric as a person reads it: six significant digits for a float (``0.0170001``)."""
    if isinstance(value, float):
        return format(value, ".6g")
    if isinstance(value, (str, int)):
        return str(value)
    return strict_json.dumps(value, default=str)


def human_bytes(size: int) -> str:
    """``512 B``, ``1.5 KiB``, ``3.2 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
