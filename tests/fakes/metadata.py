"""Fake cloud metadata services (AWS IMDSv2, GCE, Azure Scheduled Events) on loopback.

One HTTP server plays one provider; tests switch it to "preempted" with a deadline and
read back what the daemon asked (e.g. Azure's approval POST).

The GCE side hangs like the real server: any key (the recursive ``instance/`` document
included) with ``wait_for_change=true`` answers when its ETag differs from ``last_etag``
(at once if it already does; without ``last_etag``, on the next change) or after
``timeout_sec``, and sends the ETag of what it answered.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import threading
import time
import urllib.parse
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeMetadata:
    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.deadline: float | None = None  # Unix time of the preemption, once switched
        self.preempted_at: float | None = None  # Unix time of the switch
        self.garbage = False  # answer notices with a body that is not JSON
        self.rebalance = False  # AWS: a rebalance recommendation is up
        self.maintenance_event = "NONE"  # GCE
        self.acks: list[dict[str, Any]] = []
        self.requests: list[str] = []
        self.hanging: list[str] = []  # paths of the hanging GETs in progress (GCE)
        self._changed = threading.Condition()
        self._closed = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_PUT(self) -> None:
                fake._handle(self, "PUT")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def preempt(self, seconds: float) -> float:
        """Announce a preemption ``seconds`` from now; returns its deadline (Unix time)."""
        with self._changed:
            self.preempted_at = time.time()
            self.deadline = self.preempted_at + seconds
            self._changed.notify_all()
            return self.deadline

    def start_maintenance(self, event: str = "TERMINATE_ON_HOST_MAINTENANCE") -> None:
        with self._changed:
            self.maintenance_event = event
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urllib.parse.urlsplit(handler.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        self.requests.append(f"{method} {url.path}")
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        route = getattr(self, f"_{self.provider}")
        status, payload, *extra = route(method, url.path, query, handler.headers, body)
        data = payload if isinstance(payload, bytes) else payload.encode()
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (extra[0] if extra else {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _aws(
        self, method: str, path: str, query: dict, headers: Any, body: bytes
    ) -> tuple[int, Any]:
        if path == "/latest/api/token" and method == "PUT":
            return (
                (200, "token-1")
                if headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                else (400, "")
            )
        if headers.get("X-aws-ec2-metadata-token") != "token-1":
            return 401, ""
        if path == "/latest/meta-data/spot/instance-action":
            if self.deadline is None:
                return 404, "Not Found"
            if self.garbage:
                return 200, "<html>surprise</html>"
            when = datetime.fromtimestamp(self.deadline, timezone.utc)
            return 200, json.dumps(
                {"action": "terminate", "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
            )
        if path == "/latest/meta-data/events/recommendations/rebalance":
            if not self.rebalance:
                return 404, "Not Found"
            return 200, json.dumps({"noticeTime": time.strftime("%Y-%m-%dT%H:%M:%SZ")})
        return 404, ""

    def _gcp(
        self, method: str, path: str, query: dict, headers: Any, body: bytes
    ) -> tuple[int, Any, dict[str, str]] | tuple[int, Any]:
        if headers.get("Metadata-Flavor") != "Google":
            return 403, ""
        with self._changed:
            value = self._gce_value(path, query)
            if value is None:
                return 404, ""
            if query.get("wait_for_change") == "true":
                last = query.get("last_etag") or _etag(value)
                end = time.monotonic() + float(query.get("timeout_sec", "30"))
                self.hanging.append(path)
                try:
                    while _etag(value) == last and not self._closed:
                        left = end - time.monotonic()
                        if left <= 0:
                            break
                        self._changed.wait(left)
                        value = self._gce_value(path, query) or ""
                finally:
                    self.hanging.remove(path)
            return 200, value, {"ETag": _etag(value)}

    def _gce_value(self, path: str, query: dict) -> str | None:
        preempted = "TRUE" if self.deadline is not None else "FALSE"
        keys = {
            "id": "1234567890",
            "preempted": preempted,
            "maintenance-event": self.maintenance_event,
        }
        prefix = "/computeMetadata/v1/instance"
        if path in (prefix, prefix + "/"):
            if query.get("recursive") != "true":
                return "\n".join(sorted(keys)) + "\n"
            document = {
                "id": 1234567890,
                "maintenanceEvent": self.maintenance_event,
                "preempted": preempted,
                "scheduling": {
                    "automaticRestart": "FALSE",
                    "onHostMaintenance": "TERMINATE",
                    "preemptible": "TRUE",
                },
            }
            return json.dumps(document)
        if path.startswith(prefix + "/"):
            return keys.get(path[len(prefix) + 1 :])
        return None

    def _azure(
        self, method: str, path: str, query: dict, headers: Any, body: bytes
    ) -> tuple[int, Any]:
        if headers.get("Metadata") != "true":
            return 400, ""
        if path == "/metadata/instance/compute/name":
            return 200, "vm-7"
        if path == "/metadata/instance":
            return 200, json.dumps({"compute": {"name": "vm-7"}})
        if path == "/metadata/scheduledevents" and method == "POST":
            self.acks.append(json.loads(body))
            return 200, ""
        if path == "/metadata/scheduledevents":
            events = [
                {
                    "EventId": "other",
                    "EventType": "Preempt",
                    "ResourceType": "VirtualMachine",
                    "Resources": ["vm-9"],
                    "EventStatus": "Scheduled",
                    "NotBefore": email.utils.formatdate(time.time() + 1, usegmt=True),
                }
            ]
            if self.deadline is not None:
                events.append(
                    {
                        "EventId": "evt-1",
                        "EventType": "Preempt",
                        "ResourceType": "VirtualMachine",
                        "Resources": ["vm-7"],
                        "EventStatus": "Scheduled",
                        "NotBefore": email.utils.formatdate(self.deadline, usegmt=True),
                    }
                )
            return 200, json.dumps({"DocumentIncarnation": 2, "Events": events})
        return 404, ""


def _etag(value: str) -> str:
    return hashlib.sha1(value.encode()).hexdigest()[:16]
