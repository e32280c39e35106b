"""Peer identities: one Ed25519 key pair per peer.

Contract:

- ``Identity.load_or_create(path)`` returns the identity stored at ``path``,
  creating it on first use. A new key file is written atomically (temporary
  file, then a hard link that never overwrites) with permissions 0600, as an
  unencrypted PKCS#8 PEM. Loading accepts that PEM or a file holding exactly
  the 32 raw private-key bytes; anything else raises ``ConfigError``. A key
  file readable by group or others is loaded with a warning.
- ``identity.peer_id`` is ``peer_id_from_public_key(public_key)``: the first
  16 hex characters of BLAKE2b-512 (person ``gossamer-peer``) of the 32 raw
  public-key bytes. It is stable for a key, the same on every machine, and
  64 bits long: an allow-list by peer id therefore relies on nobody finding a
  second Ed25519 key with the same 64-bit id. The handshake always verifies a
  signature by the full public key.
- ``identity.sign(data)`` gives a 64-byte Ed25519 signature;
  ``verify_signature(public_key, signature, data)`` returns True or False and
  never raises on malformed keys or signatures.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ConfigError

logger = logging.getLogger(__name__)

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
PEER_ID_CHARS = 16


def peer_id_from_public_key(public_key: bytes) -> str:
    """The short text id of the peer owning the raw Ed25519 ``public_key``."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ConfigError(f"an Ed25519 public key has {PUBLIC_KEY_BYTES} bytes, got {len(public_key)}")
    return hashlib.blake2b(bytes(public_key), person=b"gossamer-peer").hexdigest()[:PEER_ID_CHARS]


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``data`` by ``public_key``."""
    if not isinstance(public_key, bytes) or not isinstance(signature, bytes):
        return False
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


class Identity:
    """One peer's Ed25519 key pair."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.peer_id: str = peer_id_from_public_key(self.public_key)

    @classmethod
    def generate(cls) -> "Identity":
        """A fresh identity (not stored anywhere)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> "Identity":
        """The identity whose 32 raw private-key bytes are ``raw``."""
        if len(raw) != 32:
            raise ConfigError(f"an Ed25519 private key has 32 raw bytes, got {len(raw)}")
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(raw)))

    def private_bytes(self) -> bytes:
        """The 32 raw private-key bytes (keep them secret)."""
        return self._key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                       serialization.NoEncryption())

    def to_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM of the private key."""
        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature (64 bytes) of ``data``."""
        return self._key.sign(data)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True iff ``signature`` is this identity's signature of ``data``."""
        return verify_signature(self.public_key, signature, data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Identity":
        """The identity in the key file ``path`` (PEM or 32 raw bytes)."""
        p = Path(path)
        try:
            mode = p.stat().st_mode
            data = p.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read identity key file {p}: {exc}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("identity key file %s is accessible by group or others (mode %o); chmod 600 it",
                           p, stat.S_IMODE(mode))
        if len(data) == 32:
            return cls.from_private_bytes(data)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"identity key file {p} is neither a PEM private key nor 32 raw bytes: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"identity key file {p} holds a {type(key).__name__}, expected an Ed25519 private key")
        return cls(key)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this identity to ``path`` as PEM with mode 0600; never overwrites
        an existing file (raises ``FileExistsError``)."""
        p = Path(path)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.to_pem())
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, p)  # atomic, and fails if p exists
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:  # pragma: no cover
                pass

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> "Identity":
        """The identity at ``path``; a new one is generated and stored (0600) if
        the file does not exist. Safe against two processes racing to create it."""
        p = Path(path)
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            ident = cls.generate()
            try:
                ident.save(p)
            except FileExistsError:
                return cls.load(p)
            logger.info("created identity %s in %s", ident.peer_id, p)
            return ident
        return cls.load(p)

    def __repr__(self) -> str:
        return f"Identity(peer_id={self.peer_id!r})"
