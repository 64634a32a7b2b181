"""cocoon.chain.vouchers produces exactly the on-chain voucher cells (no Node needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.chain import vouchers as v
from cocoon.chain.errors import (
    BadVoucherSignature,
    ContractRejected,
    VoucherReplayed,
    rejection_for,
)
from cocoon.errors import PaymentError
from cocoon.ledger.vouchers import Voucher, public_key_bytes

VECTORS = (
    Path(__file__).resolve().parents[2] / "contracts" / "tests" / "vectors" / "voucher_vectors.json"
)
KIND = {v.OP_CLIENT_CHARGE: "client", v.OP_WORKER_PAYOUT: "worker"}


def _vectors() -> list[dict[str, object]]:
    if not VECTORS.is_file():
        pytest.skip(f"{VECTORS} not present")
    data: list[dict[str, object]] = json.loads(VECTORS.read_text())
    return data


def test_matches_committed_vectors_byte_for_byte() -> None:
    vectors = _vectors()
    assert vectors
    for vec in vectors:
        seed = bytes.fromhex(str(vec["privateSeedHex"]))
        assert v.public_key(seed).hex() == vec["publicKeyHex"]
        op = int(str(vec["op"]))
        signed = v.sign_voucher(
            seed,
            KIND[op],  # type: ignore[arg-type]
            str(vec["channel"]),
            int(str(vec["seqno"])),
            int(str(vec["cumulative"])),
        )
        payload = signed.payload()
        assert v.cell_boc(payload).hex() == vec["payloadBocHex"], vec["name"]
        assert payload.hash.hex() == vec["payloadHashHex"], vec["name"]
        assert signed.signature.hex() == vec["signatureHex"], vec["name"]
        assert signed.body_boc().hex() == vec["messageBocHex"], vec["name"]


def test_from_ledger_voucher() -> None:
    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"k").digest())
    chan = "0:" + "ab" * 32
    lv = Voucher(
        kind="worker_payout",
        channel=chan,
        seqno=5,
        cumulative_nanoton=123,
        cumulative_tokens=9,
        signer_pubkey=public_key_bytes(key),
    )
    cv = v.from_ledger(lv, key)
    assert (cv.kind, cv.channel, cv.seqno, cv.cumulative) == ("worker", chan, 5, 123)
    assert cv.body_boc() == v.sign_voucher(key, "worker", chan, 5, 123).body_boc()
    other = Ed25519PrivateKey.generate()
    with pytest.raises(ValueError):
        v.from_ledger(lv, other)


def test_rejection_classes_carry_exit_code_and_meaning() -> None:
    err = rejection_for(102)("voucher rejected", exit_code=102)
    assert isinstance(err, VoucherReplayed) and isinstance(err, PaymentError)
    assert err.exit_code == 102 and "replay" in err.meaning and "102" in str(err)
    assert rejection_for(101) is BadVoucherSignature
    assert rejection_for(4242) is ContractRejected
    assert rejection_for(None) is ContractRejected
