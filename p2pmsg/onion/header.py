"""The Sphinx header: key schedule, X25519 blinding, filler and MAC.

Theory of operation
-------------------
A header is ``alpha || beta || gamma`` (Danezis and Goldberg, "Sphinx: A
Compact and Provably Secure Mix Format", 2009, with Katzenpost's X25519
parameterisation). This module knows nothing of what a routing slot says:
:mod:`p2pmsg.onion.sphinx` hands it each hop's ``INFO_BYTES`` of routing
info, and it appends the next hop's MAC to make a ``SLOT_BYTES`` slot.

* ``alpha`` is a blinded group element. Hop ``i`` derives the shared
  secret ``s_i = X25519(node_key, alpha_i)`` and forwards
  ``alpha_{i+1} = X25519(b_i, alpha_i)`` with the blinding factor
  ``b_i = H(alpha_i, s_i)``, so no two hops see the same ``alpha``. The
  sender, who chose ``x`` with ``alpha_0 = X25519(x, G)``, gets the same
  secret as ``X25519(b_{i-1}, ... X25519(b_0, X25519(x, pk_i)))``: clamped
  scalar multiplications commute.
* ``beta`` holds :data:`MAX_HOPS` slots, each encrypted under every earlier
  hop's ChaCha20 stream. A hop decrypts ``beta || zeros(SLOT_BYTES)``, takes
  the first slot and passes the rest on; the *filler* the sender computed
  makes the next hop's ``gamma`` still verify over that shifted block.
  Unused slots at the end are random: the last hop decrypts them too.
* ``gamma`` is a 16-byte keyed-BLAKE2b MAC over ``alpha || beta``, checked
  before anything else is done with a packet. It also tells a node with
  several keys (onion keys by epoch, its identity key) which one a header
  is for: nothing else on the wire does.

Every per-hop key is keyed BLAKE2b of ``s_i`` personalised with
:data:`PERSONALISATION`, which carries the format's version: nothing on the
wire does. The replay tag is such a hash of ``s_i`` too, so it does not
depend on how ``alpha`` is encoded. Pure; randomness is the ``rng``
parameter. Untrusted bytes raise :class:`InvalidPacket`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import nacl.bindings as sodium
import nacl.exceptions

from p2pmsg.errors import RemoteProtocolError
from p2pmsg.onion.lioness import stream_xor

MAX_HOPS: Final = 6
KEY_BYTES: Final = 32
MAC_BYTES: Final = 16
INFO_BYTES: Final = 1 + 32 + 16  # command, node id, SURB id: see sphinx.py
SLOT_BYTES: Final = INFO_BYTES + MAC_BYTES
BETA_BYTES: Final = MAX_HOPS * SLOT_BYTES
HEADER_BYTES: Final = KEY_BYTES + BETA_BYTES + MAC_BYTES
REPLAY_TAG_BYTES: Final = 32
PERSONALISATION: Final = b"p2pmsg sphinx v1"

_BETA_END: Final = KEY_BYTES + BETA_BYTES
_ZERO_SLOT: Final = bytes(SLOT_BYTES)
_ZERO_MAC: Final = bytes(MAC_BYTES)
_MAC_LABEL: Final = b"header mac"

Rng = Callable[[int], bytes]


class InvalidReason(StrEnum):
    """Why a packet was refused; also a good key for refusal counters."""

    WRONG_SIZE = "wrong_size"
    BAD_KEY = "bad_key"
    BAD_MAC = "bad_mac"
    BAD_COMMAND = "bad_command"
    TAGGED_PAYLOAD = "tagged_payload"
    BAD_LENGTH = "bad_length"


class InvalidPacket(RemoteProtocolError):
    """A peer sent an onion packet that is malformed, tampered with or not for us."""

    def __init__(self, reason: InvalidReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason


@dataclass(frozen=True, repr=False)
class HopKeys:
    """Everything one hop derives from its shared secret."""

    stream: bytes
    mac: bytes
    payload: bytes
    replay_tag: bytes
    blinding: bytes


@dataclass(frozen=True)
class Opened:
    """A header as its hop reads it: the slot's routing info, and what to pass on."""

    keys: HopKeys
    info: bytes
    next_beta: bytes
    next_mac: bytes


def xor(a: bytes, b: bytes) -> bytes:
    """``a`` XOR the first ``len(a)`` bytes of ``b``, without a per-byte loop."""
    b = b[: len(a)]
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def _derive(secret: bytes, label: bytes) -> bytes:
    return hashlib.blake2b(label, key=secret, person=PERSONALISATION, digest_size=32).digest()


def hop_keys(alpha: bytes, secret: bytes, *, mac_key: bytes | None = None) -> HopKeys:
    """The keys of the hop that sees ``alpha`` and shares ``secret``
    (``mac_key``: its MAC key, when already derived)."""
    return HopKeys(
        stream=_derive(secret, b"header stream"),
        mac=_derive(secret, _MAC_LABEL) if mac_key is None else mac_key,
        payload=_derive(secret, b"payload"),
        replay_tag=_derive(secret, b"replay tag"),
        blinding=_derive(secret, b"blinding factor" + alpha),
    )


