"""``ckptd run``: put the run directory, the job channel, the sources and the arbiter together."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict

from . import exit_codes, log
from .arbiter import Arbiter
from .config import JobConfig
from .events import EventLog
from .job_channel import JobChannel
from .run_dir import CHECKPOINT_FILE, EVENTS_FILE, JOB_FILE, RunDir, RunDirError, write_private
from .sources import RequestSource
from .sources.posix_signals import PosixSignals
from .sources.signal_files import SignalFiles
from .trainer import become_subreaper


def supervise(config: JobConfig) -> int:
    """Run the job under supervision until it finishes, stops or is given up on."""
    log.bind(job=config.name, attempt=0, step=None)
    logger = log.get_logger()
    run_dir = RunDir(config.run_dir)
    try:
        run_dir.prepare()
        run_dir.lock()
    except RunDirError as exc:
        print(f"ckptd: {exc}", file=sys.stderr)
        return exit_codes.USAGE
    config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    write_private(run_dir.file(JOB_FILE), json.dumps(asdict(config), default=str, indent=1))
    subreaper = become_subreaper()
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    events = EventLog(run_dir.file(EVENTS_FILE), config.name)
    channel = JobChannel(run_dir.job_endpoint())
    sources: list[RequestSource] = [
        PosixSignals(wakeup_fd=wake_w),
        SignalFiles(run_dir.path, config.watch, config.poll_interval),
    ]
    arbiter = Arbiter(config, run_dir, events, channel, sources, (wake_r, wake_w))
    logger.info(
        "ckptd.started",
        pid=os.getpid(),
        run_dir=str(run_dir.path),
        checkpoint_dir=str(config.checkpoint_dir),
        request_checkpoint=f"touch {run_dir.file(CHECKPOINT_FILE)}  (or: kill -USR1 {os.getpid()})",
        stop=f"kill -TERM {os.getpid()}",
        subreaper=subreaper,
    )
    try:
        return arbiter.run()
    finally:
        channel.close()
        events.close()
        run_dir.unlock()
        os.close(wake_r)
        os.close(wake_w)
