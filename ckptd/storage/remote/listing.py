"""``ckptd list URL`` and ``ckptd verify URL/step-N`` on a remote store (s3://, gs://, ...).

Storage options come from fsspec's own configuration: environment variables such as
``FSSPEC_S3_ENDPOINT_URL`` or ``~/.config/fsspec/*.json``; credentials from the provider's
usual chain. A full check downloads into a temporary directory and verifies every digest.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ckptd.storage.remote.url import check_remote_url, redact
from ckptd_client.store import Checkpoint

if TYPE_CHECKING:  # fsspec is imported only when a remote is named
    from ckptd.storage.remote.store import RemoteStore

__all__ = ["inspect_remote", "is_remote", "scan_remote"]

_STEP_NAME = re.compile(r"^step-(\d{8,})$")


class RemoteListingError(Exception):
    """The remote cannot be read; the message names the URL (credentials removed)."""


def is_remote(argument: str | None) -> bool:
    return bool(argument) and "://" in str(argument)


def scan_remote(url: str, full: bool = False) -> list[Checkpoint]:
    """The checkpoints under ``url``, oldest first; ``full`` downloads and verifies each.

    A step of a multi-node job whose nodes' parts are not all up yet is listed as invalid,
    its reason naming the ranks (and nodes) whose parts are missing."""
    from ckptd.storage.remote.parts import incomplete_steps
    from ckptd.storage.remote.store import RemoteError

    store = _open(url)
    try:
        found = store.list()
        if full:
            found = [_check(store, c.step) if c.valid else c for c in found]
        found = sorted([*found, *incomplete_steps(store)], key=lambda c: c.step)
    except RemoteError as exc:
        raise RemoteListingError(f"{redact(url)}: {exc}") from None
    return found


def inspect_remote(url: str) -> Checkpoint:
    """Verify the remote checkpoint at ``url`` (``.../step-N``) against its manifest."""
    root, _, name = url.rstrip("/").rpartition("/")
    match = _STEP_NAME.match(name)
    if not match or "://" not in root:
        raise RemoteListingError(f"{redact(url)}: expected a URL ending in /step-NNNNNNNN")
    from ckptd.storage.remote.store import RemoteError

    try:
        return _check(_open(root), int(match.group(1)))
    except RemoteError as exc:
        raise RemoteListingError(f"{redact(url)}: {exc}") from None


def _open(url: str) -> RemoteStore:
    from ckptd.storage.remote.store import RemoteStore

    try:
        return RemoteStore(check_remote_url(url, Path.cwd()))
    except ValueError as exc:
        raise RemoteListingError(str(exc)) from None
    except Exception as exc:  # a backend refusing its options fails in its own way
        raise RemoteListingError(f"{redact(url)}: {type(exc).__name__}: {exc}") from None


def _check(store: RemoteStore, step: int) -> Checkpoint:
    from ckptd.storage.remote.store import InvalidRemoteCheckpoint

    where = Path(store.path_of(step))
    with tempfile.TemporaryDirectory(prefix="ckptd-verify-") as scratch:
        try:
            got = store.download(step, Path(scratch))
        except InvalidRemoteCheckpoint as exc:
            return Checkpoint(where, step, valid=False, reason=exc.reason)
    return Checkpoint(where, step, got.time, got.bytes, got.metrics)
