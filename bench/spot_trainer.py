"""The spot scenario's training script: a fixed amount of work, a fixed step time, slow saves.

``python spot_trainer.py RECORD --steps N --step-time S --save-time S [--save-every N]
[--snapshot S]``

Works under ckptd and standalone (then SIGTERM asks for a final save). ``--save-every N``
saves by itself after every N-th step of the run (``if (step + 1) % N == 0``, as scripts
that save every so many steps do). Steps are paced to a clock, so N steps of
training take N x step time however late ``time.sleep`` wakes up. A save writes a small
payload and takes ``--save-time``: synchronously, stalling training for all of it, or with
``--snapshot S`` in the background (``checkpoint_async``), stalling training only for the
snapshot of ``S`` seconds, as DCP's and Orbax's async saves do. With ``--ram-save-time S``
a save into a directory other than ``CKPTD_CHECKPOINT_DIR`` (the memory tier's, in RAM) takes
``S`` instead: the script is unchanged, the medium is faster. When the work is done, the
result is saved as a checkpoint of the last step before ``done`` is recorded.

Records JSON lines in RECORD: ``start {resume_step, pid, t}``, ``step {step, t}``,
``stalled {began, t}`` (training waiting for a save), ``saved {step, t}`` (its files
written: a background save commits right after), ``stop {step, t}``, ``done {step, t}``.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import ckptd_client


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("record", type=Path)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--step-time", type=float, required=True)
    parser.add_argument("--save-time", type=float, required=True)
    parser.add_argument("--save-every", type=int, default=0, help="steps; 0: only when asked")
    parser.add_argument("--snapshot", type=float, default=0.0, help="s; > 0: background saves")
    parser.add_argument(
        "--ram-save-time",
        type=float,
        default=None,
        help="s; a save ckptd asked for in RAM (the memory tier) takes this instead",
    )
    args = parser.parse_args()
    record = open(args.record, "a", buffering=1)  # noqa: SIM115 - kept open for the whole run

    lock = threading.Lock()  # background saves note from their own thread

    def note(event: str, **fields: Any) -> None:
        with lock:
            record.write(json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n")

    ck = ckptd_client.connect()
    last = ck.restore()
    note("start", resume_step=last.step if last else None, t=time.time())
    step = last.step + 1 if last else 0
    kept = last.step if last else None

    disk = Path(os.environ.get("CKPTD_CHECKPOINT_DIR") or "checkpoints").resolve()

    def write(at: int, directory: Path) -> None:
        (directory / "model.bin").write_bytes(at.to_bytes(8, "little") * 128)
        in_ram = args.ram_save_time is not None and directory.parent.resolve() != disk
        time.sleep(args.ram_save_time if in_ram else args.save_time)
        note("saved", step=at, t=time.time())

    def save(at: int) -> None:
        nonlocal kept
        began = time.time()
        metrics = {"loss": 1.0 / (at + 1)}
        if args.snapshot > 0:
            time.sleep(args.snapshot)  # copying the state
            ck.checkpoint_async(at, lambda directory: write(at, directory), metrics)
        else:
            with ck.checkpoint(at, metrics=metrics) as directory:
                write(at, directory)
        note("stalled", began=began, t=time.time())
        kept = at

    due = time.monotonic()
    while step < args.steps:
        due += args.step_time
        time.sleep(max(0.0, due - time.monotonic()))
        ck.step(step)
        note("step", step=step, t=time.time())
        periodic = args.save_every and (step + 1) % args.save_every == 0
        if ck.should_checkpoint() or periodic:
            save(step)
            due = time.monotonic()
        if ck.should_stop():
            note("stop", step=step, t=time.time())
            ck.close()
            return
        step += 1
    if kept != args.steps - 1:
        save(args.steps - 1)
    ck.wait()
    note("done", step=args.steps - 1, t=time.time())
    ck.close()


if __name__ == "__main__":
    main()
