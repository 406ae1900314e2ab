"""ckptd_client: what a training script imports to checkpoint on request and resume.

    ck = ckptd_client.connect()
    last = ck.restore()
    for step in range(last.step + 1 if last else 0, total):
        ...
        ck.step(step)
        if ck.should_checkpoint():
            with ck.checkpoint(step, metrics={"loss": loss}) as d:
                save(d / "model.pt")
        if ck.should_stop():
            break

Depends on pyzmq and the standard library only; never imports the daemon.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import _group_resume, protocol
from ._channels import DaemonChannel, StandaloneChannel
from ._client import Client
from ._digest import HashingWriter as create
from ._group import Group
from ._stacks import register_dump
from .manifest import CommitError, lineage_after, remove_temporaries
from .store import Checkpoint, inspect, newest_valid

__all__ = ["Checkpoint", "Client", "CommitError", "connect", "create"]
__version__ = "0.1.0"


def connect(
    run_dir: str | os.PathLike[str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> Client:
    """Connect to the supervising ckptd, or run standalone when there is none.

    Under ckptd (``CKPTD_ENDPOINT`` set) requests arrive over the job channel and
    the daemon's verified ``CKPTD_RESUME_FROM`` is the resume point. Standalone,
    SIGTERM/SIGINT (stop), SIGUSR1 and a ``CHECKPOINT`` file in ``run_dir`` (or
    ``CKPTD_RUN_DIR``) are the request sources, checkpoints go to
    ``checkpoint_dir``, ``CKPTD_CHECKPOINT_DIR`` or ``./checkpoints``, and the
    newest valid checkpoint found there is the resume point; leftover ``.tmp-``
    directories there are removed when their writer is gone.
    """
    env = os.environ
    ckpt_dir = Path(checkpoint_dir or env.get(protocol.ENV_CHECKPOINT_DIR) or "checkpoints")
    endpoint = env.get(protocol.ENV_ENDPOINT)
    if endpoint:
        resume_path = env.get(protocol.ENV_RESUME_FROM)
        resume = inspect(Path(resume_path), full=False) if resume_path else None
        if resume is not None and not resume.valid:
            raise RuntimeError(
                f"ckptd_client: resume checkpoint {resume_path} is invalid: {resume.reason}"
            )
        group = Group.from_env(env)
        incomplete = None
        if group is not None and group.nodes:  # the step every rank of every node has
            resume, incomplete = _group_resume.agree(group, ckpt_dir, resume)
            os.environ[protocol.ENV_RESUME_FROM] = str(resume.path) if resume else ""
            os.environ[protocol.ENV_RESUME_STEP] = str(resume.step) if resume else ""
        lineage = lineage_after(resume.path if resume else None, env.get(protocol.ENV_LINEAGE))
        register_dump()  # so that a hang can be explained before the job is killed
        channel = DaemonChannel(endpoint, rank=int(env.get("RANK", "0") or 0))
        client = Client(channel, ckpt_dir, resume, standalone=False, lineage=lineage)
        if incomplete is not None and group is not None and group.local_rank == 0:
            channel.send("incomplete", **incomplete.message())  # one line in each node's log
        return client
    remove_temporaries(ckpt_dir, only_dead_writers=True)  # another process may be saving there
    signal_dir = run_dir or env.get(protocol.ENV_RUN_DIR)
    resume = newest_valid(ckpt_dir)
    return Client(
        StandaloneChannel(Path(signal_dir) if signal_dir else None),
        ckpt_dir,
        resume,
        standalone=True,
        lineage=lineage_after(resume.path if resume else None),
    )
