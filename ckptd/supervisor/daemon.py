"""``ckptd run``: put the run directory, the sockets, the sources and the arbiter together."""

from __future__ import annotations

import os
import signal
import sys

from ckptd import __version__, exit_codes, log, redaction, strict_json
from ckptd.channel.job_channel import JobChannel
from ckptd.config import JobConfig
from ckptd.control.server import ControlServer, Curve
from ckptd.events import EventLog
from ckptd.process.trainer import become_subreaper
from ckptd.run_dir import (
    CHECKPOINT_FILE,
    EVENTS_FILE,
    JOB_FILE,
    NotRegularFile,
    Orphan,
    RunDir,
    RunDirError,
    write_private,
)
from ckptd.sources import RequestSource
from ckptd.sources.cloud_notices import CloudNotices
from ckptd.sources.posix_signals import PosixSignals
from ckptd.sources.signal_files import SignalFiles
from ckptd.storage.lock import CheckpointDirLock
from ckptd.storage.memory import MemoryPlaceError
from ckptd.storage.remote.url import RemoteUnusable
from ckptd.supervisor.arbiter import Arbiter


def supervise(config: JobConfig) -> int:
    """Run the job under supervision until it finishes, stops or is given up on."""
    redaction.configure(config)
    log.bind(job=config.name, attempt=0, step=None)
    run_dir = RunDir(config.run_dir)
    checkpoint_lock = CheckpointDirLock(config.checkpoint_dir)
    try:
        run_dir.prepare()
        orphan = run_dir.lock()
        config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if config.checkpoint_mode is not None:
            os.chmod(config.checkpoint_dir, int(config.checkpoint_mode, 8))
        checkpoint_lock.acquire(config.name, run_dir.path)
        job_record = strict_json.dumps(redaction.redact_config(config), default=str, indent=1)
        write_private(run_dir.file(JOB_FILE), job_record)
        events = EventLog(run_dir.file(EVENTS_FILE))
    except (RunDirError, OSError) as exc:
        checkpoint_lock.release()
        run_dir.unlock()
        print(f"ckptd: {_one_line(exc)}", file=sys.stderr)
        return exit_codes.USAGE
    try:
        return _supervise(config, run_dir, events, orphan)
    except (OSError, RunDirError) as exc:  # sockets, endpoints.json (no job is left behind)
        print(f"ckptd: {_one_line(exc)}", file=sys.stderr)
        return exit_codes.USAGE
    finally:
        for release in (
            events.close,
            checkpoint_lock.release,
            run_dir.remove_socket_dir,
            run_dir.unlock,
        ):
            try:
                release()
            except OSError:
                pass


def _supervise(config: JobConfig, run_dir: RunDir, events: EventLog, orphan: Orphan | None) -> int:
    subreaper = become_subreaper()
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    control = _control_server(config, run_dir)
    events.publish = control.publish
    channel = JobChannel(run_dir.ipc_endpoint("job"))
    run_dir.record_endpoints({"job": channel.endpoint, **control.endpoints})
    sources: list[RequestSource] = [
        PosixSignals(wakeup_fd=wake_w, requeue_signal=_requeue_signal(config)),
        SignalFiles(run_dir.path, config.watch, config.poll_interval),
    ]
    preemption = config.preemption
    if preemption.provider != "none":
        sources.append(
            CloudNotices(
                preemption.provider,
                preemption.endpoint,
                1.0 if preemption.provider == "azure" else preemption.interval,
                preemption.timeout,
            )
        )
    metrics = None
    if config.metrics.listen is not None:
        from ckptd.reporting.prometheus import Metrics

        metrics = Metrics(config.name)
        metrics.start(config.metrics.listen)  # OSError (address in use): one line, exit 2
    try:
        arbiter = Arbiter(
            config, run_dir, events, channel, control, sources, (wake_r, wake_w), orphan,
            metrics=metrics,
        )  # fmt: skip
    except (RemoteUnusable, NotRegularFile, MemoryPlaceError) as exc:
        channel.close()
        control.close()
        if metrics is not None:
            metrics.close()
        where = "remote store: " if isinstance(exc, RemoteUnusable) else ""
        print(f"ckptd: {where}{redaction.scrub(str(exc))}", file=sys.stderr)
        return exit_codes.USAGE
    events.emit(
        "ckptd.started",
        pid=os.getpid(),
        version=__version__,
        run_dir=str(run_dir.path),
        checkpoint_dir=str(config.checkpoint_dir),
        request_checkpoint=f"ckptd checkpoint --run-dir {run_dir.path}  (or: touch "
        f"{run_dir.file(CHECKPOINT_FILE)}, or: kill -USR1 {os.getpid()})",
        stop=f"ckptd stop --run-dir {run_dir.path}  (or: kill -TERM {os.getpid()})",
        subreaper=subreaper,
    )
    if arbiter.memory is not None:
        place = arbiter.memory.place
        why = None if place.in_ram else f"{place.path} is on {place.filesystem}, not in RAM"
        level = "info" if place.in_ram else "warning"
        events.emit("memory.ready", level=level, why=why, **arbiter.memory.place_fields())
    if unauthenticated := config.control.unauthenticated:
        events.emit(
            "control.unauthenticated",
            level="warning",
            endpoints=unauthenticated,
            why="no CURVE: every local user can send any command (a stop without a final "
            "checkpoint too) and read every event; allow_unauthenticated = true",
        )
    if arbiter.health.load_problem:
        events.emit("hang.budget_ignored", level="warning", why=arbiter.health.load_problem)
    try:
        return arbiter.run()
    finally:
        events.emit("ckptd.exiting", exit_code=arbiter.exit_code)
        for close in (channel.close, control.close, lambda: os.close(wake_r)):
            try:
                close()
            except Exception:
                log.get_logger().exception("ckptd.close_failed")
        os.close(wake_w)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return redaction.scrub(f"{where}{exc.strerror}")
    return redaction.scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _requeue_signal(config: JobConfig) -> signal.Signals | None:
    """SLURM's warning signal, honoured only inside a SLURM job."""
    name = config.slurm.requeue_signal
    if name is None or not os.environ.get("SLURM_JOB_ID"):
        return None
    return signal.Signals[name]


def _control_server(config: JobConfig, run_dir: RunDir) -> ControlServer:
    control = config.control
    curve = None
    if control.curve_secret_key is not None and control.curve_authorized_keys is not None:
        curve = Curve(control.curve_secret_key, control.curve_authorized_keys)
    return ControlServer(
        run_dir.ipc_endpoint("control"),
        run_dir.ipc_endpoint("events"),
        tcp_bind=control.bind,
        tcp_publish=control.publish,
        curve=curve,
        max_message_bytes=control.max_message_bytes,
    )
