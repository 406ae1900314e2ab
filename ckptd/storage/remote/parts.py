"""One step of a multi-node job in the bucket: every node's part, then one manifest.

With a checkpoint directory per node, each node's ``step-N`` holds the parts of its own
ranks (its manifest records them: ``ranks`` of ``world_size``). Every node uploads its files
under the job's one prefix, ``<root>/step-N/<file>``, then its part's manifest,
``<root>/step-N/.ckptd-parts/ranks-<first>-<last>.json``. A node that then finds every
rank's part there merges them into the step's manifest, ``<root>/step-N/ckptd.json``, and
creates it (S3: ``If-None-Match: *``): the merge is the same on every node, so whichever
node creates it, the others find the very same bytes. Until then the step is no remote
checkpoint (it has no manifest). Object stores read their own writes, so of two nodes
finishing together the later listing sees both parts: the manifest is never left unwritten.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ckptd.storage.node_parts import missing_nodes
from ckptd.storage.remote.store import (
    Deadline,
    RemoteError,
    RemoteStore,
    RemoteTimeout,
    UploadResult,
)
from ckptd_client.manifest import MANIFEST_NAME, Manifest, ManifestError, verify
from ckptd_client.store import Checkpoint

__all__ = ["PARTS_DIR", "incomplete_steps", "is_part", "merge", "upload_part"]

PARTS_DIR = ".ckptd-parts"
_WAIT_FOR_PARTS = 0.2  # at a stop, how often the other nodes' parts are looked for
_STEP = re.compile(r"^step-\d{8,}$")


def is_part(local: Path) -> bool:
    """``local`` is one node's part of a step, not a checkpoint of the whole job."""
    checked = verify(local, full=False)
    return checked.manifest is not None and not checked.manifest.complete


def part_name(manifest: Manifest) -> str:
    ranks = manifest.ranks or ()
    return f"{PARTS_DIR}/ranks-{min(ranks, default=0)}-{max(ranks, default=0)}.json"


def upload_part(
    store: RemoteStore,
    local: Path,
    timeout: float,
    before_manifest: Callable[[], None] = lambda: None,
    cancelled: Callable[[], bool] | None = None,
    until: Callable[[], float | None] = lambda: None,
    sent: Callable[[int], None] = lambda size: None,
) -> UploadResult:
    """Upload this node's part of a step; create the step's manifest once every part is up.

    The arguments are :meth:`RemoteStore.upload`'s. A step whose manifest holds this part
    already is not uploaded again. At a stop (``until()`` gives the flush's deadline) the
    upload succeeds only once the step is whole in the bucket: it waits for the other nodes'
    parts and raises RemoteTimeout naming the missing ranks at the deadline.
    """
    started = time.monotonic()
    deadline = Deadline(started + timeout, cancelled or (lambda: False), until)
    checked = verify(local, full=False)
    if not checked.ok or checked.manifest is None:
        raise ValueError(f"{local}: not a valid checkpoint: {checked.reason}")
    manifest = checked.manifest
    step = manifest.step
    existing = store._read_manifest(step, deadline)
    if existing is not None and _holds(existing, manifest):
        return UploadResult(step, 0, time.monotonic() - started)
    pairs = [(local / e.path, store.path_of(step, e.path)) for e in manifest.files]
    store.transport.upload(pairs, deadline=deadline, sent=sent)
    raw = (local / MANIFEST_NAME).read_bytes()
    before_manifest()
    if not store.fs.async_impl:  # a file system with directories: make the parts' one
        store.transport.call(
            "makedirs", store.path_of(step, PARTS_DIR), exist_ok=True, deadline=deadline
        )
    store.transport.call(
        "pipe_file", store.path_of(step, part_name(manifest)), raw, deadline=deadline
    )
    whole, missing = _gather(store, step, deadline)
    try:
        while whole is None and until() is not None:  # a stop: the whole step, or a failure
            deadline.check()
            time.sleep(_WAIT_FOR_PARTS)
            whole, missing = _gather(store, step, deadline)
    except RemoteTimeout:
        raise RemoteTimeout(
            f"step {step}: the parts of ranks {', '.join(map(str, missing))} did not reach "
            "the bucket in time (the step is not a checkpoint of the whole job there)"
        ) from None
    if whole is not None:
        before_manifest()
        _create(store, step, whole.to_json().encode(), deadline)
    return UploadResult(step, manifest.size + len(raw), time.monotonic() - started)


