"""Key recipes on top of ``cryptography``: keys persisted in owner-only (0600) files."""

from cocoon.crypto.keys import load_or_create_ec_key, load_or_create_ed25519_key

__all__ = ["load_or_create_ec_key", "load_or_create_ed25519_key"]
