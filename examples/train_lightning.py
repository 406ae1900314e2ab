"""A PyTorch Lightning job under ckptd (needs the `lightning` extra).

A small MLP (a LightningModule) fits a generated regression task. Two lines make
it a ckptd job: `CkptdCallback()` in the Trainer's callbacks and
`ckpt_path=resume_path()`.

    ckptd run -- python examples/train_lightning.py
    ckptd run -- torchrun --nproc-per-node 2 --max-restarts 0 examples/train_lightning.py  # DDP

Under torchrun the Trainer runs one process per rank with strategy="ddp" (gloo on
CPU): every rank takes a request at the same step, and `save_checkpoint` (collective)
writes one checkpoint that is committed once.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import lightning as L
import torch

from ckptd_client.lightning import CkptdCallback, resume_path


class Regressor(L.LightningModule):
    def __init__(self, dim: int, step_time: float) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)
        )
        self.step_time = step_time

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        xs, ys = batch
        loss = torch.nn.functional.mse_loss(self.net(xs), ys)
        self.log("loss", loss)
        if self.step_time:
            time.sleep(self.step_time)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class Progress(L.Callback):
    """Says where this process started training and how fast it went."""

    def __init__(self) -> None:
        self.first: tuple[int, float, float] | None = None
        # steps per second, and per CPU second, after the first step (set-up and warm-up excluded)
        self.rate = self.cpu_rate = 0.0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.first is None:
            print(
                f"first step of this process: global step {trainer.global_step} "
                f"(rank {trainer.global_rank})",
                flush=True,
            )
            self.first = (trainer.global_step, time.perf_counter(), time.process_time())

    def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.first is not None:
            steps = trainer.global_step - self.first[0]
            seconds = time.perf_counter() - self.first[1]
            self.rate = steps / seconds if seconds else 0.0
            cpu = time.process_time() - self.first[2]
            self.cpu_rate = steps / cpu if cpu else 0.0
            print(f"steps after the first: {steps} in {seconds:.3f} s", flush=True)


def make_data(dim: int) -> torch.utils.data.DataLoader[Any]:
    generator = torch.Generator().manual_seed(1)
    xs = torch.randn(4096, dim, generator=generator)
    ys = xs @ torch.randn(dim, 1, generator=generator)
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(xs, ys), batch_size=64, shuffle=True
    )


def make_trainer(steps: int, callbacks: list[L.Callback]) -> L.Trainer:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    # Under torchrun: one process per rank, the number of processes torchrun started here.
    devices = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    nodes = int(os.environ.get("WORLD_SIZE", "1")) // devices
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=devices,
        num_nodes=nodes,
        strategy="ddp" if devices * nodes > 1 else "auto",
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,  # ckptd asks for the saves
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--step-time", type=float, default=0.0)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--no-ckptd", action="store_true", help="train without the callback")
    args = parser.parse_args()

    callbacks: list[L.Callback] = [Progress()]
    resume = None
    if not args.no_ckptd:
        callbacks.append(CkptdCallback())
        resume = resume_path()
    trainer = make_trainer(args.steps, callbacks)
    if resume:
        print(f"resuming from {resume}", flush=True)
    trainer.fit(Regressor(args.dim, args.step_time), make_data(args.dim), ckpt_path=resume)
    rank = trainer.global_rank
    print(f"stopped at global step {trainer.global_step} (rank {rank})", flush=True)


if __name__ == "__main__":
    main()
