"""The report's metric curves: the reported loss and every checkpoint's metrics over steps.

Read from what the daemon records in ``events.jsonl``: the loss sampled onto ``job.progress``
(``loss``, ``loss_step``), the ``metrics`` of ``checkpoint.committed``, and the steps where the
job went back (``job.rolled_back``) or diverged (``job.diverged``). Bounded whatever the
length of the run: a curve keeps at most ``MAX_POINTS`` points (per bucket of samples its
lowest, its highest and its first non-finite one, so spikes and NaNs survive thinning), at
most ``MAX_METRICS`` metrics are drawn, and at most ``MAX_MARKS`` marks of each kind (the
newest; their total is counted). Pure: no clock, no files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

__all__ = ["MAX_MARKS", "MAX_METRICS", "MAX_POINTS", "Best", "Curves", "Point", "curves_of"]

MAX_POINTS = 1500
MAX_METRICS = 8
MAX_MARKS = 200
_LARGEST = 2**53  # what a float (a page's coordinate) holds exactly

Value = float | str  # a number, or "nan" / "inf" / "-inf"
Record = dict[str, Any]


@dataclass(frozen=True)
class Point:
    step: int
    value: Value
    time: float

    @property
    def finite(self) -> bool:
        return isinstance(self.value, float)

    def to_json(self) -> list[Any]:
        return [self.step, self.value, round(self.time, 3)]


@dataclass(frozen=True)
class Best:
    """The best checkpoint by ``metric`` (lowest for ``mode`` "min", highest for "max")."""

    metric: str
    mode: str
    step: int
    value: float

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode, "step": self.step, "value": self.value}


@dataclass(frozen=True)
class Curves:
    loss: tuple[Point, ...]  # the reported loss, in time order (thinned)
    metrics: dict[str, tuple[Point, ...]]  # each checkpoint metric, in time order (thinned)
    best: Best | None
    rollbacks: tuple[Record, ...]  # {step, time, chosen}
    divergences: tuple[Record, ...]  # {step, time, loss, rule, action}
    counts: dict[str, int]  # how many there were before thinning

    @property
    def empty(self) -> bool:
        return not self.loss and not self.metrics and not self.rollbacks and not self.divergences

    def steps(self) -> tuple[int, int] | None:
        """The lowest and highest step anything here is at."""
        steps = [p.step for p in self.loss] + [p.step for c in self.metrics.values() for p in c]
        steps += [m["step"] for m in (*self.rollbacks, *self.divergences)]
        return (min(steps), max(steps)) if steps else None

    def to_json(self) -> dict[str, Any]:
        """The data block's ``curves``: points as ``[step, value, time]``."""
        return {
            "loss": [p.to_json() for p in self.loss],
            "metrics": {k: [p.to_json() for p in v] for k, v in self.metrics.items()},
            "best": self.best.to_json() if self.best else None,
            "rollbacks": list(self.rollbacks),
            "divergences": list(self.divergences),
            "counts": self.counts,
        }


def curves_of(records: Iterable[Record], best: tuple[str, str] | None = None) -> Curves:
    """The curves in ``records`` (as :func:`~ckptd.reporting.history.read_events` returns
    them). ``best``: ``(metric, mode)`` that ranks checkpoints (``[guard] monitor`` or
    ``best_metric``); without it, the lowest ``val_loss`` or else ``loss`` is the best."""
    loss: list[Point] = []
    metrics: dict[str, list[Point]] = {}
    committed: set[tuple[int, float]] = set()
    rollbacks: list[Record] = []
    divergences: list[Record] = []
    for record in records:
        event, when = record["event"], float(record["time"])
        if event == "job.progress" and "loss" in record:
            step, value = record.get("loss_step", record.get("step")), _value(record["loss"])
            if _step(step) and value is not None:
                loss.append(Point(step, value, when))
        elif event == "checkpoint.committed" and not record.get("reused"):
            step, measured = record.get("step"), record.get("metrics")
            if not _step(step) or not isinstance(measured, dict) or (step, when) in committed:
                continue
            committed.add((step, when))  # ranks each report the same commit
            for name, raw in measured.items():
                value = _value(raw)
                if value is not None and (name in metrics or len(metrics) < MAX_METRICS):
                    metrics.setdefault(str(name), []).append(Point(step, value, when))
        elif event == "job.rolled_back" and _step(record.get("step")):
            rollbacks.append({"step": record["step"], "time": when, "chosen": record.get("chosen")})
        elif event == "job.diverged" and _step(record.get("step")):
            divergences.append(
                {
                    "step": record["step"],
                    "time": when,
                    "loss": _value(record.get("loss")),
                    "rule": record.get("rule"),
                    "action": record.get("action"),
                }
            )
    counts = {
        "loss": len(loss),
        "checkpoints": len(committed),
        "rollbacks": len(rollbacks),
        "divergences": len(divergences),
    }
    chosen = _best(metrics, best)
    return Curves(
        tuple(thin(loss)),
        {name: tuple(thin(points, keep=_at(chosen, name))) for name, points in metrics.items()},
        chosen,
        tuple(rollbacks[-MAX_MARKS:]),
        tuple(divergences[-MAX_MARKS:]),
        counts,
    )


def thin(points: Sequence[Point], limit: int = MAX_POINTS, keep: int | None = None) -> list[Point]:
    """At most about ``limit`` of ``points`` in their order: per bucket of consecutive
    points the lowest, the highest and the first non-finite one; the step ``keep`` (the
    best checkpoint's) stays whatever its bucket."""
    if len(points) <= limit:
        return list(points)
    size = math.ceil(len(points) / (limit // 3))
    kept: list[Point] = []
    for start in range(0, len(points), size):
        bucket = points[start : start + size]
        finite = [p for p in bucket if p.finite]
        picks = [min(finite, key=_number), max(finite, key=_number)] if finite else []
        picks += [p for p in bucket if not p.finite][:1]
        picks += [p for p in bucket if p.step == keep]
        chosen = {id(p) for p in picks}
        kept += [p for p in bucket if id(p) in chosen]
    return kept


def _best(metrics: dict[str, list[Point]], best: tuple[str, str] | None) -> Best | None:
    if best is None:
        name = next((n for n in ("val_loss", "loss") if n in metrics), None)
        best = (name, "min") if name else None
    if best is None or best[0] not in metrics:
        return None
    metric, mode = best
    finite = [p for p in metrics[metric] if p.finite]
    if not finite:
        return None
    pick = min if mode == "min" else max
    top = pick(finite, key=_number)  # the first of equals: the one that set the record
    return Best(metric, mode, top.step, _number(top))


def _at(best: Best | None, name: str) -> int | None:
    return best.step if best is not None and best.metric == name else None


def _number(point: Point) -> float:
    assert isinstance(point.value, float)
    return point.value


def _step(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _LARGEST


def _value(raw: Any) -> Value | None:
    """A number as a float; ``"nan"``, ``"inf"``, ``"-inf"`` (how events write them) kept."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        value = float(raw)
        return value if math.isfinite(value) else str(value)
    if isinstance(raw, str) and raw.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return str(float(raw))
    return None
