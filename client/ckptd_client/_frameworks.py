"""What the framework callbacks share: one client per process, metrics, moving a save into place.

``ckptd_client.transformers``, ``.lightning`` and ``.keras`` import their framework;
this module imports none, so it can say which extra is missing.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import connect
from ._client import Client

_shared: Client | None = None


def shared_client(client: Client | None = None) -> Client:
    """``client`` when given, else the one client of this process (connected on first use).

    The callback and ``resume_path()``/``restore()`` must talk through the same
    connection, so the first of them to run connects and the other reuses it.
    """
    global _shared
    if client is not None:
        return client
    if _shared is None:
        _shared = connect()
    return _shared


def missing_framework(error: ModuleNotFoundError, module: str, extra: str) -> ImportError | None:
    """The one-line error for a framework that is not installed, or None for another failure."""
    if error.name is None or error.name.split(".")[0] != module.split(".")[0]:
        return None  # the framework is there but one of its own imports failed: show that
    return ImportError(
        f"ckptd_client.{extra} needs {module}, which is not installed: pip install 'ckptd[{extra}]'"
    )


def numeric_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among logged values (floats, ints, one-element tensors), as floats."""
    found: dict[str, float] = {}
    for name, value in values.items():
        if isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError, RuntimeError):
            continue  # text, lists, many-element tensors: not a metric the manifest can rank by
        if math.isfinite(number):
            found[str(name)] = number
    return found


def move_into(source: Path, target: Path) -> None:
    """Move everything in ``source`` into ``target`` and remove ``source``.

    Renames within one file system (no byte is copied); across file systems each
    file is copied and its original removed, so one copy remains either way.
    A hard link would be cheaper still, but a framework that saves the same step
    again rewrites its files in place, which would change a committed checkpoint.
    """
    if source.is_symlink() or not source.is_dir():
        raise FileNotFoundError(f"the framework's save {source} is not a directory")
    for entry in os.scandir(source):
        shutil.move(entry.path, target / entry.name)
    source.rmdir()


def checkpoint_file(path: Path, name: str, writer: str) -> Path:
    """``path / name``, or a one-line error when that checkpoint was not written by ``writer``."""
    file = path / name
    if not file.is_file():
        raise ValueError(
            f"ckptd checkpoint {path} has no {name}: it was not saved by the {writer} callback"
        )
    return file
