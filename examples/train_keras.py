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
    """Paces the steps (--step-time), says where this process started and how fast it went."""

    def __init__(self, step_time: float = 0.0) -> None:
        super().__init__()
        self.step_time = step_time
        self.first: tuple[int, float, float] | None = None
        # steps per second, and per CPU second, after the first step (set-up and warm-up excluded)
        self.rate = self.cpu_rate = 0.0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.first is None:
            step = int(self.model.optimizer.iterations)
            print(f"first step of this process: global step {step}", flush=True)
            self.first = (step, time.perf_counter(), time.process_time())
        if self.step_time:
            time.sleep(self.step_time)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.first is not None:
            steps = int(self.model.optimizer.iterations) - self.first[0]
            seconds = time.perf_counter() - self.first[1]
            self.rate = steps / seconds if seconds else 0.0
            cpu = time.process_time() - self.first[2]
            self.cpu_rate = steps / cpu if cpu else 0.0
            print(f"steps after the first: {steps} in {seconds:.3f} s", flush=True)


STEPS_PER_EPOCH = 64  # 4096 samples in batches of 64


def make_data(dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((4096, dim)).astype("float32")
    return xs, xs @ rng.standard_normal((dim, 1)).astype("float32")


def make_model(dim: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((dim,)), keras.layers.Dense(32, activation="tanh"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


def fit(
    model: keras.Model, dim: int, steps: int, callbacks: list[keras.callbacks.Callback]
) -> None:
    xs, ys = make_data(dim)
    epochs = -(-steps // STEPS_PER_EPOCH)
    model.fit(xs, ys, batch_size=64, epochs=epochs, callbacks=callbacks, verbose=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="rounded up to whole epochs")
    parser.add_argument("--step-time", type=float, default=0.0)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--no-ckptd", action="store_true", help="train without the callback")
    args = parser.parse_args()

    model = make_model(args.dim)
    callbacks: list[keras.callbacks.Callback] = [Progress(args.step_time)]
    if not args.no_ckptd:
        callbacks.append(CkptdCallback())
        last = restore(model)
        if last is not None:
            print(f"resuming from {last.path}", flush=True)
    fit(model, args.dim, args.steps, callbacks)
    print(f"stopped at global step {int(model.optimizer.iterations)}", flush=True)


if __name__ == "__main__":
    main()
