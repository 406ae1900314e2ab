"""Signing checkpoints in the OpenSSF model-signing format and checking them (ckptd.integrity)."""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ckptd.integrity import (
    KeyProblem,
    SignatureStatus,
    Signer,
    SigningError,
    SigningUnavailable,
    Verifier,
    remove_signature_temporaries,
    verdict_for,
)
from ckptd_client import manifest, store

pytest.importorskip("model_signing", reason="needs the signing extra")


def _write_key(path: Path, key: object, mode: int = 0o600, password: bytes | None = None) -> Path:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
    )
    os.chmod(path, mode)
    return path


def _write_public(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    return _write_key(tmp_path / "key.pem", key), _write_public(tmp_path / "key.pub", key)


def _commit(root: Path, step: int, files: dict[str, bytes]) -> Path:
    temp = manifest.new_temp_dir(root, step)
    for rel, data in files.items():
        (temp / rel).parent.mkdir(parents=True, exist_ok=True)
        (temp / rel).write_bytes(data)
    path, _ = manifest.commit(temp, step, {"loss": 0.25})
    return path


def _signed(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    path = _commit(tmp_path / "ck", 7, {"model.pt": b"weights" * 100, "opt/state.bin": b"s" * 50})
    Signer(keys[0]).sign(path)
    return path


def test_a_signed_checkpoint_verifies_and_stays_a_valid_checkpoint(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """sign() adds model.sig; the key's verifier says signed-ok and the manifest still verifies."""
    path = _signed(tmp_path, keys)
    assert (path / "model.sig").is_file()
    assert Verifier(keys[1]).check(path).status is SignatureStatus.SIGNED_OK
    assert manifest.verify(path).ok
    assert store.newest_valid(tmp_path / "ck") is not None
    assert not [p for p in (tmp_path / "ck").iterdir() if p.name.startswith(".sig-")]


def test_the_upstream_tool_accepts_a_ckptd_signature(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """`model_signing verify key` (a real process) accepts step-N/model.sig, refuses a change."""
    path = _signed(tmp_path, keys)
    command = [sys.executable, "-m", "model_signing", "verify", "key", "--public_key"]
    args = [str(keys[1]), "--signature", str(path / "model.sig"), str(path)]
    done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Verification succeeded" in done.stdout
    (path / "model.pt").write_bytes(b"tampered" * 100)
    done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "model.pt" in done.stderr


def test_the_statement_lists_the_sha256_of_every_file_and_the_manifest(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """What is signed is sha256 of each file, ckptd.json included, never the manifest's xxh3."""
    import base64
    import hashlib

    path = _signed(tmp_path, keys)
    bundle = json.loads((path / "model.sig").read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    resources = {r["name"]: r for r in statement["predicate"]["resources"]}
    assert set(resources) == {"ckptd.json", "model.pt", "opt/state.bin"}
    for name, resource in resources.items():
        assert resource["algorithm"] == "sha256"
        assert resource["digest"] == hashlib.sha256((path / name).read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: (p / "model.pt").write_bytes(b"x" * 700), "changed: model.pt"),
        (lambda p: (p / "opt/state.bin").unlink(), "missing file opt/state.bin"),
        (lambda p: (p / "extra.bin").write_bytes(b"e"), "not in manifest: extra.bin"),
        (lambda p: (p / "model.sig").write_text("{not json"), "Expecting"),
        (lambda p: (p / "model.sig").write_text("{}"), "verificationMaterial"),
    ],
    ids=["changed", "removed", "added", "garbled", "empty-bundle"],
)
def test_a_damaged_checkpoint_is_a_mismatch(
    tmp_path: Path, keys: tuple[Path, Path], damage, reason: str
) -> None:
    """Changed, missing or extra files and a broken model.sig are each a mismatch with a reason."""
    path = _signed(tmp_path, keys)
    damage(path)
    verdict = Verifier(keys[1]).check(path)
    assert verdict.status is SignatureStatus.MISMATCH
    assert reason in verdict.reason


def test_files_rewritten_with_a_consistent_manifest_are_still_refused(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """Rewriting a file and recommitting a matching ckptd.json passes ckptd's own check, not the
    signature's."""
    path = _signed(tmp_path, keys)
    signature = (path / "model.sig").read_bytes()
    forged = _commit(tmp_path / "forge", 7, {"model.pt": b"evil" * 100, "opt/state.bin": b"s" * 50})
    (path / "model.pt").write_bytes((forged / "model.pt").read_bytes())
    (path / "ckptd.json").write_bytes((forged / "ckptd.json").read_bytes())
    (path / "model.sig").write_bytes(signature)
    assert manifest.verify(path).ok
    verdict = Verifier(keys[1]).check(path)
    assert verdict.status is SignatureStatus.MISMATCH
    assert "ckptd.json" in verdict.reason and "model.pt" in verdict.reason


def test_a_signature_made_by_another_key_is_a_mismatch(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """A checkpoint signed with a different key does not verify with ours."""
    other = _write_key(tmp_path / "other.pem", ec.generate_private_key(ec.SECP384R1()))
    path = _commit(tmp_path / "ck", 3, {"model.pt": b"w"})
    Signer(other).sign(path)
    verdict = Verifier(keys[1]).check(path)
    assert verdict.status is SignatureStatus.MISMATCH
    assert "Key mismatch" in verdict.reason


def test_unsigned_checkpoints_and_the_scripts_own_model_sig(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """No model.sig is unsigned; a model.sig the script wrote is unsigned and never overwritten."""
    plain = _commit(tmp_path / "ck", 1, {"model.pt": b"w"})
    assert Verifier(keys[1]).check(plain).status is SignatureStatus.UNSIGNED
    own = _commit(tmp_path / "ck", 2, {"model.pt": b"w", "model.sig": b"the script's"})
    verdict = Verifier(keys[1]).check(own)
    assert verdict.status is SignatureStatus.UNSIGNED and "script's own" in verdict.reason
    with pytest.raises(SigningError, match=r"model\.sig of its own"):
        Signer(keys[0]).sign(own)
    assert (own / "model.sig").read_bytes() == b"the script's"


def test_links_and_fifos_are_refused_without_being_opened(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """A linked model.sig, or a FIFO among the files, is a mismatch; the check does not block."""
    path = _signed(tmp_path, keys)
    real = tmp_path / "elsewhere.sig"
    (path / "model.sig").rename(real)
    (path / "model.sig").symlink_to(real)
    assert "not a regular file" in Verifier(keys[1]).check(path).reason
    (path / "model.sig").unlink()
    real.rename(path / "model.sig")
    os.mkfifo(path / "pipe")
    verdict = Verifier(keys[1]).check(path)
    assert verdict.status is SignatureStatus.MISMATCH and "pipe" in verdict.reason


def test_signing_refuses_an_invalid_checkpoint(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """A directory whose files do not match its manifest's list is not signed."""
    path = _commit(tmp_path / "ck", 4, {"model.pt": b"w"})
    (path / "stray").write_bytes(b"x")
    with pytest.raises(SigningError, match="not in manifest: stray"):
        Signer(keys[0]).sign(path)
    assert not (path / "model.sig").exists()


def test_resigning_replaces_the_signature_with_the_manifests_mode(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """A second sign() replaces model.sig; it takes ckptd.json's permission bits."""
    path = _signed(tmp_path, keys)
    os.chmod(path / "ckptd.json", 0o640)
    Signer(keys[0]).sign(path)
    assert (path / "model.sig").stat().st_mode & 0o777 == 0o640
    assert Verifier(keys[1]).check(path).ok


def test_leftover_signature_temporaries_are_removed(tmp_path: Path) -> None:
    """Only .sig-*.tmp files beside the checkpoints are swept."""
    (tmp_path / ".sig-step-00000001-abcd.tmp").write_bytes(b"half")
    (tmp_path / "keep.tmp").write_bytes(b"user")
    removed = remove_signature_temporaries(tmp_path)
    assert [p.name for p in removed] == [".sig-step-00000001-abcd.tmp"]
    assert (tmp_path / "keep.tmp").exists()


def _rsa(path: Path) -> Path:
    return _write_key(path, rsa.generate_private_key(public_exponent=65537, key_size=2048))


def _public_as_private(path: Path) -> None:
    _write_public(path, ec.generate_private_key(ec.SECP256R1()))
    os.chmod(path, 0o600)


def _garbage(path: Path) -> None:
    path.write_text("hello")
    os.chmod(path, 0o600)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "does not exist"),
        (lambda p: (p.mkdir(), p)[1], "not a regular file"),
        (
            lambda p: _write_key(p, ec.generate_private_key(ec.SECP256R1()), mode=0o640),
            "open to its group or others (mode 0640): a signing key must be private; run chmod 600",
        ),
        (
            lambda p: _write_key(p, ec.generate_private_key(ec.SECP256R1()), mode=0o604),
            "mode 0604",
        ),
        (
            lambda p: _write_key(p, ec.generate_private_key(ec.SECP256R1()), password=b"pw"),
            "is encrypted",
        ),
        (_rsa, "is not an EC key"),
        (lambda p: _write_key(p, ec.generate_private_key(ec.SECP256K1())), "curve secp256k1"),
        (_public_as_private, "holds a public key"),
        (_garbage, "not a PEM private key"),
    ],
    ids=[
        "missing",
        "directory",
        "group-read",
        "world-read",
        "encrypted",
        "rsa",
        "curve",
        "public",
        "garbage",
    ],
)
def test_unusable_signing_keys_are_refused_with_the_reason(
    tmp_path: Path, make, message: str
) -> None:
    """Each unusable signing key file is a KeyProblem that names the file and the fix."""
    path = tmp_path / "key.pem"
    make(path)
    with pytest.raises(KeyProblem) as caught:
        Signer(path)
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_unusable_verify_keys_are_a_key_problem(tmp_path: Path) -> None:
    """A private key given as verify_key, or a missing one, is key-problem, not a mismatch."""
    path = _commit(tmp_path / "ck", 1, {"model.pt": b"w"})
    private = _write_key(tmp_path / "priv.pem", ec.generate_private_key(ec.SECP256R1()))
    verdict = verdict_for(path, private)
    assert verdict.status is SignatureStatus.KEY_PROBLEM
    assert "holds a private key" in verdict.reason and "-pubout" in verdict.reason
    missing = verdict_for(path, tmp_path / "nope.pub")
    assert missing.status is SignatureStatus.KEY_PROBLEM and "does not exist" in missing.reason
    with pytest.raises(KeyProblem, match="not an EC key"):
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (tmp_path / "rsa.pub").write_bytes(
            rsa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        Verifier(tmp_path / "rsa.pub")


def test_without_the_extra_the_error_says_what_to_install(
    tmp_path: Path, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When model_signing cannot be imported, making a Signer says to install ckptd[signing]."""
    real_import = builtins.__import__

    def refuse(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("model_signing"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    for module in [m for m in sys.modules if m.startswith("model_signing")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(builtins, "__import__", refuse)
    with pytest.raises(SigningUnavailable, match=r"pip install 'ckptd\[signing\]'"):
        Signer(keys[0])


def test_mismatch_reasons_name_files_whatever_quotes_the_library_used() -> None:
    """The library's list of differences is read by file name, escaped quotes included."""
    from ckptd.integrity.verifier import _mismatch_reason

    items = [
        "Extra files found in model 'step-1': a.bin, b.bin",
        "Hash mismatch for 'ckptd.json': Expected 'D(b'\"x')'",
        "Hash mismatch for 'model.pt': Expected 'D(b'y')'",
    ]
    reason = _mismatch_reason(ValueError(f"Signature mismatch: {items}"))
    assert reason == (
        "files differ from the signed ones (changed: ckptd.json, model.pt; added: a.bin, b.bin)"
    )
    assert _mismatch_reason(ValueError("Key mismatch: no")) == "Key mismatch: no"
