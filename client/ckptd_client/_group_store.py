"""Ranks on several nodes: requests and the agreed step go through torch.distributed's store.

Each node's daemon sees only its own ranks, so the node's ``LOCAL_RANK`` 0 publishes its
daemon's requests, numbered, in the store torchrun gives every worker
(``MASTER_ADDR:MASTER_PORT``: the rendezvous store). Every rank of every node takes them
in that order, writes the first step at which it can still take it, and computes, once all
``WORLD_SIZE`` proposals are in, the same agreed step: the highest. Requests agreed on the same
step are one save. Store traffic never runs inside training's calls: a request is published
by the channel thread as it arrives, and each rank's watcher thread blocks in the store
(``wait``) until the next request, then until every rank's proposal, so a request costs a few
round trips and an idle job none; only while torch is imported by the script already.
A request of the memory tier (``memory``) puts each node's part in that node's RAM
(``CKPTD_MEMORY_DIR``), where the node commits it with its own ranks and its daemon persists
it to the node's checkpoint directory: the node's ``LOCAL_RANK`` 0 decides, once for all its
ranks, RAM or disk (nodes sharing a checkpoint directory, or RAM short: see ``_place``).
Each checkpoint directory is committed once every node's ranks have written their parts
(the node's committer counts them in the store; a node whose part failed says so there, and
no other node commits): by its lowest node when nodes share it, else by each node for its
own ranks (see ``_group_parts``). Every manifest records the ranks whose parts it holds, so
that a resume takes only a step complete for the whole job (``_group_resume``).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from . import _group_parts as parts
from . import manifest, protocol
from ._group import Group, Round, Rounds
from .ram import newest_size, room_for

POLL = 0.05
_CONNECT_TIMEOUT = timedelta(seconds=2)
_FOREVER = timedelta(days=7)
_PATIENCE = timedelta(seconds=0.5)  # between looks for a closed rank, while a round waits
NEVER = 1 << 62  # the agreed step of a round some rank will never take: nobody saves it


class StoreRounds(Rounds):
    def __init__(self, *args: Any, checkpoint_dir: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._checkpoint_dir = checkpoint_dir
        self._ram = os.environ.get(protocol.ENV_MEMORY_DIR) or None  # this node's memory tier
        self._shared_disk: bool | None = None  # learnt in the store at the first memory round
        self._entries: dict[int, Round] = {}  # by sequence number in the store
        self._to_publish: list[dict[str, Any]] = []
        self._next = 1
        self._store: Any = None  # the channel thread's connection
        self._saving_store: Any = None  # the saving thread's: never one socket for two threads
        self._watcher: threading.Thread | None = None
        self._watcher_failed = 0.0
        self._polled = 0.0
        self._warned = False

    # -- the channel thread ------------------------------------------------------------

    def on_request(
        self, rid: str, final: bool, save: bool, joins: str | None, memory_dir: str | None = None
    ) -> bool:
        # Every node saves its part of a memory round in its own RAM: only the tier is told.
        if self.group.local_rank == 0:  # one publisher per node: the daemon asked every rank
            request = {"id": rid, "final": final, "save": save, "memory": memory_dir is not None}
            with self._cond:
                self._to_publish.append(request)
            self._publish()  # at once: every rank's watcher wakes on it
        return False

    def on_agreed(self, rid: str, step: int) -> None:
        """The daemon's agreement covers one node only: the store's is the one that counts."""

    def poll(self) -> None:
        now = time.monotonic()
        if now - self._polled < POLL:
            return
        self._polled = now
        self._publish()
        watcher = self._watcher
        if self.group.local_rank == 0 and self._store is None and watcher and watcher.is_alive():
            self._connect()  # ready before the first request: its publication costs no connect
        if (
            (watcher is None or not watcher.is_alive())
            and now - self._watcher_failed > 1.0
            and "torch" in sys.modules  # the script uses torch: it has a store to agree through
            and not self.closed
        ):
            self._watcher = threading.Thread(
                target=self._watch, name="ckptd-rendezvous", daemon=True
            )
            self._watcher.start()

    def _publish(self) -> None:
        """Requests of this node's daemon into the store, numbered (retried at the next poll)."""
        with self._cond:
            publish, self._to_publish = self._to_publish, []
        if not publish:
            return
        store = self._connect()
        try:
            if store is None:
                raise ConnectionError("no store")
            while publish:
                seq = store.add("seq", 1)
                store.set(f"request/{seq}", json.dumps(publish[0]))
                publish.pop(0)
        except Exception as exc:  # the store's host (node 0's torchrun) is gone: retry later
            self._store = None
            with self._cond:
                self._to_publish[:0] = publish
            if store is not None:
                self._warn(f"the rendezvous store failed: {exc}")

    # -- the watcher thread: blocks in the store until a request or the last proposal --

    def _watch(self) -> None:
        store = self._open_store()
        if store is None:
            self._watcher_failed = time.monotonic()
            return
        store.set_timeout(_FOREVER)  # a wait ends when the key is set, or the store is gone
        try:
            while not self.closed:
                seq = self._next
                store.wait([f"request/{seq}"])
                entry = self._entries.get(seq)
                if entry is None:
                    entry = self._open(seq, json.loads(store.get(f"request/{seq}")))
                if entry.placing:  # also after a restart of this watcher
                    self._place(store, seq, entry)
                store.set(f"proposal/{seq}/{self.group.rank}", str(entry.proposed))
                keys = [f"proposal/{seq}/{rank}" for rank in range(self.group.world_size)]
                agreed = NEVER
                if self._wait_unless_closed(store, keys):
                    agreed = max(int(value) for value in store.multi_get(keys))
                with self._cond:
                    entry.agreed = agreed
                    self._cond.notify_all()
                self._next = seq + 1
        except Exception as exc:
            self._watcher_failed = time.monotonic()
            if not self.closed:
                self._warn(f"the rendezvous store failed: {exc}")

    def _wait_unless_closed(self, store: Any, keys: list[str]) -> bool:
        """Until every key is set (True), or some rank has closed its client (False): a rank
        past its last step never answers again (its process may be gone), so a round waiting
        for it would hold the others at their last step, and torchrun's exit barrier too."""
        while True:
            try:
                store.wait(keys, _PATIENCE)
                return True
            except Exception:
                if store.check(keys):  # a store that is gone raises here: the watcher ends
                    return True
                if int(store.add("closed", 0)) > 0:
                    return False

    def close(self) -> None:
        """Say in the store that this rank takes no more rounds, then stop."""
        super().close()
        store = self._saving_store or self._open_store()
        if store is None:
            return
        try:
            store.add("closed", 1)
        except Exception:
            pass  # the store is gone, and the other ranks' rounds with it

    def _open(self, seq: int, request: dict[str, Any]) -> Round:
        with self._cond:
            entry = Round({str(request["id"])}, -1, bool(request["final"]), bool(request["save"]))
            entry.placing = bool(request.get("memory"))
            self._entries[seq] = entry
            self.current = self.current or entry  # before the step is read (see Rounds)
            step = self._step()
            entry.proposed = self.earliest(step)
            return entry

    def _place(self, store: Any, seq: int, entry: Round) -> None:
        """Where this node's part of memory round ``seq`` goes, the same for all its ranks:
        its RAM, or its checkpoint directory with the reason (LOCAL_RANK 0 decides)."""
        key = f"tier/{seq}/{parts.node_index(self.group)}"
        if self.group.local_rank == 0 and not store.check([key]):
            try:
                memory_dir, why = self._ram_or_why(store)
            except OSError as exc:  # the node's directories: its part goes to disk, said why
                memory_dir, why = None, f"{type(exc).__name__}: {exc}"
            decision = json.dumps({"dir": memory_dir, "why": why})
            store.compare_set(key, "", decision)  # a retry keeps the first answer
        if self._wait_unless_closed(store, [key]):
            said = json.loads(store.get(key))
        else:  # the round can never complete: it is agreed at NEVER
            said = {"dir": None, "why": "a rank has ended"}
        with self._cond:
            entry.memory_dir, entry.fallback = said["dir"], said["why"]
            entry.placing = False

    def _ram_or_why(self, store: Any) -> tuple[str | None, str | None]:
        if self._shared_disk is None:  # every node's LOCAL_RANK 0 takes part, with RAM or not
            me = parts.node_index(self.group)
            try:
                mine = parts.directory_id(self._checkpoint_dir)
            except OSError:  # said all the same, so that no node waits for this one
                mine = f"unreadable-{secrets.token_hex(8)}"
            store.set(f"disk/{me}", mine)
            keys = [f"disk/{node}" for node in range(parts.node_count(self.group))]
            if not self._wait_unless_closed(store, keys):
                return None, "a rank of another node has ended"
            ids = [bytes(value).decode() for value in store.multi_get(keys)]
            self._shared_disk = ids.count(mine) > 1
        if self._ram is None:
            return None, "this node's ckptd has no memory tier"
        if self._shared_disk:
            return None, (
                f"the nodes share checkpoint directory {self._checkpoint_dir}: one step there "
                "holds every node's part, which no node's RAM has (memory tier: a directory "
                "per node)"
            )
        ram = Path(self._ram)
        why = room_for(ram, newest_size(ram))
        return (None, why) if why is not None else (self._ram, None)

    def _connect(self) -> Any:
        if self._store is None:
            self._store = self._open_store()
        return self._store

    def _open_store(self) -> Any:
        return open_store(self.group, self._warn)

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            super()._warn(message)

    # -- the training (or saving) thread -----------------------------------------------

    def other_nodes_wrote(self, step: int) -> str | None:
        nodes = max(1, self.group.world_size // self.group.local_world_size)
        store = self._saving_store = self._saving_store or self._open_store()
        if store is None:
            return "the rendezvous store cannot be reached"
        try:
            store.add(f"written/{step}", 1)
            while not self.closed:
                if store.check([f"aborted/{step}"]):
                    return bytes(store.get(f"aborted/{step}")).decode(errors="replace")
                if store.add(f"written/{step}", 0) >= nodes:
                    return None
                time.sleep(0.005)
        except Exception as exc:
            return f"the rendezvous store failed: {exc}"
        return "the client was closed"

    def commit(
        self, shared: Path, step: int, metrics: dict[str, Any], lineage: manifest.Lineage
    ) -> tuple[Path, manifest.Manifest]:
        store = self._saving_store
        if store is None:
            raise parts.PartsFailed("the rendezvous store cannot be reached")
        plan = parts.plan(
            store, self.group, step, parts.directory_id(shared.parent), lambda: self.closed
        )
        if not plan.commits:
            parts.hear(store, plan, step, lambda: self.closed)
            final = shared.parent / manifest.checkpoint_name(step)
            if not final.is_dir():
                raise parts.PartsFailed(
                    f"node {plan.committer} committed step {step} into a directory with the id "
                    f"of {shared.parent}, which does not have it: was {parts.DIRECTORY_ID} "
                    "copied from another node's directory? Remove the copy."
                )
            return final, manifest.read_manifest(final)
        try:
            done = manifest.commit(
                shared, step, metrics, lineage, plan.ranks, self.group.world_size
            )
        except BaseException as exc:
            parts.announce(store, plan.key, f"{type(exc).__name__}: {exc}")
            raise
        parts.announce(store, plan.key, None)
        return done

    def abandon(self, step: int, error: str) -> None:
        store = self._saving_store = self._saving_store or self._open_store()
        if store is None:
            return
        try:
            store.compare_set(f"aborted/{step}", "", error)  # the first node's error stays
        except Exception:
            pass  # the store is gone, and the other nodes' ranks with it

    def due(self, step: int | None) -> tuple[bool, bool]:
        mine = -1 if step is None else step
        with self._cond:
            while not self.closed and any(
                e.agreed is None and mine >= e.proposed for e in self._entries.values()
            ):
                self._cond.wait(0.5)
            reached = [
                e
                for e in self._entries.values()
                if e.agreed is not None and not e.claimed and e.agreed <= mine
            ]
            if not reached or any(e.save for e in reached):
                return bool(reached), False
            return False, self._remove(reached)

    def claim(self, step: int) -> tuple[list[str], bool]:
        with self._cond:
            reached = [
                e
                for e in self._entries.values()
                if e.agreed is not None and not e.claimed and e.agreed <= step
            ]
            for entry in reached:
                entry.claimed = True
            return sorted(rid for e in reached for rid in e.ids), any(e.final for e in reached)

    def finish(self, ids: list[str]) -> bool:
        with self._cond:
            return self._remove([e for e in self._entries.values() if e.ids & set(ids)])

    def _remove(self, entries: list[Round]) -> bool:
        for seq in [s for s, e in self._entries.items() if e in entries]:
            del self._entries[seq]
        self.current = next(iter(self._entries.values()), None)
        return any(e.final for e in entries)


def open_store(group: Group, warn: Callable[[str], None], load_torch: bool = False) -> Any:
    """This run's keys in torchrun's rendezvous store; None (and a warning) without one.

    torch is imported only when the script has imported it, or with ``load_torch`` (torchrun
    on several nodes: torch is installed, and the script is about to import it anyway)."""
    if "torch" not in sys.modules and not load_torch:
        return None  # the script does not use torch: nothing to agree through
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not host or not port:
        warn("MASTER_ADDR/MASTER_PORT are not set: ranks of other nodes cannot agree")
        return None
    import torch.distributed as dist

    try:
        store = dist.TCPStore(
            host, int(port), is_master=False, timeout=_CONNECT_TIMEOUT, wait_for_workers=False
        )
    except Exception as exc:
        warn(f"cannot reach the rendezvous store at {host}:{port}: {exc}")
        return None
    run = f"ckptd/{group.run_id}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
    return dist.PrefixStore(run, store)
