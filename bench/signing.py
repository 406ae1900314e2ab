"""The cost of signing a checkpoint (``[integrity] signing_key``) next to its commit."""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path

from ckptd_client import manifest

from .harness import Row, Spread, median
from .storage import _FILES, _payload, ckptd_commit

_GOAL = "sign <= 1.5x commit"


def signing_row(base: Path, total: int, rounds: int) -> Row:
    """Interleaved rounds: commit a checkpoint (timed), then sign it as the daemon does (timed).

    Both read or write the same bytes right after the commit, from the page cache as the
    daemon's background signer finds them; the ratio is sign time / commit time per round.
    """
    gib = total / (1 << 30)
    figure = f"signing a {gib:.2g} GiB checkpoint ({_FILES} files) vs its commit"
    if importlib.util.find_spec("model_signing") is None:
        return Row(figure, "model-signing not installed", "-", None, _GOAL, None,
                   note="pip install -e '.[signing]' for this row")  # fmt: skip
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from ckptd.integrity import Signer, Verifier

    key = ec.generate_private_key(ec.SECP256R1())
    key_path = base / "key.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    (base / "key.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    signer, verifier = Signer(key_path), Verifier(base / "key.pub")
    parts = _payload(total)
    commits, signs, checks = [], [], []
    for round_ in range(rounds):
        step = round_ + 1
        commits.append(ckptd_commit(base / "ckpt", step, parts))
        path = base / "ckpt" / manifest.checkpoint_name(step)
        began = time.perf_counter()
        signer.sign(path)
        signs.append(time.perf_counter() - began)
        began = time.perf_counter()
        verdict = verifier.check(path)
        checks.append(time.perf_counter() - began)
        assert verdict.ok, verdict.text()
        shutil.rmtree(path)
    cost = Spread.costs(signs, commits)
    return Row(
        figure,
        f"sign {median(signs):.2f} s ({total / median(signs) / 1e9:.2f} GB/s), "
        f"best {min(signs):.2f} s; verify {median(checks):.2f} s",
        f"commit {median(commits):.2f} s, best {min(commits):.2f} s",
        cost.median,
        _GOAL,
        cost.median <= 1.5,
        note="sha256 of every file (xxh3 hashed them at the commit, several times faster), "
        "on the daemon's background worker, never in the trainer; "
        "ratio = sign time / commit time, per interleaved round",
        data={"sign": signs, "commit": commits, "verify": checks},
        spread=cost,
    )
