"""Save now? Stop now? The client's answers as one frozen state and pure transitions.

``decide(state, event)`` returns the next state and what to do (messages for the daemon,
a request for the rank group's round); it reads no clock, takes no lock and does no I/O,
so every rule below is one row of a table test. The client owns the one current
:class:`State`, replaces it only under its lock, and performs the effects under the same
lock (so the daemon hears of transitions in the order they happened); the training
thread reads it without the lock (replacing a reference is atomic).

The events, and where they come from:

====================  ==================================================================
``Requested``         the channel's thread: the daemon (or a signal, or a file) asks
``Progressed``        the training thread: the step it reached, when a final answer
                      held only for an earlier step (``final_at``)
``Seen``              the training thread: ``should_checkpoint()`` first said yes
``SaveStarted``       a save of this process began (its directory exists)
``SaveCommitted``     ... and committed; ``SaveFailed``: ... or failed, or never began
``AnsweredElsewhere`` the daemon: another process committed a request (``done``)
``GroupSaveStarted``  a rank group's save began here; ``GroupSaveEnded``: it ended
``RoundEnded``        a group's round ended without a save here
``ErrorRaised``       the failure of a background save was raised in training
``Forked``            this is a forked child (a data-loader worker): it is inert
====================  ==================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ._messages import CheckpointRequested, StopRequested


@dataclass(frozen=True)
class Commit:
    """A committed checkpoint, as the daemon is told of it."""

    path: str
    step: int
    metrics: Mapping[str, Any]
    bytes: int
    seconds: float

    def fields(self, *, reused: bool = False) -> dict[str, Any]:
        """The fields of a ``committed`` message; ``reused``: it answers a later request too."""
        return {
            "path": self.path,
            "step": self.step,
            "metrics": dict(self.metrics),
            "bytes": self.bytes,
            "seconds": round(self.seconds, 6),
            "reused": reused,
        }


@dataclass(frozen=True)
class Request:
    """A request of this process (outside a rank group) that no commit has answered yet."""

    id: str
    final: bool
    at: int | None  # the step reported when it arrived: a save of this step or later answers it
    claimed: bool = False  # the save in flight answers it: no longer wanted of the loop
    memory_dir: str | None = None  # of the memory tier: saved in RAM below this directory


@dataclass(frozen=True)
class Saving:
    """The save in flight: its step, the requests it answers, whether one of them is final."""

    step: int
    ids: tuple[str, ...]
    final: bool


@dataclass(frozen=True)
class State:
    """Everything that decides ``should_checkpoint()`` and ``should_stop()``."""

    group: bool = False  # a rank of a torchrun group: requests go to the group's rounds
    requests: tuple[Request, ...] = ()
    saving: Saving | None = None
    deadline: float | None = None  # the earliest hard stop announced (time.time())
    stop: bool = False  # should_stop() says yes
    final_at: int | None = None  # a final request was answered for this step only
    final_dir: str | None = None  # ... and asked for the memory tier's directory
    last: Commit | None = None  # what a request arriving with no progress since is answered by
    wanted_since: float | None = None  # when should_checkpoint() first said yes (monotonic)
    error: BaseException | None = None  # a background save's failure, not yet raised

    @property
    def wanted(self) -> bool:
        """A request is pending that no save in flight answers."""
        return any(not r.claimed for r in self.requests)

    @property
    def final_in_flight(self) -> bool:
        """The save in flight is the final one: should_stop() waits for it."""
        return self.saving is not None and self.saving.final

    @property
    def quiet(self) -> bool:
        """should_checkpoint() is false and stays so until an event arrives."""
        return not self.wanted and self.final_at is None and self.error is None


# -- events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Requested:
    id: str
    final: bool
    deadline: float | None
    step: int | None  # the step training had reported when the request arrived
    save: bool = True  # a final request without a save: ``ckptd stop --no-checkpoint``
    joins: str | None = None
    memory_dir: str | None = None

    @classmethod
    def of(cls, message: CheckpointRequested | StopRequested, step: int | None) -> Requested:
        """The request in a message, arriving when training had reported ``step``."""
        if isinstance(message, StopRequested):
            return cls(
                message.id, True, message.deadline, step, message.save, message.joins,
                message.memory_dir,
            )  # fmt: skip
        return cls(
            message.id, False, message.deadline, step, joins=message.joins,
            memory_dir=message.memory_dir,
        )  # fmt: skip


@dataclass(frozen=True)
class Progressed:
    step: int | None


@dataclass(frozen=True)
class Seen:
    now: float


@dataclass(frozen=True)
class SaveStarted:
    step: int
    now: float
    background: bool  # a background save tells how long training waited: its snapshot
    tier: str = "disk"  # "memory": its directory is in the memory tier's (RAM)
    fallback: str | None = None  # why a save the memory tier asked for went to disk


@dataclass(frozen=True)
class SaveCommitted:
    commit: Commit


@dataclass(frozen=True)
class SaveFailed:
    step: int
    error: str
    raised: BaseException | None = None  # a background save's failure, for training to raise


@dataclass(frozen=True)
class AnsweredElsewhere:
    id: str


@dataclass(frozen=True)
class GroupSaveStarted:
    step: int
    ids: tuple[str, ...]
    final: bool
    fallback: str | None = None  # why this node's part of a memory round went to disk


@dataclass(frozen=True)
class GroupSaveEnded:
    step: int
    ids: tuple[str, ...]
    final: bool  # the round it answered was final (a final request may have joined it)
    commit: Commit | None = None  # None: it failed (``error``)
    error: str = ""
    report: bool = True  # False: the daemon knows already (it said ``aborted`` or ``done``)
    raised: BaseException | None = None


@dataclass(frozen=True)
class RoundEnded:
    final: bool


@dataclass(frozen=True)
class ErrorRaised:
    pass


@dataclass(frozen=True)
class Forked:
    pass


Event = (
    Requested
    | Progressed
    | Seen
    | SaveStarted
    | SaveCommitted
    | SaveFailed
    | AnsweredElsewhere
    | GroupSaveStarted
    | GroupSaveEnded
    | RoundEnded
    | ErrorRaised
    | Forked
)


# -- effects -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Tell the daemon (``kind`` and ``fields`` of a client message, see ``protocol``)."""

    kind: str
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class JoinRound:
    """Group: hand the request to the rank group's rounds; answered there, it ends one."""

    id: str
    final: bool
    save: bool
    joins: str | None
    memory_dir: str | None = None  # the memory tier's: the shared directory goes below it


