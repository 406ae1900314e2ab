"""A Hugging Face Trainer job under ckptd (needs the `transformers` extra).

A one-layer GPT-2 built from a config (no download) learns generated token
sequences. Two lines make it a ckptd job: `CkptdCallback()` in the Trainer's
callbacks and `resume_from_checkpoint=resume_path()`.

    ckptd run -- python examples/train_hf.py
    ckptd run -- torchrun --nproc-per-node 2 --max-restarts 0 examples/train_hf.py   # DDP
    ckptd run -- accelerate launch --multi-gpu --num-processes 2 examples/train_hf.py

Under torchrun (or accelerate's launcher, which is torchrun with no restarts) every rank
takes a request at the same step and writes its part of one checkpoint (gloo on CPU,
NCCL on GPUs: the Trainer picks the backend).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is built locally

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from ckptd_client.transformers import CkptdCallback, resume_path


class Tokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Sequences that count up from a random start, so the model has something to learn."""

    def __init__(self, count: int, length: int, vocab: int, seed: int) -> None:
        starts = torch.randint(0, vocab, (count, 1), generator=torch.Generator().manual_seed(seed))
        self.rows = (starts + torch.arange(length)) % vocab

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[index], "labels": self.rows[index]}


class Progress(TrainerCallback):
    """Paces the steps (--step-time), says where this process started and how fast it went."""

    def __init__(self, step_time: float = 0.0) -> None:
        self.step_time = step_time
        self.first: tuple[int, float, float] | None = None
        # steps per second, and per CPU second, after the first step (set-up and warm-up excluded)
        self.rate = self.cpu_rate = 0.0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.first is None:
            print(
                f"first step of this process: global step {state.global_step} "
                f"(rank {args.process_index})",
                flush=True,
            )
            self.first = (state.global_step, time.perf_counter(), time.process_time())
        if self.step_time:
            time.sleep(self.step_time)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.first is not None:
            steps, seconds = state.global_step - self.first[0], time.perf_counter() - self.first[1]
            self.rate = steps / seconds if seconds else 0.0
            cpu = time.process_time() - self.first[2]
            self.cpu_rate = steps / cpu if cpu else 0.0
            print(f"steps after the first: {steps} in {seconds:.3f} s", flush=True)


def make_trainer(steps: int, callbacks: list[TrainerCallback], output_dir: str) -> Trainer:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    training = TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        save_strategy="no",  # ckptd asks for the saves
        logging_steps=10,
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        ddp_find_unused_parameters=False,  # under torchrun: every parameter takes part
    )
    return Trainer(
        model=GPT2LMHeadModel(config),
        args=training,
        train_dataset=Tokens(4096, 16, config.vocab_size, seed=1),
        callbacks=callbacks,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--step-time", type=float, default=0.0)
    parser.add_argument("--output-dir", default="hf_output")
    parser.add_argument("--no-ckptd", action="store_true", help="train without the callback")
    args = parser.parse_args()

    callbacks: list[TrainerCallback] = [Progress(args.step_time)]
    resume = None
    if not args.no_ckptd:
        callbacks.append(CkptdCallback())
        resume = resume_path()
    trainer = make_trainer(args.steps, callbacks, args.output_dir)
    if resume:
        print(f"resuming from {resume}", flush=True)
    trainer.train(resume_from_checkpoint=resume)
    rank = trainer.args.process_index
    print(f"stopped at global step {trainer.state.global_step} (rank {rank})", flush=True)


if __name__ == "__main__":
    main()
