"""Proof of work for DHT writes (STORE and DEPOSIT), asked for only under load.

The price and its check are :mod:`p2pmsg.puzzle`'s. A priced write is sent
again wrapped in a PAID request::

    method u8 | seed 16 | effort u32 | nonce 8 | the write's body

whose proof's subject is ``writer's node id | method | blake2b-256(body)``:
it binds the writer and the write, so it cannot be lent to another id or
reused for another record.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Final

import trio

from p2pmsg import puzzle as _generic
from p2pmsg.dht.peer import ID_BYTES
from p2pmsg.errors import RemoteProtocolError
from p2pmsg.puzzle import (
    CALM,
    MAX_EFFORT,
    MIN_EFFORT,
    NONCE_BYTES,
    WINDOW,
    Price,
    Pricing,
    decode_price,
    encode_price,
    solve_nonce,
)

__all__ = [
    "CALM", "MAX_EFFORT", "MIN_EFFORT", "NONCE_BYTES", "WINDOW", "Paid", "Price", "Pricing",
    "check", "decode_paid", "decode_price", "encode_paid", "encode_price", "proof", "solve",
]  # fmt: skip

_PERSON: Final = b"p2pmsg dht pow"
_PAID = struct.Struct(">B16sI8s")


@dataclass(frozen=True)
class Paid:
    method: int
    price: Price
    nonce: bytes
    body: bytes


def encode_paid(paid: Paid) -> bytes:
    return _PAID.pack(paid.method, paid.price.seed, paid.price.effort, paid.nonce) + paid.body


def decode_paid(data: bytes) -> Paid:
    """Raises :class:`RemoteProtocolError` for a truncated PAID body."""
    if len(data) < _PAID.size:
        raise RemoteProtocolError("truncated paid request")
    method, seed, effort, nonce = _PAID.unpack_from(data)
    return Paid(method, Price(seed, effort), nonce, data[_PAID.size :])


def _subject(writer: bytes, method: int, body: bytes) -> bytes:
    return writer + bytes([method]) + hashlib.blake2b(body, digest_size=32).digest()


def proof(paid: Paid, writer: bytes) -> bytes | None:
    """The hash that proves ``paid``'s work for ``writer`` (it names the proof
    when it is spent), or None when there is no such proof."""
    if len(writer) != ID_BYTES:
        return None
    subject = _subject(writer, paid.method, paid.body)
    return _generic.proof(paid.price, paid.nonce, person=_PERSON, subject=subject)


def check(paid: Paid, writer: bytes) -> bool:
    """Whether ``paid`` carries a proof of its price's effort for ``writer``."""
    return proof(paid, writer) is not None


async def solve(price: Price, writer: bytes, method: int, body: bytes, *, first: bytes) -> Paid:
    """A PAID write for ``price`` (about ``price.effort`` hashes), checkpointing
    as it works, trying nonces from ``first`` (random, see
    :func:`p2pmsg.puzzle.solve_nonce`). Raises ``ValueError`` above
    :data:`MAX_EFFORT`."""
    subject = _subject(writer, method, body)
    nonce = await solve_nonce(
        price,
        person=_PERSON,
        subject=subject,
        checkpoint=trio.lowlevel.checkpoint,
        first=first,
    )
    return Paid(method, price, nonce, body)
