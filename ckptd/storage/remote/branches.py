"""Going back with a bucket: the remote checkpoints newer than the one gone back to move aside.

The same one-lineage rule as the checkpoint directory (:mod:`ckptd.storage.branches`): when a
run goes back to step N (``--resume-from``, ``rollback``, the divergence guard), every remote
``step-M`` with M above N is copied to ``<root>/.branches/<UTC time>/step-M/`` and then deleted
from ``<root>`` (its manifest first, as any remote deletion). Only ``step-M`` directly under
the root is a checkpoint to a listing, a download or remote retention, so nothing under
``.branches/`` is ever resumed from (by this or an older ckptd on a replacement VM) or pruned.
A copy is whole before its original goes: the manifest is copied last, so a branch entry
without ``ckptd.json`` is a copy that was cut short (its original is still in place).

Blocking (server-side copies and deletions, each bounded by the deadline); the caller holds
the remote's lease and runs this off the loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ckptd.storage.remote.store import Deadline, RemoteError, RemoteStore
from ckptd_client.manifest import MANIFEST_NAME, checkpoint_name

__all__ = ["BRANCHES_DIR", "RemoteSetAside", "set_aside_newer_remote"]

BRANCHES_DIR = ".branches"


@dataclass(frozen=True)
class RemoteSetAside:
    """Where the remote's newer checkpoints went (``branch`` None when there were none)."""

    branch: str | None = None  # the branch's URL-less path (bucket/prefix/.branches/<time>)
    steps: list[int] = field(default_factory=list)


def set_aside_newer_remote(
    store: RemoteStore, step: int, timeout: float, stamp: str | None = None
) -> RemoteSetAside:
    """Move every remote checkpoint above ``step`` into ``<root>/.branches/<stamp>/``.

    Checkpoints that do not verify are moved too (they are of the abandoned branch all the
    same); ``step-M`` directories without a manifest (uploads cut short) are left. Raises
    RemoteError (RemoteTimeout past ``timeout``): what was moved stays moved, the rest is
    in place, and a second call finishes the job.
    """
    deadline = Deadline.after(timeout)
    newer = sorted(e.step for e in store.catalog(timeout) if e.step > step)
    if not newer:
        return RemoteSetAside()
    stamp = stamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    branch = f"{store.root}/{BRANCHES_DIR}/{stamp}"
    for moved in newer:
        _copy_checkpoint(store, moved, f"{branch}/{checkpoint_name(moved)}", deadline)
        store.delete(moved, max(0.0, deadline.at - time.monotonic()))
    return RemoteSetAside(branch, newer)


def _copy_checkpoint(store: RemoteStore, step: int, target: str, deadline: Deadline) -> None:
    """Every object of remote ``step`` to ``target``, the manifest last."""
    source = store.path_of(step)
    listed = store.transport.call("find", source, detail=False, deadline=deadline)
    names = sorted(n[len(source) + 1 :] for n in listed if n.startswith(f"{source}/"))
    if MANIFEST_NAME not in names:
        raise RemoteError(f"step {step}: its manifest went away while it was set aside")
    names.remove(MANIFEST_NAME)
    for name in [*names, MANIFEST_NAME]:
        if not store.fs.async_impl:  # a local or mounted filesystem: folders are real
            parent = f"{target}/{name}".rsplit("/", 1)[0]
            store.transport.call("makedirs", parent, exist_ok=True, deadline=deadline)
        store.transport.call("copy", f"{source}/{name}", f"{target}/{name}", deadline=deadline)
