"""A job that does not use the client: optionally ignores SIGTERM and leaves grandchildren.

Writes its own pid and its descendants' pids to --pids once they all run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pids", required=True)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--grandchildren", type=int, default=0)
    parser.add_argument("--record-signals", help="append the name of each signal received here")
    parser.add_argument(
        "--exit-on",
        action="append",
        default=[],
        help="record this signal (in --record-signals) and exit 0 when it arrives; repeatable",
    )
    parser.add_argument("--record-cwd", help="write the working directory here at start")
    args = parser.parse_args()
    if args.record_cwd:
        with open(args.record_cwd, "w") as handle:
            handle.write(os.getcwd())
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.record_signals:

        def note(signum: int, frame: object) -> None:
            with open(args.record_signals, "a") as handle:
                handle.write(signal.Signals(signum).name + "\n")

        signal.signal(signal.SIGUSR1, note)

        def note_and_exit(signum: int, frame: object) -> None:
            note(signum, frame)
            sys.exit(0)

        for name in args.exit_on:
            signal.signal(signal.Signals[name], note_and_exit)
    children = []
    for index in range(args.grandchildren):
        # The second grandchild leaves the process group: only the tree walk finds it.
        code = "import os, signal, time\n"
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if args.ignore_term else ""
        code += "os.setsid()\n" if index % 2 else ""
        code += "time.sleep(3600)\n"
        children.append(subprocess.Popen([sys.executable, "-c", code]))
    tmp = args.pids + ".tmp"
    with open(tmp, "w") as handle:
        json.dump({"pid": os.getpid(), "children": [c.pid for c in children]}, handle)
    os.replace(tmp, args.pids)
    while True:
        time.sleep(0.05)


if __name__ == "__main__":
    main()
