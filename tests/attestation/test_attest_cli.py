"""``cocoon attest``: verify-quote and image-hash exit codes and output."""

from __future__ import annotations

import argparse
import io
import json
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from cocoon.attestation.fake_tdx import FakeTdxAuthority, fake_measurements
from cocoon.commands.attest import add_attest_arguments, run_attest

IMAGE_HASH = "04b3afd931d28680af91a15b09d672c40ad6b141f7f9089a8d67d595220f7436"


def main(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="cocoon")
    add_attest_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out = io.StringIO()
    rc = args.func(args, out)
    assert args.func is run_attest
    return rc, out.getvalue()


def _write(tmp_path: Path, data: bytes, name: str = "q.dat") -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_verify_quote_valid_json(tmp_path: Path, real_quote: bytes,
                                 valid_at: datetime) -> None:
    f = _write(tmp_path, real_quote)
    rc, out = main(["attest", "verify-quote", f, "--at", valid_at.isoformat(), "--json"])
    assert rc == 0
    doc = json.loads(out)
    assert doc["valid"] is True and doc["version"] == 4 and doc["tee_type"] == "0x81"
    assert doc["image_hash"] == IMAGE_HASH
    assert doc["mrtd"] == real_quote[184:232].hex()
    assert [s["name"] for s in doc["steps"]][:4] == [
        "quote_signature", "qe_report_signature", "qe_report_binding", "pck_chain"]


def test_verify_quote_text(tmp_path: Path, real_quote: bytes, valid_at: datetime) -> None:
    f = _write(tmp_path, real_quote)
    rc, out = main(["attest", "verify-quote", f, "--at", valid_at.isoformat()])
    assert rc == 0
    assert "✓ quote_signature" in out and "VALID" in out
    for key in ("rtmr0", "rtmr3", "mrconfigid", "mrowner", "mrownerconfig", "td_attributes",
                "report_data", "image_hash"):
        assert key in out


def test_verify_quote_expired(tmp_path: Path, real_quote: bytes) -> None:
    f = _write(tmp_path, real_quote)
    rc, out = main(["attest", "verify-quote", f, "--at", "2060-01-01T00:00:00Z"])
    assert rc == 1
    assert "✗ cert_validity" in out and "INVALID (cert_validity)" in out


def test_verify_quote_malformed(tmp_path: Path, real_quote: bytes) -> None:
    f = _write(tmp_path, real_quote[:700])
    rc, out = main(["attest", "verify-quote", f, "--json", "--at", "2026-01-01"])
    assert rc == 1
    doc = json.loads(out)
    assert doc["valid"] is False and doc["error"]["rule"] == "quote_format"
    rc, _ = main(["attest", "verify-quote", str(tmp_path / "missing")])
    assert rc == 2


def test_verify_fake_quote_with_root(tmp_path: Path) -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    auth = FakeTdxAuthority.generate(at)
    f = _write(tmp_path, auth.make_quote(bytes(64), fake_measurements("x"), at))
    rc, out = main(["attest", "verify-quote", f, "--at", at.isoformat(), "--json"])
    assert rc == 1 and json.loads(out)["error"]["rule"] == "pck_chain"
    root = _write(tmp_path, auth.root_cert.public_bytes(Encoding.PEM), "root.pem")
    rc, out = main(["attest", "verify-quote", f, "--at", at.isoformat(), "--root", root,
                    "--json"])
    assert rc == 0
    assert json.loads(out)["image_hash"] == fake_measurements("x").image_hash.hex()


def test_image_hash(tmp_path: Path, real_quote: bytes) -> None:
    rc, out = main(["attest", "image-hash", _write(tmp_path, real_quote)])
    assert (rc, out.strip()) == (0, IMAGE_HASH)
    rc, _ = main(["attest", "image-hash", _write(tmp_path, b"garbage", "g")])
    assert rc == 1
