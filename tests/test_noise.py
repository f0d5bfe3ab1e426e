"""Cross-checks of p2pmsg.link.noise against the independent `noiseprotocol` package.

Both roles are paired with the other implementation (our initiator with their
responder and the other way round); with the ephemeral keys pinned the exact
bytes of both handshake messages must agree, and the published cacophony
vector for this protocol is checked as a known answer. Tamper, ordering,
low-order-point and HKDF tests follow.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Callable

import nacl.bindings as sodium
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from p2pmsg.errors import HandshakeError, LocalProtocolError
from p2pmsg.link import wire
from p2pmsg.link.noise import (
    DHLEN,
    MAX_NONCE,
    CipherState,
    HandshakeState,
    dh,
    hkdf,
)

NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2b"

keys = st.binary(min_size=32, max_size=32)
payloads = st.binary(max_size=200)
transport_messages = st.lists(st.binary(max_size=300), max_size=4)

# Curve25519 points of small order (and their non-canonical encodings): a DH
# with any of them gives the all-zero output that Noise implementations must
# refuse. The list is libsodium's blacklist.
LOW_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    (2**255 - 19 - 1).to_bytes(32, "little"),
    (2**255 - 19).to_bytes(32, "little"),
    (2**255 - 19 + 1).to_bytes(32, "little"),
]


def _public(private: bytes) -> bytes:
    return sodium.crypto_scalarmult_base(private)


def _fixed(value: bytes) -> Callable[[int], bytes]:
    """An rng that hands out exactly one pinned ephemeral key."""

    def rng(n: int) -> bytes:
        assert n == len(value)
        return value

    return rng


def _seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def _ours(
    *,
    initiator: bool,
    s_private: bytes,
    rs: bytes | None = None,
    e_private: bytes | None = None,
    prologue: bytes = wire.PROLOGUE,
) -> HandshakeState:
    rng = _fixed(e_private) if e_private is not None else _seeded(0)
    return HandshakeState(
        initiator=initiator, prologue=prologue, s_private=s_private, rs=rs, rng=rng
    )


def _theirs(
    *,
    initiator: bool,
    s_private: bytes,
    rs: bytes | None = None,
    e_private: bytes | None = None,
    prologue: bytes = wire.PROLOGUE,
) -> NoiseConnection:
    conn = NoiseConnection.from_name(NAME)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_prologue(prologue)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, s_private)
    if rs is not None:
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, rs)
    if e_private is None:
        conn.start_handshake()
        return conn
    conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, e_private)
    with pytest.warns(UserWarning, match="ephemeral keypairs is already set"):
        conn.start_handshake()
    return conn


def _check_transport(
    send: CipherState,
    receive: CipherState,
    theirs: NoiseConnection,
    messages: list[bytes],
) -> None:
    """Our send cipher opens on their side and theirs on ours, in order."""
    for message in messages:
        assert bytes(theirs.decrypt(send.encrypt_with_ad(b"", message))) == message
        assert receive.decrypt_with_ad(b"", bytes(theirs.encrypt(message))) == message


# -- interoperability ------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    i_static=keys,
    r_static=keys,
    payload1=payloads,
    payload2=payloads,
    messages=transport_messages,
)
def test_our_initiator_with_their_responder(
    i_static: bytes,
    r_static: bytes,
    payload1: bytes,
    payload2: bytes,
    messages: list[bytes],
) -> None:
    ours = _ours(initiator=True, s_private=i_static, rs=_public(r_static))
    theirs = _theirs(initiator=False, s_private=r_static)

    assert bytes(theirs.read_message(ours.write_message(payload1))) == payload1
    assert ours.read_message(bytes(theirs.write_message(payload2))) == payload2

    assert ours.finished
    assert theirs.handshake_finished
    assert ours.handshake_hash == bytes(theirs.get_handshake_hash())
    send, receive = ours.split()
    _check_transport(send, receive, theirs, messages)


@settings(max_examples=40, deadline=None)
@given(
    i_static=keys,
    r_static=keys,
    payload1=payloads,
    payload2=payloads,
    messages=transport_messages,
)
def test_their_initiator_with_our_responder(
    i_static: bytes,
    r_static: bytes,
    payload1: bytes,
    payload2: bytes,
    messages: list[bytes],
) -> None:
    theirs = _theirs(initiator=True, s_private=i_static, rs=_public(r_static))
    ours = _ours(initiator=False, s_private=r_static)

    assert ours.read_message(bytes(theirs.write_message(payload1))) == payload1
    assert ours.rs == _public(i_static)
    assert bytes(theirs.read_message(ours.write_message(payload2))) == payload2

    assert ours.finished
    assert theirs.handshake_finished
    assert ours.handshake_hash == bytes(theirs.get_handshake_hash())
    send, receive = ours.split()
    _check_transport(send, receive, theirs, messages)


@settings(max_examples=40, deadline=None)
@given(
    i_static=keys,
    i_ephemeral=keys,
    r_static=keys,
    r_ephemeral=keys,
    payload1=payloads,
    payload2=payloads,
    prologue=st.binary(max_size=64),
)
def test_pinned_ephemerals_give_identical_bytes(
    *,
    i_static: bytes,
    i_ephemeral: bytes,
    r_static: bytes,
    r_ephemeral: bytes,
    payload1: bytes,
    payload2: bytes,
    prologue: bytes,
) -> None:
    """Same keys in, same bytes out: both messages, byte for byte, both roles."""
    rs = _public(r_static)
    our_i = _ours(
        initiator=True, s_private=i_static, rs=rs, e_private=i_ephemeral, prologue=prologue
    )
    their_i = _theirs(
        initiator=True, s_private=i_static, rs=rs, e_private=i_ephemeral, prologue=prologue
    )
    our_r = _ours(initiator=False, s_private=r_static, e_private=r_ephemeral, prologue=prologue)
    their_r = _theirs(initiator=False, s_private=r_static, e_private=r_ephemeral, prologue=prologue)

    message1 = our_i.write_message(payload1)
    assert message1 == bytes(their_i.write_message(payload1))
    assert len(message1) == DHLEN + DHLEN + 16 + len(payload1) + 16
    assert message1[:DHLEN] == _public(i_ephemeral)

    assert our_r.read_message(message1) == payload1
    assert bytes(their_r.read_message(message1)) == payload1
    message2 = our_r.write_message(payload2)
    assert message2 == bytes(their_r.write_message(payload2))
    assert len(message2) == DHLEN + len(payload2) + 16

    assert our_i.read_message(message2) == payload2
    assert bytes(their_i.read_message(message2)) == payload2
    hashes = {
        our_i.handshake_hash,
        our_r.handshake_hash,
        bytes(their_i.get_handshake_hash()),
        bytes(their_r.get_handshake_hash()),
    }
    assert len(hashes) == 1


# The Noise_IK_25519_ChaChaPoly_BLAKE2b entry of the cacophony test vectors
# (as shipped in tests/vectors/cacophony.txt of the noiseprotocol and snow
# projects). Messages 0 and 1 are the handshake, 2.. alternate transport
# messages initiator->responder, responder->initiator.
CACOPHONY_IK = {
    "prologue": "4a6f686e2047616c74",
    "init_static": "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1",
    "init_ephemeral": "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a",
    "init_remote_static": "31e0303fd6418d2f8c0e78b91f22e8caed0fbe48656dcf4767e4834f701b8f62",
    "resp_static": "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893",
    "resp_ephemeral": "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b",
    "handshake_hash": (
        "1c8fa891cb414fedba6daa7c6f4ae0a6d98e5f9768cc9cecd27e805614943ee9"
        "c8a1b27fbfb76dc197255c8aa69f6b4285c423840b8bedf45e652ca64f797d81"
    ),
}
CACOPHONY_IK_MESSAGES = [
    (
        "4c756477696720766f6e204d69736573",
        "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c7944"
        "ba83a447b38c83e327ad936929812f624884847b7831e95e197b2f797088efdd"
        "2f88f1db7e1fb0e99c64419097af91cee64e470f4b6fcd9298ce0b56fe20f86e"
        "13bf70439c538e3602a7127af71a29cc",
    ),
    (
        "4d757272617920526f746862617264",
        "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f144808843"
        "9f069b267a06b3de3ecb1043bcb098e9af91d9c64748d998c7b47890871571",
    ),
    ("462e20412e20486179656b", "cd54383060e7a28434cca27fb1cc524cfbabeb18181589df219d07"),
    ("4361726c204d656e676572", "a856d3bf0246bfc476c655009cd1ed677b8dcc5b349ae8ef2a05f2"),
    (
        "4a65616e2d426170746973746520536179",
        "49063084b2c51f098337cb8a13739ac848f907e67cfb2cc8a8b60586467aa02fc7",
    ),
]


def test_cacophony_known_answer() -> None:
    v = {k: bytes.fromhex(x) for k, x in CACOPHONY_IK.items()}
    msgs = [(bytes.fromhex(p), bytes.fromhex(c)) for p, c in CACOPHONY_IK_MESSAGES]
    assert _public(v["resp_static"]) == v["init_remote_static"]
    init = _ours(
        initiator=True,
        s_private=v["init_static"],
        rs=v["init_remote_static"],
        e_private=v["init_ephemeral"],
        prologue=v["prologue"],
    )
    resp = _ours(
        initiator=False,
        s_private=v["resp_static"],
        e_private=v["resp_ephemeral"],
        prologue=v["prologue"],
    )

    assert init.write_message(msgs[0][0]) == msgs[0][1]
    assert resp.read_message(msgs[0][1]) == msgs[0][0]
    assert resp.write_message(msgs[1][0]) == msgs[1][1]
    assert init.read_message(msgs[1][1]) == msgs[1][0]
    assert init.handshake_hash == v["handshake_hash"]
    assert resp.handshake_hash == v["handshake_hash"]

    i_send, i_recv = init.split()
    r_send, r_recv = resp.split()
    for n, (plain, cipher) in enumerate(msgs[2:]):
        sender, receiver = (i_send, r_recv) if n % 2 == 0 else (r_send, i_recv)
        assert sender.encrypt_with_ad(b"", plain) == cipher
        assert receiver.decrypt_with_ad(b"", cipher) == plain


def test_prologue_mismatch_fails() -> None:
    r_static = bytes(range(32))
    ours = _ours(initiator=True, s_private=bytes(range(1, 33)), rs=_public(r_static))
    theirs = _ours(initiator=False, s_private=r_static, prologue=b"another protocol")
    with pytest.raises(HandshakeError):
        theirs.read_message(ours.write_message(b""))


# -- tampering -------------------------------------------------------------

I_STATIC = bytes(range(1, 33))
R_STATIC = bytes(range(101, 133))
I_EPHEMERAL = bytes(range(201, 233))
R_EPHEMERAL = bytes(range(33, 65))


def _fresh_initiator() -> HandshakeState:
    return _ours(initiator=True, s_private=I_STATIC, rs=_public(R_STATIC), e_private=I_EPHEMERAL)


def _fresh_responder() -> HandshakeState:
    return _ours(initiator=False, s_private=R_STATIC, e_private=R_EPHEMERAL)


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_every_bit_of_message_one_is_authenticated() -> None:
    message1 = _fresh_initiator().write_message(b"hello")
    assert _fresh_responder().read_message(message1) == b"hello"
    for bit in range(len(message1) * 8):
        with pytest.raises(HandshakeError):
            _fresh_responder().read_message(_flip(message1, bit))


def test_every_bit_of_message_two_is_authenticated() -> None:
    responder = _fresh_responder()
    responder.read_message(_fresh_initiator().write_message(b""))
    message2 = responder.write_message(b"reply")
    for bit in range(len(message2) * 8):
        initiator = _fresh_initiator()
        initiator.write_message(b"")
        with pytest.raises(HandshakeError):
            initiator.read_message(_flip(message2, bit))
    initiator = _fresh_initiator()
    initiator.write_message(b"")
    assert initiator.read_message(message2) == b"reply"


@pytest.mark.parametrize("cut", [0, 1, 31, 32, 47, 95])
def test_short_message_one_is_a_handshake_error(cut: int) -> None:
    message1 = _fresh_initiator().write_message(b"")
    assert len(message1) == 96
    with pytest.raises(HandshakeError):
        _fresh_responder().read_message(message1[:cut])


@pytest.mark.parametrize("cut", [0, 31, 32, 47])
def test_short_message_two_is_a_handshake_error(cut: int) -> None:
    responder = _fresh_responder()
    responder.read_message(_fresh_initiator().write_message(b""))
    message2 = responder.write_message(b"")
    initiator = _fresh_initiator()
    initiator.write_message(b"")
    with pytest.raises(HandshakeError):
        initiator.read_message(message2[:cut])


def test_message_for_another_responder_fails() -> None:
    message1 = _fresh_initiator().write_message(b"")
    stranger = _ours(initiator=False, s_private=bytes(range(50, 82)))
    with pytest.raises(HandshakeError):
        stranger.read_message(message1)


# -- order -----------------------------------------------------------------


def test_out_of_order_use_is_a_local_error() -> None:
    initiator = _fresh_initiator()
    with pytest.raises(LocalProtocolError):
        initiator.read_message(bytes(96))
    with pytest.raises(LocalProtocolError):
        initiator.split()

    responder = _fresh_responder()
    with pytest.raises(LocalProtocolError):
        responder.write_message(b"")

    message1 = _fresh_initiator().write_message(b"")
    initiator = _fresh_initiator()
    initiator.write_message(b"")
    with pytest.raises(LocalProtocolError):
        initiator.write_message(b"")

    responder.read_message(message1)
    with pytest.raises(LocalProtocolError):
        responder.read_message(message1)
    with pytest.raises(LocalProtocolError):
        responder.split()
    message2 = responder.write_message(b"")
    assert responder.finished
    with pytest.raises(LocalProtocolError):
        responder.write_message(b"")

    initiator.read_message(message2)
    assert initiator.finished
    with pytest.raises(LocalProtocolError):
        initiator.read_message(message2)
    with pytest.raises(LocalProtocolError):
        initiator.write_message(b"")


@pytest.mark.parametrize("rs", [None, b"", bytes(31), bytes(33)])
def test_initiator_needs_the_responder_key(rs: bytes | None) -> None:
    with pytest.raises(LocalProtocolError):
        HandshakeState(initiator=True, prologue=b"", s_private=I_STATIC, rs=rs, rng=_seeded(1))


def test_split_roles_are_mirrored() -> None:
    initiator = _fresh_initiator()
    responder = _fresh_responder()
    responder.read_message(initiator.write_message(b""))
    initiator.read_message(responder.write_message(b""))
    i_send, i_recv = initiator.split()
    r_send, r_recv = responder.split()
    assert r_recv.decrypt_with_ad(b"", i_send.encrypt_with_ad(b"", b"up")) == b"up"
    assert i_recv.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", b"down")) == b"down"
    assert i_send.k != i_recv.k


# -- low-order points ----------------------------------------------------------


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8])
def test_dh_refuses_low_order_points(point: bytes) -> None:
    with pytest.raises(HandshakeError, match="low-order"):
        dh(I_STATIC, point)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8])
def test_low_order_ephemeral_in_message_one(point: bytes) -> None:
    message1 = _fresh_initiator().write_message(b"")
    with pytest.raises(HandshakeError, match="low-order"):
        _fresh_responder().read_message(point + message1[DHLEN:])


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8])
def test_low_order_static_in_message_one(point: bytes) -> None:
    """A well-formed message whose encrypted static key is a low-order point."""
    forger = _fresh_initiator()
    forger.s_public = point  # what gets encrypted as `s`; the MACs stay valid
    message1 = forger.write_message(b"")
    with pytest.raises(HandshakeError, match="low-order"):
        _fresh_responder().read_message(message1)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8])
def test_low_order_ephemeral_in_message_two(point: bytes) -> None:
    initiator = _fresh_initiator()
    responder = _fresh_responder()
    responder.read_message(initiator.write_message(b""))
    responder.e_public = point  # sent and hashed as `e`
    message2 = responder.write_message(b"")
    assert message2[:DHLEN] == point
    with pytest.raises(HandshakeError, match="low-order"):
        initiator.read_message(message2)


# -- primitives ------------------------------------------------------------


def _hand_hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
    """HKDF as the Noise spec (section 4.3) writes it, with the stdlib's HMAC."""
    temp_key = hmac.new(chaining_key, ikm, hashlib.blake2b).digest()
    output1 = hmac.new(temp_key, b"\x01", hashlib.blake2b).digest()
    output2 = hmac.new(temp_key, output1 + b"\x02", hashlib.blake2b).digest()
    if outputs == 2:
        return output1, output2
    output3 = hmac.new(temp_key, output2 + b"\x03", hashlib.blake2b).digest()
    return output1, output2, output3


