"""Cloud preemption notices: AWS, GCE and Azure instance metadata, watched from one thread.

Each provider's watcher turns what the metadata service says into a :class:`Notice`;
the source posts it as a PREEMPT request (or a plain checkpoint for an AWS
rebalance recommendation). Network errors, timeouts and odd bodies are logged
once a minute per kind and never end the watching. Only the standard library
speaks HTTP here.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, NamedTuple, Protocol

from ckptd import strict_json
from ckptd.log import get_logger
from ckptd.requests import Action, Origin, Request
from ckptd.sources import Post

GCE_WINDOW = 30.0  # GCE gives no time in its notice: 30 s by its documentation
_ERROR_EVERY = 60.0


@dataclass(frozen=True)
class Notice:
    """The machine is going away (``preempt``) or might (``rebalance``)."""

    provider: str
    kind: str
    deadline: float | None  # Unix time the machine goes, when known
    event_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Reply(NamedTuple):
    status: int
    body: bytes
    etag: str | None  # the ETag header (GCE's hanging GETs pass it back as last_etag)


def http(
    method: str, url: str, headers: dict[str, str], timeout: float, body: bytes | None = None
) -> Reply:
    """One request; any HTTP status is a reply; raises OSError on transport trouble."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, response.read(1 << 20), response.headers.get("ETag"))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read(1 << 20) if exc.fp else b"", exc.headers.get("ETag"))


class Watcher(Protocol):
    provider: str

    def poll(self) -> list[Notice]: ...
    def acknowledge(self, notice: Notice) -> None: ...


class AwsWatcher:
    """IMDSv2: a session token, then spot/instance-action and the rebalance recommendation."""

    provider = "aws"
    TOKEN_TTL = 21600

    def __init__(self, base: str, timeout: float) -> None:
        self.base, self.timeout = base.rstrip("/"), timeout
        self._token: str | None = None
        self._token_expires = 0.0
        self._rebalance_seen = False
        self._actions_seen: set[tuple[str, str]] = set()

    def poll(self) -> list[Notice]:
        notices = []
        status, body = self._get("/latest/meta-data/spot/instance-action")
        if status == 200:
            action = _json_object(body)
            kind, when = str(action.get("action", "terminate")), action.get("time")
            # The document stays up for the whole window: each notice is acted on once.
            if (kind, str(when)) not in self._actions_seen:
                self._actions_seen.add((kind, str(when)))
                notices.append(Notice("aws", kind, _parse_time(when), detail=action))
        status, body = self._get("/latest/meta-data/events/recommendations/rebalance")
        if status == 200 and not self._rebalance_seen:
            self._rebalance_seen = True
            notices.append(Notice("aws", "rebalance", None, detail=_json_object(body)))
        return notices

    def acknowledge(self, notice: Notice) -> None:
        pass

    def _get(self, path: str) -> tuple[int, bytes]:
        status, body, _ = http(
            "GET", self.base + path, {"X-aws-ec2-metadata-token": self._session()}, self.timeout
        )
        if status == 401:  # expired or revoked: one fresh token, one retry
            self._token = None
            status, body, _ = http(
                "GET", self.base + path, {"X-aws-ec2-metadata-token": self._session()}, self.timeout
            )
        if status not in (200, 404):
            raise HttpError(status, f"GET {path}: HTTP {status}")
        return status, body

    def _session(self) -> str:
        if self._token is None or time.monotonic() > self._token_expires:
            status, body, _ = http(
                "PUT",
                self.base + "/latest/api/token",
                {"X-aws-ec2-metadata-token-ttl-seconds": str(self.TOKEN_TTL)},
                self.timeout,
                body=b"",
            )
            if status != 200:
                raise HttpError(status, f"IMDSv2 token: HTTP {status}")
            self._token = body.decode().strip()
            self._token_expires = time.monotonic() + self.TOKEN_TTL - 60
        return self._token


