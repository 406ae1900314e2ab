"""The client's decisions (save now? stop now?) as a table: one row per (state, event) pair."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import pytest

from ckptd_client._decisions import (
    AnsweredElsewhere,
    Commit,
    Effect,
    ErrorRaised,
    Event,
    Forked,
    GroupSaveEnded,
    GroupSaveStarted,
    JoinRound,
    Progressed,
    Request,
    Requested,
    RoundEnded,
    SaveCommitted,
    SaveFailed,
    SaveStarted,
    Saving,
    Seen,
    Send,
    State,
    decide,
)
from ckptd_client._messages import CheckpointRequested, StopRequested

C3 = Commit("/c/step-00000003", 3, {"loss": 1.0}, 100, 0.5)
C5 = Commit("/c/step-00000005", 5, {}, 200, 1.25)
BOOM = OSError("disk full")

IDLE = State()
RESUMED_AT_3 = State(last=C3)  # resumed from (or last committed) step 3
WANTED_AT_5 = State(requests=(Request("r", False, 5),), wanted_since=10.0)
SAVING_5 = State(  # a background save of step 5 answers request r
    requests=(Request("r", False, 5, claimed=True),), saving=Saving(5, ("r",), False), last=C3
)
SAVING_5_FINAL = State(
    requests=(Request("f", True, 5, claimed=True),), saving=Saving(5, ("f",), True), last=C3
)
FINAL_AT_5 = State(final_at=5, stop=True, last=C5)  # a final request answered for step 5 only
GROUP = State(group=True)


def _reused(rid: str, commit: Commit) -> Send:
    return Send("committed", {"ids": [rid], **commit.fields(reused=True)})


def _committed(ids: list[str], commit: Commit) -> Send:
    return Send("committed", {"ids": ids, **commit.fields()})


ROWS: list[tuple[str, State, Event, dict[str, Any], tuple[Effect, ...]]] = [
    # -- a request arrives ------------------------------------------------------------
    (
        "request after progress is wanted from the step it arrived at",
        RESUMED_AT_3,
        Requested("r", False, None, step=4),
        {"requests": (Request("r", False, 4),), "wanted": True},
        (),
    ),
    (
        "request before any step is answered by any save",
        IDLE,
        Requested("r", False, None, step=None),
        {"requests": (Request("r", False, None),), "wanted": True},
        (),
    ),
    (
        "request with no progress since the last commit is answered by it (reused)",
        RESUMED_AT_3,
        Requested("r", False, None, step=3),
        {"requests": (), "wanted": False, "stop": False, "final_at": None},
        (_reused("r", C3),),
    ),
    (
        "final request with no progress since the last commit: stop, for that step only",
        RESUMED_AT_3,
        Requested("f", True, None, step=3),
        {"requests": (), "stop": True, "final_at": 3},
        (_reused("f", C3),),
    ),
    (
        "request before any step is never answered by reuse",
        RESUMED_AT_3,
        Requested("r", False, None, step=None),
        {"requests": (Request("r", False, None),)},
        (),
    ),
    (
        "the earliest deadline holds",
        replace(WANTED_AT_5, deadline=50.0),
        Requested("f", True, 40.0, step=5),
        {"deadline": 40.0, "requests": (*WANTED_AT_5.requests, Request("f", True, 5))},
        (),
    ),
    (
        "a later deadline does not push the earlier one back",
        replace(WANTED_AT_5, deadline=50.0),
        Requested("f", True, 60.0, step=5),
        {"deadline": 50.0, "requests": (*WANTED_AT_5.requests, Request("f", True, 5))},
        (),
    ),
    (
        "the same request again takes the place of the first",
        WANTED_AT_5,
        Requested("r", True, None, step=6),
        {"requests": (Request("r", True, 6),)},
        (),
    ),
    (
        "stop without a checkpoint: pending requests are dropped, the save in flight stays",
        replace(SAVING_5, requests=(*SAVING_5.requests, Request("p", False, 6))),
        Requested("s", True, None, step=6, save=False),
        {"requests": SAVING_5.requests, "stop": True, "wanted": False, "saving": SAVING_5.saving},
        (),
    ),
    (
        "stop without a checkpoint ends a final answer's watch over progress",
        FINAL_AT_5,
        Requested("s", True, None, step=5, save=False),
        {"final_at": None, "stop": True},
        (),
    ),
    (
        "request during a background save of the step it arrived at: wanted until it commits",
        SAVING_5,
        Requested("r2", False, None, step=5),
        {"requests": (*SAVING_5.requests, Request("r2", False, 5)), "wanted": True},
        (),
    ),
    (
        "final request during a background save: wanted, the save in flight is not final",
        SAVING_5,
        Requested("f", True, 30.0, step=5),
        {
            "requests": (*SAVING_5.requests, Request("f", True, 5)),
            "wanted": True,
            "final_in_flight": False,
            "stop": False,
            "deadline": 30.0,
        },
        (),
    ),
    (
        "group: the request goes to the group's rounds; only its deadline is kept here",
        GROUP,
        Requested("r", True, 30.0, step=5, joins="r0"),
        {"requests": (), "deadline": 30.0, "stop": False},
        (JoinRound("r", True, True, "r0"),),
    ),
    # -- standalone: the same rules for signals and files ---------------------------
    (
        "standalone: SIGTERM right after resuming is answered by the checkpoint resumed from",
        RESUMED_AT_3,
        Requested.of(StopRequested("t", "SIGTERM"), 3),
        {"stop": True, "final_at": 3},
        (_reused("t", C3),),
    ),
    (
        "standalone: SIGUSR1 after progress is a request to save",
        RESUMED_AT_3,
        Requested.of(CheckpointRequested("u", "SIGUSR1"), 7),
        {"requests": (Request("u", False, 7),), "stop": False},
        (),
    ),
    (
        "standalone: a STOP file saves, then stops",
        RESUMED_AT_3,
        Requested.of(StopRequested("s", "STOP file"), 7),
        {"requests": (Request("s", True, 7),), "stop": False},
        (),
    ),
    # -- training progressed (after a final answer held for one step) ---------------
    (
        "no progress past the final answer: still stop",
        FINAL_AT_5,
        Progressed(5),
        {"stop": True, "final_at": 5, "requests": ()},
        (),
    ),
    (
        "progress past the final answer is saved before stopping",
        FINAL_AT_5,
        Progressed(6),
        {"stop": False, "final_at": None, "requests": (Request("progress-6", True, 6),)},
        (),
    ),
    ("progress without a final answer changes nothing", WANTED_AT_5, Progressed(9), {}, ()),
    # -- should_checkpoint() said yes -------------------------------------------------
    (
        "the first yes is timed",
        replace(WANTED_AT_5, wanted_since=None),
        Seen(12.0),
        {"wanted_since": 12.0},
        (),
    ),
    ("a later yes keeps the first time", WANTED_AT_5, Seen(12.0), {"wanted_since": 10.0}, ()),
    # -- a save of this process began -------------------------------------------------
    (
        "a save claims the requests due at its step: no longer wanted",
        WANTED_AT_5,
        SaveStarted(5, now=11.0, background=False),
        {
            "requests": (Request("r", False, 5, claimed=True),),
            "saving": Saving(5, ("r",), False),
            "wanted": False,
            "wanted_since": None,
        },
        (Send("started", {"ids": ["r"], "step": 5}),),
    ),
    (
        "a memory-tier request is remembered with its directory",
        IDLE,
        Requested("m", False, None, 5, memory_dir="/dev/shm/j"),
        {"requests": (Request("m", False, 5, memory_dir="/dev/shm/j"),), "wanted": True},
        (),
    ),
    (
        "a save in RAM says so when it starts",
        State(requests=(Request("m", False, 5, memory_dir="/dev/shm/j"),)),
        SaveStarted(5, now=11.0, background=False, tier="memory"),
        {
            "requests": (Request("m", False, 5, claimed=True, memory_dir="/dev/shm/j"),),
            "saving": Saving(5, ("m",), False),
            "wanted": False,
        },
        (Send("started", {"ids": ["m"], "step": 5, "tier": "memory"}),),
    ),
    (
        "a memory-tier save that fell back to disk says why",
        State(requests=(Request("m", False, 5, memory_dir="/dev/shm/j"),)),
        SaveStarted(5, now=11.0, background=False, fallback="OSError: full"),
        {
            "requests": (Request("m", False, 5, claimed=True, memory_dir="/dev/shm/j"),),
            "saving": Saving(5, ("m",), False),
            "wanted": False,
        },
        (
            Send(
                "started",
                {"ids": ["m"], "step": 5, "tier": "disk", "fallback": "OSError: full"},
            ),
        ),
    ),
    (
        "a background save tells how long training waited since it saw the request",
        WANTED_AT_5,
        SaveStarted(5, now=10.25, background=True),
        {"requests": (Request("r", False, 5, claimed=True),), "saving": Saving(5, ("r",), False)},
        (Send("started", {"ids": ["r"], "step": 5, "stall": 0.25}),),
    ),
    (
        "an unsolicited background save answers nothing and has no stall",
        IDLE,
        SaveStarted(5, now=10.0, background=True),
        {"saving": Saving(5, (), False)},
        (Send("started", {"ids": [], "step": 5, "stall": None}),),
    ),
    (
        "a save of an earlier step than the request's does not answer it",
        State(requests=(Request("r", False, 6),)),
        SaveStarted(5, now=0.0, background=False),
        {"wanted": True, "saving": Saving(5, (), False)},
        (Send("started", {"ids": [], "step": 5}),),
    ),
    (
        "a save that claims a final request is the final save in flight",
        State(requests=(Request("f", True, 5),)),
        SaveStarted(5, now=0.0, background=True),
        {
            "requests": (Request("f", True, 5, claimed=True),),
            "saving": Saving(5, ("f",), True),
            "final_in_flight": True,
            "stop": False,
        },
        (Send("started", {"ids": ["f"], "step": 5, "stall": None}),),
    ),
    # -- ... and committed ----------------------------------------------------------
    (
        "a commit answers what it claimed and is what later requests reuse",
        SAVING_5,
        SaveCommitted(C5),
        {"requests": (), "saving": None, "last": C5, "stop": False, "final_at": None},
        (_committed(["r"], C5),),
    ),
    (
        "the final save committed: stop",
        SAVING_5_FINAL,
        SaveCommitted(C5),
        {"requests": (), "saving": None, "last": C5, "stop": True, "final_in_flight": False},
        (_committed(["f"], C5),),
    ),
    (
        "a final request that arrived during the save is answered by it, for its step only",
        replace(SAVING_5, requests=(*SAVING_5.requests, Request("f", True, 5))),
        SaveCommitted(C5),
        {"requests": (), "saving": None, "last": C5, "stop": True, "final_at": 5},
        (_committed(["r", "f"], C5),),
    ),
    (
        "a request that arrived after progress past the save's step is still wanted",
        replace(SAVING_5, requests=(*SAVING_5.requests, Request("r2", False, 6))),
        SaveCommitted(C5),
        {"requests": (Request("r2", False, 6),), "saving": None, "last": C5, "wanted": True},
        (_committed(["r"], C5),),
    ),
    (
        "an unsolicited save is reported too",
        State(saving=Saving(5, (), False)),
        SaveCommitted(C5),
        {"last": C5, "saving": None},
        (_committed([], C5),),
    ),
    # -- ... or failed --------------------------------------------------------------
    (
        "a failed save answers what it claimed with its failure",
        SAVING_5,
        SaveFailed(5, "OSError: disk full"),
        {"requests": (), "saving": None, "stop": False, "last": C3, "error": None},
        (Send("failed", {"ids": ["r"], "step": 5, "error": "OSError: disk full"}),),
    ),
    (
        "the final save failed: stop all the same",
        SAVING_5_FINAL,
        SaveFailed(5, "OSError: disk full"),
        {"requests": (), "saving": None, "stop": True},
        (Send("failed", {"ids": ["f"], "step": 5, "error": "OSError: disk full"}),),
    ),
    (
        "a background save's failure is held for training to raise",
        SAVING_5,
        SaveFailed(5, "OSError: disk full", BOOM),
        {"requests": (), "saving": None, "error": BOOM, "quiet": False},
        (Send("failed", {"ids": ["r"], "step": 5, "error": "OSError: disk full"}),),
    ),
    (
        "a save whose directory could not be made fails the requests due at its step",
        State(requests=(Request("r", False, 5), Request("later", False, 8))),
        SaveFailed(5, "PermissionError: no"),
        {"requests": (Request("later", False, 8),), "saving": None},
        (Send("failed", {"ids": ["r"], "step": 5, "error": "PermissionError: no"}),),
    ),
    (
        "a request that arrived during a failed save is still wanted",
        replace(SAVING_5, requests=(*SAVING_5.requests, Request("r2", False, 5))),
        SaveFailed(5, "x"),
        {"requests": (Request("r2", False, 5),), "saving": None, "wanted": True},
        (Send("failed", {"ids": ["r"], "step": 5, "error": "x"}),),
    ),
    # -- another process answered ---------------------------------------------------
    (
        "another process committed a request: no longer wanted here",
        WANTED_AT_5,
        AnsweredElsewhere("r"),
        {"requests": (), "wanted": False, "wanted_since": None, "stop": False},
        (),
    ),
    (
        "another process committed the final request: stop",
        State(requests=(Request("f", True, 5),)),
        AnsweredElsewhere("f"),
        {"requests": (), "stop": True},
        (),
    ),
    (
        "an answer to a request this process lacks changes nothing",
        WANTED_AT_5,
        AnsweredElsewhere("x"),
        {},
        (),
    ),
    # -- a rank of a group ----------------------------------------------------------
    (
        "group: a save began; a final one is waited for by should_stop()",
        GROUP,
        GroupSaveStarted(5, ("f",), True),
        {"saving": Saving(5, ("f",), True), "final_in_flight": True},
        (Send("started", {"ids": ["f"], "step": 5}),),
    ),
    (
        "group: this node's part of a memory round went to disk: the daemon is told why",
        GROUP,
        GroupSaveStarted(6, ("m",), False, "the nodes share checkpoint directory /ck"),
        {"saving": Saving(6, ("m",), False)},
        (
            Send(
                "started",
                {
                    "ids": ["m"],
                    "step": 6,
                    "tier": "disk",
                    "fallback": "the nodes share checkpoint directory /ck",
                },
            ),
        ),
    ),
    (
        "group: this rank committed the final round",
        replace(GROUP, saving=Saving(5, ("f",), True)),
        GroupSaveEnded(5, ("f",), True, C5),
        {"saving": None, "stop": True, "last": C5},
        (Send("committed", {"ids": ["f"], **C5.fields(), "final": True}),),
    ),
    (
        "group: another rank committed; the daemon knows, nothing is said",
        replace(GROUP, saving=Saving(5, ("r",), False)),
        GroupSaveEnded(5, ("r",), False, C5, report=False),
        {"saving": None, "stop": False, "last": C5},
        (),
    ),
    (
        "group: this rank's part failed in the background: reported, held for training",
        replace(GROUP, saving=Saving(5, ("r",), False)),
        GroupSaveEnded(5, ("r",), False, None, "OSError: disk full", raised=BOOM),
        {"saving": None, "error": BOOM, "last": None},
        (Send("failed", {"ids": ["r"], "step": 5, "error": "OSError: disk full"}),),
    ),
    (
        "group: the save was aborted (the daemon said so): nothing to say",
        replace(GROUP, saving=Saving(5, ("f",), True)),
        GroupSaveEnded(5, ("f",), True, None, "rank 0: x", report=False),
        {"saving": None, "stop": True},
        (),
    ),
    (
        "group: a final round ended without a save here: stop",
        GROUP,
        RoundEnded(True),
        {"stop": True},
        (),
    ),
    ("group: a plain round ended: go on", GROUP, RoundEnded(False), {"stop": False}, ()),
    # -- training raised the failure; the process forked ---------------------------
    (
        "a held failure raised once is gone",
        replace(SAVING_5, error=BOOM),
        ErrorRaised(),
        {"error": None},
        (),
    ),
    (
        "a forked child wants nothing, stops never, holds nothing in flight",
        replace(SAVING_5_FINAL, stop=True, final_at=5, error=BOOM, deadline=9.0),
        Forked(),
        {
            "requests": (),
            "saving": None,
            "stop": False,
            "final_at": None,
            "last": None,
            "error": None,
            "deadline": None,
            "quiet": True,
        },
        (),
    ),
]


@pytest.mark.parametrize(
    ("state", "event", "expected", "effects"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_transition(
    state: State, event: Event, expected: dict[str, Any], effects: tuple[Effect, ...]
) -> None:
    """Each (state, event) pair gives its row's effects and changes only the fields it names."""
    new, done = decide(state, event)
    assert done == effects
    for name, value in expected.items():
        assert getattr(new, name) == value, name
    for field in fields(State):
        if field.name not in expected and field.name != "wanted_since":  # see the test below
            assert getattr(new, field.name) == getattr(state, field.name), field.name


