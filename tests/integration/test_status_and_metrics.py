"""What a person and Prometheus see of a live job: `ckptd status` and the metrics agree.

The job trains a few steps, saves twice, then stops stepping (it hangs well inside the
budgets), so every figure stands still while the test reads it.
"""

from __future__ import annotations

import math
import re
import signal
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, Job, wait_for

pytest.importorskip("prometheus_client", reason="needs the metrics extra (prometheus_client)")
from prometheus_client.parser import text_string_to_metric_families

_QUIET = ("--hang-min", "1h", "--restart-delay", "0", "--grace", "1s", "--kill-timeout", "1s")
_STEADY = ("--save-every", "20", "--hang-at", "50", "--step-time", "0.005")


def _documented_metrics() -> list[tuple[str, str | None]]:
    """``(metric, status field or None)`` of each row of docs/metrics.md's table."""
    page = (ROOT / "docs" / "metrics.md").read_text()
    table = page.split("| metric | `status --json` field | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        metric = re.fullmatch(r"`(ckptd_\w+)(\{\w+\})?`", cells[0])
        field = re.fullmatch(r"`([\w.<>]+)`", cells[1])
        assert metric, f"not a metric row: {line}"
        rows.append((metric.group(1), field.group(1) if field else None))
    return rows


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _field(status: dict[str, Any], path: str) -> Any:
    value: Any = status
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _between(value: float, first: Any, second: Any, what: str) -> None:
    """The metric, read between two `status` answers, lies between their figures."""
    if first is None and second is None:
        assert math.isnan(value), f"{what}: {value}, status shows none"
        return
    assert first is not None and second is not None, f"{what}: status shows {first}, {second}"
    low, high = min(first, second), max(first, second)
    assert low - 0.001 <= value <= high + 0.001, f"{what}: metric {value}, status {first}..{second}"


def _steady_job(job: Job, tmp_path: Path, every: str, *options: str) -> int:
    port = _free_port()
    config = tmp_path / "metrics.toml"
    config.write_text(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    job.start_fake(*_STEADY, options=("--config", str(config), "--every", every, *_QUIET, *options))
    job.wait_record("hang")
    job.wait_event("checkpoint.committed", count=2)
    wait_for(lambda: job.status()["step"] == 49, "the last step to be reported")
    return port


@pytest.mark.parametrize(
    ("every", "options"),
    [("5m", ()), ("auto", ("--every-min", "30m", "--every-max", "1h"))],
    ids=["fixed", "auto"],
)
def test_every_documented_metric_shows_what_status_shows(
    job: Job, tmp_path: Path, every: str, options: tuple[str, ...]
) -> None:
    """After a short stretch of training, each metric of docs/metrics.md has a sample, with
    the value `status --json` shows in the field the table names."""
    port = _steady_job(job, tmp_path, every, *options)
    first = job.status()
    samples = _scrape(port)
    second = job.status()
    documented = _documented_metrics()
    assert len(documented) >= 15
    for metric, field in documented:
        found = [s for name, got in samples.items() if re.fullmatch(rf"{metric}(_\w+)?", name)
                 for s in got]  # fmt: skip
        assert found, f"{metric}: no sample"
        if field is None:
            continue
        if field.endswith(".<phase>"):
            budgets = {k: v for k, v in first[field.split(".")[0]].items() if k != "mode"}
            assert {labels["phase"] for labels, _ in found} == set(budgets), metric
            for labels, value in found:
                key = f"{field.split('.')[0]}.{labels['phase']}"
                _between(value, _field(first, key), _field(second, key), metric)
            continue
        ((_, value),) = found
        _between(value, _field(first, field), _field(second, field), f"{metric} ({field})")
    assert _field(first, "interval.every") == (300.0 if every == "5m" else 1800.0)
    assert samples["ckptd_job_up"][0][1] == 1 and first["pid"] is not None
    job.signal(signal.SIGTERM)
    job.wait()


def test_human_status_shows_the_interval_its_inputs_and_the_remote(
    job: Job, tmp_path: Path
) -> None:
    """`ckptd status` shows the interval with every = "auto"'s inputs, the newest remote step
    and the backlog, as docs/hangs-and-goodput.md and docs/spot-vms.md say."""
    remote = tmp_path / "remote"
    remote.mkdir()
    _steady_job(
        job, tmp_path, "auto", "--every-min", "30m", "--every-max", "1h",
        "--remote", f"file://{remote}",
    )  # fmt: skip
    wait_for(lambda: job.status()["remote"]["backlog_steps"] == [], "the uploads to finish")
    human = job.cli("status")
    assert human.returncode == 0, human.stderr
    lines = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in human.stdout.splitlines())
    assert re.fullmatch(
        r"every 30\.0 min \(auto: save cost \d+ ms, MTBF [0-9.]+ h \(0 failures in [0-9.]+ s\)"
        r", Young/Daly [0-9.]+ \w+, bounded by every_min\)",
        lines["interval"],
    ), lines["interval"]
    assert lines["remote"] == f"file://{remote}"
    assert lines["newest remote"] == "step 40"
    assert lines["backlog"] == "nothing to upload"
    assert "fenced" not in lines
    job.signal(signal.SIGTERM)
    job.wait()