def merge(parts: list[Manifest]) -> Manifest | None:
    """The manifest of the whole step from its parts; None until every rank's part is there.

    Deterministic (every node computes the same bytes): files sorted, the time the newest
    part's, metrics and lineage the lowest rank's part's. Raises ManifestError when two
    parts disagree (another step, another world, one file written by two nodes).
    """
    if not parts:
        return None
    parts = sorted(parts, key=lambda p: min(p.ranks or (0,)))
    world = parts[0].world_size
    if any(p.step != parts[0].step or p.world_size != world for p in parts):
        raise ManifestError("the parts of one step disagree on the step or the world size")
    ranks = sorted({rank for p in parts for rank in p.ranks or ()})
    if world is None or ranks != list(range(world)):
        return None
    files = sorted((entry for p in parts for entry in p.files), key=lambda e: e.path)
    if len({e.path for e in files}) != len(files):
        raise ManifestError("two nodes wrote a file of the same name")
    if len({p.hash for p in parts}) != 1:
        raise ManifestError("the parts were hashed with different algorithms")
    first = parts[0]
    return replace(
        first,
        time=max(p.time for p in parts),
        files=tuple(files),
        ranks=tuple(ranks),
        writer={"name": "ckptd", "parts": len(parts)},
    )


def _holds(raw: bytes, part: Manifest) -> bool:
    try:
        whole = Manifest.from_json(raw)
    except ManifestError:
        return False
    return whole.complete and all(whole.holds(rank) for rank in part.ranks or ())


def _gather(store: RemoteStore, step: int, deadline: Deadline) -> tuple[Manifest | None, list[int]]:
    """Every part of ``step`` uploaded so far, merged (None while some rank's is missing),
    and the ranks whose parts are missing."""
    directory = store.path_of(step, PARTS_DIR)
    names = store.transport.call("ls", directory, detail=False, deadline=deadline)
    contents = store.transport.call("cat", list(names), on_error="raise", deadline=deadline)
    try:
        parts = [Manifest.from_json(raw) for raw in contents.values()]
        whole = merge(parts)
    except ManifestError as exc:
        raise RemoteError(f"step {step}: the nodes' parts do not fit together: {exc}") from None
    held = {rank for part in parts for rank in part.ranks or ()}
    world = max((part.world_size or 0 for part in parts), default=0)
    return whole, [rank for rank in range(world) if rank not in held]


def _create(store: RemoteStore, step: int, raw: bytes, deadline: Deadline) -> None:
    """The step's manifest; another node creating the same one first is no failure."""
    try:
        store._write_manifest(step, raw, deadline)
    except RemoteError:
        if store._read_manifest(step, deadline) != raw:
            raise


def incomplete_steps(store: RemoteStore, timeout: float = 60.0) -> list[Checkpoint]:
    """Steps with nodes' parts but no manifest yet, each saying whose parts are missing."""
    deadline = Deadline.after(timeout)
    listed = store.transport.call("find", store.root, detail=False, deadline=deadline)
    found: dict[int, list[str]] = {}
    for name in listed:
        relative = name[len(store.root) + 1 :].split("/")
        if len(relative) == 3 and relative[1] == PARTS_DIR and _STEP.match(relative[0]):
            found.setdefault(int(relative[0][len("step-") :]), []).append(name)
    whole = {c.step for c in store.list(timeout)}
    steps = []
    for step, names in sorted(found.items()):
        if step in whole:
            continue
        contents = store.transport.call("cat", names, on_error="omit", deadline=deadline)
        parts = []
        for raw in contents.values():
            try:
                parts.append(Manifest.from_json(raw))
            except ManifestError:
                continue
        steps.append(_incomplete(store, step, parts))
    return steps


def _incomplete(store: RemoteStore, step: int, parts: list[Manifest]) -> Checkpoint:
    present = [list(p.ranks or ()) for p in parts]
    world = max((p.world_size or 0 for p in parts), default=0)
    held = {rank for ranks in present for rank in ranks}
    missing = [rank for rank in range(world) if rank not in held]
    nodes = missing_nodes(present, missing)
    where = f" (node{'s' if len(nodes) > 1 else ''} {', '.join(map(str, nodes))})" if nodes else ""
    reason = f"incomplete: the parts of ranks {', '.join(map(str, missing))}{where} are missing"
    return Checkpoint(Path(store.path_of(step)), step, valid=False, reason=reason)
