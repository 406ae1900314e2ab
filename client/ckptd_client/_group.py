"""Ranks under torchrun: who this process is in its group, and the checkpoint round it is in.

A group exists when torchrun's ``WORLD_SIZE`` is above 1. Its ranks take every request at
one agreed step and save into one shared directory that is committed once, by one rank,
after every rank of the node has written its part (the daemon counts them).
"""

from __future__ import annotations

import hashlib
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import manifest, protocol
from .manifest import TMP_PREFIX, checkpoint_mode, checkpoint_name


@dataclass(frozen=True)
class Group:
    """This process's place among the workers torchrun started."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    run_id: str

    @property
    def nodes(self) -> bool:
        """Ranks run on more than one node (more than one daemon)."""
        return self.world_size > self.local_world_size

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Group | None:
        """The group described by torchrun's variables; None outside torchrun or for one rank."""
        world = _int(env.get(protocol.ENV_WORLD_SIZE))
        if world is None or world < 2:
            return None
        rank = _int(env.get(protocol.ENV_RANK)) or 0
        return cls(
            rank=rank,
            world_size=world,
            local_rank=_int(env.get(protocol.ENV_LOCAL_RANK)) or 0,
            local_world_size=_int(env.get(protocol.ENV_LOCAL_WORLD_SIZE)) or world,
            run_id=env.get(protocol.ENV_RUN_ID) or "none",
        )

    def shared_dir(self, checkpoint_dir: Path, step: int) -> Path:
        """The in-progress directory of ``step`` that every rank of this run computes alike."""
        token = hashlib.sha256(self.run_id.encode()).hexdigest()[:8]
        path = checkpoint_dir / f"{TMP_PREFIX}{checkpoint_name(step)}-group-{token}"
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=checkpoint_mode() or 0o755, exist_ok=True)  # the commit sets it exactly
        return path


@dataclass
class Round:
    """One request (or several joined ones) on its way to an agreed step and a group save."""

    ids: set[str]
    proposed: int  # the first step at which this rank could still take the request
    final: bool
    save: bool
    agreed: int | None = None
    claimed: bool = False  # a save of it has begun: no longer due on any later step
    memory_dir: str | None = None  # where this node's part goes when it is saved in RAM
    fallback: str | None = None  # why this node's part of a memory round goes to disk
    placing: bool = False  # several nodes: RAM was asked for, this node's place is not known yet


@dataclass(frozen=True)
class Outcome:
    """What the daemon said about a group save this rank has written its part of."""

    kind: str  # "commit": this rank commits; "done": another rank did; "aborted": nobody will
    path: str | None = None
    error: str = ""


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


