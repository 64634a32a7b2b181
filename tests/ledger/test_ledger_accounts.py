"""Ledger account ids are spelled in one place (cocoon.ledger.accounts)."""

from __future__ import annotations

import hashlib

from cocoon.ledger.accounts import channel_account, client_account, worker_account


def test_account_ids() -> None:
    key = b"\x30\x59" + bytes(89)
    assert client_account(key, "c1") == "client:" + hashlib.sha256(key).hexdigest()[:40]
    assert client_account(None, "c1") == "node:c1"
    assert channel_account("0:ab") == "channel:0:ab"
    assert worker_account("w1") == "worker:w1"
    assert len({client_account(key, "x"), client_account(bytes(91), "x")}) == 2
