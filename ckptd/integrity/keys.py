"""The key files of ``[integrity]``: what is accepted, and the one-line reason when not.

A signing key is a PEM EC private key (P-256, P-384 or P-521: the curves the OpenSSF
model-signing format accepts), unencrypted, in a regular file that neither its group nor
other users can read or write (the daemon holds it; it never enters a job's
environment). A verify key is the matching PEM public key. Both are read once, whole,
when they are loaded; nothing here writes a key.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .upstream import INSTALL_HINT, SigningUnavailable

if TYPE_CHECKING:  # cryptography comes with the signing extra: imported when a key is loaded
    from cryptography.hazmat.primitives.asymmetric import ec

SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")
_MAX_KEY_BYTES = 64 << 10


class KeyProblem(ValueError):
    """A key file that cannot be used; the message names the file and says what to do."""


@dataclass(frozen=True)
class PublicKey:
    """A verify key: its PEM text and a short fingerprint to show."""

    path: Path
    pem: bytes
    key: ec.EllipticCurvePublicKey

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """``sha256:<first 16 hex>`` of the key's DER SubjectPublicKeyInfo (what ``ckptd`` shows)."""
    from cryptography.hazmat.primitives import hashes, serialization

    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return f"sha256:{digest.finalize().hex()[:16]}"


def load_signing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The private key in ``path``; :class:`KeyProblem` when it is missing, unsafe or not one.

    Refused: a file that is not regular, one readable or writable by its group or others
    (``chmod 600`` it), an encrypted key, a key that is not EC on a supported curve.
    """
    serialization, ec = _cryptography()
    raw, mode = _read_key_file(path, "signing_key")
    if mode & 0o077:
        raise KeyProblem(
            f"signing_key {path} is open to its group or others (mode {stat.S_IMODE(mode):04o}):"
            f" a signing key must be private; run chmod 600 {path}"
        )
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except TypeError:
        raise KeyProblem(
            f"signing_key {path} is encrypted; ckptd needs an unencrypted key file"
            " (protect it with its permissions instead)"
        ) from None
    except (ValueError, NotImplementedError):
        if b"PUBLIC KEY" in raw:
            raise KeyProblem(
                f"signing_key {path} holds a public key; it must be the private key"
            ) from None
        raise KeyProblem(f"signing_key {path} is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyProblem(f"signing_key {path} is not an EC key ({_curves_hint()})")
    _check_curve(key.curve, path, "signing_key")
    return key


def load_verify_key(path: Path) -> PublicKey:
    """The public key in ``path``; :class:`KeyProblem` when it is missing or not one."""
    serialization, ec = _cryptography()
    raw, _ = _read_key_file(path, "verify_key")
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, NotImplementedError):
        if b"PRIVATE KEY" in raw:
            raise KeyProblem(
                f"verify_key {path} holds a private key; give the public key"
                f" (openssl ec -in {path} -pubout -out key.pub)"
            ) from None
        raise KeyProblem(f"verify_key {path} is not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise KeyProblem(f"verify_key {path} is not an EC key ({_curves_hint()})")
    _check_curve(key.curve, path, "verify_key")
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return PublicKey(path, pem, key)


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _cryptography() -> tuple[Any, Any]:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError:
        raise SigningUnavailable(
            f"signatures need the cryptography package: {INSTALL_HINT}"
        ) from None
    return serialization, ec


def _read_key_file(path: Path, what: str) -> tuple[bytes, int]:
    """The file's bytes and its mode (of the file a link names)."""
    try:
        info = os.stat(path)  # a key named in the config may be a link (a mounted secret)
    except FileNotFoundError:
        raise KeyProblem(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise KeyProblem(f"{what} {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyProblem(f"{what} {path} is not a regular file")
    if info.st_size > _MAX_KEY_BYTES:
        raise KeyProblem(f"{what} {path} is {info.st_size} bytes: not a key file")
    try:
        with open(path, "rb") as handle:
            return handle.read(_MAX_KEY_BYTES + 1), info.st_mode
    except OSError as exc:
        raise KeyProblem(f"{what} {path} cannot be read: {exc.strerror}") from None


def _check_curve(curve: ec.EllipticCurve, path: Path, what: str) -> None:
    if curve.name not in SUPPORTED_CURVES:
        raise KeyProblem(f"{what} {path} uses curve {curve.name}; {_curves_hint()}")


def _curves_hint() -> str:
    return (
        "model-signing accepts EC keys on P-256, P-384 or P-521:"
        " openssl ecparam -name prime256v1 -genkey -noout -out key.pem"
    )