class GceWatcher:
    """``preempted`` (TRUE) and ``maintenanceEvent`` (anything but NONE) of the instance.

    One hanging GET on the recursive ``instance/`` document watches both keys at once.
    It always carries the ETag of the document last seen (``last_etag``), so the server
    answers at once when anything changed since, even between two GETs; the first GET
    does not hang, to learn the state and the ETag.
    """

    provider = "gcp"
    HEADERS: ClassVar[dict[str, str]] = {"Metadata-Flavor": "Google"}
    KEYS: ClassVar[tuple[tuple[str, str, Callable[[str], bool]], ...]] = (
        # (key in the recursive document, notice kind = the key's own path, fires)
        ("preempted", "preempted", lambda value: value.upper() == "TRUE"),
        ("maintenanceEvent", "maintenance-event", lambda value: value.upper() != "NONE"),
    )

    def __init__(self, base: str, timeout: float, hang: float = 30.0) -> None:
        self.base, self.timeout, self.hang = base.rstrip("/"), timeout, hang
        self._etag: str | None = None
        self._seen: set[str] = set()

    def poll(self) -> list[Notice]:
        url, hang = f"{self.base}/computeMetadata/v1/instance/?recursive=true&alt=json", 0.0
        if self._etag is not None:
            last = urllib.parse.quote(self._etag, safe="")
            url += f"&wait_for_change=true&timeout_sec={int(self.hang)}&last_etag={last}"
            hang = self.hang
        status, body, etag = http("GET", url, self.HEADERS, self.timeout + hang)
        if status != 200:
            raise HttpError(status, f"GET instance/?recursive=true: HTTP {status}")
        document = _json_object(body)
        self._etag = etag or None  # none: poll without hanging
        notices = []
        for key, kind, fires in self.KEYS:
            value = document.get(key)
            if isinstance(value, str) and fires(value) and kind not in self._seen:
                self._seen.add(kind)
                notices.append(Notice("gcp", kind, time.time() + GCE_WINDOW, detail={key: value}))
        return notices

    def acknowledge(self, notice: Notice) -> None:
        pass


class AzureWatcher:
    """Scheduled Events: act on Preempt and Terminate for this VM; approve once saved."""

    provider = "azure"
    HEADERS: ClassVar[dict[str, str]] = {"Metadata": "true"}
    PATH = "/metadata/scheduledevents?api-version=2020-07-01"

    def __init__(self, base: str, timeout: float) -> None:
        self.base, self.timeout = base.rstrip("/"), timeout
        self._seen: set[str] = set()
        self._vm_name: str | None = None

    def poll(self) -> list[Notice]:
        if self._vm_name is None:
            self._vm_name = self._name()
        status, body, _ = http("GET", self.base + self.PATH, self.HEADERS, self.timeout)
        if status != 200:
            raise HttpError(status, f"GET scheduledevents: HTTP {status}")
        events = _json_object(body).get("Events", [])
        notices = []
        for event in events if isinstance(events, list) else []:
            if not isinstance(event, dict) or event.get("EventType") not in (
                "Preempt",
                "Terminate",
            ):
                continue
            resources = event.get("Resources") or []
            if self._vm_name and resources and self._vm_name not in resources:
                continue  # another VM of the scale set
            event_id = str(event.get("EventId", ""))
            if event_id in self._seen:
                continue
            self._seen.add(event_id)
            when = _parse_time(event.get("NotBefore"))
            notices.append(Notice("azure", str(event["EventType"]).lower(), when, event_id, event))
        return notices

    def acknowledge(self, notice: Notice) -> None:
        if notice.event_id:
            body = strict_json.dumps({"StartRequests": [{"EventId": notice.event_id}]}).encode()
            http(
                "POST",
                self.base + self.PATH,
                {**self.HEADERS, "Content-Type": "application/json"},
                self.timeout,
                body=body,
            )

    def _name(self) -> str:
        url = self.base + "/metadata/instance/compute/name?api-version=2020-09-01&format=text"
        status, body, _ = http("GET", url, self.HEADERS, self.timeout)
        return body.decode(errors="replace").strip() if status == 200 else ""


