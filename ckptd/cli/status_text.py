"""The human ``ckptd status``: the daemon's ``status`` answer as short aligned lines.

Pure: it reads the JSON the daemon sent (``ckptd.supervisor.status``) and renders what the
docs say ``status`` shows (docs/commands.md, docs/hangs-and-goodput.md, docs/spot-vms.md).
Fields a daemon does not send (an older one, or no remote) are skipped.
"""

from __future__ import annotations

import time
from typing import Any

from ckptd.cli.commands import human_bytes

__all__ = ["age", "render"]


def render(result: dict[str, Any]) -> str:
    """Aligned ``key  value`` lines for a person."""
    last = result.get("last_checkpoint") or {}
    ranks = result.get("ranks") or []
    ranks = ranks if len(ranks) > 1 else []  # one process: its pid and step are above
    rows = [
        ("job", result["job"]),
        ("state", result["state"]),
        ("pid", result["pid"]),
        ("attempt", result["attempt"]),
        ("restarts left", result["restarts_left"]),
        ("step", result["step"]),
        *(
            (f"rank {r['rank']}", f"pid {r['pid']}, step {r['step']}, {age(r['last_report'])} ago")
            for r in ranks
        ),
        (
            "last checkpoint",
            f"step {last.get('step')} at {last.get('path')}, {age(last.get('age'))} ago"
            + (f" ({last['tier']})" if last.get("tier") == "memory" else "")
            if last
            else "none",
        ),
        ("unsaved", f"{result['unsaved_steps']} steps, {age(result['unsaved_seconds'])}"),
        ("interval", _interval(result.get("interval"))),
        (
            "next periodic",
            age(result["next_checkpoint_in"])
            if result["next_checkpoint_in"] is not None
            else "off",
        ),
        *_memory_rows(result.get("memory")),
        *_remote_rows(result.get("remote")),
        *(
            [("preemption", f"{p['reason']}: deadline in {age(p['seconds_left'])}")]
            if (p := result.get("preemption"))
            else []
        ),
        *(
            [("goodput", f"{g['ratio']:.1%} (productive {age(g.get('productive'))}{_as_of(g)})")]
            if (g := result.get("goodput"))
            else []
        ),
        ("uptime", age(result["uptime"])),
        ("run dir", result["run_dir"]),
    ]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _interval(interval: dict[str, Any] | None) -> str:
    """``every 5.0 min``; with ``every = "auto"`` also the numbers it was chosen from."""
    if not interval:
        return "off"
    text = f"every {age(interval.get('every'))}"
    if interval.get("mode") != "auto":
        return text
    inputs = [
        f"save cost {_cost(interval['save_cost'])}"
        if interval.get("save_cost") is not None
        else "save cost not measured yet",
        f"MTBF {age(interval.get('mtbf'))} ({_failures(interval.get('failures'))} "
        f"in {age(interval.get('exposure'))})",
    ]
    if interval.get("optimum") is not None:
        inputs.append(f"Young/Daly {age(interval['optimum'])}")
    if interval.get("bound"):
        inputs.append(f"bounded by {interval['bound']}")
    return f"{text} (auto: {', '.join(inputs)})"


def _cost(seconds: float) -> str:
    """A save's cost: often well below a second (a background save's snapshot)."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else age(seconds)


def _failures(count: Any) -> str:
    return "1 failure" if count == 1 else f"{count} failures"


def _memory_rows(memory: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The memory tier: where RAM saves go, the newest, and how far the disk is behind."""
    if not memory:
        return []
    where = f"{memory.get('dir')}" + ("" if memory.get("in_ram") else " (not in RAM)")
    if isinstance(memory.get("every"), (int, float)):
        where += f", every {memory['every']:g} s"
    newest = memory.get("newest")
    persisted = memory.get("persisted_step")
    text = "none yet" if not newest else f"step {newest['step']}, {age(newest.get('age'))} ago"
    if newest and memory.get("backlog_steps"):
        text += f"; on disk: step {persisted}" if persisted is not None else "; none on disk"
    elif newest:
        text += "; on disk too"
    return [("memory tier", where), ("newest in RAM", text)]


def _remote_rows(remote: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The remote store's facts, each only when the daemon sends it."""
    if not remote:
        return []
    rows = [("remote", str(remote.get("remote", "?")))]
    if "newest_step" in remote or "newest_remote_step" in remote:
        newest = remote.get("newest_step", remote.get("newest_remote_step"))
        rows.append(("newest remote", "none" if newest is None else f"step {newest}"))
    if "backlog_steps" in remote:
        steps = remote["backlog_steps"] or []
        text = "nothing to upload" if not steps else _steps(steps)
        if steps and isinstance(remote.get("backlog_bytes"), int):
            text += f", {human_bytes(remote['backlog_bytes'])}"
        rows.append(("backlog", text))
    if remote.get("fenced"):
        rows.append(("fenced", "yes: another ckptd took this prefix's lease; nothing is uploaded"))
    return rows


def _steps(steps: list[int]) -> str:
    shown = ", ".join(str(s) for s in steps[:5])
    more = f" and {len(steps) - 5} more" if len(steps) > 5 else ""
    return f"{len(steps)} step{'s' if len(steps) != 1 else ''} ({shown}{more})"


def _as_of(goodput: dict[str, Any]) -> str:
    """How old the goodput figure is: it is recomputed off the daemon's loop."""
    end = goodput.get("end")
    return f", as of {age(max(0.0, time.time() - end))} ago" if isinstance(end, float) else ""


def age(seconds: float | None) -> str:
    """``4.2 s``, ``3.5 min``, ``2.0 h``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
