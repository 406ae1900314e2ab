"""Which daemons may share a checkpoint directory: the nodes of one multi-node job.

A job's identity is its name and, for a job on several nodes, its node group: ``[job]
job_id`` when set, else torchrun's rendezvous id (``--rdzv-id``, or ``PET_RDZV_ID``) when
torchrun's ``--nnodes`` (or ``PET_NNODES``) allows more than one node. Every node of a
torchrun job passes the same rendezvous id, and a requeued SLURM job keeps its
``$SLURM_JOB_ID``, so the daemons of one job agree on it without talking to each other.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ckptd.job_name import launcher_options

_TORCHRUN_DEFAULT_ID = "none"  # what torchrun uses without --rdzv-id: shared by every such job


def node_group(
    job_id: str | None, command: list[str], env: Mapping[str, str] = os.environ
) -> str | None:
    """The id the daemons of one multi-node job share; None for a job on one node."""
    if job_id:
        return job_id
    options = launcher_options(command)
    if options is None or "standalone" in options:
        return None
    if _most_nodes(options.get("nnodes") or env.get("PET_NNODES", "1")) < 2:
        return None
    rdzv = options.get("rdzv-id") or env.get("PET_RDZV_ID", "")
    return f"rdzv:{rdzv}" if rdzv and rdzv != _TORCHRUN_DEFAULT_ID else None


def multi_node(job_id: str | None, command: list[str], env: Mapping[str, str] = os.environ) -> bool:
    """torchrun is told to run on more than one node (with or without a rendezvous id)."""
    options = launcher_options(command)
    if options is None or "standalone" in options:
        return bool(job_id)
    return _most_nodes(options.get("nnodes") or env.get("PET_NNODES", "1")) >= 2


def _most_nodes(nnodes: str) -> int:
    """torchrun's ``--nnodes``: ``N`` or ``MIN:MAX``; 1 when it cannot be read."""
    try:
        return int(nnodes.rpartition(":")[2])
    except ValueError:
        return 1
