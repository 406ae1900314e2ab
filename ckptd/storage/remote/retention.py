"""Remote retention after an upload, on the uploader's thread.

Three kinds of remote checkpoint go: this lineage's beyond the retention rules (never its
newest nor the one just uploaded), other lineages' older than the upload (``remote_lineage``:
a prefix holds one history), and leftovers of failed uploads (files without a manifest)
below the newest. Each deletion is preceded by a lease check (``Fenced`` propagates) and
takes the manifest first, so a half-deleted checkpoint is no checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable

from ckptd.storage.remote.lineage import is_ours, superseded
from ckptd.storage.remote.outcomes import Outcome, RemotePruned
from ckptd.storage.remote.store import RemoteStore
from ckptd.storage.retention import RetentionRules, plan

__all__ = ["prune_remote"]


def prune_remote(
    store: RemoteStore,
    rules: RetentionRules,
    lineage: str | None,
    uploaded: int,
    *,
    check_lease: Callable[[], None],
    post: Callable[[Outcome], None],
    stopping: Callable[[], bool],
    pending: Callable[[int], bool],
) -> list[int]:
    """Prune after the upload of step ``uploaded``; return the other lineages' steps left.

    ``stopping()`` true ends the pruning early; ``pending(step)`` protects a step about to
    go up. Raises Fenced (the lease was taken over) or RemoteError.
    """
    found = store.catalog()
    ours = [e.checkpoint for e in found if is_ours(e, lineage)]
    newest = max((e.step for e in found if e.valid), default=-1)
    newest_ours = max((c.step for c in ours if c.valid), default=-1)
    keep = [c.path for c in ours if c.step in (newest_ours, uploaded)]
    doomed = [(c.step, "retention") for c in plan(ours, rules, keep)]
    doomed += [(e.step, "other lineage") for e in superseded(found, lineage, uploaded)]
    gone: set[int] = set()
    for step, why in doomed:
        if stopping():
            break
        check_lease()
        store.delete(step)
        gone.add(step)
        post(RemotePruned(step, why))
    else:
        listed = {e.step for e in found}
        for step in store.step_dirs():
            if step not in listed and step < newest and not pending(step):
                check_lease()
                store.delete_leftover(step)
    return [e.step for e in found if not is_ours(e, lineage) and e.step not in gone]
