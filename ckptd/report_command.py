"""``ckptd report``: the job's history and goodput as one HTML page (needs no daemon)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import psutil

from . import exit_codes
from .commands import CommandError, command, find_run_dir
from .goodput import account
from .history import read_events
from .report import render
from .run_dir import EVENTS_FILE, JOB_FILE

_SYSTEM_ROOT = Path("/var/lib/ckptd")


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--run-dir", metavar="D", help="the job's run directory")
    where.add_argument(
        "--job", metavar="NAME", help="the job named NAME (under ./.ckptd/, else /var/lib/ckptd/)"
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="where to write the page (default: ./<job>-report.html; - for stdout)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the goodput numbers as JSON instead"
    )


@command(
    "report",
    "write one self-contained HTML page: timeline of attempts, checkpoints, lost work, goodput",
    _report_arguments,
)
def report(args: argparse.Namespace) -> int:
    run_dir = _locate(args.run_dir, args.job)
    events = run_dir / EVENTS_FILE
    try:
        records = read_events(events)
    except FileNotFoundError:
        raise CommandError(f"no {EVENTS_FILE} in {run_dir} (has `ckptd run` used it?)") from None
    except OSError as exc:
        raise CommandError(f"cannot read {events}: {exc.strerror}") from None
    now = time.time()
    accounting = account(records, now if _daemon_alive(run_dir) else None)
    job = _job_name(run_dir, records)
    if args.json:
        print(json.dumps({"job": job, **accounting.goodput.to_json()}, indent=2))
        return exit_codes.OK
    page = render(accounting, job, generated=now)
    output = args.output or f"{job}-report.html"
    if output == "-":
        sys.stdout.write(page)
        return exit_codes.OK
    try:
        Path(output).write_text(page, encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot write {output}: {exc.strerror}") from None
    g = accounting.goodput
    print(
        f"wrote {output}: goodput {g.ratio * 100:.1f}% of {g.wall / 3600:.2f} h, "
        f"{g.attempts} launch(es), {g.failures} failure(s), {g.checkpoints} checkpoint(s)"
    )
    return exit_codes.OK


def _locate(run_dir: str | None, job: str | None) -> Path:
    if job:
        for root in (Path(".ckptd"), _SYSTEM_ROOT):
            if (root / job).is_dir():
                return root / job
        raise CommandError(f"no job {job!r} under ./.ckptd/ or {_SYSTEM_ROOT}/")
    return find_run_dir(run_dir)


def _job_name(run_dir: Path, records: list[dict[str, object]]) -> str:
    try:
        name = json.loads((run_dir / JOB_FILE).read_text()).get("name")
        if isinstance(name, str) and name:
            return name
    except (OSError, ValueError, AttributeError):
        pass
    named = [r["job"] for r in records if isinstance(r.get("job"), str)]
    return str(named[-1]) if named else run_dir.name


def _daemon_alive(run_dir: Path) -> bool:
    """A daemon runs on ``run_dir`` now (then its job's open attempt is live, not lost)."""
    try:
        fd = os.open(run_dir / "daemon.lock", os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as handle:
            holder = json.loads(handle.read() or "{}")
        pid, since = holder.get("daemon_pid"), holder.get("since")
    except (OSError, ValueError, AttributeError):
        return False
    if not isinstance(pid, int) or not isinstance(since, (int, float)) or pid == os.getpid():
        return False
    try:  # the record outlives its daemon: a pid reused since then is someone else
        return bool(psutil.Process(pid).create_time() <= since + 1.0)
    except psutil.Error:
        return False
