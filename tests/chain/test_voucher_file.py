"""A worker's kept payout voucher: written atomically, read back identical; a file holding
anything else is a VoucherInvalid, not a crash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.chain.vouchers import (
    public_key,
    read_voucher_file,
    sign_voucher,
    verify_voucher,
    write_voucher_file,
)
from cocoon.ledger.errors import VoucherInvalid

KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"proxy").digest())
CHANNEL = "0:" + "12" * 32


def test_round_trip_and_overwrite(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "payout.boc")
    assert read_voucher_file(path) is None
    first = sign_voucher(KEY, "worker", CHANNEL, 1, 100)
    write_voucher_file(path, first)
    assert read_voucher_file(path) == first
    second = sign_voucher(KEY, "worker", CHANNEL, 2, 250)
    write_voucher_file(path, second)
    kept = read_voucher_file(path)
    assert kept == second
    assert kept is not None and verify_voucher(kept, public_key(KEY)) == second
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["payout.boc"]  # no temp left


@pytest.mark.parametrize("content", [b"", b"garbage", b"\xb5\xee\x9c\x72" + b"\x00" * 20])
def test_a_foreign_file_is_a_typed_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "payout.boc"
    path.write_bytes(content)
    with pytest.raises(VoucherInvalid):
        read_voucher_file(str(path))
