"""``ckptd list URL`` and ``ckptd verify URL/step-N`` on a remote store (s3://, gs://, ...).

Storage options come from fsspec's own configuration: environment variables such as
``FSSPEC_S3_ENDPOINT_URL`` or ``~/.config/fsspec/*.json``; credentials from the provider's
usual chain. A full check downloads into a temporary directory and verifies every digest;
a ``judge`` (the signature check of ``--key``) sees each verified copy before it is removed.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ckptd.storage.branches import BRANCHES_DIR
from ckptd.storage.remote.url import check_remote_url, redact
from ckptd_client.store import Checkpoint

if TYPE_CHECKING:  # fsspec is imported only when a remote is named
    from ckptd.storage.remote.store import RemoteStore

__all__ = ["inspect_remote", "is_remote", "scan_remote", "scan_remote_branches"]

_STEP_NAME = re.compile(r"^step-(\d{8,})$")

Judge = Callable[[Path, Path], None]  # (the remote checkpoint's path, its verified copy)


class RemoteListingError(Exception):
    """The remote cannot be read; the message names the URL (credentials removed)."""


def is_remote(argument: str | None) -> bool:
    return bool(argument) and "://" in str(argument)


def scan_remote(url: str, full: bool = False, judge: Judge | None = None) -> list[Checkpoint]:
    """The checkpoints under ``url``, oldest first; ``full`` downloads and verifies each, and
    ``judge`` is called with each copy that verified (not with one that did not).

    A step of a multi-node job whose nodes' parts are not all up yet is listed as invalid,
    its reason naming the ranks (and nodes) whose parts are missing."""
    from ckptd.storage.remote.parts import incomplete_steps
    from ckptd.storage.remote.store import RemoteError

    store = _open(url)
    try:
        found = store.list()
        if full:
            found = [_check(store, c.step, judge) if c.valid else c for c in found]
        found = sorted([*found, *incomplete_steps(store)], key=lambda c: c.step)
    except RemoteError as exc:
        raise RemoteListingError(f"{redact(url)}: {exc}") from None
    return found


def scan_remote_branches(
    url: str, full: bool = False, judge: Judge | None = None
) -> list[tuple[str, Checkpoint]]:
    """``(branch, checkpoint)`` for each checkpoint that going back set aside under
    ``url/.branches/`` (:mod:`ckptd.storage.remote.branches`), oldest branch first."""
    from ckptd.storage.remote.store import Deadline, RemoteError

    store = _open(url)
    try:
        listed = store.transport.call(
            "ls", f"{store.root}/{BRANCHES_DIR}", detail=False, deadline=Deadline.after(60)
        )
    except RemoteError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return []
        raise RemoteListingError(f"{redact(url)}: {exc}") from None
    names = sorted(name.rstrip("/").rsplit("/", 1)[-1] for name in listed)
    base = f"{url.rstrip('/')}/{BRANCHES_DIR}"
    return [(name, c) for name in names for c in scan_remote(f"{base}/{name}", full, judge)]


def inspect_remote(url: str, judge: Judge | None = None) -> Checkpoint:
    """Verify the remote checkpoint at ``url`` (``.../step-N``) against its manifest;
    ``judge`` sees the downloaded copy when it verified."""
    root, _, name = url.rstrip("/").rpartition("/")
    match = _STEP_NAME.match(name)
    if not match or "://" not in root:
        raise RemoteListingError(f"{redact(url)}: expected a URL ending in /step-NNNNNNNN")
    from ckptd.storage.remote.store import RemoteError

    try:
        return _check(_open(root), int(match.group(1)), judge)
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


def _check(store: RemoteStore, step: int, judge: Judge | None = None) -> Checkpoint:
    from ckptd.storage.remote.store import InvalidRemoteCheckpoint

    where = Path(store.path_of(step))

    def look(copy: Path) -> None:  # the download's last word before the copy is put in place
        if judge is not None:
            judge(where, copy)

    with tempfile.TemporaryDirectory(prefix="ckptd-verify-") as scratch:
        try:
            got = store.download(step, Path(scratch), refuse=look)
        except InvalidRemoteCheckpoint as exc:
            return Checkpoint(where, step, valid=False, reason=exc.reason)
    return Checkpoint(where, step, got.time, got.bytes, got.metrics)
