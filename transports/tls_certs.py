"""Per-node TLS certificates and the pins that let a client check them.

Theory of operation. A node that serves ``tls`` owns one self-signed
certificate: an ECDSA P-256 key (what most web servers present; Ed25519
certificates are still rare on the web, so they would stand out) and a
generic subject, ``CN=localhost`` by default, the look of a default
self-signed install. The key and the certificate live together in one PEM
file, :data:`CERT_FILE`, in the directory the transport is given: the file
is created owner-only (0600) on the first ``serve`` and reused afterwards, so
the pin in an invite stays valid across restarts.

The file is written to a private temporary name and then hard-linked into
place, so two writers never leave a key with the wrong certificate: the first
link wins and the other writer loads the winner's file.

A pin is the SHA-256 of the certificate's DER SubjectPublicKeyInfo (as in
HPKP), written as 52 lower-case base32 characters without padding like the
node's keys; :func:`decode_pin` also accepts 64 hex digits. Pinning the key
rather than the whole certificate lets a node re-issue its certificate with
the same key without breaking the invites it handed out.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

# ``cryptography`` (about 7 MB resident) is imported by the functions that
# need it: a node that serves no TLS never loads it (bench/RESULTS.md, idle RSS).

CERT_FILE = "tls-node.pem"
DEFAULT_COMMON_NAME = "localhost"
PIN_BYTES = 32
#: Ten years, like Debian's ``make-ssl-cert`` snakeoil certificate.
VALIDITY = timedelta(days=3650)
#: How far back ``not_before`` is set, so a peer with a slow clock accepts it.
BACKDATE = timedelta(days=1)
_OWNER_ONLY = 0o600


@dataclass(frozen=True)
class NodeCert:
    """A node's certificate file (key and certificate) and its pin."""

    path: Path
    pin: bytes

    def __repr__(self) -> str:  # the path is harmless, the file holds a private key
        return f"NodeCert(path={str(self.path)!r}, pin={encode_pin(self.pin)!r})"


def spki_pin(cert_der: bytes) -> bytes:
    """The pin of a DER certificate. Raises ``ValueError`` if it does not parse."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    spki = (
        x509.load_der_x509_certificate(cert_der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return hashlib.sha256(spki).digest()


def encode_pin(pin: bytes) -> str:
    """The text form of a pin: lower-case base32 without padding."""
    return base64.b32encode(pin).decode("ascii").rstrip("=").lower()


def decode_pin(text: str) -> bytes:
    """A pin from base32 (52 characters) or hex (64 digits). Raises ``ValueError``."""
    try:
        if len(text) == 2 * PIN_BYTES:
            return bytes.fromhex(text)
        if len(text) == 52 and text.isascii():
            return base64.b32decode(text.upper() + "====", casefold=False)
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"bad pin: {exc}") from None
    raise ValueError("a pin is 52 base32 characters or 64 hex digits")


def make_cert(*, now: float, rng: Callable[[int], bytes], common_name: str) -> bytes:
    """A fresh key and self-signed certificate, as one PEM (key first).

    ``now`` (seconds since the epoch) dates the certificate and ``rng`` draws
    its serial number; the key comes from OpenSSL's generator.
    """
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = datetime.fromtimestamp(int(now), UTC) - BACKDATE
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(rng(16), "big") >> 1 or 1)  # positive, at most 127 bits
        .not_valid_before(start)
        .not_valid_after(start + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem + cert.public_bytes(serialization.Encoding.PEM)


def load_or_create(
    cert_dir: Path,
    *,
    now: float,
    rng: Callable[[int], bytes],
    common_name: str = DEFAULT_COMMON_NAME,
) -> NodeCert:
    """The node's certificate in ``cert_dir``, created (0600) on first use.

    Blocking file I/O: call it from a thread. Creates ``cert_dir`` (0700) if
    missing; tightens a readable-by-others file to 0600. Raises ``OSError``
    when the directory or file cannot be used, ``ValueError`` when the file
    holds no certificate.
    """
    cert_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = cert_dir / CERT_FILE
    if not path.exists():
        _write_once(path, make_cert(now=now, rng=rng, common_name=common_name))
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(_OWNER_ONLY)
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return NodeCert(path, spki_pin(cert.public_bytes(serialization.Encoding.DER)))


def _write_once(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` unless another writer got there first."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _OWNER_ONLY)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):  # another writer won: its file is ours
            os.link(temporary, path)
    finally:
        temporary.unlink()
