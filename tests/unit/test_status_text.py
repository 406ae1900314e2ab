"""The human `ckptd status`: what the docs say it shows, from the daemon's JSON."""

from __future__ import annotations

from typing import Any

from ckptd.cli.status_text import render

_BASE: dict[str, Any] = {
    "job": "train",
    "state": "running",
    "pid": 42,
    "attempt": 0,
    "restarts_left": 10,
    "step": 120,
    "ranks": [],
    "last_checkpoint": {"path": "/c/step-00000100", "step": 100, "age": 3.0},
    "unsaved_steps": 20,
    "unsaved_seconds": 3.0,
    "next_checkpoint_in": 2.0,
    "uptime": 30.0,
    "run_dir": "/r",
    "interval": None,
    "remote": None,
}


def _lines(**fields: Any) -> dict[str, str]:
    text = render({**_BASE, **fields})
    return {line[:15].strip(): line[15:].strip() for line in text.splitlines()}


def test_a_fixed_interval_is_shown() -> None:
    """every = "5s": the interval line says so."""
    assert _lines(interval={"mode": "fixed", "every": 5.0})["interval"] == "every 5.0 s"


def test_no_interval_is_off() -> None:
    """Without `every` the interval is off."""
    assert _lines()["interval"] == "off"


def test_an_auto_interval_shows_its_inputs() -> None:
    """every = "auto": the chosen interval with its save cost, MTBF, failures and bound."""
    interval = {
        "mode": "auto", "every": 60.0, "optimum": 19.9, "save_cost": 0.033, "mtbf": 21600.0,
        "failures": 1, "exposure": 45.0, "bound": "every_min",
    }  # fmt: skip
    assert _lines(interval=interval)["interval"] == (
        "every 60.0 s (auto: save cost 33 ms, MTBF 6.0 h (1 failure in 45.0 s), "
        "Young/Daly 19.9 s, bounded by every_min)"
    )
    fresh = {**interval, "optimum": None, "save_cost": None, "failures": 0}
    assert "save cost not measured yet" in _lines(interval=fresh)["interval"]


def test_the_remote_facts_are_shown() -> None:
    """Newest remote step, backlog (steps and bytes) and fenced, as docs/spot-vms.md promises."""
    remote = {
        "remote": "s3://b/run", "newest_step": 900, "backlog_steps": [1000, 1100],
        "backlog_bytes": 3 * 1024 * 1024, "fenced": True,
    }  # fmt: skip
    lines = _lines(remote=remote)
    assert lines["remote"] == "s3://b/run"
    assert lines["newest remote"] == "step 900"
    assert lines["backlog"] == "2 steps (1000, 1100), 3.0 MiB"
    assert lines["fenced"].startswith("yes")


def test_remote_fields_a_daemon_does_not_send_are_skipped() -> None:
    """An empty backlog reads as such; the older `newest_remote_step` name is understood;
    a field that is absent gives no line."""
    lines = _lines(remote={"remote": "file:///m", "newest_remote_step": None, "backlog_steps": []})
    assert lines["newest remote"] == "none" and lines["backlog"] == "nothing to upload"
    assert "fenced" not in lines
    assert "backlog" not in _lines(remote={"remote": "file:///m"})


def test_the_memory_tier_shows_where_ram_saves_go_and_what_the_disk_holds() -> None:
    """With a memory tier: its directory, the newest RAM step and the disk's, the last's tier."""
    memory = {
        "dir": "/dev/shm/ckptd-0/train-1a2b3c4d",
        "in_ram": True,
        "every": 5.0,
        "newest": {"step": 118, "path": "/dev/shm/x/step-00000118", "bytes": 10, "age": 1.0},
        "persisted_step": 100,
        "backlog_steps": 18,
    }
    last = {"path": "/dev/shm/x/step-00000118", "step": 118, "age": 1.0, "tier": "memory"}
    lines = _lines(memory=memory, last_checkpoint=last)
    assert lines["memory tier"] == "/dev/shm/ckptd-0/train-1a2b3c4d, every 5 s"
    assert (
        lines["newest in RAM"].startswith("step 118")
        and "on disk: step 100" in lines["newest in RAM"]
    )
    assert lines["last checkpoint"].endswith("(memory)")
    assert "memory tier" not in _lines()
