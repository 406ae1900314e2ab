"""Stack dumps on request: ``faulthandler`` bound to a real-time signal that ckptd sends.

Before ckptd kills a job it found hung, it asks every process of the job for every
thread's Python stack. ``faulthandler`` writes them from its C signal handler, so the
dump works even when the hang holds the GIL (a stuck C call, a deadlocked collective).
The signal is ``SIGRTMIN + 3``: SLURM (``--signal``), torchrun and PyTorch's data
loaders leave real-time signals alone. The handler is inherited by forked processes
(data-loader workers), so their stacks come too. Only installed under a daemon that
named a file (``CKPTD_STACKS_FILE``), and only where the signal has no handler yet.
"""

from __future__ import annotations

import faulthandler
import os
import signal

from ._run_files import open_regular

ENV_STACKS_FILE = "CKPTD_STACKS_FILE"
STACKS_SIGNAL = signal.SIGRTMIN + 3

_registered: list[int] = []  # keeps the file descriptor open for the process's life


def register_dump(path: str | None = None) -> bool:
    """Dump all threads' stacks to ``path`` (default: ``$CKPTD_STACKS_FILE``) on the signal."""
    path = path or os.environ.get(ENV_STACKS_FILE)
    if not path or _registered or signal.getsignal(STACKS_SIGNAL) not in (signal.SIG_DFL, None):
        return False
    try:
        fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError:
        return False  # no dump (a FIFO there is never waited on): the job is still restarted
    faulthandler.register(STACKS_SIGNAL, file=fd, all_threads=True, chain=False)
    _registered.append(fd)
    return True
