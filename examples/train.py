"""A small, real training loop for ckptd: linear regression fitted by mini-batch SGD.

Pure Python (no torch, no download). Deterministic given --seed: the data, the
batch order and the parameters after N steps are the same whether the run was
interrupted and resumed or not, because the checkpoint holds the parameters
*and* the random generator's state.

    ckptd run -- python examples/train.py           # under ckptd
    python examples/train.py                        # plainly; still resumes
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import ckptd_client


def make_data(seed: int, samples: int, dim: int) -> tuple[list[list[float]], list[float]]:
    rng = random.Random(seed)
    true_w = [rng.uniform(-2, 2) for _ in range(dim)]
    xs = [[rng.gauss(0, 1) for _ in range(dim)] for _ in range(samples)]
    ys = [
        sum(w * x for w, x in zip(true_w, row, strict=True)) + 0.5 + rng.gauss(0, 0.1) for row in xs
    ]
    return xs, ys


def sgd_step(w: list[float], b: float, xs, ys, batch: list[int], lr: float):
    grad_w = [0.0] * len(w)
    grad_b = loss = 0.0
    for i in batch:
        err = sum(wi * xi for wi, xi in zip(w, xs[i], strict=True)) + b - ys[i]
        loss += err * err
        for j, xj in enumerate(xs[i]):
            grad_w[j] += err * xj
        grad_b += err
    scale = 2.0 / len(batch)
    w = [wi - lr * scale * g for wi, g in zip(w, grad_w, strict=True)]
    return w, b - lr * scale * grad_b, loss / len(batch)


def save(directory: Path, w: list[float], b: float, rng: random.Random) -> None:
    state = {"w": w, "b": b, "rng": rng.getstate()}
    (directory / "state.json").write_text(json.dumps(state))


def load(directory: Path) -> tuple[list[float], float, random.Random]:
    state = json.loads((directory / "state.json").read_text())
    rng = random.Random()
    version, internal, gauss_next = state["rng"]
    rng.setstate((version, tuple(internal), gauss_next))
    return state["w"], state["b"], rng


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument(
        "--step-time",
        type=float,
        default=0.01,
        help="extra seconds per step, standing in for real compute",
    )
    parser.add_argument("--print-every", type=int, default=100)
    parser.add_argument("--out", help="write the final parameters to this JSON file")
    args = parser.parse_args()

    xs, ys = make_data(args.seed, args.samples, args.dim)
    ck = ckptd_client.connect()
    last = ck.restore()
    if last is not None:
        w, b, rng = load(last.path)
        start = last.step + 1
        print(f"resumed from {last.path} (step {last.step})", flush=True)
    else:
        w, b, rng = [0.0] * args.dim, 0.0, random.Random(args.seed + 1)
        start = 0

    loss = float("nan")
    for step in range(start, args.steps):
        batch = [rng.randrange(args.samples) for _ in range(args.batch)]
        w, b, loss = sgd_step(w, b, xs, ys, batch, args.lr)
        if args.step_time:
            time.sleep(args.step_time)
        ck.step(step)
        if step % args.print_every == 0:
            print(f"step {step} loss {loss:.6f}", flush=True)
        if ck.should_checkpoint():
            with ck.checkpoint(step, metrics={"loss": loss}) as directory:
                save(directory, w, b, rng)
            print(f"checkpoint at step {step}", flush=True)
        if ck.should_stop():
            print(f"stopping at step {step} (final checkpoint saved)", flush=True)
            ck.close()
            return

    print(f"done: {args.steps} steps, loss {loss:.6f}, b {b:.6f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"w": w, "b": b, "steps": args.steps}))
    ck.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
