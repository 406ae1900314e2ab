"""Remote store URLs: which ones ckptd accepts, and how they are shown without credentials."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

__all__ = ["check_remote_url", "redact"]

# Which extra of ckptd brings the filesystem of a protocol.
_EXTRAS = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "adl": "azure",
}


def check_remote_url(url: str, base: Path) -> str:
    """The URL to use for ``url``; raises ValueError (one line, naming the URL) when unusable.

    A plain path becomes an absolute ``file://`` URL. A protocol fsspec does not know,
    or one whose package is not installed, is an error; nothing is contacted here.
    """
    if not url.strip():
        raise ValueError("empty URL")
    if "://" not in url:
        return "file://" + os.path.normpath(base / Path(url).expanduser())
    import fsspec
    from fsspec.registry import known_implementations, registry

    for part in url.split("::"):
        protocol = part.split("://", 1)[0] if "://" in part else part
        if protocol not in known_implementations and protocol not in registry:
            raise ValueError(f"unknown protocol {protocol!r} in {redact(url)}")
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError:
            extra = _EXTRAS.get(protocol)
            hint = f"pip install 'ckptd[{extra}]'" if extra else f"install fsspec's {protocol}"
            raise ValueError(f"{redact(url)}: {protocol}:// needs a package ({hint})") from None
    return url


def redact(url: str) -> str:
    """``url`` with any ``user:password@`` part replaced, for logs and messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


class RemoteUnusable(Exception):
    """The remote can never work as configured (no such bucket, access denied): exit 2."""
