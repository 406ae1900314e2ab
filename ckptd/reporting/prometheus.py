"""Prometheus metrics of one job (``[metrics] listen = "127.0.0.1:9464"``).

The arbiter calls the ``Metrics`` methods from its loop: each only sets a number, so
they cost next to nothing. Ages (of the last checkpoint, of unsaved work) are computed
when Prometheus scrapes, on the server's thread, from two floats the loop writes; the
goodput ratio is read then from the immutable figure its own thread keeps.
``prometheus_client`` is imported only when metrics are configured (extra ``metrics``).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Metrics", "parse_listen"]

_SAVE_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"``, ``"[::1]:9464"``, ``":9464"`` (all addresses) -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"expected an IP address or localhost, got {host!r}") from None
    return host, int(port_text)


class Metrics:
    """Gauges and counters of one job; ``start(listen)`` serves them, ``close()`` stops."""

    def __init__(self, job: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Info("ckptd", "the supervised job", registry=r).info({"name": job})
        self._last_commit_time: float | None = None
        self._at_risk_since: float | None = None  # wall time unsaved work began; None: no job
        self.step = Gauge("ckptd_step", "last step the job reported", registry=r)
        self.attempt = Gauge("ckptd_attempt", "launches so far minus one", registry=r)
        self.up = Gauge("ckptd_job_up", "1 while a job process runs", registry=r)
        self.last_step = Gauge(
            "ckptd_last_checkpoint_step", "step of the newest committed checkpoint", registry=r
        )
        Gauge(
            "ckptd_last_checkpoint_age_seconds",
            "seconds since the newest checkpoint committed (NaN before the first)",
            registry=r,
        ).set_function(self._checkpoint_age)
        self.save_seconds = Histogram(
            "ckptd_save_seconds", "duration of committed saves", buckets=_SAVE_BUCKETS, registry=r
        )
        self.last_save = Gauge(
            "ckptd_last_save_seconds", "duration of the newest committed save", registry=r
        )
        self.checkpoints = Counter("ckptd_checkpoints", "saves by outcome", ["outcome"], registry=r)
        self.restarts = Counter("ckptd_restarts", "relaunches of the job", registry=r)
        self.unsaved_steps = Gauge(
            "ckptd_unsaved_steps", "steps a crash now would lose", registry=r
        )
        Gauge(
            "ckptd_unsaved_seconds", "training time a crash now would lose", registry=r
        ).set_function(self._unsaved_seconds)
        self._goodput: Callable[[], float | None] = lambda: None
        Gauge(
            "ckptd_goodput_ratio",
            "share of wall time that became kept progress (NaN until first computed)",
            registry=r,
        ).set_function(self._goodput_ratio)
        self.hangs = Counter("ckptd_hang_timeouts", "hangs detected (job killed)", registry=r)
        self.hang_budget = Gauge(
            "ckptd_hang_timeout_seconds", "hang budget in force", ["phase"], registry=r
        )
        self.interval = Gauge(
            "ckptd_checkpoint_interval_seconds",
            "periodic checkpoint interval (NaN without periodic checkpoints)",
            registry=r,
        )
        self.interval.set(float("nan"))
        self._memory: Callable[[], dict[str, Any] | None] = lambda: None
        Gauge(
            "ckptd_memory_checkpoint_step",
            "step of the newest memory-tier checkpoint (NaN without one)",
            registry=r,
        ).set_function(lambda: self._memory_figure("newest", "step"))
        Gauge(
            "ckptd_memory_backlog_steps",
            "steps the memory tier is ahead of the disk (NaN without a memory tier)",
            registry=r,
        ).set_function(lambda: self._memory_figure("backlog_steps"))
        self._committed_step: int | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None

    # -- called from the arbiter's loop ----------------------------------------------------

    def job_started(
        self,
        attempt: int,
        resume_step: int | None,
        now: float | None = None,
        resume_time: float | None = None,
    ) -> None:
        """A launch; ``resume_time``: when its resume point was committed (wall time).

        Before this daemon saw a commit, the resume point is the last checkpoint, as in
        ``ckptd status``.
        """
        self.attempt.set(attempt)
        self.up.set(1)
        self._committed_step = resume_step
        if resume_step is not None and self._last_commit_time is None:
            self.last_step.set(resume_step)
            self._last_commit_time = resume_time
        self._at_risk_since = time.time() if now is None else now
        if attempt > 0:
            self.restarts.inc()

    def job_exited(self) -> None:
        self.up.set(0)
        self._at_risk_since = None
        self.unsaved_steps.set(0)

    def stepped(self, step: int) -> None:
        self.step.set(step)
        base = self._committed_step if self._committed_step is not None else -1
        self.unsaved_steps.set(max(0, step - base))

    def committed(self, step: int | None, seconds: float | None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.checkpoints.labels("committed").inc()
        self._last_commit_time = now
        if self._at_risk_since is not None:
            self._at_risk_since = now
        if isinstance(seconds, (int, float)):
            self.save_seconds.observe(seconds)
            self.last_save.set(seconds)
        if isinstance(step, int):
            self.last_step.set(step)
            self._committed_step = step
            self.unsaved_steps.set(0)

    def failed(self) -> None:
        self.checkpoints.labels("failed").inc()

    def hung(self) -> None:
        self.hangs.inc()

    def read_goodput(self, ratio: Callable[[], float | None]) -> None:
        """Serve ``ratio()`` (None: not computed yet), read at each scrape: the figure that
        ``ckptd status`` shows, which a thread off the loop keeps up to date."""
        self._goodput = ratio

    def read_memory(self, status: Callable[[], dict[str, Any] | None]) -> None:
        """Serve the memory tier's figures from ``status()`` (its ``status --json`` part)."""
        self._memory = status

    def set_hang_budgets(self, budgets: dict[str, Any]) -> None:
        """The budget of each phase in force, as ``ckptd status`` shows them (numbers only)."""
        for phase, seconds in budgets.items():
            if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
                self.hang_budget.labels(phase).set(seconds)

    def set_interval(self, seconds: float | None) -> None:
        self.interval.set(float("nan") if seconds is None else seconds)

    # -- serving ----------------------------------------------------------------------------

    def start(self, listen: str) -> tuple[str, int]:
        """Serve ``/metrics`` on ``listen`` (HOST:PORT; port 0 picks one); return the address.

        Raises OSError (address in use, not available) with the address in the message.
        """
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        from prometheus_client import make_wsgi_app

        host, port = parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(WSGIServer):  # one scrape at a time: no thread per request to leak
            address_family = family

        class QuietHandler(WSGIRequestHandler):
            timeout = 5.0  # a client that connects and says nothing cannot block close()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape every few seconds is not news

        try:
            server = make_server(host, port, make_wsgi_app(self.registry), Server, QuietHandler)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve metrics on {listen}: {exc.strerror}") from None
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="ckptd-metrics"
        )
        self._thread.start()
        self.address = (host, server.server_address[1])
        return self.address

    def close(self) -> None:
        """Stop serving and wait for the server thread; safe to call twice or unstarted."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # -- computed at scrape time ---------------------------------------------------------------

    def _checkpoint_age(self) -> float:
        last = self._last_commit_time
        return float("nan") if last is None else max(0.0, time.time() - last)

    def _goodput_ratio(self) -> float:
        ratio = self._goodput()
        return float("nan") if ratio is None else ratio

    def _memory_figure(self, *path: str) -> float:
        value: Any = self._memory()
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return float(value) if isinstance(value, (int, float)) else float("nan")

    def _unsaved_seconds(self) -> float:
        since = self._at_risk_since
        return 0.0 if since is None else max(0.0, time.time() - since)
