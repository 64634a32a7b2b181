"""Private keys in PEM files readable only by their owner.

A key file is created with mode 0600 (atomically, never world-readable even briefly); an
existing file that others can read is refused with a ConfigError that says how to fix it.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.errors import ConfigError

__all__ = ["load_or_create_ec_key", "load_or_create_ed25519_key"]

def _read(p: Path) -> object | None:
    """The private key in ``p``, or None if the file does not exist."""
    if not p.exists():
        return None
    mode = p.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"key file {p} is readable by others (mode {mode:o}); chmod 600 {p}")
    try:
        return serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"key file {p} is not a PEM private key: {exc}") from None


def _write(p: Path, key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.replace(tmp, p)


def load_or_create_ec_key(path: str | Path) -> ec.EllipticCurvePrivateKey:
    """A P-256 key (a client's persistent RA-TLS key, i.e. its account)."""
    p = Path(path)
    key = _read(p)
    if key is None:
        new = ec.generate_private_key(ec.SECP256R1())
        _write(p, new)
        return new
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"key file {p} does not hold an EC private key")
    return key


def load_or_create_ed25519_key(path: str | Path) -> Ed25519PrivateKey:
    """An Ed25519 key (the proxy's voucher signing key)."""
    p = Path(path)
    key = _read(p)
    if key is None:
        new = Ed25519PrivateKey.generate()
        _write(p, new)
        return new
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"key file {p} does not hold an Ed25519 private key")
    return key