def test_rows_without_expectations_change_nothing() -> None:
    """An event with nothing to do returns the very state it was given."""
    for _, state, event, expected, effects in ROWS:
        if not expected and not effects:
            assert decide(state, event) == (state, ())


def test_wanted_since_is_kept_only_while_something_is_wanted() -> None:
    """Whatever the event, a state with nothing wanted has no time of the first yes."""
    for _, state, event, _, _ in ROWS:
        new, _ = decide(state, event)
        assert new.wanted or new.wanted_since is None


def _run(state: State, *events: Event) -> tuple[State, list[Effect]]:
    effects: list[Effect] = []
    for event in events:
        state, done = decide(state, event)
        effects += done
    return state, effects


def test_final_request_during_a_background_save_then_progress_saves_once_more() -> None:
    """Final arrives while step 5 is saved; step 6 trains: 6 is the final save, then stop."""
    state, _ = _run(
        SAVING_5,
        Requested("f", True, 30.0, step=5),
        SaveCommitted(C5),
    )
    assert state.stop and state.final_at == 5
    state, _ = _run(state, Progressed(6))
    assert not state.stop and state.wanted
    state, effects = _run(
        state,
        SaveStarted(6, now=0.0, background=True),
        SaveCommitted(replace(C5, step=6)),
    )
    assert state.stop and not state.wanted and state.final_at is None
    assert effects[0] == Send("started", {"ids": ["progress-6"], "step": 6, "stall": None})


