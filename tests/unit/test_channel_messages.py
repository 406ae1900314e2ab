"""The job channel, daemon side: client messages parsed once into typed values, garbage refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ckptd.channel.messages import (
    MAX_STALL,
    BadMessage,
    Bye,
    Committed,
    Failed,
    Hello,
    Propose,
    Started,
    StepReport,
    Written,
    parse,
)
from ckptd_client import protocol


def _frame(kind: str, **fields: Any) -> bytes:
    return json.dumps({"v": 1, "type": kind, **fields}).encode()


def test_every_client_type_parses_into_its_frozen_value() -> None:
    """Each type of docs/protocol.md section 3 becomes its own value, fields typed as sent."""
    assert parse(_frame("hello", pid=7, rank=1, step=3, world_size=4, local_world_size=2)) == (
        Hello(3, pid=7, rank=1, world_size=4, local_world_size=2)
    )
    assert parse(_frame("step", step=5)) == StepReport(5)
    assert parse(_frame("started", ids=["a"], step=5, stall=0.25)) == Started(5, ("a",), 0.25)
    committed = _frame(
        "committed", ids=["a", "b"], step=5, path="/c/step-5", metrics={"loss": 0.5},
        bytes=10, seconds=1, reused=False,
    )  # fmt: skip
    assert parse(committed) == Committed(
        5, ("a", "b"), path="/c/step-5", metrics={"loss": 0.5}, bytes=10, seconds=1.0,
        reused=False,
    )  # fmt: skip
    final = _frame("committed", ids=["a"], step=5, reused=False, final=True)
    assert parse(final).final is True  # a group save of a final round (maybe another node's)
    assert parse(_frame("committed", ids=["a"], step=5, final=1)).final is False
    assert parse(_frame("failed", ids=["a"], step=5, error="disk full")) == Failed(
        5, ("a",), "disk full"
    )
    assert parse(_frame("propose", id="a", at=6)) == Propose(None, id="a", at=6)
    assert parse(_frame("written", ids=["a"], step=6)) == Written(6, ("a",))
    assert parse(_frame("bye", step=9)) == Bye(9)
    with pytest.raises(AttributeError):
        parse(_frame("step", step=5)).step = 6  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"step": -1}, "step"),
        ({"step": "7"}, "step"),
        ({"step": True}, "step"),
        ({"step": 1.5}, "step"),
        ({"ids": "x"}, "ids"),
        ({"ids": [1]}, "ids"),
        ({"ids": None}, "ids"),
    ],
)
def test_an_unusable_step_or_ids_refuses_the_message_naming_the_field(
    fields: dict[str, Any], named: str
) -> None:
    """A step that is not a count, or ids that are not strings: BadMessage names the field."""
    with pytest.raises(BadMessage, match=named):
        parse(_frame("committed", **fields))


@pytest.mark.parametrize(
    "frame", [b"", b"\x00\xff", b"null", b"[1]", b'{"v":1}', b'{"v":2,"type":"hello"}',
              b'{"v":1,"type":"request"}']
)  # fmt: skip
def test_a_frame_outside_the_protocol_is_a_protocol_error(frame: bytes) -> None:
    """Not JSON, not an object, another version, a daemon's type: ProtocolError."""
    with pytest.raises(protocol.ProtocolError):
        parse(frame)


def test_optional_fields_of_the_wrong_type_or_range_become_none() -> None:
    """A commit with garbage beside its step and ids is still a commit; the garbage is None."""
    garbage = {"path": 3, "metrics": [1], "bytes": -4, "seconds": float("nan"), "reused": 1}
    committed = parse(_frame("committed", ids=["a"], step=5, **garbage))
    assert committed == Committed(
        5, ("a",), path=None, metrics=None, bytes=None, seconds=None, reused=True
    )
    hello = parse(_frame("hello", pid="7", rank=True, world_size=0, local_world_size=-2))
    assert hello == Hello(None, pid=None, rank=None, world_size=None, local_world_size=None)
    assert parse(_frame("propose", id=5, at=-1)) == Propose(None, id=None, at=None)
    assert parse(_frame("failed", ids=[])) == Failed(None, (), "None")


@pytest.mark.parametrize("stall", [-0.1, MAX_STALL + 1, 10**400, "1", True, None, float("inf")])
def test_a_stall_outside_zero_to_a_day_is_ignored(stall: Any) -> None:
    """A background save's stall counts only as a number of seconds in [0, a day]."""
    frame = json.dumps({"v": 1, "type": "started", "ids": [], "stall": stall}).encode()
    assert parse(frame) == Started(None, (), None)


def test_a_started_message_says_its_tier_and_why_it_fell_back() -> None:
    """`started` carries the memory tier's `tier` and `fallback`; other values are dropped."""
    ram = parse(_frame("started", ids=["m"], step=5, tier="memory"))
    assert ram == Started(5, ("m",), None, tier="memory")
    disk = parse(_frame("started", ids=["m"], step=5, tier="disk", fallback="OSError: full"))
    assert disk == Started(5, ("m",), None, tier="disk", fallback="OSError: full")
    odd = parse(_frame("started", ids=["m"], step=5, tier="tape", fallback=3))
    assert odd == Started(5, ("m",), None)
