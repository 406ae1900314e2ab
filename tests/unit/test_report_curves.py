"""The report's metric curves: the sampled loss and checkpoint metrics over steps, bounded."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from ckptd import strict_json
from ckptd.config import load
from ckptd.events import EventLog
from ckptd.progress.steps import Progress
from ckptd.reporting.curves import MAX_POINTS, curves_of
from ckptd.reporting.goodput import account
from ckptd.reporting.history import read_events
from ckptd.reporting.html import render

Record = dict[str, Any]


def _job(records: list[Record], steps: int, *, every: int = 1) -> None:
    """A job stepping once a second from t=1, its loss 1/(step+1), a checkpoint each 100."""
    records.append({"time": 0, "event": "job.started", "attempt": 0, "resume_step": None})
    for step in range(0, steps, every):
        t = 1.0 + step
        records.append({"time": t, "event": "job.progress", "attempt": 0, "step": step,
                        "loss": 1.0 / (step + 1)})  # fmt: skip
        if step and step % 100 == 0:
            metrics = {"val_loss": 2.0 / step, "accuracy": step / steps}
            records.append({"time": t + 0.5, "event": "checkpoint.committed", "attempt": 0,
                            "step": step, "metrics": metrics})  # fmt: skip


def _embedded(page: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="goodput">(.*?)</script>', page, re.S)
    assert found, "no embedded JSON"
    data: dict[str, Any] = json.loads(found.group(1))
    return data


def _page(records: list[Record], best: tuple[str, str] | None = None) -> str:
    return render(account(records), "train", generated=0.0, best=best)


def test_page_draws_the_loss_and_each_checkpoint_metric() -> None:
    """One chart for the loss, one per checkpoint metric; the data block holds the points."""
    records: list[Record] = []
    _job(records, 1000)
    page = _page(records)
    assert "<h2>Metrics</h2>" in page
    assert re.findall(r"<svg class='curve'[^>]*data-metric='([^']*)'", page) == [
        "loss", "val_loss", "accuracy",
    ]  # fmt: skip
    assert page.count("<polyline class='curve'") == 3
    curves = _embedded(page)["curves"]
    assert [p[:2] for p in curves["loss"][:2]] == [[0, 1.0], [1, 0.5]]
    assert [p[:2] for p in curves["metrics"]["val_loss"]][:2] == [[100, 0.02], [200, 0.01]]
    assert curves["counts"] == {"loss": 1000, "checkpoints": 9, "rollbacks": 0, "divergences": 0}


def test_the_best_checkpoint_is_marked_by_the_configured_metric_and_mode() -> None:
    """best=(accuracy, max) rings the highest accuracy; without it, the lowest val_loss."""
    records: list[Record] = []
    _job(records, 1000)
    page = _page(records, best=("accuracy", "max"))
    assert _embedded(page)["curves"]["best"] == {
        "metric": "accuracy", "mode": "max", "step": 900, "value": 0.9,
    }  # fmt: skip
    assert len(re.findall(r"<circle class='best' cx='[\d.]+' cy='[\d.]+' r='6'><title>", page)) == 1
    default = _embedded(_page(records))["curves"]["best"]
    assert (default["metric"], default["step"]) == ("val_loss", 900)


def test_rollbacks_and_divergences_are_marked_and_the_old_branch_faded() -> None:
    """A job.rolled_back and a job.diverged draw lines on every chart; the branch gone back
    from is a faded line of its own; a NaN loss is a marker, never a point of the line."""
    records: list[Record] = []
    _job(records, 500)
    records += [
        {"time": 600, "event": "job.progress", "attempt": 0, "step": 510, "loss": "nan"},
        {"time": 601, "event": "job.diverged", "attempt": 0, "step": 510, "loss": "nan",
         "rule": "nonfinite", "action": "rollback", "resume_step": 400},
        {"time": 610, "event": "job.rolled_back", "attempt": 1, "step": 400, "chosen": "x"},
        {"time": 620, "event": "job.progress", "attempt": 1, "step": 401, "loss": 0.01},
        {"time": 630, "event": "job.progress", "attempt": 1, "step": 450, "loss": 0.009},
    ]  # fmt: skip
    page = _page(records)
    charts = page.count("<svg class='curve'")
    assert page.count("<line class='rollback'") == charts == 3
    assert page.count("<line class='diverged'") == charts
    assert page.count("<polyline class='curve superseded'") == 1  # the loss went back
    assert page.count("<title>loss nan at step 510</title></path>") == 1
    curves = _embedded(page)["curves"]
    assert curves["divergences"][0]["loss"] == "nan"
    assert curves["rollbacks"][0]["step"] == 400


def test_a_long_run_is_drawn_with_bounded_points_and_size() -> None:
    """A month of samples (every 10 s) and 10,000 checkpoints: at most MAX_POINTS points a
    curve, a page under 1.5 MB, and the spike and the NaN of the run still drawn."""
    records: list[Record] = []
    _job(records, 260_000)
    spike = next(r for r in records if r.get("step") == 123_457 and r["event"] == "job.progress")
    spike["loss"] = 50.0
    nan = next(r for r in records if r.get("step") == 200_001 and r["event"] == "job.progress")
    nan["loss"] = "nan"
    curves = curves_of(records)
    assert len(curves.loss) <= MAX_POINTS and len(curves.metrics["val_loss"]) <= MAX_POINTS
    assert any(p.value == 50.0 for p in curves.loss)
    assert any(p.value == "nan" for p in curves.loss)
    page = _page(records)
    assert len(page) < 1_500_000, len(page)
    lines = re.findall(r"<polyline class='curve[^']*' points='([^']*)'", page)
    assert len(lines) == 3 and all(len(line.split()) <= MAX_POINTS for line in lines)


def test_no_loss_and_no_metrics_say_so() -> None:
    """A job that reports no loss and saves without metrics: a sentence, no chart."""
    records = [{"time": 0, "event": "job.started", "attempt": 0, "resume_step": None}]
    page = _page(records)
    assert "No loss was reported" in page and "<svg class='curve'" not in page


def test_the_daemon_samples_the_loss_onto_job_progress(tmp_path: Path) -> None:
    """Progress puts the newest reported loss on the next job.progress (every 10 s, the
    first loss of an attempt at once; "nan" for a NaN; loss_step when it was reported with
    another step)."""
    config = load(None, {"command": ["true"], "checkpoint_dir": str(tmp_path / "ck"),
                         "run_dir": str(tmp_path / "run")})  # fmt: skip
    events = EventLog(tmp_path / "events.jsonl")
    progress = Progress(config, tmp_path, events, None)
    progress.launched(0.0, 0, None)
    progress.reported(1, 100.0)  # the first step (a hello's): recorded at once
    progress.reported(2, 100.05, loss=0.5)  # the first loss: recorded at once too
    for step in range(3, 50):
        progress.reported(step, 100.0 + step * 0.1, loss=1.0 / step)  # within 10 s: not
    progress.reported(50, 120.0, loss=float("nan"))
    progress.reported(50, 121.0, loss=0.25)  # the same step again: kept for later
    progress.reported(51, 140.0)
    events.close()
    samples = [r for r in read_events(tmp_path / "events.jsonl") if r["event"] == "job.progress"]
    assert [(r["step"], r.get("loss"), r.get("loss_step")) for r in samples] == [
        (1, None, None), (2, 0.5, None), (50, "nan", None), (51, 0.25, 50),
    ]  # fmt: skip
    assert [p.step for p in curves_of(samples).loss] == [2, 50, 50]


def test_report_page_ranks_checkpoints_by_the_recorded_best_metric(tmp_path: Path) -> None:
    """`ckptd report` marks the best checkpoint by the best_metric and best_mode job.json
    recorded; the page's data block has the curves."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    records: list[Record] = []
    _job(records, 300)
    (run_dir / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "job.json").write_text(strict_json.dumps(
        {"name": "train", "best_metric": "accuracy", "best_mode": "max"}))  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "ckptd", "report", "--run-dir", str(run_dir), "-o", "-"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    curves = _embedded(done.stdout)["curves"]
    assert curves["best"] == {"metric": "accuracy", "mode": "max", "step": 200,
                              "value": 200 / 300}  # fmt: skip
    assert len(curves["loss"]) == 300
