"""Driving a running ckptd from another program: ``Controller(run_dir=...).checkpoint(wait=True)``.

Needs pyzmq and the standard library only, like the rest of ``ckptd_client``.
The wire format is documented in ``docs/protocol.md``.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

from ._run_files import read_regular

VERSION = 1
ENDPOINTS_FILE = "endpoints.json"
DEFAULT_TIMEOUT = 10.0

__all__ = ["ControlError", "ControlTimeout", "Controller", "endpoints_of"]


class ControlError(RuntimeError):
    """The daemon answered with an error; ``code`` is machine-readable (see docs/protocol.md)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ControlTimeout(ControlError):
    """No answer in time: the daemon is gone, busy, or the operation is still running; over
    CURVE, also a daemon that does not know (or no longer knows) this client's key."""

    def __init__(self, message: str) -> None:
        super().__init__("timeout", message)


def endpoints_of(run_dir: str | Path) -> dict[str, str]:
    """The endpoints a daemon recorded in its run directory (``control``, ``events``, ``job``)."""
    path = Path(run_dir) / ENDPOINTS_FILE
    try:
        data = json.loads(read_regular(path))
    except FileNotFoundError:
        raise ControlError(
            "not_running", f"no ckptd has run in {run_dir} ({path} is missing)"
        ) from None
    except (OSError, ValueError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ControlError("not_running", f"cannot read {path}: {detail}") from None
    if not isinstance(data, dict):
        raise ControlError("not_running", f"{path} is not a JSON object")
    return {str(k): str(v) for k, v in data.items()}


class Controller:
    """A connection to one daemon's control socket (and, on demand, its event stream).

    Give ``run_dir`` (local ipc sockets) or ``endpoint`` (e.g. ``tcp://host:7561``);
    with CURVE, ``server_key`` is the daemon's public key file and ``client_key``
    this client's secret key file (both as written by ``ckptd keygen``).
    Every call raises :class:`ControlError` on an error reply and
    :class:`ControlTimeout` when no reply arrives within ``timeout`` seconds.
    """

    def __init__(
        self,
        run_dir: str | Path | None = None,
        endpoint: str | None = None,
        *,
        server_key: str | Path | None = None,
        client_key: str | Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if (run_dir is None) == (endpoint is None):
            raise ValueError("give exactly one of run_dir and endpoint")
        self.endpoints = (
            endpoints_of(run_dir) if run_dir is not None else {"control": endpoint or ""}
        )
        self.timeout = timeout
        self._curve = _load_curve(server_key, client_key)
        self._context = zmq.Context()
        self._socket = self._open(zmq.DEALER, self.endpoints["control"])

    def call(self, command: str, timeout: float | None = None, **args: Any) -> Any:
        """Send one command and return its result; see docs/protocol.md for commands.

        ``timeout`` defaults to the controller's; ``math.inf`` waits for as long as it takes.
        """
        request_id = uuid.uuid4().hex
        message = {"v": VERSION, "id": request_id, "command": command, "args": args}
        self._socket.send(json.dumps(message).encode())
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            wait_ms = None if math.isinf(left) else int(left * 1000) + 1
            if left <= 0 or not self._socket.poll(wait_ms):
                raise ControlTimeout(f"no answer to {command!r} within {limit:g}s")
            reply = _decode_reply(self._socket.recv())
            if reply.get("id") != request_id:
                continue  # the late answer to an earlier call that timed out
            if reply.get("ok"):
                return reply.get("result")
            error = reply.get("error") or {}
            raise ControlError(str(error.get("code", "failed")), str(error.get("message", "")))

    def checkpoint(self, wait: bool = False, timeout: float | None = None) -> dict[str, Any]:
        """Ask for a checkpoint; with ``wait``, return once it committed (raise if it failed)."""
        result: dict[str, Any] = self.call("checkpoint", timeout=timeout, wait=wait)
        return result

    def stop(
        self, checkpoint: bool = True, wait: bool = False, timeout: float | None = None
    ) -> Any:
        """Final checkpoint (unless ``checkpoint=False``), then stop the job without restart."""
        return self.call("stop", timeout=timeout, checkpoint=checkpoint, wait=wait)

    def restart(self, timeout: float | None = None) -> Any:
        """Final checkpoint, then relaunch the job from it."""
        return self.call("restart", timeout=timeout)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("status")
        return result

    def ping(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("ping")
        return result

    def events(
        self, topics: tuple[str, ...] = ("",), timeout: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """Follow the event stream; each item is one event. Ends after ``timeout`` s of silence."""
        endpoint = self.endpoints.get("events") or self.ping()["endpoints"].get("events_tcp")
        if not endpoint:
            raise ControlError("not_available", "this daemon publishes no event stream here")
        sub = self._open(zmq.SUB, endpoint)
        for topic in topics:
            sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        try:
            while True:
                if not sub.poll(None if timeout is None else int(timeout * 1000)):
                    return
                frames = sub.recv_multipart()
                try:
                    event = json.loads(frames[-1])
                except (ValueError, RecursionError):
                    continue
                if isinstance(event, dict):
                    yield event
        finally:
            sub.close(linger=0)

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, kind: int, endpoint: str) -> zmq.Socket:
        sock = self._context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if self._curve is not None:
            public, secret, server = self._curve
            sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = (
                public,
                secret,
                server,
            )
        sock.connect(endpoint)
        return sock


def _decode_reply(frame: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(frame)
    except (ValueError, RecursionError):
        raise ControlError("bad_reply", "the daemon sent something that is not JSON") from None
    if not isinstance(reply, dict) or reply.get("v") != VERSION:
        raise ControlError("bad_reply", f"unsupported reply: {str(reply)[:200]}")
    return reply


def _load_curve(
    server_key: str | Path | None, client_key: str | Path | None
) -> tuple[bytes, bytes, bytes] | None:
    if server_key is None and client_key is None:
        return None
    if server_key is None or client_key is None:
        raise ValueError("CURVE needs both server_key and client_key")
    import zmq.auth

    server_public, _ = zmq.auth.load_certificate(str(server_key))
    public, secret = zmq.auth.load_certificate(str(client_key))
    if secret is None:
        raise ValueError(f"{client_key} holds no secret key (give the .key_secret file)")
    return public, secret, server_public
