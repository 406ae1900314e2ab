"""What the framework callbacks cost: steps/s of each example job with CkptdCallback vs without.

    python -m bench.frameworks [--seconds 1.5] [--rounds 10]
        [--only hf,lightning,keras,hf-ranks,lightning-ranks]

For each installed framework, one process under ``ckptd run`` (its client connected
to the daemon, no checkpoint requested: the per-step cost alone) builds the tiny job
of ``examples/train_<name>.py`` again and again and trains it for about ``--seconds``,
in rounds of four runs: without the callback, with, with, without (the next round
the other way round). This kind of VM's CPU speed drifts by tens of percent within
seconds and other work shares its two cores, so separate processes would measure the
drift; within one process and one round both sides see nearly the same seconds.
Rates count the steps after each run's first (set-up and warm-up excluded), per CPU
second of the process (the client's thread included) and per wall-clock second.

Figures per framework: the median over rounds of with / without (goal >= 0.99), the
same for the two runs without the callback (the noise floor: a ratio inside it says
nothing), and the hook alone, timed in a loop as the framework calls it, as a share
of a step: the callback's own cost, which no noise hides. What the hook does not count
is the framework's own dispatch of its hooks to one more callback: Lightning calls
every hook of every callback inside a profiler context, about 15 us per step for any
callback (a no-op ``L.Callback`` costs the same), 2% of the tiny job's 0.8 ms step.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .frameworks_ranks import ranks_row
from .harness import Row, median

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# Runs under ckptd: NAME EXAMPLE STEPS ROUNDS OUT. Writes {"with": [...], "without": [...]}.
DRIVER = r"""
import importlib.util, json, sys, time
name, example, out = sys.argv[1], sys.argv[2], sys.argv[5]
steps, rounds = int(sys.argv[3]), int(sys.argv[4])
spec = importlib.util.spec_from_file_location("example", example)
ex = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ex)
callback = ex.CkptdCallback()  # connects once, like a job's one callback
last = {}

def run(with_callback):
    progress = ex.Progress()
    callbacks = [progress, callback] if with_callback else [progress]
    if name == "hf":
        last["trainer"] = ex.make_trainer(steps, callbacks, "hf_output")
        last["trainer"].train()
    elif name == "lightning":
        last["trainer"] = ex.make_trainer(steps, callbacks)
        last["trainer"].fit(ex.Regressor(16, 0.0), ex.make_data(16))
    else:
        ex.fit(ex.make_model(16), 16, steps, callbacks)
    return progress

def hook_ns(calls=200_000):
    # The callback's per-step hook alone, called as the framework calls it.
    if name == "hf":
        trainer = last["trainer"]
        args, state, control = trainer.args, trainer.state, trainer.control
        hook = lambda: callback.on_step_end(args, state, control)
    elif name == "lightning":
        trainer = last["trainer"]
        hook = lambda: callback.on_train_batch_end(trainer, None, None, None, 0)
    else:
        logs = {"loss": 1.0}
        hook = lambda: callback.on_train_batch_end(0, logs)
    began = time.perf_counter()
    for _ in range(calls):
        hook()
    return (time.perf_counter() - began) / calls * 1e9

if rounds == 0:  # calibration: one warm-up run, then the rate of a second
    run(False)
    json.dump({"without": [run(False).rate]}, open(out, "w"))
    sys.exit(0)
rates = {"with": [], "without": [], "with_cpu": [], "without_cpu": []}
for index in range(rounds):
    order = (False, True, True, False) if index % 2 == 0 else (True, False, False, True)
    for with_callback in order:
        side = "with" if with_callback else "without"
        progress = run(with_callback)
        rates[side].append(progress.rate)
        rates[side + "_cpu"].append(progress.cpu_rate)
