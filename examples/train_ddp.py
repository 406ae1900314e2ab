"""Data-parallel training on several processes (DDP, gloo on CPU or NCCL on GPUs) under ckptd.

Every rank calls the same client methods at every step; ckptd makes them agree, so all
ranks save the same step into one checkpoint directory that commits once every rank
has written its part. ``--sharded`` saves through torch.distributed.checkpoint (DCP),
the way FSDP and DTensor states are saved; otherwise rank 0 writes the (replicated)
DDP state alone and the other ranks enter the block and write nothing.

    ckptd run -- torchrun --nproc-per-node 2 --max-restarts 0 examples/train_ddp.py
    ckptd checkpoint --wait        # both ranks save the same step
    ckptd stop                     # both ranks save a final step, then exit 0
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.nn.parallel import DistributedDataParallel

import ckptd_client
import ckptd_client.torch as ckpt_torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--step-time", type=float, default=0.01)
    parser.add_argument("--print-every", type=int, default=100)
    parser.add_argument("--sharded", action="store_true", help="save with DCP (FSDP pattern)")
    args = parser.parse_args()

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if backend == "nccl" else None
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Linear(32, 1).to(device))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    ck = ckptd_client.connect()  # every rank connects, before its first step
    last = ck.restore()  # the same checkpoint on every rank
    if last is not None:
        if args.sharded:
            model_state, optimizer_state = get_state_dict(model, optimizer)
            state = {"model": model_state, "optimizer": optimizer_state}
            ckpt_torch.load_sharded(ck, state)
            set_state_dict(
                model,
                optimizer,
                model_state_dict=state["model"],
                optim_state_dict=state["optimizer"],
            )
        else:
            state = torch.load(last.path / "model.pt", map_location=device, weights_only=True)
            model.module.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        if rank == 0:
            print(f"resumed from {last.path} (step {last.step})", flush=True)

    for step in range(last.step + 1 if last else 0, args.steps):
        batches = torch.Generator().manual_seed(step * 1000 + rank)
        x = torch.randn(64, 32, generator=batches).to(device)
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        time.sleep(args.step_time)
        ck.step(step)
        if ck.should_checkpoint():  # true on every rank at the same step
            if args.sharded:
                model_state, optimizer_state = get_state_dict(model, optimizer)
                state = {"model": model_state, "optimizer": optimizer_state}
                ckpt_torch.save_sharded(ck, step, state, metrics={"loss": loss.item()})
            else:
                with ck.checkpoint(step, metrics={"loss": loss.item()}) as directory:
                    if rank == 0:  # the others enter the block too, and write nothing
                        state = {
                            "model": model.module.state_dict(),
                            "optimizer": optimizer.state_dict(),
                        }
                        torch.save(state, directory / "model.pt")
        if rank == 0 and step % args.print_every == 0:
            print(f"step {step} loss {loss.item():.6f}", flush=True)
        if ck.should_stop():  # true on every rank after the same final save
            break
    ck.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