_DEFAULT_BASES = {
    "aws": "http://169.254.169.254",
    "gcp": "http://metadata.google.internal",
    "azure": "http://169.254.169.254",
}


def make_watcher(provider: str, base: str | None, timeout: float) -> Watcher:
    url = base or _DEFAULT_BASES[provider]
    if provider == "aws":
        return AwsWatcher(url, timeout)
    if provider == "gcp":
        return GceWatcher(url, timeout)
    return AzureWatcher(url, timeout)


def detect(base: str | None, timeout: float) -> str | None:
    """Which provider's metadata service answers here (each probed once), or None."""
    probes: list[tuple[str, str, str, dict[str, str]]] = [
        ("aws", "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"}),
        ("gcp", "GET", "/computeMetadata/v1/instance/id", GceWatcher.HEADERS),
        ("azure", "GET", "/metadata/instance?api-version=2020-09-01", AzureWatcher.HEADERS),
    ]
    for provider, method, path, headers in probes:
        url = (base or _DEFAULT_BASES[provider]).rstrip("/") + path
        try:
            reply = http(method, url, headers, timeout, body=b"" if method == "PUT" else None)
        except (OSError, ValueError):
            continue
        if reply.status == 200:
            return provider
    return None


class CloudNotices:
    """The request source: polls one provider's watcher on its own thread."""

    def __init__(self, provider: str, base: str | None, interval: float, timeout: float) -> None:
        self.provider, self.base, self.interval, self.timeout = provider, base, interval, timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watcher: Watcher | None = None
        self._acks: list[Notice] = []
        self._log = get_logger()
        self._last_error: dict[str, float] = {}

    def start(self, post: Post) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(post,), name="ckptd-cloud", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1)

    def acknowledge(self, notice: Notice) -> None:
        """Tell the provider we are ready (Azure); done from the watcher's thread."""
        self._acks.append(notice)

    def _run(self, post: Post) -> None:
        provider = self.provider
        if provider == "auto":
            found = detect(self.base, self.timeout)
            if found is None:
                return  # not on a known cloud: nothing to watch, and nothing to say
            self._log.info("preemption.provider_detected", provider=found)
            provider = found
        self._watcher = make_watcher(provider, self.base, self.timeout)
        while not self._stop.is_set():
            self._flush_acks()
            started = time.monotonic()
            try:
                for notice in self._watcher.poll():
                    post(_as_request(notice))
            except (OSError, ValueError, HttpError) as exc:
                self._rate_limited_error(provider, exc)
                started = time.monotonic()
            # One poll per interval; a hanging GET that waited longer is followed at once.
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        self._flush_acks()

    def _flush_acks(self) -> None:
        while self._acks and self._watcher is not None:
            notice = self._acks.pop(0)
            try:
                self._watcher.acknowledge(notice)
                self._log.info(
                    "preemption.acknowledged", provider=notice.provider, event_id=notice.event_id
                )
            except (OSError, ValueError) as exc:
                self._rate_limited_error(notice.provider, exc)

    def _rate_limited_error(self, provider: str, exc: Exception) -> None:
        kind = type(exc).__name__
        now = time.monotonic()
        if now - self._last_error.get(kind, -_ERROR_EVERY) >= _ERROR_EVERY:
            self._last_error[kind] = now
            self._log.warning(
                "preemption.metadata_unavailable",
                provider=provider,
                error=f"{kind}: {exc}",
                next_report_in=_ERROR_EVERY,
            )


def _as_request(notice: Notice) -> Request:
    if notice.kind == "rebalance":
        return Request(Action.CHECKPOINT, Origin.CLOUD, "aws rebalance recommendation")
    return Request(Action.PREEMPT, Origin.CLOUD, f"{notice.provider} {notice.kind}", notice=notice)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ValueError(f"not JSON: {body[:80]!r}") from None
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object: {body[:80]!r}")
    return data


def _parse_time(value: Any) -> float | None:
    """ISO 8601 (AWS) or RFC 1123 (Azure NotBefore) to Unix time; None when absent or odd."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        pass
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
