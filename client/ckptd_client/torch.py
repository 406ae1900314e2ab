"""torch helpers (needs the ``torch`` extra): synchronous and background saves, and loading.

    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
    ckptd_client.torch.save_async(ck, step, state, metrics={"loss": loss})
    ...
    restored = ckptd_client.torch.load(ck)          # None on a fresh start

Each top-level key of ``state`` becomes one file (``model.pt``, ``optimizer.pt``, ...),
so files are hashed in parallel and can be loaded separately.

Sharded states (FSDP, DTensor, or any state every rank holds part of) go through
``torch.distributed.checkpoint`` (DCP), in DCP's own format and with its planner, into the
one directory every rank of a torchrun group shares; ``load_sharded`` reshards on load:

    state = {"model": model.state_dict()}                     # on every rank, at the agreed step
    ckptd_client.torch.save_sharded(ck, step, state)          # or save_sharded_async(...)
    ckptd_client.torch.load_sharded(ck, state)                # in place; False on a fresh start
 ``save_async`` returns
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
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import IO, Any, cast

import torch

from ._client import Client
from ._digest import HashingWriter
from .store import Checkpoint

__all__ = [
    "load",
    "load_sharded",
    "save",
    "save_async",
    "save_sharded",
    "save_sharded_async",
    "snapshot",
]

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


def save_sharded(
    ck: Client,
    step: int,
    state_dict: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    *,
    process_group: Any = None,
) -> None:
    """Every rank: write its shards of ``state_dict`` with DCP; the checkpoint commits once all did.

    DCP's ``.metadata`` and ``__<rank>_<n>.distcp`` files land in the shared directory and
    are all in the manifest. A failure on any rank raises on every rank; nothing commits.
    """
    import torch.distributed.checkpoint as dcp

    with ck.checkpoint(step, metrics=metrics) as directory:
        dcp.save(
            state_dict,
            checkpoint_id=directory,
            process_group=process_group,
            no_dist=not _distributed(),
        )


def save_sharded_async(
    ck: Client,
    step: int,
    state_dict: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    *,
    process_group: Any = None,
) -> None:
    """Every rank: ``dcp.async_save`` into the shared directory; returns once DCP has staged.

    The upload and the commit run in the background (``ck.wait()`` or the next save waits
    for them; a failure is raised by the next client call, as with ``checkpoint_async``).
    DCP's background collectives run on a gloo group of their own (made once, by every
    rank at its first call) unless ``process_group`` is given, so they never interleave
    with training's collectives. Outside a torchrun group the state is snapshotted and
    written with ``dcp.save`` on the background thread.
    """
    import torch.distributed.checkpoint as dcp

    ck.wait()
    if not (_distributed() and ck.in_group):
        copy_ = snapshot(state_dict)
        ck.checkpoint_async(
            step,
            lambda d: dcp.save(copy_, checkpoint_id=d, no_dist=not _distributed()),
            metrics=metrics,
        )
        return
    directory = ck.shared_directory(step)
    try:
        pending: Any = dcp.async_save(
            state_dict, checkpoint_id=directory, process_group=process_group or _save_group()
        )
    except Exception as exc:  # reported through the group save, so every rank hears of it
        error = exc

        def fail(_directory: Path) -> None:
            raise error

        ck.checkpoint_async(step, fail, metrics=metrics)
        return
    upload = getattr(pending, "upload_completion", pending)  # an AsyncSaveResponse, or a Future
    ck.checkpoint_async(step, lambda _d: upload.result(), metrics=metrics)


def load_sharded(
    source: Client | Checkpoint | Path | None,
    state_dict: dict[str, Any],
    *,
    process_group: Any = None,
) -> bool:
    """Load a DCP checkpoint into ``state_dict`` in place (resharding as needed).

    Returns False (and leaves ``state_dict`` alone) on a fresh start. Every rank gets the
    same checkpoint: ``restore()`` is the daemon's verified resume point on all of them.
    """
    import torch.distributed.checkpoint as dcp

    path = _checkpoint_path(source)
    if path is None:
        return False
    dcp.load(
        state_dict, checkpoint_id=path, process_group=process_group, no_dist=not _distributed()
    )
    return True


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


_save_groups: dict[Any, Any] = {}


def _save_group() -> Any:
    """A gloo process group for DCP's background collectives, one per default group."""
    import torch.distributed as dist

    default = dist.group.WORLD
    if default not in _save_groups:
        _save_groups[default] = dist.new_group(backend="gloo")
    return _save_groups[default]


def _without_crc32() -> AbstractContextManager[Any]:
    """torch.save without its CRC32 of every record, in this thread (torch's setting is
    thread-local): the manifest's digest already covers every byte, and the CRC costs more
    than the copy into RAM (0.17 s of a 0.25 s save of 1 GiB here). ``torch.load`` never
    needs it."""
    try:
        from torch.utils.serialization import config
    except ImportError:
        return nullcontext()
    if not hasattr(config.save, "compute_crc32") or not hasattr(config, "patch"):
        return nullcontext()
    return cast(AbstractContextManager[Any], config.patch(**{"save.compute_crc32": False}))


def _writer(state: Mapping[str, Any]) -> Callable[[Path], None]:
    if not isinstance(state, Mapping):
        raise TypeError("state must be a mapping of names to state dicts, tensors or values")

    def write(directory: Path) -> None:
        for key, value in state.items():
            # Digested as it is written: the commit then only fsyncs, no read-back.
            path = directory / f"{_SAFE.sub('_', str(key))}.pt"
            with _without_crc32(), HashingWriter(path) as handle:
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