@settings(max_examples=100, deadline=None)
@given(
    chaining_key=st.binary(min_size=64, max_size=64),
    ikm=st.one_of(st.just(b""), st.binary(min_size=32, max_size=32), st.binary()),
    outputs=st.sampled_from([2, 3]),
)
def test_hkdf_matches_hand_computation(chaining_key: bytes, ikm: bytes, outputs: int) -> None:
    ours = hkdf(chaining_key, ikm, outputs)
    assert ours == _hand_hkdf(chaining_key, ikm, outputs)
    assert all(len(out) == 64 for out in ours)
    # and with the `cryptography` HMAC inside noiseprotocol
    theirs = NoiseConnection.from_name(NAME).noise_protocol.hkdf(chaining_key, ikm, outputs)
    assert tuple(bytes(out) for out in theirs) == ours


def test_cipher_state_nonce_exhaustion() -> None:
    cipher = CipherState(bytes(32))
    cipher.n = MAX_NONCE - 1
    cipher.encrypt_with_ad(b"", b"last")
    assert cipher.n == MAX_NONCE
    with pytest.raises(LocalProtocolError):
        cipher.encrypt_with_ad(b"", b"one too many")


def test_cipher_state_failed_decrypt_keeps_the_nonce() -> None:
    sender, receiver = CipherState(bytes(range(32))), CipherState(bytes(range(32)))
    sealed = sender.encrypt_with_ad(b"ad", b"data")
    with pytest.raises(HandshakeError):
        receiver.decrypt_with_ad(b"other ad", sealed)
    assert receiver.n == 0
    assert receiver.decrypt_with_ad(b"ad", sealed) == b"data"
    assert receiver.n == 1


def test_cipher_state_repr_hides_the_key() -> None:
    key = bytes(range(32))
    text = repr(CipherState(key))
    assert key.hex() not in text
    assert repr(key) not in text
