"""Known-answer vectors: the e2e wire formats and key schedule, pinned.

No independent implementation of this exact construction exists (the
`doubleratchet` package has no header encryption and `x3dh` fixes its KDF to
SHA-2 HKDF), so the vectors pin our own output from a deterministic rng: a
change to any format or derivation changes them. They are also replayed
through the decoders, so a vector that stops opening fails too.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from p2pmsg.e2e import sealed, session
from p2pmsg.e2e.prekeys import PrekeySecrets, decode_bundle, verify_bundle
from p2pmsg.e2e.primitives import hkdf
from p2pmsg.keys import Identity

VECTORS = Path(__file__).resolve().parent / "vectors"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_e2e_vectors", VECTORS / "make_e2e_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recomputed_vectors_match_the_stored_file() -> None:
    stored = json.loads((VECTORS / "e2e.json").read_text())
    assert _generator().build() == stored


def test_stored_vectors_open_with_the_documented_keys() -> None:
    v = {k: bytes.fromhex(x) for k, x in json.loads((VECTORS / "e2e.json").read_text()).items()}
    alice, bob = Identity(bytes([0xA1]) * 32), Identity(bytes([0xB0]) * 32)
    bundle = decode_bundle(v["bundle"])
    verify_bundle(bundle, bob.public.key)
    assert v["initial"][:2] == bytes([1, session.Kind.INITIAL])
    assert v["normal"][:2] == bytes([1, session.Kind.NORMAL])
    sender, inner = sealed.unseal(bob, v["sealed"])
    assert sender == alice.public and inner == v["normal"]
    rng = _generator().counter_rng(b"p2pmsg e2e vectors v1")
    bob_keys = PrekeySecrets.generate(bob, rng, one_time=2)
    _, _, text = session.decrypt(bob, bob_keys, alice.public, None, v["initial"])
    assert text == b"hello bob"


def test_hkdf_matches_an_independent_implementation() -> None:
    """Our HKDF-BLAKE2b against pyca/cryptography's, where that is installed."""
    hashes = pytest.importorskip("cryptography.hazmat.primitives.hashes")
    hkdf_mod = pytest.importorskip("cryptography.hazmat.primitives.kdf.hkdf")
    for salt, ikm, info, length in [
        (b"", b"\x0b" * 22, b"", 42),
        (bytes(64), b"ikm", b"p2pmsg e2e x3dh v1", 96),
        (b"s" * 32, b"k" * 32, b"p2pmsg e2e kdf_rk v1", 96),
        (b"salt", b"x", b"info", 200),
    ]:
        theirs = hkdf_mod.HKDF(
            algorithm=hashes.BLAKE2b(64), length=length, salt=salt or None, info=info
        ).derive(ikm)
        assert hkdf(salt, ikm, info, length) == theirs
