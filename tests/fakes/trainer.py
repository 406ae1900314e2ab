"""A fake training script driven by flags; records what it saw as JSON lines in --record.

Records: {"event": "start", "attempt", "resume_step", "pid"}, {"event": "saved", "step"},
{"event": "save_failed", "step"}, {"event": "stop", "step"}, {"event": "done", "step"}.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import time

import ckptd_client


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", required=True)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--step-time", type=float, default=0.01)
    parser.add_argument("--save-time", type=float, default=0.0)
    parser.add_argument("--save-until", help="each save lasts until this file exists")
    parser.add_argument("--payload", type=int, default=1024, help="bytes written per checkpoint")
    parser.add_argument("--crash-at", type=int, default=None, help="exit 1 when reaching this step")
    parser.add_argument(
        "--crash-after-save",
        action="store_true",
        help="exit 1 right after each committed checkpoint",
    )
    parser.add_argument("--save-every", type=int, default=0, help="save unasked every N steps")
    parser.add_argument("--hang-at", type=int, default=None)
    parser.add_argument("--hang-attempts", type=int, default=1, help="hang only on attempts below")
    parser.add_argument(
        "--hang-gil", action="store_true", help="hang inside a C call that holds the GIL"
    )
    parser.add_argument("--fail-save", action="store_true", help="raise inside every save")
    parser.add_argument(
        "--nan-metrics", action="store_true", help="save with a NaN loss and an infinite norm"
    )
    parser.add_argument("--workers", type=int, default=0, help="fork data-loader-like workers")
    parser.add_argument("--background", action="store_true", help="save with checkpoint_async")
    parser.add_argument(
        "--exit-after-save",
        action="store_true",
        help="end right after the first commit, without close(): only atexit can report it",
    )
    parser.add_argument(
        "--bad-data-at",
        type=int,
        default=None,
        help="training on this step's data makes the loss NaN from then on (unless skipped)",
    )
    parser.add_argument(
        "--connect-after", help="a relaunch connects to ckptd only once this file exists"
    )
    args = parser.parse_args()

    attempt = int(os.environ.get("CKPTD_ATTEMPT", "0") or 0)
    record = open(args.record, "a", buffering=1)  # noqa: SIM115 - kept open for the whole run

    def note(event: str, **fields: object) -> None:
        record.write(
            json.dumps({"event": event, "pid": os.getpid(), "attempt": attempt, **fields}) + "\n"
        )

    while args.connect_after and attempt > 0 and not os.path.exists(args.connect_after):
        time.sleep(0.01)
    ck = ckptd_client.connect()
    for _ in range(args.workers):
        if os.fork() == 0:
            _worker(ck, note)
    last = ck.restore()
    note(
        "start",
        resume_step=last.step if last else None,
        resume_path=str(last.path) if last else None,
    )
    start = last.step + 1 if last else 0
    # What training did: the steps it trained on, restored from the checkpoint (state.json).
    saved_state = last.path / "state.json" if last else None
    trained = json.loads(saved_state.read_text()) if saved_state and saved_state.exists() else []
    skip = ck.skip_steps()
    poisoned = False
    for step in range(start, args.steps):
        time.sleep(args.step_time)
        if args.crash_at is not None and step == args.crash_at:
            note("crash", step=step)
            sys.exit(1)
        if args.hang_at is not None and step == args.hang_at and attempt < args.hang_attempts:
            note("hang", step=step)
            if args.hang_gil:
                ctypes.PyDLL(None).sleep(3600)  # libc sleep(3) called with the GIL held
            while True:
                time.sleep(1)
        if step in skip:
            note("skipped", step=step)
        else:
            trained.append(step)
            poisoned = poisoned or step == args.bad_data_at
        bad_loss = float(os.environ.get("FAKE_BAD_LOSS", "nan"))
        ck.step(step, loss=bad_loss if poisoned else 1.0 / (step + 1))
        note("step", step=step)
        unasked = args.save_every and step % args.save_every == 0 and step > start
        if ck.should_checkpoint() or unasked:

            def write(directory, step=step) -> None:
                (directory / "payload.bin").write_bytes(os.urandom(args.payload))
                if args.bad_data_at is not None:  # what training did, for the guard's tests
                    (directory / "state.json").write_text(json.dumps(trained))
                time.sleep(args.save_time)
                while args.save_until and not os.path.exists(args.save_until):
                    time.sleep(0.01)
                if args.fail_save:
                    raise OSError("disk full (simulated)")
                note("written", step=step)

            metrics = {"loss": 1.0 / (step + 1)}
            if args.nan_metrics:
                metrics = {"loss": float("nan"), "grad_norm": float("inf")}
            if args.background:
                ck.checkpoint_async(step, write, metrics=metrics)
                note("save_started", step=step)
            else:
                try:
                    with ck.checkpoint(step, metrics=metrics) as directory:
                        write(directory)
                except OSError:
                    note("save_failed", step=step)
                else:
                    if args.exit_after_save:
                        return  # without close(): the client's atexit hook reports the commit
                    note("saved", step=step)
                    if args.crash_after_save:
                        note("crash", step=step)
                        sys.exit(1)
        if ck.should_stop():
            note("stop", step=step, t=time.time())
            ck.close()
            return
    note("done", step=args.steps - 1, trained=trained)
    ck.close()


def _worker(ck: ckptd_client.Client, note) -> None:
    """A forked worker: records the signals it gets; finds the client inert."""

    def on_term(signum: int, frame: object) -> None:
        note("worker_term", t=time.time())
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    note("worker", inert=not ck.should_checkpoint() and not ck.should_stop())
    while True:
        time.sleep(0.05)
        if ck.should_checkpoint() or ck.should_stop():
            note("worker_saw_flag")


if __name__ == "__main__":
    main()
