"""What ckptd never shows: the one rule for secrets, applied to every way out of the daemon.

The rule (docs/security.md, "Secrets"):

- every value of the job's ``env`` is hidden; its names stay visible (the job gets
  the values directly, nothing else needs them);
- in ``[storage.options]``, every value under a key whose name matches
  :data:`SECRET_NAME` (``key``, ``secret``, ``token``, ``password``, ``credential``,
  ``auth``, ...), at any depth (``client_kwargs``, ``headers``);
- the password of any URL (``scheme://user:PASSWORD@host``);
- each of these values, and the value of every env variable whose *name* matches
  :data:`SECRET_NAME`, is also cut out of any text it turns up in (an error message,
  a library's log line), once it is at least :data:`_MIN_SCRUBBED` characters long.

:func:`configure` learns the values from the job's configuration once, at start;
:func:`redact_config` gives the configuration as shown (``config`` reply, ``job.json``)
and :func:`scrub` cleans any other value on its way out: event records, log lines,
control replies. Both are pure functions of their argument and the learned values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, Protocol


class _Storage(Protocol):
    @property
    def remote(self) -> str | None: ...
    @property
    def options(self) -> Mapping[str, Any]: ...


class _Preemption(Protocol):
    @property
    def endpoint(self) -> str | None: ...


class JobConfig(Protocol):
    """What redaction reads of a :class:`ckptd.config.JobConfig`, without importing it."""

    @property
    def env(self) -> Mapping[str, str]: ...
    @property
    def storage(self) -> _Storage: ...
    @property
    def preemption(self) -> _Preemption: ...


__all__ = ["REDACTED", "SECRET_NAME", "configure", "redact_config", "scrub"]

REDACTED = "<redacted>"
# Broad on purpose: a harmless value hidden costs little, a leaked credential a lot.
SECRET_NAME = re.compile(
    r"key|secret|token|pass|pwd|cred|auth|sig|cookie|session|private|conn", re.IGNORECASE
)
_URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)(?P<password>[^/\s@]+)(?=@)"
)
_MIN_SCRUBBED = 6  # shorter values would blank out ordinary words and numbers

_known: tuple[str, ...] = ()


def configure(config: JobConfig) -> None:
    """Learn the secret values of ``config``; :func:`scrub` cuts them out from then on."""
    global _known
    found = {value for name, value in config.env.items() if SECRET_NAME.search(name)}
    found.update(_secret_values(config.storage.options, under_secret=False))
    for text in (config.storage.remote, config.preemption.endpoint):
        if text:
            found.update(match.group("password") for match in _URL_PASSWORD.finditer(text))
    _known = tuple(sorted((v for v in found if len(v) >= _MIN_SCRUBBED), key=len, reverse=True))


def redact_config(config: JobConfig) -> dict[str, Any]:
    """``config`` as a JSON-able dict with every secret replaced by :data:`REDACTED`."""
    shown = asdict(config)  # type: ignore[call-overload]  # a dataclass, by the protocol's one user
    shown["env"] = {name: REDACTED for name in config.env}
    shown["storage"]["options"] = _redact_named(config.storage.options)
    result: dict[str, Any] = scrub(shown)
    return result


def scrub(value: Any) -> Any:
    """``value`` with every learned secret and URL password cut out of its text, at any depth.

    Dicts, lists and tuples are copied; strings are cleaned; anything else (numbers,
    paths, None) is returned as it is, paths as strings when they held a secret.
    """
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, dict):
        return {key: scrub(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(item) for item in value]
    if hasattr(value, "__fspath__"):
        text = str(value)
        cleaned = _scrub_text(text)
        return value if cleaned == text else cleaned
    return value


def _scrub_text(text: str) -> str:
    for secret in _known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED, text)
    return text


def _redact_named(value: Any, under_secret: bool = False) -> Any:
    """A copy of ``value`` with every leaf under a secret-named key replaced."""
    if isinstance(value, dict):
        return {
            key: _redact_named(item, under_secret or bool(SECRET_NAME.search(str(key))))
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_redact_named(item, under_secret) for item in value]
    if under_secret and value is not None and not isinstance(value, bool):
        return REDACTED
    return value


def _secret_values(value: Any, under_secret: bool) -> set[str]:
    """The text of every leaf :func:`_redact_named` would hide."""
    if isinstance(value, dict):
        found: set[str] = set()
        for key, item in value.items():
            found |= _secret_values(item, under_secret or bool(SECRET_NAME.search(str(key))))
        return found
    if isinstance(value, (list, tuple)):
        return {text for item in value for text in _secret_values(item, under_secret)}
    if under_secret and value is not None and not isinstance(value, bool):
        return {str(value)}
    return set()
