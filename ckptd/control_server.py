"""The control plane's sockets: ROUTER for commands, PUB for events; ipc always, TCP optionally.

Owned by the arbiter's thread. Every frame gets exactly one outcome: a reply
(result or error) or, where ZeroMQ itself drops it (over ``max_message_bytes``,
or a peer past its high-water mark), nothing. A request id is executed at most
once. Each poll handles a bounded number of messages per socket, so a flood of
commands cannot starve the job channel.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .log import get_logger
from .redaction import scrub
from .run_dir import bind_private, remove_socket

VERSION = 1
_HWM = 1000
_PER_POLL = 64
_REMEMBERED_IDS = 4096
_MAX_ID = 128


@dataclass(frozen=True)
class Curve:
    secret_key_file: Path
    authorized_keys: Path


class ReplyError(Exception):
    """An error reply: ``code`` per docs/protocol.md, ``message`` for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Waiter:
    """Where the reply to one request goes; handlers keep it to answer later."""

    def __init__(self, server: ControlServer, sock: zmq.Socket, identity: bytes, rid: str) -> None:
        self._server, self._socket, self._identity, self.id = server, sock, identity, rid
        self.done = False

    def reply(self, result: Any) -> None:
        self._send({"v": VERSION, "id": self.id, "ok": True, "result": result})

    def fail(self, code: str, message: str) -> None:
        self._send(
            {"v": VERSION, "id": self.id, "ok": False, "error": {"code": code, "message": message}}
        )

    def _send(self, reply: dict[str, Any]) -> None:
        if not self.done:
            self.done = True
            self._server.send(self._socket, self._identity, reply)


Dispatch = Callable[[str, Any, Waiter], None]


class ControlServer:
    def __init__(
        self,
        control_ipc: str,
        events_ipc: str,
        *,
        tcp_bind: str | None = None,
        tcp_publish: str | None = None,
        curve: Curve | None = None,
        max_message_bytes: int = 64 * 1024,
    ) -> None:
        self._context = zmq.Context()
        self._auth: Any = None
        self._log = get_logger()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.routers = [self._router(control_ipc, max_message_bytes, None)]
        self.publishers = [self._publisher(events_ipc, None)]
        self.endpoints = {"control": control_ipc, "events": events_ipc}
        if curve is not None:
            self._start_authenticator(curve)
        if tcp_bind:
            self.routers.append(self._router(tcp_bind, max_message_bytes, curve))
            self.endpoints["control_tcp"] = tcp_bind
        if tcp_publish:
            self.publishers.append(self._publisher(tcp_publish, curve))
            self.endpoints["events_tcp"] = tcp_publish

    # -- commands --------------------------------------------------------------------

    def handle(self, sock: zmq.Socket, dispatch: Dispatch) -> None:
        """Answer up to a bounded number of waiting requests on ``sock``."""
        for _ in range(_PER_POLL):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity, body = frames[0], frames[1:]
            try:
                rid, command, args = self._parse(body)
            except ReplyError as exc:
                rid = _salvage_id(body)
                Waiter(self, sock, identity, rid).fail(exc.code, str(exc))
                continue
            waiter = Waiter(self, sock, identity, rid)
            try:
                dispatch(command, args, waiter)
            except ReplyError as exc:
                waiter.fail(exc.code, str(exc))
            except Exception as exc:  # a bug in one command must not take supervision down
                self._log.exception("control.command_failed", command=command)
                waiter.fail("internal_error", f"{type(exc).__name__}: {exc}")

    def _parse(self, body: list[bytes]) -> tuple[str, str, Any]:
        if len(body) != 1:
            raise ReplyError("bad_request", f"expected one frame, got {len(body)}")
        try:
            request = json.loads(body[0])
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ReplyError("bad_json", "the request is not JSON") from None
        if not isinstance(request, dict):
            raise ReplyError("bad_request", "the request is not a JSON object")
        if request.get("v") != VERSION:
            raise ReplyError(
                "unsupported_version",
                f"protocol version {request.get('v')!r}; this daemon speaks {VERSION}",
            )
        rid, command, args = request.get("id"), request.get("command"), request.get("args", {})
        if not isinstance(rid, str) or not 0 < len(rid) <= _MAX_ID:
            raise ReplyError("bad_request", f"id must be a string of 1 to {_MAX_ID} characters")
        if not isinstance(command, str):
            raise ReplyError("bad_request", "command must be a string")
        if rid in self._seen:
            raise ReplyError("duplicate_id", f"request id {rid!r} was already used")
        self._seen[rid] = None
        if len(self._seen) > _REMEMBERED_IDS:
            self._seen.popitem(last=False)
        return rid, command, args

    def send(self, sock: zmq.Socket, identity: bytes, reply: dict[str, Any]) -> None:
        try:
            body = json.dumps(scrub(reply), default=str).encode()
            sock.send_multipart([identity, body], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the peer left, or stopped reading: its replies are dropped, never queued

    # -- events ----------------------------------------------------------------------

    def publish(self, event: dict[str, Any]) -> None:
        frames = [str(event.get("event", "")).encode(), json.dumps(event, default=str).encode()]
        for sock in self.publishers:
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # PUB drops for slow subscribers by design

    def close(self) -> None:
        for sock in (*self.routers, *self.publishers):
            sock.close(linger=100)
        if self._auth is not None:
            self._auth.stop()
        self._context.term()
        for endpoint in (self.endpoints["control"], self.endpoints["events"]):
            remove_socket(endpoint)

    # -- set-up ----------------------------------------------------------------------

    def _router(self, endpoint: str, max_bytes: int, curve: Curve | None) -> zmq.Socket:
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
        sock.setsockopt(zmq.RCVHWM, _HWM)
        sock.setsockopt(zmq.SNDHWM, _HWM)
        return self._bind(sock, endpoint, curve)

    def _publisher(self, endpoint: str, curve: Curve | None) -> zmq.Socket:
        sock = self._context.socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, _HWM)
        return self._bind(sock, endpoint, curve)

    def _bind(self, sock: zmq.Socket, endpoint: str, curve: Curve | None) -> zmq.Socket:
        sock.setsockopt(zmq.LINGER, 0)
        if curve is not None and endpoint.startswith("tcp://"):
            public, secret = zmq.auth.load_certificate(str(curve.secret_key_file))
            sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
        bind_private(sock, endpoint)
        return sock

    def _start_authenticator(self, curve: Curve) -> None:
        self._auth = ThreadAuthenticator(self._context)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(curve.authorized_keys))


def _salvage_id(body: list[bytes]) -> str:
    """The request's id for an error reply, when one can be read at all."""
    try:
        rid = json.loads(body[0]).get("id") if len(body) == 1 else None
    except (UnicodeDecodeError, ValueError, AttributeError, RecursionError):
        rid = None
    return rid if isinstance(rid, str) and len(rid) <= _MAX_ID else ""
