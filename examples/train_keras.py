"""A Keras 3 job under ckptd (needs the `keras` extra; runs on the torch backend here).

A small MLP fits a generated regression task with `model.fit`. Two lines make it
a ckptd job: `restore(model)` before `fit` and `CkptdCallback()` in its callbacks.

    ckptd run -- python examples/train_keras.py
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np

from ckptd_client.keras import CkptdCallback, restore


class Progress(keras.callbacks.Callback):
    """Paces the steps (--step-time) and says where this process started training."""

    def __init__(self, step_time: float) -> None:
        super().__init__()
        self.step_time = step_time
        self.first = True

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.first:
            step = int(self.model.optimizer.iterations)
            print(f"first step of this process: global step {step}", flush=True)
            self.first = False
        if self.step_time:
            time.sleep(self.step_time)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--step-time", type=float, default=0.0)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--no-ckptd", action="store_true", help="train without the callback")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)

    rng = np.random.default_rng(1)
    xs = rng.standard_normal((4096, args.dim)).astype("float32")
    ys = xs @ rng.standard_normal((args.dim, 1)).astype("float32")
    batch, steps_per_epoch = 64, 64
    model = keras.Sequential(
        [keras.Input((args.dim,)), keras.layers.Dense(32, activation="tanh"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    callbacks: list[keras.callbacks.Callback] = [Progress(args.step_time)]
    if not args.no_ckptd:
        callbacks.append(CkptdCallback())
        last = restore(model)
        if last is not None:
            print(f"resuming from {last.path}", flush=True)
    model.fit(
        xs,
        ys,
        batch_size=batch,
        epochs=-(-args.steps // steps_per_epoch),
        callbacks=callbacks,
        verbose=0,
    )
    print(f"stopped at global step {int(model.optimizer.iterations)}", flush=True)


if __name__ == "__main__":
    main()
