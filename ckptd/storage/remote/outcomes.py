"""What the uploader reports: immutable values, each one event (``event`` names it).

The uploader thread hands them to ``post``; the arbiter emits them as they are, so a
field name here is the field name in ``events.jsonl``. None of them is named ``attempt``
or ``step`` unless it means the upload's own step: ``attempt`` is the job's launch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

__all__ = [
    "Outcome",
    "RemoteAhead",
    "RemoteFenced",
    "RemotePruneFailed",
    "RemotePruned",
    "UploadFailed",
    "UploadTimeoutShort",
    "Uploaded",
]


@dataclass(frozen=True)
class _Outcome:
    event: ClassVar[str]
    level: ClassVar[str] = "warning"

    def fields(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Uploaded(_Outcome):
    event: ClassVar[str] = "remote.uploaded"
    level: ClassVar[str] = "info"
    step: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class UploadFailed(_Outcome):
    event: ClassVar[str] = "remote.failed"
    step: int
    error: str
    upload_attempt: int  # attempts at this step so far (the job's launch is ``attempt``)
    retry_in: float | None  # None: given up (the local checkpoint is gone or invalid)


@dataclass(frozen=True)
class UploadTimeoutShort(_Outcome):
    """``upload_timeout`` is below what an upload of ``bytes`` takes at the measured bandwidth."""

    event: ClassVar[str] = "remote.timeout_short"
    step: int
    bytes: int
    expected_seconds: float
    upload_timeout: float
    bandwidth: float  # bytes/s
    why: str = "each attempt is cut before it can finish; raise [storage] upload_timeout"


@dataclass(frozen=True)
class RemoteFenced(_Outcome):
    event: ClassVar[str] = "remote.fenced"
    level: ClassVar[str] = "error"
    step: int
    error: str


@dataclass(frozen=True)
class RemoteAhead(_Outcome):
    """The remote's newest checkpoint is past the job's progress: resume from it instead."""

    event: ClassVar[str] = "remote.ahead"
    remote_step: int
    job_step: int  # the job's progress when the remote was listed (-1: none yet)
    remote_lineage: str | None
    lineage: str | None  # the job's own


@dataclass(frozen=True)
class RemotePruned(_Outcome):
    event: ClassVar[str] = "remote.pruned"
    level: ClassVar[str] = "info"
    step: int
    why: str = "retention"  # or "other lineage": superseded by this job's uploads


@dataclass(frozen=True)
class RemotePruneFailed(_Outcome):
    event: ClassVar[str] = "remote.prune_failed"
    error: str


Outcome = (
    Uploaded
    | UploadFailed
    | UploadTimeoutShort
    | RemoteFenced
    | RemoteAhead
    | RemotePruned
    | RemotePruneFailed
)
