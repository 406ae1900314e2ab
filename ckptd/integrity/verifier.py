"""Checking a checkpoint's ``model.sig`` against a public key: one verdict per checkpoint.

The verdicts are ``signed-ok``, ``unsigned`` (no ``model.sig``, or only one the script
wrote itself), ``mismatch`` (a signature that this key did not make, or files that are not
the ones signed, however consistently the manifest was rewritten) and ``key-problem`` (the
public key itself cannot be used; :func:`verdict_for` reports it, a :class:`Verifier`
refuses to be made).

Before the library reads anything, the directory is checked the way a resume checks it
(regular files only, no links, every file listed in ``ckptd.json``), so nothing opens a
FIFO or follows a link; the signature is read without following a link and handed to the
library as a private copy.
"""

from __future__ import annotations

import enum
import os
import re
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ckptd_client._digest import open_nofollow
from ckptd_client.manifest import SIGNATURE_NAME, ManifestError, read_manifest, verify

from . import upstream
from .keys import KeyProblem, load_verify_key

# The library's message is str() of a list: an item quoting both kinds of quote has its
# single quotes escaped.
_CHANGED = re.compile(r"Hash mismatch for \\?'([^'\\]+)\\?'")
_ADDED = re.compile(r"Extra files found in model '[^']*': ([^\"\]]+)")
_MISSING = re.compile(r"Missing files in model '[^']*': ([^\"\]]+)")
_MAX_SIGNATURE_BYTES = 64 << 20  # a statement lists every file: large for many-file checkpoints


class SignatureStatus(str, enum.Enum):
    SIGNED_OK = "signed-ok"
    UNSIGNED = "unsigned"
    MISMATCH = "mismatch"
    KEY_PROBLEM = "key-problem"


@dataclass(frozen=True)
class Verdict:
    """What a checkpoint's signature says; ``reason`` is one line, empty when it verified."""

    status: SignatureStatus
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status is SignatureStatus.SIGNED_OK

    def text(self) -> str:
        return self.status.value + (f": {self.reason}" if self.reason else "")


class Verifier:
    """Checks signatures against the public key loaded once from ``key_path``.

    Raises :class:`~ckptd.integrity.KeyProblem` for an unusable key and
    :class:`~ckptd.integrity.SigningUnavailable` without the ``signing`` extra. Safe to
    share between threads (one check at a time).
    """

    def __init__(self, key_path: Path) -> None:
        self.key = load_verify_key(key_path)
        upstream.require()
        from model_signing import verifying

        with tempfile.NamedTemporaryFile(prefix="ckptd-key-", suffix=".pub") as copy:
            copy.write(self.key.pem)  # the library reads a path: give it the bytes checked
            copy.flush()
            self._config = verifying.Config().use_elliptic_key_verifier(public_key=Path(copy.name))
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        return self.key.fingerprint

    def check(self, checkpoint: Path) -> Verdict:
        """The verdict on ``checkpoint`` (never raises for what it finds on disk)."""
        if checkpoint.is_symlink() or not checkpoint.is_dir():
            return Verdict(SignatureStatus.MISMATCH, "not a directory")
        signature = checkpoint / SIGNATURE_NAME
        try:
            info = os.lstat(signature)
        except FileNotFoundError:
            return Verdict(SignatureStatus.UNSIGNED, f"no {SIGNATURE_NAME}")
        except OSError as exc:
            return Verdict(SignatureStatus.MISMATCH, f"{SIGNATURE_NAME}: {exc.strerror}")
        if not stat.S_ISREG(info.st_mode):
            return Verdict(SignatureStatus.MISMATCH, f"{SIGNATURE_NAME} is not a regular file")
        if info.st_size > _MAX_SIGNATURE_BYTES:
            return Verdict(SignatureStatus.MISMATCH, f"{SIGNATURE_NAME} is too large")
        try:
            if any(e.path == SIGNATURE_NAME for e in read_manifest(checkpoint).files):
                return Verdict(
                    SignatureStatus.UNSIGNED, f"{SIGNATURE_NAME} is the script's own file"
                )
        except (OSError, ManifestError) as exc:
            return Verdict(SignatureStatus.MISMATCH, f"checkpoint: {exc}")
        layout = verify(checkpoint, full=False)
        if not layout.ok:
            return Verdict(SignatureStatus.MISMATCH, f"checkpoint: {layout.reason}")
        try:
            with open_nofollow(signature) as handle:
                raw = handle.read(_MAX_SIGNATURE_BYTES + 1)
        except OSError as exc:
            return Verdict(SignatureStatus.MISMATCH, f"{SIGNATURE_NAME}: {exc}")
        return self._check_with_library(checkpoint, raw)

    def _check_with_library(self, checkpoint: Path, raw: bytes) -> Verdict:
        with tempfile.NamedTemporaryFile(prefix="ckptd-sig-", suffix=".sig") as copy:
            copy.write(raw)
            copy.flush()
            try:
                with self._lock:
                    self._config.set_hashing_config(upstream.hashing_config())
                    self._config.verify(checkpoint, Path(copy.name))
            except Exception as exc:  # malformed bundles raise KeyError, TypeError, ...
                return Verdict(SignatureStatus.MISMATCH, _mismatch_reason(exc))
        return Verdict(SignatureStatus.SIGNED_OK)


def _mismatch_reason(exc: Exception) -> str:
    """The library's file differences by name (its message quotes digests as bytes)."""
    text = str(exc)
    changed = _CHANGED.findall(text)
    added = [n for group in _ADDED.findall(text) for n in group.split(", ")]
    missing = [n for group in _MISSING.findall(text) for n in group.split(", ")]
    parts = [
        f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
        for label, names in (("changed", changed), ("added", added), ("missing", missing))
        if names
    ]
    if parts:
        return "files differ from the signed ones (" + "; ".join(parts) + ")"
    return upstream.one_line(exc)


def verdict_for(checkpoint: Path, key_path: Path) -> Verdict:
    """One checkpoint against one key file; a key that cannot be used is ``key-problem``."""
    try:
        verifier = Verifier(key_path)
    except (KeyProblem, upstream.SigningUnavailable) as exc:
        return Verdict(SignatureStatus.KEY_PROBLEM, str(exc))
    return verifier.check(checkpoint)
