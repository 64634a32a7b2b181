"""The voucher layout checked by the Tolk contracts, reproduced with pytoniq-core.

contracts/python/voucher_reference.py is the reference encoder; its committed vectors are also
checked from JavaScript (@ton/core) in the emulator suite, so equality here means the Python
side builds the exact cells the contracts verify.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip(
    "pytoniq_core", reason="pytoniq-core not installed (pip install pytoniq-core==0.2.1)"
)

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"


def _reference() -> ModuleType:
    path = CONTRACTS / "python" / "voucher_reference.py"
    spec = importlib.util.spec_from_file_location("cocoon_voucher_reference", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_vectors_match_committed_file() -> None:
    committed = json.loads((CONTRACTS / "tests" / "vectors" / "voucher_vectors.json").read_text())
    assert _reference().vectors() == committed


def test_signature_verifies_over_payload_hash() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from pytoniq_core import Cell

    for v in json.loads((CONTRACTS / "tests" / "vectors" / "voucher_vectors.json").read_text()):
        payload = Cell.one_from_boc(bytes.fromhex(v["payloadBocHex"]))
        assert payload.hash.hex() == v["payloadHashHex"]
        s = payload.begin_parse()
        assert s.load_uint(32) == v["op"]
        assert s.load_address().to_str(is_user_friendly=False) == v["channel"]
        assert s.load_uint(64) == int(v["seqno"])
        assert s.load_coins() == int(v["cumulative"])
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(v["publicKeyHex"]))
        key.verify(bytes.fromhex(v["signatureHex"]), payload.hash)  # raises if invalid
