"""examples/train_hf.py on ranks whose gloo group times out after ``--timeout`` seconds, with
rank 0's part of its first ckptd save ``--delay`` seconds longer (a big model's save, in small).

Started by torchrun under ckptd. A rank that waited for rank 0's save in a collective would
fail with gloo's timeout; under ckptd it waits over the job channel instead. Prints what the
example prints, plus ``saved rank R step N`` after each of this rank's saves.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
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


class Saved(TrainerCallback):
    """Says that this rank's save of a step is done (after CkptdCallback.on_save)."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        print(f"saved rank {args.process_index} step {state.global_step}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--delay", type=float, required=True)
    parser.add_argument("--step-time", type=float, default=0.03)
    args = parser.parse_args()
    # The Trainer takes the group that exists: this one, with the short timeout.
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout))
    spec = importlib.util.spec_from_file_location("train_hf", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    callbacks = [
        example.Progress(args.step_time),
        SlowSave(args.delay),
        CkptdCallback(),
        Saved(),
    ]
    trainer = example.make_trainer(100000, callbacks, "hf_output")
    trainer.train(resume_from_checkpoint=resume_path())
    rank = trainer.args.process_index
    print(f"stopped at global step {trainer.state.global_step} (rank {rank})", flush=True)


if __name__ == "__main__":
    main()