class Rounds:
    """This rank's view of the group's checkpoint rounds, shared by training and channel threads.

    ``current`` is read without the lock on the hot path; everything else happens under
    the condition. A rank waits only when it reaches the step it proposed and the agreed
    step is not known yet: every rank's proposal is sent by its channel thread, never by
    training, so the answer comes however far apart the ranks are.
    """

    WARN_AFTER = 30.0

    def __init__(self, group: Group, send: Callable[..., None], step: Callable[[], int | None]):
        self.group = group
        self._send = send
        self._step = step
        self._cond = threading.Condition()
        self.current: Round | None = None
        self._completed: set[str] = set()
        self._outcomes: dict[int, Outcome] = {}
        self.closed = False
        # The step whose should_checkpoint() answer this rank has given: written by the
        # training thread on every call, so a proposal can name the current step when the
        # rank has not decided it yet (one step less to wait for).
        self.checked: int | None = step()

    def earliest(self, step: int | None) -> int:
        """The first step at which this rank can still take a request arriving now."""
        if step is None:
            return 0
        return step + 1 if self.checked == step else step

    # -- the channel thread ------------------------------------------------------------

    def on_request(
        self, rid: str, final: bool, save: bool, joins: str | None, memory_dir: str | None = None
    ) -> bool:
        """Take a request; return True when it is answered already (stop now, if final).

        A request of the memory tier puts the shared directory below ``memory_dir`` (the
        node's RAM).
        """
        with self._cond:
            current = self.current
            if current is not None and (rid in current.ids or joins in current.ids):
                # A request joining a round keeps its directory: ranks may be writing there.
                current.ids.add(rid)
                current.final = current.final or final
                self._send("propose", id=rid, at=current.proposed)
                return False
            if joins is not None and joins in self._completed:
                return True  # the save that answers it has committed (or failed) here already
            current = Round({rid}, -1, final, save, memory_dir=memory_dir)
            self.current = current  # before the step is read: see the class docstring
            step = self._step()
            current.proposed = self.earliest(step)
            self._send("propose", id=rid, at=current.proposed)
            return False

    def memory_dir(self) -> str | None:
        """The memory directory of the round under way, if it saves to RAM."""
        with self._cond:
            return self.current.memory_dir if self.current is not None else None

    def fallback(self) -> str | None:
        """Why the round under way saves this node's part to disk, though asked for RAM."""
        with self._cond:
            return self.current.fallback if self.current is not None else None

    def on_agreed(self, rid: str, step: int) -> None:
        with self._cond:
            if self.current is not None and rid in self.current.ids:
                self.current.agreed = step
                self._cond.notify_all()

    def on_outcome(self, step: int, outcome: Outcome) -> None:
        with self._cond:
            self._outcomes[step] = outcome
            self._cond.notify_all()

    def poll(self) -> None:
        """Called by the channel thread on every turn; the daemon alone agrees for one node."""

    def other_nodes_wrote(self, step: int) -> str | None:
        """Before this node commits ``step``: None once every node wrote its part, else why not."""
        return None

    def commit(
        self, shared: Path, step: int, metrics: dict[str, Any], lineage: manifest.Lineage
    ) -> tuple[Path, manifest.Manifest]:
        """This node's committer, once every node wrote: the checkpoint of ``step``."""
        world = self.group.world_size
        return manifest.commit(shared, step, metrics, lineage, list(range(world)), world)

    def abandon(self, step: int, error: str) -> None:
        """This node's part of ``step`` failed: the other nodes must not commit theirs."""

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    # -- the training (or saving) thread -----------------------------------------------

    def due(self, step: int | None) -> tuple[bool, bool]:
        """(save now, stop now) at ``step``; waits for the agreed step once past the proposal."""
        mine = -1 if step is None else step
        with self._cond:
            waited = 0.0
            while (
                self.current is not None
                and self.current.agreed is None
                and mine >= self.current.proposed
                and not self.closed
            ):
                self._cond.wait(0.5)
                waited += 0.5
                if waited == self.WARN_AFTER:
                    self._warn(
                        "waits for the other ranks to agree on a checkpoint step; "
                        "does every rank call ckptd_client.connect()?"
                    )
            current = self.current
            if current is None or current.agreed is None or mine < current.agreed:
                return False, False
            if current.claimed:
                return False, False
            if current.save:
                return True, False
            self._complete(current)
            return False, current.final

    def claim(self, step: int) -> tuple[list[str], bool]:
        """The request ids a save of ``step`` answers, and whether one of them is final."""
        with self._cond:
            current = self.current
            if current is None or current.agreed is None or step < current.agreed:
                return [], False
            current.claimed = True
            return sorted(current.ids), current.final

    def await_outcome(self, step: int) -> Outcome:
        """Block until the daemon says what becomes of the shared directory of ``step``."""
        with self._cond:
            waited = 0.0
            while step not in self._outcomes:
                if self.closed:
                    return Outcome("aborted", error="the client was closed")
                self._cond.wait(0.5)
                waited += 0.5
                if waited == self.WARN_AFTER:
                    self._warn(
                        f"waits for the other ranks' parts of step {step}; "
                        "does every rank enter ck.checkpoint(step)?"
                    )
            return self._outcomes.pop(step)

    def _warn(self, message: str) -> None:
        print(f"ckptd_client: rank {self.group.rank} {message}", file=sys.stderr, flush=True)

    def finish(self, ids: list[str]) -> bool:
        """A save answering ``ids`` ended (committed or failed); return whether it was final."""
        with self._cond:
            current = self.current
            if current is None or not current.ids & set(ids):
                return False
            self._complete(current)
            return current.final

    def _complete(self, current: Round) -> None:
        self._completed = set(current.ids)
        self.current = None
