"""The control plane's sockets: ROUTER for commands, PUB for events; ipc always, TCP optionally.

Owned by the arbiter's thread. Every frame gets exactly one outcome: a reply
(result or error) or, where ZeroMQ itself drops it (over ``max_message_bytes``,
or a peer past its high-water mark), nothing. A request id is executed at most
once. Each poll handles a bounded number of messages per socket, so a flood of
commands cannot starve the job channel.

With CURVE, the authorized keys are the directory's as it is now (see
``curve_keys.AuthorizedKeys``): checked at each connection (ZAP), at each TCP request
(a revoked key's open connection gets no answer, like a stranger's) and before each
published event (a key found revoked re-binds the TCP publishers, so every subscriber
reconnects and the revoked one is refused).
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from ckptd import strict_json
from ckptd.control.keys import AuthorizedKeys
from ckptd.log import get_logger
from ckptd.redaction import scrub
from ckptd.run_dir import bind_private, remove_socket

VERSION = 1
_HWM = 1000
_PER_POLL = 64
_REMEMBERED_IDS = 4096
_MAX_ID = 128
_REBIND_FOR = 1.0  # a closed TCP listener's port is free again within this (async close)


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
        """Bind every socket; OSError (one line: e.g. a TCP port in use) leaves nothing open."""
        self._context = zmq.Context()
        self._auth: Any = None
        self._log = get_logger()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._curve = curve
        self._keys: AuthorizedKeys | None = None
        self._revocations = 0
        self._refused: set[str] = set()
        self.routers: list[zmq.Socket] = []
        self.publishers: list[zmq.Socket] = []
        self.endpoints = {"control": control_ipc, "events": events_ipc}
        try:
            self.routers.append(self._router(control_ipc, max_message_bytes, None))
            self.publishers.append(self._publisher(events_ipc, None))
            if curve is not None:
                self._start_authenticator(curve)
            if tcp_bind:
                self.routers.append(self._router(tcp_bind, max_message_bytes, curve))
                self.endpoints["control_tcp"] = tcp_bind
            if tcp_publish:
                self.publishers.append(self._publisher(tcp_publish, curve))
                self.endpoints["events_tcp"] = tcp_publish
        except BaseException:
            self.close()
            raise

    # -- commands --------------------------------------------------------------------

    def handle(self, sock: zmq.Socket, dispatch: Dispatch) -> None:
        """Answer up to a bounded number of waiting requests on ``sock``."""
        checked = self._keys is not None and sock is not self.routers[0]
        for _ in range(_PER_POLL):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if checked and not self._still_authorized(parts[-1]):
                continue  # a revoked key: no answer, as for a key never authorized
            identity, body = parts[0].bytes, [part.bytes for part in parts[1:]]
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

    def _still_authorized(self, frame: zmq.Frame) -> bool:
        assert self._keys is not None
        try:
            user = str(frame.get("User-Id"))  # the z85 public key the connection authenticated with
        except zmq.ZMQError:
            return False  # no authenticated key on this message: never answered
        if self._keys.allows(user.encode()):
            return True
        if user not in self._refused and len(self._refused) < _REMEMBERED_IDS:
            self._refused.add(user)
            self._log.warning("control.key_revoked", key=user, why="no longer authorized")
        return False

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
            body = strict_json.dumps(scrub(reply), default=str).encode()
            sock.send_multipart([identity, body], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the peer left, or stopped reading: its replies are dropped, never queued

    # -- events ----------------------------------------------------------------------

    def publish(self, event: dict[str, Any]) -> None:
        if self._keys is not None and len(self.publishers) > 1:
            self._keys.current()
            if self._keys.revocations != self._revocations:
                self._revocations = self._keys.revocations
                self._rebind_publishers()
        body = strict_json.dumps(event, default=str).encode()
        frames = [str(event.get("event", "")).encode(), body]
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
        """``sock`` bound to ``endpoint``; on failure it is closed and OSError raised."""
        try:
            sock.setsockopt(zmq.LINGER, 0)
            if curve is not None and endpoint.startswith("tcp://"):
                public, secret = zmq.auth.load_certificate(str(curve.secret_key_file))
                sock.curve_secretkey, sock.curve_publickey = secret, public
                sock.curve_server = True
            bind_private(sock, endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise OSError(exc.errno, f"cannot bind {endpoint}: {reason}") from None
        except BaseException:
            sock.close(linger=0)
            raise
        return sock

    def _rebind_publishers(self) -> None:
        """Drop every TCP subscriber: each reconnects, and a revoked key is refused then."""
        endpoint = self.endpoints["events_tcp"]
        self.publishers.pop().close(linger=0)  # the TCP one: the ipc publisher has no CURVE
        deadline = time.monotonic() + _REBIND_FOR
        while True:
            try:
                self.publishers.append(self._publisher(endpoint, self._curve))
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    self._log.error("control.publish_lost", endpoint=endpoint, error=str(exc))
                    return
                time.sleep(0.005)
        self._log.info("control.subscribers_dropped", why="an authorized key was removed")

    def _start_authenticator(self, curve: Curve) -> None:
        self._keys = AuthorizedKeys(curve.authorized_keys)
        self._keys.current()
        self._auth = ThreadAuthenticator(self._context)
        self._auth.start()
        self._auth.configure_curve_callback(domain="*", credentials_provider=self._keys)


def _salvage_id(body: list[bytes]) -> str:
    """The request's id for an error reply, when one can be read at all."""
    try:
        rid = json.loads(body[0]).get("id") if len(body) == 1 else None
    except (UnicodeDecodeError, ValueError, AttributeError, RecursionError):
        rid = None
    return rid if isinstance(rid, str) and len(rid) <= _MAX_ID else ""
