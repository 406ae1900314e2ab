"""ckptd report: one self-contained page whose numbers are the goodput accounting's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fakes.event_log import SimulatedJob, spot_schedule

from ckptd.reporting.goodput import account
from ckptd.reporting.html import render


def _page(records: list[dict[str, object]], job: str = "train") -> str:
    return render(account(records), job, generated=0.0)


def _embedded(page: str) -> dict[str, object]:
    found = re.search(r'<script type="application/json" id="goodput">(.*?)</script>', page, re.S)
    assert found, "no embedded JSON"
    return json.loads(found.group(1))


def _write_log(run_dir: Path, records: list[dict[str, object]]) -> None:
    run_dir.mkdir(mode=0o700, parents=True)
    with open(run_dir / "events.jsonl", "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def test_page_is_self_contained_and_embeds_the_numbers() -> None:
    """No script, stylesheet, font or image is fetched; the JSON block is the breakdown."""
    records = spot_schedule(SimulatedJob()).records
    page = _page(records)
    assert not re.search(r"https?://|<link|@import|src=|url\(", page)
    assert page.count("<script") == 1  # the JSON data block, which never runs
    data = _embedded(page)
    assert data["goodput"] == account(records).goodput.to_json()
    assert len(data["attempts"]) == 5  # type: ignore[arg-type]
    assert "<svg" in page and page.count("<rect") > 10


def test_every_shown_number_carries_its_json_value() -> None:
    """Each breakdown cell's data-seconds is the JSON figure it displays."""
    page = _page(spot_schedule(SimulatedJob()).records)
    goodput = _embedded(page)["goodput"]
    assert isinstance(goodput, dict)
    for key, seconds in re.findall(r"data-key='(\w+)' data-seconds='([\d.e+-]+)'", page):
        assert float(seconds) == pytest.approx(goodput[key], abs=0.001), key
    ratio = re.search(r"data-key='ratio'>([\d.]+)%<", page)
    assert ratio and float(ratio.group(1)) == round(goodput["ratio"] * 100, 1)


def test_text_from_the_log_is_escaped() -> None:
    """A job name or a request reason cannot inject markup into the page."""
    records = [
        {"time": 0, "event": "job.started", "attempt": 0, "step": None, "resume_step": None},
        {"time": 1, "event": "checkpoint.requested", "attempt": 0, "step": 3, "reason": "<b>x"},
    ]
    page = _page(records, job="<script>alert(1)</script>")
    assert "<script>alert" not in page and "<b>x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_an_empty_log_still_makes_a_page() -> None:
    """A run directory with no events yet: a page saying so, not a traceback."""
    page = _page([])
    assert _embedded(page)["goodput"]["wall"] == 0  # type: ignore[index]


