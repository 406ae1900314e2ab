"""The framework callbacks' per-step hook on 2 ranks (torchrun, gloo) vs in 1 process, under ckptd.

Part of ``python -m bench.frameworks``. The same driver runs once as one process and
once as both ranks of ``torchrun --nproc-per-node 2`` (the group agreement armed, no
request pending): it builds the example's Trainer, then times the callback's per-step
hook as the framework calls it, in blocks, in CPU time of the calling thread (two ranks
share the two cores of a small VM with the daemon: wall-clock time would count that).
With nothing pending a rank's hook must cost what the single process's does: no
collective, no syscall. The noise floor is the spread of the single process's blocks;
a few nanoseconds more is the group's bookkeeping (the step it checked, one store).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .harness import Row, median

# Runs under ckptd, alone or under torchrun: NAME EXAMPLE OUT. Writes OUT-<rank>.json.
DRIVER = r"""
import importlib.util, json, os, sys, time
name, example, out = sys.argv[1], sys.argv[2], sys.argv[3]
spec = importlib.util.spec_from_file_location("example", example)
ex = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ex)
callback = ex.CkptdCallback()
if name == "hf":
    trainer = ex.make_trainer(10, [callback], "hf_output")
    args, state, control = trainer.args, trainer.state, trainer.control
    hook = lambda: callback.on_step_end(args, state, control)
else:
    trainer = ex.make_trainer(10, [callback])
    hook = lambda: callback.on_train_batch_end(trainer, None, None, None, 0)
blocks = []
for _ in range(8):  # the first is warm-up
    began = time.thread_time()  # this thread's CPU time: the other rank's share does not count
    for _ in range(100_000):
        hook()
    blocks.append((time.thread_time() - began) / 100_000 * 1e9)
blocks = blocks[1:]
rank = os.environ.get("RANK", "0")
json.dump({"in_group": callback.client.in_group, "ns": blocks}, open(f"{out}-{rank}.json", "w"))
callback.client.close()
"""

EXAMPLES = {"hf": "train_hf.py", "lightning": "train_lightning.py"}
# Less than one syscall (a collective over gloo costs tens of microseconds): what the
# group's bookkeeping on a step with nothing pending may add.
EXTRA_NS = 50.0


def ranks_row(
    name: str,
    module: str,
    where: Path,
    ckptd_run: Callable[[Path], list[str]],
    env: dict[str, str],
) -> Row:
    """Median hook ns on 2 ranks (both ranks' blocks) over the median in 1 process."""
    where.mkdir(parents=True)
    driver = where / "driver.py"
    driver.write_text(DRIVER)
    example = str(Path(__file__).resolve().parent.parent / "examples" / EXAMPLES[name])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    one = _drive(where / "one", ckptd_run, [sys.executable], driver, name, example, env)
    two = _drive(
        where / "two",
        ckptd_run,
        [*torchrun, "--nproc-per-node=2", "--max-restarts=0"],
        driver,
        name,
        example,
        env,
    )
    if len(two) != 2 or not all(rank["in_group"] for rank in two) or one[0]["in_group"]:
        raise RuntimeError(f"{name}: expected 2 ranks in a group and 1 process alone: {two} {one}")
    single = one[0]["ns"]
    ranks = [ns for rank in two for ns in rank["ns"]]
    value = median(ranks) / median(single)
    floor = max(single) / min(single)
    extra = median(ranks) - median(single)
    return Row(
        f"{module}: the callback's per-step hook on 2 ranks vs 1 process (under ckptd, nothing "
        "pending)",
        f"ratio {value:.3f}: {median(ranks):.0f} ns per step on a rank, "
        f"{median(single):.0f} ns in one process ({extra:+.0f} ns)",
        f"noise floor, slowest over fastest block of the one process: {floor:.3f}",
        value,
        f"ratio <= noise floor, or under {EXTRA_NS:.0f} ns more (no syscall, no collective)",
        value <= floor or extra < EXTRA_NS,
        note="median of 7 blocks of 100,000 calls per process, both ranks' blocks pooled",
        data={"ranks_ns": ranks, "single_ns": single},
    )


def _drive(
    where: Path,
    ckptd_run: Callable[[Path], list[str]],
    launcher: list[str],
    driver: Path,
    name: str,
    example: str,
    env: dict[str, str],
) -> list[dict[str, Any]]:
    where.mkdir()
    out = where / "hook"
    command = [*ckptd_run(where), *launcher, str(driver), name, example, str(out)]
    full_env = {**{k: v for k, v in os.environ.items() if not k.startswith("CKPTD_")}, **env}
    result = subprocess.run(command, cwd=where, env=full_env, capture_output=True, timeout=600)
    found = sorted(where.glob("hook-*.json"))
    if result.returncode != 0 or not found:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{name} ranks bench run failed ({result.returncode}): {tail}")
    return [json.loads(path.read_text()) for path in found]
