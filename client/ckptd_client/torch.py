"""torch helpers (needs the ``torch`` extra): synchronous and background saves, and loading.

    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
    ckptd_client.torch.save_async(ck, step, state, metrics={"loss": loss})
    ...
    restored = ckptd_client.torch.load(ck)          # None on a fresh start

Each top-level key of ``state`` becomes one file (``model.pt``, ``optimizer.pt``, ...),
so files are hashed in parallel and can be loaded separately. ``save_async`` returns
after a snapshot: every tensor is copied to CPU memory (pinned when CUDA is present)
and everything else deep-copied, so training may change the originals at once. The
snapshot's host memory is kept and reused by the next snapshot of the same shapes
(so only the first save pays for allocating it): one extra copy of the tensors stays
in host memory per client; with at most one save in flight, that is the bound.
"""

from __future__ import annotations

import copy
import re
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, cast

import torch

from ._client import Client
from ._digest import HashingWriter
from .store import Checkpoint

__all__ = ["load", "save", "save_async", "snapshot"]

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class _Buffers:
    """Host memory of the previous snapshot, reused by the next one (no new page faults)."""

    def __init__(self) -> None:
        self._free: dict[tuple[Any, ...], list[torch.Tensor]] = {}
        self.in_use: list[torch.Tensor] = []

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        key = (tuple(tensor.shape), tensor.dtype, tensor.is_cuda)
        free = self._free.get(key)
        buffer = (
            free.pop()
            if free
            else torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=tensor.is_cuda)
        )
        self.in_use.append(buffer)
        return buffer

    def recycle(self) -> None:
        """The snapshot that used the buffers is committed: they may be written again."""
        for buffer in self.in_use:
            self._free.setdefault(
                (tuple(buffer.shape), buffer.dtype, buffer.is_pinned()), []
            ).append(buffer)
        self.in_use = []


_buffers: weakref.WeakKeyDictionary[Client, _Buffers] = weakref.WeakKeyDictionary()


def snapshot(state: Any, buffers: _Buffers | None = None) -> Any:
    """A copy of ``state`` that training cannot change: tensors copied to (pinned) CPU memory."""
    if isinstance(state, torch.Tensor):
        tensor = state.detach()
        if buffers is not None:
            return buffers.take(tensor).copy_(tensor)
        if tensor.is_cuda:
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            return host.copy_(tensor)
        return tensor.clone()
    if isinstance(state, Mapping):
        items = ((key, snapshot(value, buffers)) for key, value in state.items())
        return type(state)(items)  # type: ignore[call-arg]
    if isinstance(state, (list, tuple)):
        copies = [snapshot(value, buffers) for value in state]
        return type(state)(copies) if not hasattr(state, "_fields") else type(state)(*copies)
    return copy.deepcopy(state)


def save(
    ck: Client, step: int, state: Mapping[str, Any], metrics: dict[str, Any] | None = None
) -> None:
    """Write ``state`` (one file per key) and commit it before returning."""
    with ck.checkpoint(step, metrics=metrics) as directory:
        _writer(state)(directory)


def save_async(
    ck: Client, step: int, state: Mapping[str, Any], metrics: dict[str, Any] | None = None
) -> None:
    """Snapshot ``state`` now, then write and commit it in the background (see the module)."""
    ck.wait()  # bound host memory: the previous snapshot is written before the next is taken
    buffers = _buffers.setdefault(ck, _Buffers())
    buffers.recycle()
    ck.checkpoint_async(step, _writer(snapshot(state, buffers)), metrics=metrics)


def load(
    source: Client | Checkpoint | Path | None,
    map_location: Any = "cpu",
    weights_only: bool = True,
) -> dict[str, Any] | None:
    """The state saved by :func:`save`, or None on a fresh start; ``weights_only`` by default."""
    path = _checkpoint_path(source)
    if path is None:
        return None
    return {
        file.stem: torch.load(file, map_location=map_location, weights_only=weights_only)
        for file in sorted(path.glob("*.pt"))
    }


def _writer(state: Mapping[str, Any]) -> Callable[[Path], None]:
    if not isinstance(state, Mapping):
        raise TypeError("state must be a mapping of names to state dicts, tensors or values")

    def write(directory: Path) -> None:
        for key, value in state.items():
            # Digested as it is written: the commit then only fsyncs, no read-back.
            with HashingWriter(directory / f"{_SAFE.sub('_', str(key))}.pt") as handle:
                torch.save(value, cast(IO[bytes], handle))

    return write


def _checkpoint_path(source: Client | Checkpoint | Path | None) -> Path | None:
    if source is None:
        return None
    if isinstance(source, Client):
        restored = source.restore()
        return restored.path if restored else None
    if isinstance(source, Checkpoint):
        return source.path
    return Path(source)
