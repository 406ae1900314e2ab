"""Signatures of checkpoints (``[integrity]``): signing after a commit, checking before a resume.

A checkpoint signed by ckptd holds ``model.sig``, an OpenSSF model-signing signature over
the sha256 of every file, ``ckptd.json`` included (xxh3, the integrity digest of the
manifest, is not collision-resistant, so it is never what is signed). The upstream tool
verifies it as it is::

    model_signing verify key --public_key key.pub --signature step-N/model.sig step-N

Needs the ``signing`` extra (``model-signing``); importing this package does not.
"""

from __future__ import annotations

from .keys import KeyProblem, PublicKey, load_signing_key, load_verify_key
from .signer import Signer, SigningError, remove_signature_temporaries
from .upstream import INSTALL_HINT, SigningUnavailable
from .verifier import SignatureStatus, Verdict, Verifier, verdict_for

__all__ = [
    "INSTALL_HINT",
    "KeyProblem",
    "PublicKey",
    "SignatureStatus",
    "Signer",
    "SigningError",
    "SigningUnavailable",
    "Verdict",
    "Verifier",
    "load_signing_key",
    "load_verify_key",
    "remove_signature_temporaries",
    "verdict_for",
]
