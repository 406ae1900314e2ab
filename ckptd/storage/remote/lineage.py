"""One lineage per remote prefix: the rule, as pure functions over a listing.

A lineage is one run history (``ckptd_client.manifest.Lineage``): every manifest records
the id it inherited from the checkpoint its run resumed from. When a daemon first sees
the remote (at launch, or when a remote that was down at launch answers), it compares:

- the remote's newest valid checkpoint is past the job's progress: the remote is
  **ahead**; the job is restarted from it (``remote.ahead``) and nothing of the job's own
  history is uploaded;
- otherwise the job is ahead: its uploads go on, and every remote checkpoint of another
  lineage older than one of its uploads is deleted (``remote.pruned {why: "other
  lineage"}``), so a replacement machine can only resume from this history.

A checkpoint whose manifest records no lineage (written before lineages were) belongs to
any lineage: it is never deleted as another's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ckptd.storage.remote.store import RemoteEntry

__all__ = ["Reconciled", "is_ours", "reconcile", "superseded"]


@dataclass(frozen=True)
class Reconciled:
    """What a listing of the remote means for a job of ``lineage`` at some progress."""

    ahead: RemoteEntry | None  # the remote's newest valid one, when past the job's progress
    newest_ours: int | None  # the newest valid remote step of the job's lineage
    others: list[int]  # remote steps of other lineages


def is_ours(entry: RemoteEntry, lineage: str | None) -> bool:
    """Whether ``entry`` belongs to ``lineage`` (None on either side: it may)."""
    return entry.lineage is None or lineage is None or entry.lineage == lineage


def reconcile(catalog: Iterable[RemoteEntry], lineage: str | None, progress: int) -> Reconciled:
    """The remote against a job of ``lineage`` whose newest step is ``progress`` (-1: none)."""
    listed = list(catalog)
    valid = [e for e in listed if e.valid]
    newest = max(valid, key=lambda e: e.step, default=None)
    ours = [e.step for e in valid if is_ours(e, lineage)]
    return Reconciled(
        ahead=newest if newest is not None and newest.step > progress else None,
        newest_ours=max(ours, default=None),
        others=sorted(e.step for e in listed if not is_ours(e, lineage)),
    )


def superseded(
    catalog: Iterable[RemoteEntry], lineage: str | None, uploaded: int
) -> list[RemoteEntry]:
    """Remote checkpoints of other lineages that the upload of step ``uploaded`` supersedes."""
    return [e for e in catalog if not is_ours(e, lineage) and e.step < uploaded]
