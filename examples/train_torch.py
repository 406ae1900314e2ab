"""The same example with a small torch model (needs the `torch` extra).

A two-layer MLP fitted to a generated regression task with SGD. The checkpoint
holds the model, the optimizer and the batch generator's state, saved with
torch.save and loaded with weights_only=True, so a resumed run ends with
exactly the parameters of an uninterrupted one.

    ckptd run -- python examples/train_torch.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ckptd_client


def build(seed: int, dim: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(dim, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--step-time", type=float, default=0.01)
    parser.add_argument("--print-every", type=int, default=100)
    parser.add_argument("--out", help="write the final parameters to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)

    data_gen = torch.Generator().manual_seed(args.seed)
    xs = torch.randn(4096, args.dim, generator=data_gen)
    ys = xs @ torch.randn(args.dim, 1, generator=data_gen) + 0.1 * torch.randn(
        4096, 1, generator=data_gen
    )
    model, optimizer = build(args.seed, args.dim)
    batches = torch.Generator().manual_seed(args.seed + 1)

    ck = ckptd_client.connect()
    last = ck.restore()
    start = 0
    if last is not None:
        state = torch.load(last.path / "state.pt", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        batches.set_state(state["batches"])
        start = last.step + 1
        print(f"resumed from {last.path} (step {last.step})", flush=True)

    loss = torch.tensor(float("nan"))
    for step in range(start, args.steps):
        index = torch.randint(0, xs.shape[0], (args.batch,), generator=batches)
        loss = torch.nn.functional.mse_loss(model(xs[index]), ys[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if args.step_time:
            time.sleep(args.step_time)
        ck.step(step)
        if step % args.print_every == 0:
            print(f"step {step} loss {loss.item():.6f}", flush=True)
        if ck.should_checkpoint():
            with ck.checkpoint(step, metrics={"loss": loss.item()}) as directory:
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "batches": batches.get_state(),
                    },
                    directory / "state.pt",
                )
            print(f"checkpoint at step {step}", flush=True)
        if ck.should_stop():
            print(f"stopping at step {step} (final checkpoint saved)", flush=True)
            ck.close()
            return

    print(f"done: {args.steps} steps, loss {loss.item():.6f}", flush=True)
    if args.out:
        params = {name: value.tolist() for name, value in model.state_dict().items()}
        Path(args.out).write_text(json.dumps(params))
    ck.close()


if __name__ == "__main__":
    main()
