"""Signing a committed checkpoint: ``step-N/model.sig`` in the OpenSSF model-signing format.

The signature is a Sigstore bundle holding a DSSE envelope over an in-toto statement that
lists the sha256 of every file of the checkpoint, ``ckptd.json`` included (so the step,
metrics and lineage the daemon decides by are signed too), made with an EC private key.
The ecosystem's own tool accepts it::

    model_signing verify key --public_key key.pub --signature step-N/model.sig step-N

``model.sig`` appears atomically: it is written beside the checkpoint directory, fsynced,
then renamed into it, so a reader sees either no signature or a whole one. A ``Signer`` is
safe to share between threads (one signature at a time); it reads the whole checkpoint,
so it belongs on a background thread, never on the training process's path.
"""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path

from ckptd_client.manifest import MANIFEST_NAME, SIGNATURE_NAME, verify

from . import upstream
from .keys import fingerprint, load_signing_key, public_pem


class SigningError(RuntimeError):
    """A checkpoint was not signed; it is left as it was (without a new ``model.sig``)."""


class Signer:
    """Signs checkpoints with the EC private key loaded once from ``key_path``.

    Raises :class:`~ckptd.integrity.KeyProblem` for an unusable key (see
    :func:`~ckptd.integrity.keys.load_signing_key`) and
    :class:`~ckptd.integrity.SigningUnavailable` without the ``signing`` extra.
    """

    def __init__(self, key_path: Path) -> None:
        key = load_signing_key(key_path)
        upstream.require()
        from model_signing import signing

        self.key_path = key_path
        self.public_pem = public_pem(key)
        self.fingerprint = fingerprint(key.public_key())
        self._config = (
            signing.Config()
            .use_elliptic_key_signer(private_key=key_path)
            .set_hashing_config(upstream.hashing_config())
        )
        self._lock = threading.Lock()

    def sign(self, checkpoint: Path) -> Path:
        """Write ``checkpoint/model.sig``; return its path.

        The checkpoint must be a committed one whose files match its manifest's list (not
        its digests: that is the resume's full check), and must not hold a ``model.sig``
        of the script's own. A signature already there is replaced. Raises
        :class:`SigningError`.
        """
        checked = verify(checkpoint, full=False)
        if not checked.ok or checked.manifest is None:
            raise SigningError(f"{checkpoint.name} not signed: {checked.reason}")
        if any(entry.path == SIGNATURE_NAME for entry in checked.manifest.files):
            raise SigningError(
                f"{checkpoint.name} not signed: the script wrote a {SIGNATURE_NAME} of its own"
            )
        temp = checkpoint.parent / f".sig-{checkpoint.name}-{secrets.token_hex(4)}.tmp"
        try:
            with self._lock:
                self._config.sign(checkpoint, temp)
            _match_mode(temp, checkpoint / MANIFEST_NAME)
            _fsync(temp, os.O_RDONLY)
            os.replace(temp, checkpoint / SIGNATURE_NAME)
            _fsync(checkpoint, os.O_RDONLY | os.O_DIRECTORY)
        except Exception as exc:  # the library raises what it meets: OSError, ValueError, ...
            temp.unlink(missing_ok=True)
            raise SigningError(f"{checkpoint.name} not signed: {upstream.one_line(exc)}") from exc
        return checkpoint / SIGNATURE_NAME


def remove_signature_temporaries(checkpoint_dir: Path) -> list[Path]:
    """Remove ``.sig-*.tmp`` files that a signer stopped in mid-write left; return them."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(checkpoint_dir))
    except OSError:
        return removed
    for entry in entries:
        ours = entry.name.startswith(".sig-") and entry.name.endswith(".tmp")
        if ours and not entry.is_dir(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


def _match_mode(path: Path, like: Path) -> None:
    """The signature gets the manifest's mode (so ``checkpoint_mode`` covers it too)."""
    os.chmod(path, os.lstat(like).st_mode & 0o666)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