def test_report_command_writes_the_page(tmp_path: Path) -> None:
    """`ckptd report --run-dir D -o FILE` writes the page and prints a one-line summary."""
    run_dir = tmp_path / ".ckptd" / "train"
    _write_log(run_dir, spot_schedule(SimulatedJob()).records)
    output = tmp_path / "page.html"
    done = subprocess.run(
        [sys.executable, "-m", "ckptd", "report", "--run-dir", str(run_dir), "-o", str(output)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {output}: goodput 78.0%")
    assert _embedded(output.read_text())["job"] == "sim"  # from the records: no job.json here
    numbers = subprocess.run(
        [sys.executable, "-m", "ckptd", "report", "--job", "train", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert numbers.returncode == 0, numbers.stderr
    assert json.loads(numbers.stdout)["failures"] == 3


def test_report_without_an_event_log_is_one_line(tmp_path: Path) -> None:
    """No events.jsonl: exit 2 and one line naming the directory."""
    done = subprocess.run(
        [sys.executable, "-m", "ckptd", "report", "--run-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and str(tmp_path) in done.stderr


GARBAGE = [
    '{"time": NaN, "event": "job.exited", "attempt": 0, "step": 5}',
    '{"time": 1e400, "event": "job.exited", "attempt": 0, "step": 5}',
    '{"time": -1e18, "event": "job.exited", "attempt": 0, "step": 5}',
    '{"time": Infinity, "event": "ckptd.started"}',
    '{"time": "yesterday", "event": "job.started", "attempt": 9}',
    '{"time": 1000000000000000000000000000000, "event": "job.started", "attempt": 9}',
    '{"time": 100.5, "event": "job.progress", "attempt": 1, "step": 1000000000000000000000000}',
    '{"time": 100.5, "event": "job.progress", "attempt": "one", "step": 5}',
    '{"time": 100.5, "event": "job.progress", "attempt": 1, "step": true}',
    '{"time": 100.5, "event": "job.restarting", "attempt": 1, "delay": 1e300}',
    '{"time": 100.5, "event": "checkpoint.committed", "attempt": 1, "step": 3, "seconds": -5}',
    '{"time": 100.5, "event": 7}',
    '{"time": 100.5, "event": "job.progress", "step": ' + "9" * 5000 + "}",
    "[" * 100000 + "]" * 100000,
]


def _report(run_dir: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ckptd", "report", "--run-dir", str(run_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


def test_report_skips_lines_with_impossible_numbers(tmp_path: Path) -> None:
    """NaN, 1e400 or -1e18 as a time, huge or wrong-typed counts: each such line is skipped
    like other garbage; the numbers and the page's data are those of the good lines."""
    records = spot_schedule(SimulatedJob()).records
    clean, dirty = tmp_path / "clean" / "run", tmp_path / "dirty" / "run"
    _write_log(clean, records)
    _write_log(dirty, records[:40])
    with open(dirty / "events.jsonl", "a") as handle:
        handle.write("\n".join(GARBAGE) + "\n")
        handle.writelines(json.dumps(record) + "\n" for record in records[40:])
    numbers = [json.loads(_report(run_dir, "--json")) for run_dir in (clean, dirty)]
    assert numbers[1] == numbers[0] and numbers[0]["attempts"] == 5
    pages = []
    for run_dir in (clean, dirty):
        _report(run_dir, "-o", str(run_dir.parent / "page.html"))
        pages.append(_embedded((run_dir.parent / "page.html").read_text()))
    assert pages[1]["attempts"] == pages[0]["attempts"]
    assert pages[1]["goodput"] == pages[0]["goodput"]


def test_the_memory_tier_s_saves_are_told_apart_from_the_disk_s() -> None:
    """A save to RAM has its own marker, saying when ckptd persisted it (or that it did not);
    the attempts table counts them and the advice gives each tier's stall."""
    started = {"event": "job.started", "attempt": 0, "step": None, "resume_step": None}
    records: list[dict[str, object]] = [{"time": 0.0, **started}]
    for t, step, tier in ((10.0, 100, "memory"), (20.0, 200, "disk"), (30.0, 300, "memory")):
        records += [
            {"time": t, "event": "job.progress", "attempt": 0, "step": step},
            {"time": t, "event": "checkpoint.started", "attempt": 0, "step": step},
            {"time": t + 0.5, "event": "checkpoint.committed", "attempt": 0, "step": step,
             "seconds": 0.5, "tier": tier},
        ]  # fmt: skip
    records.insert(4, {"time": 12.0, "event": "checkpoint.persisted", "attempt": 0, "step": 100})
    page = _page(records)
    ram = re.findall(r"<circle class='ckpt-ram'[^>]*><title>([^<]*)</title>", page)
    assert len(ram) == 2, ram
    assert "checkpoint in RAM step 100" in ram[0] and "persisted to disk at" in ram[0]
    assert "checkpoint in RAM step 300" in ram[1] and "not persisted to disk" in ram[1]
    assert len(re.findall(r"<circle class='ckpt' [^>]*><title>", page)) == 1
    assert "checkpoint in RAM (memory tier)" in page  # the legend
    assert "<td class='r'>3 (2 in RAM)</td>" in page
    assert "2 in RAM (memory tier, 0.5 s each" in page and "1 to disk (0.5 s each)" in page


def test_a_ram_save_persisted_after_its_job_ended_is_shown_persisted() -> None:
    """The final save of a stop in RAM is persisted once the job is gone (after job.exited):
    its marker still says when."""
    records: list[dict[str, object]] = [
        {"time": 0.0, "event": "job.started", "attempt": 0, "step": None, "resume_step": None},
        {"time": 10.0, "event": "job.progress", "attempt": 0, "step": 100},
        {"time": 10.0, "event": "job.stopping", "attempt": 0, "step": 100, "kind": "stop"},
        {"time": 10.0, "event": "checkpoint.started", "attempt": 0, "step": 100},
        {"time": 10.5, "event": "checkpoint.committed", "attempt": 0, "step": 100,
         "seconds": 0.5, "tier": "memory"},
        {"time": 11.0, "event": "job.exited", "attempt": 0, "step": 100, "status": "exit code 0"},
        {"time": 11.5, "event": "checkpoint.persisted", "attempt": 0, "step": 100},
        {"time": 12.0, "event": "ckptd.exiting", "attempt": 0, "step": 100, "exit_code": 0},
    ]  # fmt: skip
    page = _page(records)
    ram = re.findall(r"<circle class='ckpt-ram'[^>]*><title>([^<]*)</title>", page)
    assert len(ram) == 1 and "persisted to disk at" in ram[0], ram
