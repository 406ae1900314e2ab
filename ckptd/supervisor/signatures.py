"""Signatures in the daemon (``[integrity]``): sign after each commit, check before a resume.

Signing runs on the background worker, after the commit the job reported (the training
process never sees the key, nor waits for it); the checkpoint goes to the uploader only
once its ``model.sig`` is written, so a remote copy never has a manifest without its
signature. Checking runs in the launch's preparation, also on the worker, before the job
is started: the job opens only a checkpoint whose signature verified.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ckptd.config import IntegrityConfig

if TYPE_CHECKING:
    from ckptd.integrity import Signer, Verifier


@dataclass(frozen=True)
class Signed:
    """What signing one committed checkpoint did: ``error`` is None when it was signed."""

    path: Path
    step: int | None
    seconds: float
    error: str | None = None


def signer_of(config: IntegrityConfig) -> Signer | None:
    """The daemon's signer; None without ``signing_key`` (the key was checked at load)."""
    if config.signing_key is None:
        return None
    from ckptd.integrity import Signer

    return Signer(config.signing_key)


def verifier_of(config: IntegrityConfig) -> Verifier | None:
    if config.verify_key is None:
        return None
    from ckptd.integrity import Verifier

    return Verifier(config.verify_key)


def sign_then_upload(
    signer: Signer, path: Path, step: int | None, upload: Callable[[], None] | None
) -> Signed:
    """On the worker: sign ``path``, then hand it to the uploader whatever came of it (an
    unsigned copy in the bucket still beats none; resume with a verify key refuses it)."""
    from ckptd.integrity import SigningError

    began = time.monotonic()
    error = None
    try:
        signer.sign(path)
    except SigningError as exc:
        error = str(exc)
    seconds = time.monotonic() - began
    if upload is not None:
        upload()
    return Signed(path, step, seconds, error)


def signature_problem(verifier: Verifier | None, path: Path) -> str | None:
    """Why ``path`` may not be resumed from under ``verify_key``; None when it may."""
    if verifier is None:
        return None
    verdict = verifier.check(path)
    return None if verdict.ok else f"signature {verdict.text()}"
