"""examples/train_hf.py's job for the rank tests, started by torchrun (under ckptd, or not).

The gloo group times out after ``--timeout`` seconds and rank 0's part of its first ckptd
save takes ``--delay`` seconds more (a big model's save, in small): a rank that waited for
it in a collective would fail with gloo's timeout. Prints what the example prints and, at
the end, ``digest rank R step N HEX``: the sha256 of the trained weights.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist
from transformers import TrainerCallback

from ckptd_client.transformers import CkptdCallback, resume_path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_hf.py"


class SlowSave(TrainerCallback):
    """Rank 0's first save takes ``delay`` seconds more; runs before CkptdCallback.on_save."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if args.process_index == 0:
            time.sleep(self.delay)
        self.delay = 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=100000)
    parser.add_argument("--step-time", type=float, default=0.03)
    args = parser.parse_args()
    # The Trainer takes the group that exists: this one, with the short timeout.
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout))
    spec = importlib.util.spec_from_file_location("train_hf", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    callbacks = [example.Progress(args.step_time), SlowSave(args.delay), CkptdCallback()]
    trainer = example.make_trainer(args.steps, callbacks, "hf_output")
    trainer.train(resume_from_checkpoint=resume_path())
    rank, step = trainer.args.process_index, trainer.state.global_step
    print(f"stopped at global step {step} (rank {rank})", flush=True)
    weights = b"".join(p.detach().numpy().tobytes() for p in trainer.model.parameters())
    digest = hashlib.sha256(weights).hexdigest()
    # One write: the ranks share the output, and print() writes the line and its end apart.
    sys.stdout.write(f"digest rank {rank} step {step} {digest}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
