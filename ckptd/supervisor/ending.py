"""After the job of a stop is gone: the final upload and SLURM's requeue command, off the loop.

The lifecycle decides which step comes next (:class:`~ckptd.supervisor.lifecycle.Ending`);
this performs one on the background worker and reports what it achieved once its
:class:`~ckptd.supervisor.background.Finished` is back.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import TYPE_CHECKING

from ckptd.events import EventLog
from ckptd.supervisor.background import Background, Finished

if TYPE_CHECKING:
    from ckptd.supervisor.remote_copy import RemoteCopy, RemoteStatus


class StopEnding:
    def __init__(
        self,
        events: EventLog,
        background: Background,
        remote: RemoteCopy | None,
        requeue_command: list[str],
        kill_timeout: float,
    ) -> None:
        self.events = events
        self.background = background
        self.remote = remote
        self.requeue_command = requeue_command
        self.kill_timeout = kill_timeout

    def flush(self, deadline: float, preempted: bool) -> None:
        """Wait for the final checkpoint's upload on the worker; "flushed" when it is over.

        The upload gets the stop's deadline (and, for a plain SIGTERM, the time a service
        manager allows beyond it); a notice's deadline is the machine's end.
        """
        assert self.remote is not None
        flush_by = deadline + (0.0 if preempted else self.kill_timeout)
        remote = self.remote
        self.background.submit(
            "flushed", lambda: remote.flush(max(flush_by, time.monotonic() + 1.0))
        )

    def requeue(self) -> None:
        """Run the requeue command on the worker; "requeued" when it is over."""
        self.background.submit("requeued", self._requeue)

    def flushed(self, finished: Finished) -> bool:
        """Report the final upload; whether it reached the remote."""
        assert self.remote is not None
        uploaded = finished.error is None and bool(finished.result)
        status = self.remote.status()
        why = None if uploaded else self._why_local_only(status, finished.error)
        self.events.emit(
            "remote.final",
            level="info" if uploaded else "error",
            uploaded=uploaded,
            newest_remote_step=status.newest_remote_step,
            why=why,
        )
        return uploaded

    def _why_local_only(self, status: RemoteStatus, error: BaseException | None) -> str:
        assert self.remote is not None
        held = self.remote.uploader.held
        if status.fenced:
            return (
                f"fenced: another daemon took over {status.remote} ({status.fenced_by}); "
                "the final checkpoint is kept locally only"
            )
        if held is not None:
            return (
                f"the remote is ahead (step {held.remote_step} of another run); "
                "the final checkpoint is kept locally only"
            )
        why = f"the final checkpoint is local only: it did not reach {status.remote} in time"
        return why + (f" ({error})" if error else "")

    def requeued(self, finished: Finished) -> bool:
        """Report the requeue command's outcome; whether it succeeded."""
        command, code, output = finished.result if finished.error is None else ([], None, "")
        if finished.error is not None:
            output = str(finished.error)
        self.events.emit(
            "job.requeued" if code == 0 else "job.requeue_failed",
            level="info" if code == 0 else "error",
            command=command,
            returncode=code,
            output=output,
        )
        return code == 0

    def _requeue(self) -> tuple[list[str], int | None, str]:
        """On the worker: SLURM's requeue command ($VARS expanded), bounded to a minute."""
        command = [os.path.expandvars(arg) for arg in self.requeue_command]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=60)
            return command, result.returncode, (result.stderr or result.stdout).strip()[-500:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            return command, None, str(exc)