run(True)  # the last run leaves the callback attached, as the hook timing needs
rates["hook_ns"] = hook_ns()
json.dump(rates, open(out, "w"))
"""


@dataclass(frozen=True)
class Job:
    name: str
    module: str
    example: str
    ranks: bool = False  # also timed on 2 ranks (needs torch)


JOBS = [
    Job("hf", "transformers", "train_hf.py", ranks=True),
    Job("lightning", "lightning", "train_lightning.py", ranks=True),
    Job("keras", "keras", "train_keras.py"),
]

ENV = {"HF_HUB_OFFLINE": "1", "KERAS_BACKEND": "torch", "OMP_NUM_THREADS": "1"}


def framework_row(job: Job, base: Path, seconds: float, rounds: int) -> Row:
    """Median over rounds of steps per CPU second with the callback over those without."""
    calibration = _drive(job, base / "calibrate", 200, 0)
    steps = max(100, round(float(calibration["without"][0]) * seconds))
    rates = _drive(job, base / "measure", steps, rounds)
    cpu, cpu_floor = _ratios(rates["with_cpu"], rates["without_cpu"], rounds)
    wall, wall_floor = _ratios(rates["with"], rates["without"], rounds)
    value = median(cpu)
    step_ns = 1e9 / median(rates["without_cpu"])
    hook = float(rates["hook_ns"])
    return Row(
        f"{job.module}: steps per CPU second with CkptdCallback vs without (under ckptd)",
        f"ratio {value:.3f} (wall-clock steps/s: {median(wall):.3f}); the hook alone: "
        f"{hook:.0f} ns = {hook / step_ns * 100:.4f}% of a {step_ns / 1e6:.2f} ms step",
        f"noise floor, without vs without: {median(cpu_floor):.3f} "
        f"(range {min(cpu_floor):.3f}-{max(cpu_floor):.3f}; wall-clock {median(wall_floor):.3f})",
        value,
        "ratio >= 0.99",
        value >= 0.99,
        note=f"median of {rounds} rounds of 4 runs of {steps} steps in one process",
        data={
            "cpu": cpu,
            "cpu_floor": cpu_floor,
            "wall": wall,
            "wall_floor": wall_floor,
            "steps": steps,
            "hook_share": hook / step_ns,
            **rates,
        },
    )


def _ratios(
    with_: list[float], without: list[float], rounds: int
) -> tuple[list[float], list[float]]:
    """Per round (two runs each side): with / without, and without / without (the noise floor)."""
    ratios = [
        (with_[2 * i] + with_[2 * i + 1]) / (without[2 * i] + without[2 * i + 1])
        for i in range(rounds)
    ]
    return ratios, [without[2 * i] / without[2 * i + 1] for i in range(rounds)]


def _drive(job: Job, where: Path, steps: int, rounds: int) -> dict[str, Any]:
    where.mkdir(parents=True)
    driver, out = where / "driver.py", where / "rates.json"
    driver.write_text(DRIVER)
    command = [
        *_ckptd_run(where),
        sys.executable,
        str(driver),
        job.name,
        str(EXAMPLES / job.example),
        str(steps),
        str(rounds),
        str(out),
    ]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CKPTD_")}, **ENV}
    result = subprocess.run(command, cwd=where, env=env, capture_output=True, timeout=1800)
    if result.returncode != 0 or not out.exists():
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{job.name} bench run failed ({result.returncode}): {tail}")
    rates: dict[str, Any] = json.loads(out.read_text())
    return rates


def _ckptd_run(where: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ckptd",
        "run",
        "--run-dir",
        str(where / "run"),
        "--checkpoint-dir",
        str(where / "ckpt"),
        "--restart",
        "never",
        "--",
    ]


def _verdict(row: Row) -> str:
    """'met', or 'within noise' when the floor strays from 1 as far as the ratio does."""
    if row.met:
        return "met"
    floor = row.data["cpu_floor"]
    assert row.ratio is not None
    spread = max(abs(1 - min(floor)), abs(max(floor) - 1))
    return "within noise" if 1 - row.ratio <= spread else "NOT met"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.frameworks", description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.5, help="length of one training run")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of four runs per framework")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated: hf, lightning, keras, hf-ranks, lightning-ranks",
    )
    args = parser.parse_args()
    chosen = {name for name in args.only.split(",") if name}
    print(
        f"command: {' '.join([Path(sys.executable).name, '-m', 'bench.frameworks', *sys.argv[1:]])}"
    )
    work = Path(tempfile.mkdtemp(prefix="ckptd-bench-frameworks-"))
    met = True
    try:
        for job in JOBS:
            if chosen and not chosen & {job.name, f"{job.name}-ranks"}:
                continue
            if importlib.util.find_spec(job.module) is None:
                print(f"{job.module}: skipped (not installed: pip install 'ckptd[{job.module}]')")
                continue
            if not chosen or job.name in chosen:
                row = framework_row(job, work / job.name, args.seconds, args.rounds)
                verdict = _verdict(row)
                met = met and verdict != "NOT met"
                print(f"{row.figure}: {row.ckptd}; {row.baseline}; goal {row.goal}: {verdict}")
                print(f"  {row.note}: {' '.join(_ckptd_run(Path('DIR')))} python driver.py")
            if job.ranks and (not chosen or f"{job.name}-ranks" in chosen):
                row = ranks_row(job.name, job.module, work / f"{job.name}-ranks", _ckptd_run, ENV)
                met = met and bool(row.met)
                verdict = "met" if row.met else "NOT met"
                print(f"{row.figure}: {row.ckptd}; {row.baseline}; goal {row.goal}: {verdict}")
                print(f"  {row.note}: {' '.join(_ckptd_run(Path('DIR')))} torchrun driver.py")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