def test_final_request_claimed_by_the_save_after_the_one_in_flight_stops_after_it() -> None:
    """Step 6 is begun after save 5 committed: progress and claim make 6 the final save."""
    state, _ = _run(SAVING_5, Requested("f", True, None, step=5), SaveCommitted(C5))
    state, _ = _run(state, Progressed(6), SaveStarted(6, now=0.0, background=True))
    assert state.final_in_flight and not state.stop
    state, _ = _run(state, SaveCommitted(replace(C5, step=6)), Progressed(6))
    assert state.stop and not state.wanted


def test_quiet_means_should_checkpoint_stays_false() -> None:
    """quiet: nothing wanted, no final answer watching progress, no failure to raise."""
    assert IDLE.quiet and RESUMED_AT_3.quiet and SAVING_5.quiet
    assert not WANTED_AT_5.quiet and not FINAL_AT_5.quiet
    assert not replace(IDLE, error=BOOM).quiet


def test_a_save_goes_to_ram_only_when_every_request_it_answers_asked_for_it() -> None:
    """memory_dir_for: the memory tier's directory when all due requests name it, else None."""
    from ckptd_client._decisions import memory_dir_for

    ram = Request("m", False, 5, memory_dir="/dev/shm/j")
    disk = Request("d", False, 5)
    later = Request("l", False, 9)
    assert memory_dir_for(State(requests=(ram, later)), 5) == "/dev/shm/j"
    assert memory_dir_for(State(requests=(ram, disk)), 5) is None
    assert memory_dir_for(State(), 5) is None


def test_a_final_request_of_the_memory_tier_saves_to_ram_and_so_does_the_step_after_it() -> None:
    """A final request naming the memory directory saves there; a reused answer followed by
    progress saves the new step there too."""
    from ckptd_client._decisions import memory_dir_for

    final = Requested.of(StopRequested("f", "SIGTERM", memory_dir="/dev/shm/j"), 7)
    state, _ = _run(RESUMED_AT_3, final)
    assert memory_dir_for(state, 7) == "/dev/shm/j"
    state, _ = _run(replace(IDLE, last=C5), Requested.of(StopRequested("g", "SIGTERM",
                    memory_dir="/dev/shm/j"), 5), Progressed(6))  # fmt: skip
    assert state.requests == (Request("progress-6", True, 6, memory_dir="/dev/shm/j"),)
    assert memory_dir_for(state, 6) == "/dev/shm/j"
