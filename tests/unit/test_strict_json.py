"""Strict JSON: no NaN or Infinity in anything ckptd writes, whichever writer writes it."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import structlog

from ckptd import log, strict_json
from ckptd.events import EventLog
from ckptd.progress.hang_budget import BUDGET_FILE, Budgets, HangBudget
from ckptd.reporting.goodput import account
from ckptd.reporting.html import render
from ckptd.run_dir import RunDir

ROOT = Path(__file__).resolve().parents[2]
NAN, INF = float("nan"), float("inf")


def _strict(text: str) -> Any:
    """Parse as a strict parser (jq, JSON.parse) would: NaN or Infinity fail the test."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in {text[:200]}"))


def test_dumps_writes_null_and_names_each_key() -> None:
    """Non-finite values become null; the warning names every one of them by its path."""
    seen: list[list[str]] = []
    value = {"loss": NAN, "ranks": [{"step": 1, "t": -INF}], "ok": 1.5, INF: "key"}
    text = strict_json.dumps(value, warn=seen.append)
    assert _strict(text) == {"loss": None, "ranks": [{"step": 1, "t": None}], "ok": 1.5,
                             "Infinity": "key"}  # fmt: skip
    assert seen == [["loss", "ranks[0].t"]]
    assert strict_json.dumps({"a": 1.0}, warn=seen.append) == '{"a": 1.0}' and len(seen) == 1


def test_dumps_cleans_what_default_returns() -> None:
    """A value made by ``default`` (an object turned into a float) is checked too."""

    class Odd:
        pass

    text = strict_json.dumps({"x": Odd()}, default=lambda _: NAN, warn=lambda _: None)
    assert _strict(text) == {"x": None}


def test_loads_refuses_nan_infinity_and_overflow() -> None:
    """The reader is as strict as the writer: these are not JSON."""
    for text in ('{"t": NaN}', '{"t": Infinity}', '{"t": -Infinity}', '{"t": 1e400}', "[-1e999]"):
        with pytest.raises(ValueError):
            strict_json.loads(text)
    assert strict_json.loads('{"t": 1e300, "n": 10}') == {"t": 1e300, "n": 10}


def test_print_json_warns_on_stderr_only(capsys: pytest.CaptureFixture[str]) -> None:
    """--json output stays one strict document on stdout; the warning is one stderr line."""
    strict_json.print_json([{"metrics": {"loss": NAN}}])
    out, err = capsys.readouterr()
    assert _strict(out) == [{"metrics": {"loss": None}}]
    assert err.count("\n") == 1 and "[0].metrics.loss" in err


def test_event_log_file_and_stream_are_strict(tmp_path: Path) -> None:
    """events.jsonl and the published record carry null where a field was NaN or infinite."""
    published: list[dict[str, Any]] = []
    events = EventLog(tmp_path / "events.jsonl", publish=published.append)
    try:
        events.emit("checkpoint.committed", seconds=NAN, metrics={"loss": INF}, step=3)
    finally:
        events.close()
    line = _strict((tmp_path / "events.jsonl").read_text())
    assert line["seconds"] is None and line["metrics"] == {"loss": None} and line["step"] == 3
    assert _strict(json.dumps(published[0], allow_nan=False)) == line


def test_run_dir_files_are_strict(tmp_path: Path) -> None:
    """hang_budget.json (even from a non-finite value in memory) and endpoints.json."""
    HangBudget(Budgets(first_step=NAN, step=INF, save=5.0)).save(tmp_path)
    saved = _strict((tmp_path / BUDGET_FILE).read_text())
    assert saved["first_step"] is None and saved["save"] == 5.0
    assert saved["step"] == 86400.0  # capped, never infinite
    run_dir = RunDir(tmp_path)
    run_dir.record_endpoints({"control": "ipc://x"})
    assert _strict((tmp_path / "endpoints.json").read_text()) == {"control": "ipc://x"}


def test_report_data_block_is_strict() -> None:
    """The page's embedded JSON has no NaN even when a figure is not finite."""
    records = [
        {"time": 0.0, "event": "job.started", "attempt": 0, "step": None, "resume_step": None},
        {"time": 5.0, "event": "job.exited", "attempt": 0, "step": 2, "exit_code": 1},
    ]
    accounting = account(records)
    broken = type(accounting)(
        accounting.history, accounting.spans, accounting.goodput.__class__(
            **{**accounting.goodput.__dict__, "ratio": NAN}
        ),
    )  # fmt: skip
    page = render(broken, "train", generated=0.0)
    found = re.search(r'<script type="application/json" id="goodput">(.*?)</script>', page, re.S)
    assert found and _strict(found.group(1))["goodput"]["ratio"] is None


def test_json_log_lines_are_strict() -> None:
    """Log lines (JSON off a terminal) write a NaN field as null."""
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    log.configure(json_output=True, stream=stream)
    try:
        log.get_logger().info("job.slow", typical=NAN)
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)
    assert _strict(stream.getvalue().strip())["typical"] is None


def test_every_json_writer_goes_through_strict_json() -> None:
    """One place: no module of the daemon calls json.dump(s) itself."""
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "ckptd").rglob("*.py"))
        if path.name != "strict_json.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bjson\.dumps?\(", line)
    ]
    assert offenders == []