def mac(key: bytes, alpha: bytes, beta: bytes) -> bytes:
    """``gamma``: keyed BLAKE2b-128 over ``alpha || beta``."""
    return hashlib.blake2b(alpha + beta, key=key, digest_size=MAC_BYTES).digest()


def x25519(scalar: bytes, point: bytes) -> bytes:
    """X25519; a low-order point (all-zero result) is an :class:`InvalidPacket`."""
    try:
        return sodium.crypto_scalarmult(scalar, point)
    except nacl.exceptions.RuntimeError as exc:
        raise InvalidPacket(InvalidReason.BAD_KEY, "low-order group element") from exc


def _route_keys(onion_keys: Sequence[bytes], rng: Rng) -> tuple[list[bytes], list[HopKeys]]:
    """Every hop's ``alpha`` and keys, blinding exactly as the hops will."""
    x = rng(KEY_BYTES)
    alphas = [sodium.crypto_scalarmult_base(x)]
    keys: list[HopKeys] = []
    for i, onion_key in enumerate(onion_keys):
        secret = x25519(x, onion_key)
        for earlier in keys:
            secret = x25519(earlier.blinding, secret)
        keys.append(hop_keys(alphas[i], secret))
        if i + 1 < len(onion_keys):
            alphas.append(x25519(keys[i].blinding, alphas[i]))
    return alphas, keys


def _fillers(streams: list[bytes]) -> list[bytes]:
    """``fillers[i]``: the tail of ``beta_i`` that the shifts of hops before ``i`` produce."""
    fillers = [b""]
    for i, stream in enumerate(streams[:-1]):
        tail = stream[len(stream) - (i + 1) * SLOT_BYTES :]
        fillers.append(xor(fillers[i] + _ZERO_SLOT, tail))
    return fillers


def create(
    onion_keys: Sequence[bytes], infos: Sequence[bytes], rng: Rng
) -> tuple[bytes, list[HopKeys]]:
    """(header, every hop's keys) for a route with these onion keys and routing infos.

    ``infos[i]`` (``INFO_BYTES``) is what hop ``i`` reads; the builder
    appends the next hop's MAC (zeros for the last hop). Raises
    ``ValueError`` for a route of 0 or more than :data:`MAX_HOPS` hops.
    """
    n = len(onion_keys)
    if not 1 <= n <= MAX_HOPS or len(infos) != n:
        raise ValueError(f"a route has 1 to {MAX_HOPS} hops")
    alphas, keys = _route_keys(onion_keys, rng)
    streams = [stream_xor(k.stream, bytes(BETA_BYTES + SLOT_BYTES)) for k in keys]
    fillers = _fillers(streams)
    unused = (MAX_HOPS - n) * SLOT_BYTES
    beta = rng(unused) if unused else b""
    gamma = _ZERO_MAC
    for i in reversed(range(n)):
        beta = xor(infos[i] + gamma + beta, streams[i])
        gamma = mac(keys[i].mac, alphas[i], beta + fillers[i])
    return alphas[0] + beta + gamma, keys


def open_header_with(private_keys: Sequence[bytes], header: bytes) -> tuple[int, Opened]:
    """(index, slot): our slot of ``header`` (``HEADER_BYTES``) opened with
    the first of ``private_keys``, in their order, whose MAC verifies; the
    MAC is checked before the header is decrypted.

    A key that does not match costs one X25519, one derivation (the MAC
    key: the other four are derived only once the MAC verified) and the
    MAC, so the likeliest key should come first. Two keys can both verify
    only by chance (a 128-bit MAC under two independent keys over the same
    bytes). Raises :class:`InvalidPacket`: ``bad_key`` for a low-order
    ``alpha`` (refused under any key), ``bad_mac`` when no key verifies;
    ``ValueError`` for no keys.
    """
    if not private_keys:
        raise ValueError("no private key to open a header with")
    alpha, beta = header[:KEY_BYTES], header[KEY_BYTES:_BETA_END]
    gamma = header[_BETA_END:HEADER_BYTES]
    for index, private_key in enumerate(private_keys):
        secret = x25519(private_key, alpha)
        mac_key = _derive(secret, _MAC_LABEL)
        if hmac.compare_digest(mac(mac_key, alpha, beta), gamma):
            keys = hop_keys(alpha, secret, mac_key=mac_key)
            opened = stream_xor(keys.stream, beta + _ZERO_SLOT)
            slot = Opened(
                keys, opened[:INFO_BYTES], opened[SLOT_BYTES:], opened[INFO_BYTES:SLOT_BYTES]
            )
            return index, slot
    raise InvalidPacket(InvalidReason.BAD_MAC, "header authentication failed")


def next_header(opened: Opened, alpha: bytes) -> bytes:
    """The header to forward: blinded ``alpha``, shifted ``beta``, the next MAC."""
    return x25519(opened.keys.blinding, alpha) + opened.next_beta + opened.next_mac
