"""``ckptd report``: the job's history and goodput as one HTML page (needs no daemon)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from ckptd import exit_codes, strict_json
from ckptd.cli.commands import CommandError, command, find_run_dir
from ckptd.reporting.goodput import account
from ckptd.reporting.history import read_events
from ckptd.reporting.html import render
from ckptd.run_dir import EVENTS_FILE, JOB_FILE, NotRegularFile, open_regular, read_regular

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
    "write one self-contained HTML page: timeline of attempts, checkpoints, lost work, "
    "goodput, the loss and checkpoint metrics over steps",
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
    recorded = _job_record(run_dir)
    job = _job_name(run_dir, recorded, records)
    best = _ranking(recorded)
    if args.json:
        strict_json.print_json({"job": job, **accounting.goodput.to_json()})
        return exit_codes.OK
    page = render(accounting, job, generated=now, every=recorded.get("every"), best=best)
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


def _job_record(run_dir: Path) -> dict[str, Any]:
    """The configuration the last daemon recorded (``job.json``); empty when unreadable."""
    try:
        recorded = strict_json.loads(read_regular(run_dir / JOB_FILE))
    except NotRegularFile as exc:
        raise CommandError(str(exc)) from None
    except (OSError, ValueError, RecursionError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _ranking(recorded: dict[str, Any]) -> tuple[str, str] | None:
    """The ``(metric, mode)`` that ranks checkpoints: ``best_metric``, else ``[guard] monitor``."""
    guard = recorded.get("guard")
    guard = guard if isinstance(guard, dict) else {}
    for metric, mode in (
        (recorded.get("best_metric"), recorded.get("best_mode")),
        (guard.get("monitor"), guard.get("mode")),
    ):
        if isinstance(metric, str) and metric:
            return metric, mode if mode in ("min", "max") else "min"
    return None


def _job_name(run_dir: Path, recorded: dict[str, Any], records: list[dict[str, Any]]) -> str:
    name = recorded.get("name")
    if isinstance(name, str) and name:
        return name
    named = [r["job"] for r in records if isinstance(r.get("job"), str)]
    return str(named[-1]) if named else run_dir.name


def _daemon_alive(run_dir: Path) -> bool:
    """A daemon runs on ``run_dir`` now (then its job's open attempt is live, not lost)."""
    try:
        with os.fdopen(open_regular(run_dir / "daemon.lock")) as handle:
            holder = strict_json.loads(handle.read(4096) or "{}")
        pid, since = holder.get("daemon_pid"), holder.get("since")
    except NotRegularFile as exc:
        raise CommandError(str(exc)) from None
    except (OSError, ValueError, AttributeError):
        return False
    if not isinstance(pid, int) or not isinstance(since, (int, float)) or pid == os.getpid():
        return False
    try:  # the record outlives its daemon: a pid reused since then is someone else
        return bool(psutil.Process(pid).create_time() <= since + 1.0)
    except psutil.Error:
        return False