Effect = Send | JoinRound
Transition = tuple[State, tuple[Effect, ...]]


def decide(state: State, event: Event) -> Transition:
    """The state after ``event`` and what the client must do about it."""
    new, effects = _transition(state, event)
    if new.wanted_since is not None and not new.wanted:
        new = replace(new, wanted_since=None)
    return new, effects


def _transition(s: State, event: Event) -> Transition:
    match event:
        case Requested():
            return _requested(s, event)
        case Progressed(step):
            if s.final_at is None or step is None or step <= s.final_at:
                return s, ()
            # Training went past the step a final answer held for: that progress is saved too.
            request = Request(f"progress-{step}", final=True, at=step, memory_dir=s.final_dir)
            return replace(s, requests=_put(s.requests, request), final_at=None, stop=False), ()
        case Seen(now):
            return (replace(s, wanted_since=now) if s.wanted_since is None else s), ()
        case SaveStarted():
            return _save_started(s, event)
        case SaveCommitted(commit):
            return _save_committed(s, commit)
        case SaveFailed(step, error, raised):
            ids = s.saving.ids if s.saving else tuple(r.id for r in _due(s.requests, step))
            failed = [r for r in s.requests if r.id in ids]
            state = replace(
                s,
                requests=tuple(r for r in s.requests if r.id not in ids),
                saving=None,
                stop=s.stop or any(r.final for r in failed),
                error=raised or s.error,
            )
            return state, (Send("failed", {"ids": list(ids), "step": step, "error": error}),)
        case AnsweredElsewhere(rid):
            answered = [r for r in s.requests if r.id == rid]
            return replace(
                s,
                requests=tuple(r for r in s.requests if r.id != rid),
                stop=s.stop or any(r.final for r in answered),
            ), ()
        case GroupSaveStarted(step, ids, final, fallback):
            where = {"tier": "disk", "fallback": fallback} if fallback else {}
            return replace(s, saving=Saving(step, ids, final)), (
                Send("started", {"ids": list(ids), "step": step, **where}),
            )
        case GroupSaveEnded():
            return _group_save_ended(s, event)
        case RoundEnded(final):
            return replace(s, stop=s.stop or final), ()
        case ErrorRaised():
            return replace(s, error=None), ()
        case Forked():
            return State(group=s.group), ()
    raise TypeError(f"not an event: {event!r}")


