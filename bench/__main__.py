"""ckptd's benchmark suite: ``python -m bench`` (about ten minutes on 2 cores).

Separate scenarios with their own commands: ``python -m bench.frameworks`` (callbacks),
``python -m bench.ranks`` (torchrun), ``python -m bench.spot`` (goodput on a spot schedule).

Prints one table, writes ``bench/results.json`` and ``docs/benchmarks.md`` (which name the
commit that ran and the machine's load). ``--quick`` runs every row with tiny sizes (the
test suite's smoke test), writing only to ``--out``. ``python -m bench.commit_probe``
profiles the commit row's two sides.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from . import (
    latency,
    memory_resume,
    memory_tier,
    overhead,
    remote,
    report,
    restarts,
    signing,
    storage,
)
from .harness import Row

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--size-mib", type=int, default=None, help="checkpoint size (1024)")
    parser.add_argument(
        "--out", type=Path, default=None, help="write results.json (and benchmarks.md) here instead"
    )
    args = parser.parse_args()
    quick = args.quick
    size = (args.size_mib or (8 if quick else 1024)) << 20
    requests, runs, restart_count = (5, 2, 3) if quick else (200, 10, 20)
    # Alternating rounds of the I/O rows: the commit's, save_async's, the remote store's.
    rounds, async_rounds, remote_rounds, sign_rounds = (1, 1, 1, 1) if quick else (7, 5, 3, 5)
    source = report.provenance(ROOT)
    work = Path(tempfile.mkdtemp(prefix="ckptd-bench-", dir=_scratch()))
    rows: list[Row] = []
    try:
        for name in (
            "requests", "sigterm", "restarts", "cpu", "throughput", "storage", "async", "remote",
            "memory", "resume", "signing",
        ):  # fmt: skip
            (work / name).mkdir()
        steps = [
            ("request latency", lambda: latency.request_rows(work / "requests", requests)),
            ("SIGTERM", lambda: latency.sigterm_rows(work / "sigterm", runs)),
            ("restarts", lambda: restarts.restart_rows(work / "restarts", restart_count)),
            ("daemon CPU", lambda: [overhead.cpu_row(work / "cpu", 2 if quick else 60)]),
            (
                "throughput",
                lambda: [
                    overhead.throughput_row(
                        work / "throughput", 1 if quick else 2, 3 if quick else 12
                    ),
                    overhead.hot_path_row(20_000 if quick else 2_000_000),
                    overhead.instructions_row(work / "throughput", 0 if quick else 1000),
                ],
            ),
            (
                "commit and resume",
                lambda: storage.commit_and_resume_rows(work / "storage", size, rounds),
            ),
            ("save_async", lambda: [storage.async_row(work / "async", size, async_rounds)]),
            ("memory tier", lambda: memory_tier.stall_rows(work / "memory", size, rounds)),
            (
                "memory tier resume",
                lambda: [memory_resume.resume_row(work / "resume", size, 1 if quick else 4)],
            ),
            ("remote store", lambda: remote.remote_rows(work / "remote", size, remote_rounds)),
            (
                "signing",
                lambda: [signing.signing_row(work / "signing", size, sign_rounds)],
            ),
        ]
        for title, run in steps:
            print(f"... {title}", flush=True)
            rows += run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(report.table(rows))
    command = report.command_line()
    out = args.out or ROOT / "bench"
    markdown = (args.out / "benchmarks.md") if args.out else ROOT / "docs" / "benchmarks.md"
    report.write(rows, command, out / "results.json", markdown, source)
    print(f"\nreproduce: {command}\nwrote {out / 'results.json'} and {markdown}")
    return 0


def _scratch() -> str | None:
    """A disk-backed directory for the I/O rows (not a tmpfs /tmp), if the repo's disk has room."""
    return str(ROOT) if shutil.disk_usage(ROOT).free > (8 << 30) else None


if __name__ == "__main__":
    raise SystemExit(main())
