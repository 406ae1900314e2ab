"""The OpenSSF ``model_signing`` package, imported only when a key is configured.

It is an optional extra (``pip install 'ckptd[signing]'``) and takes a quarter of a second
to import, so nothing imports it until a :class:`~ckptd.integrity.Signer` or
:class:`~ckptd.integrity.Verifier` is made. What is hashed is fixed here, once, for both
sides: sha256 of every file of the checkpoint directory, ``ckptd.json`` included, except
the signature itself; no symlink is followed and ``.git*`` names are not skipped.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ckptd_client.manifest import SIGNATURE_NAME

if TYPE_CHECKING:
    from model_signing import hashing

INSTALL_HINT = "pip install 'ckptd[signing]' (model-signing and pyopenssl)"


class SigningUnavailable(RuntimeError):
    """The ``model_signing`` package (or what it imports) is not installed."""


def require() -> None:
    """Import ``model_signing``; :class:`SigningUnavailable` with the install line if absent."""
    try:
        for module in ("model_signing.hashing", "model_signing.signing", "model_signing.verifying"):
            importlib.import_module(module)
    except ImportError as exc:
        raise SigningUnavailable(
            f"signatures need the model-signing package ({exc.name} is missing): {INSTALL_HINT}"
        ) from None


def hashing_config() -> hashing.Config:
    """A fresh hashing configuration (the library's verifier adds to the one it is given)."""
    from model_signing import hashing

    return (
        hashing.Config()
        .use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
        .set_ignored_paths(paths=[SIGNATURE_NAME], ignore_git_paths=False)
    )


def one_line(exc: BaseException) -> str:
    """A library error as one line of at most 300 characters (its class when it says nothing)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
