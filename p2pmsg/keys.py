"""Typed identity keys.

A node is its Ed25519 identity key. Its node id is BLAKE2b-256 of the public
key, and the X25519 key it uses for key agreement (the link handshake) is the
birational image of the Ed25519 key, so a single secret is all a node keeps.

Secret material never appears in a ``repr``; key files are created with
owner-only permissions and refused when group or others can read them.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nacl.bindings as sodium
import nacl.exceptions
import nacl.signing

from p2pmsg.errors import BadKey

KEY_BYTES = 32
NODE_ID_BYTES = 32
_KEY_FILE_MAGIC = b"p2pmsg-identity-v1\n"


@functools.lru_cache(maxsize=4096)
def _x25519_of(public_key: bytes) -> bytes:
    """The X25519 image of an Ed25519 key (cached: peers' keys recur on every dial)."""
    try:
        return sodium.crypto_sign_ed25519_pk_to_curve25519(public_key)
    except nacl.exceptions.RuntimeError as exc:
        raise BadKey("not a valid Ed25519 point") from exc


def node_id_of(public_key: bytes) -> bytes:
    """The 32-byte node id of an Ed25519 public key."""
    return hashlib.blake2b(public_key, digest_size=NODE_ID_BYTES).digest()


def encode_key(public_key: bytes) -> str:
    """Lower-case base32 without padding, as invites carry public keys."""
    return base64.b32encode(public_key).decode("ascii").rstrip("=").lower()


def decode_key(text: str) -> bytes:
    """Inverse of :func:`encode_key`. Raises :class:`BadKey`."""
    if len(text) != 52 or not text.isascii():
        raise BadKey("a public key is 52 base32 characters")
    try:
        raw = base64.b32decode(text.upper() + "====", casefold=False)
    except ValueError as exc:
        raise BadKey("not base32") from exc
    if encode_key(raw) != text.lower():
        raise BadKey("not canonical base32")
    return raw


@dataclass(frozen=True)
class PublicIdentity:
    """A peer's Ed25519 public key, with its node id and X25519 image."""

    key: bytes
    node_id: bytes = field(init=False, repr=False, compare=False)
    x25519: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise BadKey("an Ed25519 public key is 32 bytes")
        object.__setattr__(self, "x25519", _x25519_of(self.key))
        object.__setattr__(self, "node_id", node_id_of(self.key))

    def __repr__(self) -> str:
        return f"PublicIdentity(node_id={self.node_id.hex()[:16]}…)"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True when ``signature`` is this key's signature of ``message``."""
        try:
            nacl.signing.VerifyKey(self.key).verify(message, signature)
        except (nacl.exceptions.BadSignatureError, ValueError):
            return False
        return True

    def encoded(self) -> str:
        return encode_key(self.key)


class Identity:
    """A node's secret Ed25519 identity. ``repr`` never shows the secret."""

    __slots__ = ("_signing", "public", "x25519_private")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != KEY_BYTES:
            raise BadKey("an identity seed is 32 bytes")
        self._signing = nacl.signing.SigningKey(seed)
        self.public = PublicIdentity(bytes(self._signing.verify_key))
        sk = self._signing._seed + self.public.key
        self.x25519_private: bytes = sodium.crypto_sign_ed25519_sk_to_curve25519(sk)

    @classmethod
    def generate(cls, rng: Callable[[int], bytes] = os.urandom) -> Identity:
        return cls(rng(KEY_BYTES))

    @property
    def node_id(self) -> bytes:
        return self.public.node_id

    def seed(self) -> bytes:
        return self._signing._seed

    def sign(self, message: bytes) -> bytes:
        return self._signing.sign(message).signature

    def __repr__(self) -> str:
        return f"Identity(<secret>, node_id={self.node_id.hex()[:16]}…)"


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` (which must not exist) readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def save_identity(identity: Identity, path: Path) -> None:
    """Write the identity to a new owner-only key file. Raises ``FileExistsError``."""
    write_private_file(path, _KEY_FILE_MAGIC + identity.seed().hex().encode() + b"\n")


def load_identity(path: Path) -> Identity:
    """Read a key file written by :func:`save_identity`. Raises :class:`BadKey`."""
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise BadKey(f"cannot read {path}: {exc.strerror}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BadKey(f"{path} is readable by others; run chmod 600 on it")
    if not data.startswith(_KEY_FILE_MAGIC):
        raise BadKey(f"{path} is not a p2pmsg identity file")
    try:
        seed = bytes.fromhex(data[len(_KEY_FILE_MAGIC) :].decode("ascii").strip())
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadKey(f"{path} is damaged") from exc
    return Identity(seed)
