"""A tiny DDP job (gloo on CPU) for the rank tests, started by torchrun under ckptd.

Every rank trains the same model on its own deterministic batches, saves when the client
says so (``--format files``: each rank writes ``rank-<r>.pt``; ``dcp``/``dcp-async``: a
sharded DCP save) and records what it saw in a JSONL file, one object per line with
``rank``: ``start`` {pid, resume_step}, ``saved`` {step}, ``save_failed`` {step, error},
``stop`` {step}, ``done`` {step, digest} (the final weights). ``--save-every K`` also saves
every K steps unasked; ``--fail-rank R`` makes rank R's first save raise after writing;
``--stall-commit DIR:STEP`` makes a rank hang in its commit of STEP into checkpoint directory
DIR (recording ``committing`` {step}), for a test to SIGKILL that node there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.nn.parallel import DistributedDataParallel

import ckptd_client
import ckptd_client.manifest
import ckptd_client.torch as ckpt_torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", required=True)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--sleep", type=float, default=0.02)
    parser.add_argument("--format", choices=("files", "dcp", "dcp-async"), default="files")
    parser.add_argument("--save-every", type=int, default=0)
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--stall-commit", default="")
    parser.add_argument(
        "--exit-after-stop", type=int, default=None, help="end so after a stop (a teardown abort)"
    )
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    log = open(args.record, "a", buffering=1)  # noqa: SIM115 - kept open for the run

    def record(event: str, **fields: Any) -> None:
        log.write(json.dumps({"event": event, "rank": rank, **fields}) + "\n")

    if args.stall_commit:
        directory, _, at = args.stall_commit.rpartition(":")
        stall_commit(Path(directory), int(at), record)

    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Linear(8, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ck = ckptd_client.connect()
    last = ck.restore()
    if last is not None:
        if args.format == "files":
            state = torch.load(last.path / f"rank-{rank}.pt", weights_only=True)
            model.module.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        else:
            model_state, optimizer_state = get_state_dict(model, optimizer)
            sharded = {"model": model_state, "optimizer": optimizer_state}
            assert ckpt_torch.load_sharded(ck, sharded)
            set_state_dict(
                model,
                optimizer,
                model_state_dict=sharded["model"],
                optim_state_dict=sharded["optimizer"],
            )
    record("start", pid=os.getpid(), resume_step=last.step if last else None)

    for step in range(last.step + 1 if last else 0, args.steps):
        batches = torch.Generator().manual_seed(step * 1000 + rank)
        x, y = torch.randn(16, 8, generator=batches), torch.randn(16, 4, generator=batches)
        loss = ((model(x) - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        time.sleep(args.sleep)
        ck.step(step)
        if ck.should_checkpoint() or (args.save_every and (step + 1) % args.save_every == 0):
            try:
                save(ck, step, args.format, model, optimizer, rank, fail=rank == args.fail_rank)
            except Exception as exc:
                record("save_failed", step=step, error=str(exc))
            else:
                record("saved", step=step)
            args.fail_rank = -1
        if ck.should_stop():
            record("stop", step=step)
            if args.exit_after_stop is not None:
                ck.close()
                os._exit(args.exit_after_stop)
            break
    else:
        ck.wait()
        record("done", step=args.steps - 1, digest=digest(model.module))
    ck.close()
    dist.destroy_process_group()


def save(ck: Any, step: int, fmt: str, model: Any, optimizer: Any, rank: int, fail: bool) -> None:
    if fmt == "files":
        with ck.checkpoint(step) as directory:
            state = {"model": model.module.state_dict(), "optimizer": optimizer.state_dict()}
            torch.save(state, directory / f"rank-{rank}.pt")
            if fail:
                raise OSError("injected: disk full")
        return
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    if fmt == "dcp":
        ckpt_torch.save_sharded(ck, step, state)
    else:
        ckpt_torch.save_sharded_async(ck, step, state)


def stall_commit(directory: Path, step: int, record: Any) -> None:
    """Hang in the commit of ``step`` into ``directory``: after every node wrote, before this
    node's rename (the client calls ``manifest.commit`` through the module)."""
    original = ckptd_client.manifest.commit

    def commit(temp_dir: Path, at: int, *args: Any, **kwargs: Any) -> Any:
        if at == step and Path(temp_dir).parent.resolve() == directory.resolve():
            record("committing", step=at)
            while True:
                time.sleep(1)
        return original(temp_dir, at, *args, **kwargs)

    ckptd_client.manifest.commit = commit


def digest(module: torch.nn.Module) -> str:
    hasher = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        hasher.update(name.encode())
        hasher.update(tensor.detach().numpy().tobytes())
    return hasher.hexdigest()


if __name__ == "__main__":
    main()
