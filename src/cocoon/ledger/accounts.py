"""Ledger account ids: one function per kind of account, so an id is spelled in one place.

A client is its RA-TLS key (``client:`` + the first 40 hex digits of SHA-256 of its public
key, so it survives reconnects when the client keeps its key file); without TLS, its node id
(``node:``). A client paying through an on-chain channel is that channel (``channel:`` +
address). A worker is ``worker:`` + its node id.
"""

from __future__ import annotations

import hashlib

__all__ = ["channel_account", "client_account", "worker_account"]


def client_account(public_key: bytes | None, node_id: str) -> str:
    """A client's account: by its certified public key (DER) when it has one."""
    if public_key is not None:
        return "client:" + hashlib.sha256(public_key).hexdigest()[:40]
    return "node:" + node_id


def channel_account(channel: str) -> str:
    """The account of a client paying through the payment channel at ``channel``."""
    return "channel:" + channel


def worker_account(node_id: str) -> str:
    return "worker:" + node_id
