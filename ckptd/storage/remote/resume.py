"""Resuming from the remote store: a fresh machine fetches the newest checkpoint that verifies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ckptd.storage.remote.store import (
    InvalidRemoteCheckpoint,
    RemoteEntry,
    RemoteError,
    RemoteStore,
)
from ckptd.storage.remote.url import RemoteUnusable, redact
from ckptd_client.store import Checkpoint

__all__ = ["RemoteResume", "RemoteUnusable", "fetch_newer"]


@dataclass(frozen=True)
class RemoteResume:
    """What the remote offered at launch.

    ``checkpoint``: downloaded into the checkpoint directory and verified in full (None when
    nothing remote is newer than the local resume point). ``rejected``: remote checkpoints
    that failed verification (log ``checkpoint.invalid``; they stay remote, nothing local is
    quarantined). ``error``: the remote could not be read (warn, resume from local).
    ``newest_remote_step``: the newest valid-looking remote step. ``catalog``: the listing
    (with lineages; the rejected ones marked invalid), None when it could not be read.
    """

    checkpoint: Checkpoint | None = None
    rejected: list[Checkpoint] = field(default_factory=list)
    error: str | None = None
    newest_remote_step: int | None = None
    catalog: list[RemoteEntry] | None = field(default=None, compare=False)


def fetch_newer(
    store: RemoteStore,
    checkpoint_dir: Path,
    newer_than: int = -1,
    timeout: float = 600.0,
    list_timeout: float = 30.0,
    refuse: Callable[[Path], str | None] = lambda path: None,
) -> RemoteResume:
    """Download the newest remote checkpoint above step ``newer_than`` that verifies.

    Candidates are tried newest first; one that fails verification is skipped and the next
    older one tried. Listing is bounded by ``list_timeout`` (what a remote that is down
    costs the launch), each download by ``timeout``. A remote that is down or too slow is
    reported in ``error``; one that cannot work as configured raises RemoteUnusable.
    ``refuse(directory)`` judges each download before it is put in place (a reason: it is
    rejected like one that failed verification).
    """
    rejected: list[Checkpoint] = []
    try:
        catalog = store.catalog(list_timeout)
    except RemoteError as exc:
        if isinstance(exc.__cause__, (FileNotFoundError, PermissionError, NotADirectoryError)):
            raise RemoteUnusable(f"{redact(store.url)}: {exc}") from None
        return RemoteResume(error=str(exc))
    newest = max((e.step for e in catalog if e.valid), default=None)
    for index in reversed(range(len(catalog))):
        candidate = catalog[index].checkpoint
        if candidate.step <= newer_than:
            break
        if not candidate.valid:
            rejected.append(candidate)
            continue
        try:
            got = store.download(candidate.step, checkpoint_dir, timeout, refuse)
        except InvalidRemoteCheckpoint as exc:
            bad = Checkpoint(candidate.path, exc.step, valid=False, reason=exc.reason)
            rejected.append(bad)
            catalog[index] = RemoteEntry(bad, catalog[index].lineage)
        except RemoteError as exc:
            return RemoteResume(None, rejected, str(exc), newest, catalog)
        else:
            return RemoteResume(got, rejected, None, newest, catalog)
    return RemoteResume(None, rejected, None, newest, catalog)
