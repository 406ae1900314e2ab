"""Two processes of one job, as ranks: rank 0 saves, rank 1 only reads the flags.

Rank 1 records "flag_up" when should_checkpoint() turns true and "flag_down" when the
daemon's ``done`` (rank 0 committed) clears it. Usage: two_ranks.py RECORD.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import ckptd_client


def rank(record_path: str) -> None:
    ck = ckptd_client.connect()
    me = int(os.environ["RANK"])
    record = open(record_path, "a", buffering=1)  # noqa: SIM115 - kept open for the run
    up = False
    for step in range(1_000_000):
        time.sleep(0.01)
        ck.step(step)
        wanted = ck.should_checkpoint()
        if me == 0 and wanted:
            _until_rank_1_saw_it(record_path)
            with ck.checkpoint(step) as directory:
                (directory / "rank0.bin").write_bytes(b"0" * 64)
            record.write(json.dumps({"event": "saved", "rank": 0, "step": step}) + "\n")
        elif me == 1 and wanted != up:
            up = wanted
            record.write(json.dumps({"event": "flag_up" if up else "flag_down", "rank": 1}) + "\n")
        if ck.should_stop():
            record.write(json.dumps({"event": "stop", "rank": me, "step": step}) + "\n")
            ck.close()
            return


def _until_rank_1_saw_it(record_path: str) -> None:
    """Commit only once rank 1 has seen the request up: else its `done` may come first."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open(record_path) as record:
            if '"flag_up"' in record.read():
                return
        time.sleep(0.01)
    raise SystemExit("rank 1 never saw the request")


if __name__ == "__main__":
    if len(sys.argv) == 3:
        rank(sys.argv[1])
    else:
        children = [
            subprocess.Popen(
                [sys.executable, __file__, sys.argv[1], "rank"], env={**os.environ, "RANK": str(r)}
            )
            for r in (0, 1)
        ]
        sys.exit(max(child.wait() for child in children))
