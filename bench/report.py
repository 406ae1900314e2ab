"""The results: a printed table, ``results.json`` and ``docs/benchmarks.md``."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from .harness import Row


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _ratio(row: Row) -> str:
    return "-" if row.ratio is None else f"{row.ratio:.2f}"


def _met(row: Row) -> str:
    return {True: "yes", False: "NO", None: "-"}[row.met]


def table(rows: list[Row]) -> str:
    header = ("figure", "ckptd", "floor / peer (same run)", "ratio", "goal", "met")
    cells = [header] + [(r.figure, r.ckptd, r.baseline, _ratio(r), r.goal, _met(r)) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(header))) for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write(rows: list[Row], command: str, results: Path, markdown: Path | None) -> None:
    info = machine()
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(
        json.dumps(
            {"machine": info, "command": command, "rows": [r.as_dict() for r in rows]}, indent=1
        )
        + "\n"
    )
    if markdown is None:
        return
    lines = [
        "# ckptd benchmarks",
        "",
        f"Measured on {info['date']}: {info['cpu']}, {info['cores']} cores, "
        f"{info['memory_gib']} GiB, Linux {info['kernel']}, Python {info['python']}.",
        "",
        f"Reproduce: `{command}` (from the repository, after the README's install; the peers "
        "need `pip install -e '.[bench,torch]'`). Raw numbers: `bench/results.json`.",
        "",
        "Every figure stands next to its floor or a peer measured in the same run: absolute "
        "times on a shared 2-core machine are noisy, the ratios much less so.",
        "",
        "| figure | ckptd | floor / peer (same run) | ratio | goal | met | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.figure} | {r.ckptd} | {r.baseline} | {_ratio(r)} | {r.goal} | "
            f"{_met(r)} | {r.note} |"
        )
    missed = [r for r in rows if r.met is False]
    lines += ["", "## Goals missed in this run", ""]
    lines += [f"- {r.figure}: {r.ckptd} against {r.baseline} (goal {r.goal})." for r in missed]
    if not missed:
        lines.append("None.")
    notes = Path(__file__).with_name("analysis.md")
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text("\n".join(lines) + "\n")


def command_line() -> str:
    return "python -m bench " + " ".join(sys.argv[1:])