def _requested(s: State, e: Requested) -> Transition:
    if e.deadline is not None:
        s = replace(s, deadline=e.deadline if s.deadline is None else min(s.deadline, e.deadline))
    if s.group:
        return s, (JoinRound(e.id, e.final, e.save, e.joins, e.memory_dir),)
    if e.final and not e.save:
        # A stop without a final checkpoint saves nothing more, not even a request that is
        # still pending; a background save already under way completes.
        kept = tuple(r for r in s.requests if r.claimed)
        return replace(s, requests=kept, final_at=None, stop=True), ()
    if s.last is not None and e.step is not None and s.last.step >= e.step:
        # Nothing was trained since the last commit: it holds the current state already.
        ack = Send("committed", {"ids": [e.id], **s.last.fields(reused=True)})
        if e.final:
            # It holds only for this step: a step trained after it must be saved too.
            s = replace(s, final_at=e.step, final_dir=e.memory_dir, stop=True)
        return s, (ack,)
    request = Request(e.id, e.final, e.step, memory_dir=e.memory_dir)
    return replace(s, requests=_put(s.requests, request)), ()


def _save_started(s: State, e: SaveStarted) -> Transition:
    claimed = _due(s.requests, e.step)
    ids = tuple(r.id for r in claimed)
    fields: dict[str, Any] = {"ids": list(ids), "step": e.step}
    if e.tier != "disk" or e.fallback is not None:  # a disk save of a disk request: as ever
        fields.update(tier=e.tier, **({"fallback": e.fallback} if e.fallback else {}))
    if e.background:
        # Training waited from the request it saw to here: the snapshot of its state.
        since = s.wanted_since
        fields["stall"] = round(e.now - since, 6) if since is not None else None
    state = replace(
        s,
        requests=tuple(replace(r, claimed=True) if r in claimed else r for r in s.requests),
        saving=Saving(e.step, ids, any(r.final for r in claimed)),
        wanted_since=None,
    )
    return state, (Send("started", fields),)


def _save_committed(s: State, commit: Commit) -> Transition:
    done = _due(s.requests, commit.step)
    late = [r for r in done if r.final and not r.claimed]
    state = replace(
        s,
        requests=tuple(r for r in s.requests if r not in done),
        saving=None,
        last=commit,
        stop=s.stop or any(r.final for r in done),
        # A final request that came after this save's snapshot: like a reused answer, it
        # holds only for this step; a step trained since must be saved too.
        final_at=commit.step if late else s.final_at,
        final_dir=late[0].memory_dir if late else s.final_dir,
    )
    # Unsolicited saves are reported too, so the daemon sees every commit.
    return state, (Send("committed", {"ids": [r.id for r in done], **commit.fields()}),)


def _group_save_ended(s: State, e: GroupSaveEnded) -> Transition:
    state = replace(
        s,
        saving=None,
        stop=s.stop or e.final,
        last=e.commit or s.last,
        error=e.raised or s.error,
    )
    if not e.report:
        return state, ()
    if e.commit is not None:
        final = {"final": True} if e.final else {}  # the daemon may not know: another node's stop
        return state, (Send("committed", {"ids": list(e.ids), **e.commit.fields(), **final}),)
    return state, (Send("failed", {"ids": list(e.ids), "step": e.step, "error": e.error}),)


def memory_dir_for(s: State, step: int) -> str | None:
    """Where a save of ``step`` goes: the memory tier's directory when every request it
    answers asked for that tier (and one did), else None: ``checkpoint_dir``."""
    places = {r.memory_dir for r in _due(s.requests, step)}
    return places.pop() if len(places) == 1 else None


def _due(requests: tuple[Request, ...], step: int) -> list[Request]:
    """The requests a save of ``step`` answers."""
    return [r for r in requests if r.at is None or r.at <= step]


def _put(requests: tuple[Request, ...], request: Request) -> tuple[Request, ...]:
    """``requests`` with ``request`` added, or in the place of one with its id."""
    if any(r.id == request.id for r in requests):
        return tuple(request if r.id == request.id else r for r in requests)
    return (*requests, request)
