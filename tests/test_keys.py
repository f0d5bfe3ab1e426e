"""Identity keys: derived values, redaction, key files and public-key refusals."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import nacl.bindings as sodium
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmsg.errors import BadKey
from p2pmsg.keys import (
    KEY_BYTES,
    Identity,
    PublicIdentity,
    decode_key,
    encode_key,
    load_identity,
    node_id_of,
    save_identity,
)

# RFC 8032, section 7.1, TEST 1.
RFC_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
MAGIC = b"p2pmsg-identity-v1\n"
seeds = st.binary(min_size=KEY_BYTES, max_size=KEY_BYTES)


# --- derived values ----------------------------------------------------------------------


def test_rfc8032_known_answer() -> None:
    identity = Identity(RFC_SEED)
    assert identity.public.key == RFC_PUBLIC
    assert identity.sign(b"") == RFC_SIGNATURE
    assert identity.public.verify(b"", RFC_SIGNATURE)


@settings(max_examples=50)
@given(seeds)
def test_node_id_is_blake2b_256_of_the_public_key(seed: bytes) -> None:
    identity = Identity(seed)
    expected = hashlib.blake2b(identity.public.key, digest_size=32).digest()
    assert identity.node_id == identity.public.node_id == node_id_of(identity.public.key)
    assert identity.node_id == expected
    assert PublicIdentity(identity.public.key).node_id == expected


@settings(max_examples=50)
@given(seeds)
def test_x25519_image_matches_the_private_scalar(seed: bytes) -> None:
    identity = Identity(seed)
    assert len(identity.x25519_private) == 32
    assert sodium.crypto_scalarmult_base(identity.x25519_private) == identity.public.x25519
    assert identity.public.x25519 == sodium.crypto_sign_ed25519_pk_to_curve25519(
        identity.public.key
    )


def test_generate_takes_randomness_as_a_parameter() -> None:
    identity = Identity.generate(lambda n: bytes(range(n)))
    assert identity.seed() == bytes(range(32))
    assert Identity.generate().seed() != Identity.generate().seed()


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_identity_refuses_wrong_seed_sizes(size: int) -> None:
    with pytest.raises(BadKey):
        Identity(bytes(size))


@settings(max_examples=50)
@given(seeds, st.binary(max_size=256))
def test_sign_and_verify(seed: bytes, message: bytes) -> None:
    identity = Identity(seed)
    other = Identity(bytes(b ^ 0xFF for b in seed))
    signature = identity.sign(message)
    assert len(signature) == 64
    assert identity.public.verify(message, signature)
    assert not other.public.verify(message, signature)
    assert not identity.public.verify(message + b"!", signature)
    tampered = bytes([signature[0] ^ 1]) + signature[1:]
    assert not identity.public.verify(message, tampered)


@pytest.mark.parametrize("signature", [b"", bytes(63), bytes(65)])
def test_verify_is_false_for_malformed_signatures(signature: bytes) -> None:
    assert not Identity(RFC_SEED).public.verify(b"", signature)


# --- redaction ---------------------------------------------------------------------------


@settings(max_examples=50)
@given(seeds)
def test_repr_never_shows_the_secret(seed: bytes) -> None:
    identity = Identity(seed)
    for shown in (repr(identity), str(identity), f"{identity}", repr([identity])):
        assert seed.hex() not in shown
        assert seed.hex()[:16] not in shown
        assert seed.hex().upper()[:16] not in shown
        assert repr(seed)[2:-1] not in shown
        assert identity.x25519_private.hex()[:16] not in shown
        assert "<secret>" in shown
    assert not hasattr(identity, "__dict__")  # nothing for vars() to dump


def test_public_repr_shows_only_a_node_id_prefix() -> None:
    public = Identity(RFC_SEED).public
    assert repr(public) == f"PublicIdentity(node_id={public.node_id.hex()[:16]}…)"


# --- key files ---------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    identity = Identity(RFC_SEED)
    save_identity(identity, path)
    assert path.read_bytes() == MAGIC + RFC_SEED.hex().encode() + b"\n"
    loaded = load_identity(path)
    assert loaded.seed() == RFC_SEED
    assert loaded.public == identity.public


def test_key_file_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    old = os.umask(0)  # the file mode itself must say 0600, whatever the umask
    try:
        save_identity(Identity(RFC_SEED), path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    save_identity(Identity(RFC_SEED), path)
    with pytest.raises(FileExistsError):
        save_identity(Identity(bytes(32)), path)
    assert load_identity(path).seed() == RFC_SEED


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o610, 0o601, 0o644, 0o666])
def test_a_key_file_others_can_reach_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "identity.key"
    save_identity(Identity(RFC_SEED), path)
    path.chmod(mode)
    with pytest.raises(BadKey, match="chmod 600"):
        load_identity(path)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(MAGIC, id="magic-only"),
        pytest.param(MAGIC[:-1], id="truncated-magic"),
        pytest.param(MAGIC + RFC_SEED.hex().encode()[:63], id="odd-hex"),
        pytest.param(MAGIC + RFC_SEED.hex().encode()[:62], id="31-bytes"),
        pytest.param(MAGIC + RFC_SEED.hex().encode() + b"00", id="33-bytes"),
        pytest.param(MAGIC + b"zz" * 32, id="not-hex"),
        pytest.param(MAGIC + b"\xff" * 64, id="not-ascii"),
        pytest.param(b"p2pmsg-identity-v2\n" + RFC_SEED.hex().encode(), id="other-version"),
        pytest.param(RFC_SEED, id="raw-seed"),
        pytest.param(RFC_SEED.hex().encode(), id="bare-hex"),
        pytest.param(bytes(range(256)), id="garbage"),
    ],
)
def test_damaged_key_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "identity.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(BadKey):
        load_identity(path)


def test_unreadable_key_paths_are_bad_keys(tmp_path: Path) -> None:
    with pytest.raises(BadKey, match="cannot read"):
        load_identity(tmp_path / "missing.key")
    directory = tmp_path / "dir.key"
    directory.mkdir(mode=0o700)
    with pytest.raises(BadKey, match="cannot read"):
        load_identity(directory)


# --- encoded public keys -----------------------------------------------------------------


@given(st.binary(min_size=32, max_size=32))
def test_encode_decode_round_trip(key: bytes) -> None:
    text = encode_key(key)
    assert len(text) == 52
    assert text == text.lower() and text.isalnum()
    assert decode_key(text) == key
    assert decode_key(text.upper()) == key


def test_encode_known_answer() -> None:
    assert encode_key(RFC_PUBLIC) == "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkena"


def _with_last(text: str, index: int) -> str:
    return text[:-1] + "abcdefghijklmnopqrstuvwxyz234567"[index]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param(encode_key(RFC_PUBLIC)[:-1], id="51-chars"),
        pytest.param(encode_key(RFC_PUBLIC) + "a", id="53-chars"),
        pytest.param(encode_key(bytes(31)), id="31-bytes"),
        pytest.param(encode_key(bytes(33)), id="33-bytes"),
        pytest.param(encode_key(RFC_PUBLIC)[:-1] + "1", id="digit-1"),
        pytest.param(encode_key(RFC_PUBLIC)[:-1] + "=", id="padding"),
        pytest.param("a" * 48 + "====", id="padding-inside"),
        pytest.param(" " + encode_key(RFC_PUBLIC)[1:], id="space"),
        pytest.param(encode_key(RFC_PUBLIC)[:-1] + "é", id="non-ascii"),
        pytest.param(_with_last(encode_key(RFC_PUBLIC), 1), id="non-canonical-1"),
        pytest.param(_with_last(encode_key(RFC_PUBLIC), 15), id="non-canonical-15"),
        pytest.param(_with_last(encode_key(RFC_PUBLIC), 17), id="non-canonical-17"),
    ],
)
def test_decode_key_refusals(text: str) -> None:
    assert encode_key(RFC_PUBLIC)[-1] == "a"  # the non-canonical cases assume this
    with pytest.raises(BadKey):
        decode_key(text)


# --- public keys -------------------------------------------------------------------------

P = 2**255 - 19
# An order-8 point from libsodium's blocklist of small-order encodings.
ORDER_8 = bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")


def _mixed_order() -> bytes:
    """A valid curve point with a torsion component: RFC key plus an order-8 point."""
    return sodium.crypto_core_ed25519_add(RFC_PUBLIC, ORDER_8)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_public_identity_refuses_wrong_sizes(size: int) -> None:
    with pytest.raises(BadKey, match="32 bytes"):
        PublicIdentity(bytes(range(size)))


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(bytes(32), id="all-zero-small-order"),
        pytest.param(b"\x01" + bytes(31), id="identity-point"),
        pytest.param((P + 1).to_bytes(32, "little"), id="identity-non-canonical"),
        pytest.param(b"\xec" + b"\xff" * 30 + b"\x7f", id="y-equals-minus-one"),
        pytest.param(ORDER_8, id="order-8"),
        pytest.param((2).to_bytes(32, "little"), id="not-on-curve"),
        pytest.param(_mixed_order(), id="not-in-prime-subgroup"),
    ],
)
def test_public_identity_refuses_invalid_points(key: bytes) -> None:
    """libsodium's Ed25519 -> X25519 conversion rejects small-order encodings,
    points off the curve and points outside the prime-order subgroup."""
    with pytest.raises(BadKey, match="not a valid Ed25519 point"):
        PublicIdentity(key)


def test_mixed_order_case_is_on_the_curve() -> None:
    """The ``not-in-prime-subgroup`` case is refused for its torsion, not its shape."""
    mixed = _mixed_order()
    assert mixed != RFC_PUBLIC
    assert sodium.crypto_core_ed25519_sub(mixed, ORDER_8) == RFC_PUBLIC


def test_public_identity_equality_is_by_key() -> None:
    assert PublicIdentity(RFC_PUBLIC) == Identity(RFC_SEED).public
    assert hash(PublicIdentity(RFC_PUBLIC)) == hash(Identity(RFC_SEED).public)
    assert PublicIdentity(RFC_PUBLIC).encoded() == encode_key(RFC_PUBLIC)
