"""Parsing and verifying the real Intel TDX quote: layout, every step, every byte."""

from __future__ import annotations

import contextlib
import struct
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cocoon.attestation.evidence import Evidence
from cocoon.attestation.intel_root import (
    INTEL_SGX_ROOT_CA_FINGERPRINT_SHA256,
    INTEL_SGX_ROOT_CA_PEM,
)
from cocoon.attestation.tdx import (
    QuoteCheck,
    TdxVerifier,
    check_quote,
    intel_roots,
    parse_quote,
    verify_quote,
)
from cocoon.errors import AttestationError, EvidenceInvalid, QuoteFormatError

IMAGE_HASH = "04b3afd931d28680af91a15b09d672c40ad6b141f7f9089a8d67d595220f7436"
SIG_START = 636
PEM_START = 636 + 64 + 64 + 6 + 384 + 64 + 2 + 32 + 6  # 1258
SIG_END = 636 + 4304


def test_intel_root_pin() -> None:
    root = x509.load_pem_x509_certificate(INTEL_SGX_ROOT_CA_PEM)
    assert "CN=Intel SGX Root CA" in root.subject.rfc4514_string()
    assert root.fingerprint(hashes.SHA256()).hex() == INTEL_SGX_ROOT_CA_FINGERPRINT_SHA256


def test_parse_real_quote(real_quote: bytes) -> None:
    q = parse_quote(real_quote)
    assert (q.version, q.att_key_type, q.tee_type, q.body_type) == (4, 2, 0x81, 2)
    assert q.qe_vendor_id.hex() == "939a7233f79c4ca9940a0db3957f0607"
    assert q.mrtd == real_quote[184:232]
    assert q.rtmr3 == real_quote[520:568]
    assert q.reportdata == real_quote[568:632]
    assert q.signed_region == real_quote[:632]
    assert len(q.qe_auth_data) == 32
    assert len(q.pck_chain_der) == 3
    assert q.measurements().image_hash.hex() == IMAGE_HASH
    assert q.measurements().debug is False
    assert real_quote[SIG_END:] == bytes(70)  # zero padding, not part of the quote


def test_verify_real_quote(real_quote: bytes, valid_at: datetime) -> None:
    q = parse_quote(real_quote)
    v = verify_quote(real_quote, at=valid_at, roots=intel_roots(), report_data=q.reportdata)
    assert v.tier == "tdx"
    assert v.image_hash is not None and v.image_hash.hex() == IMAGE_HASH
    assert [s.name for s in v.steps] == [
        "quote_signature", "qe_report_signature", "qe_report_binding", "pck_chain",
        "cert_validity", "report_data_binding"]
    assert all(s.ok for s in v.steps)
    assert v.tcb_status is None
    got = TdxVerifier().verify(Evidence("tdx", real_quote), q.reportdata, valid_at)
    assert got.image_hash == v.image_hash


def test_verifier_rejects_other_kinds(real_quote: bytes, valid_at: datetime) -> None:
    for kind in ("fake-tdx", "none"):
        with pytest.raises(EvidenceInvalid) as e:
            TdxVerifier().verify(Evidence(kind, real_quote), bytes(64), valid_at)  # type: ignore[arg-type]
        assert e.value.rule == "evidence_kind"


def test_report_data_mismatch(real_quote: bytes, valid_at: datetime) -> None:
    with pytest.raises(EvidenceInvalid) as e:
        TdxVerifier().verify(Evidence("tdx", real_quote), bytes(64), valid_at)
    assert e.value.rule == "report_data_binding"


@pytest.mark.parametrize("delta", [timedelta(days=-400 * 365), timedelta(days=-2),
                                   timedelta(days=365 * 30)])
def test_outside_validity(real_quote: bytes, valid_at: datetime, delta: timedelta) -> None:
    res = check_quote(real_quote, at=valid_at + delta, roots=intel_roots())
    assert res.error is not None and res.error.rule == "cert_validity"
    assert [s.ok for s in res.steps] == [True, True, True, True, False]


def test_wrong_root(real_quote: bytes, valid_at: datetime) -> None:
    leafish = parse_quote(real_quote).certificates()[1]  # the intermediate, not a root
    with pytest.raises(EvidenceInvalid) as e:
        verify_quote(real_quote, at=valid_at, roots=[leafish])
    assert e.value.rule == "pck_chain"
    with pytest.raises(EvidenceInvalid):
        verify_quote(real_quote, at=valid_at, roots=[])


def _assert_fails(res: QuoteCheck, where: str) -> None:
    assert res.error is not None, f"flip at {where} still verifies"
    assert isinstance(res.error, AttestationError)
    assert res.error.rule != "verify_internal", f"flip at {where}: {res.error}"


def test_every_single_byte_flip_fails(real_quote: bytes, valid_at: datetime) -> None:
    """Every byte of header, body and signature data matters; the padding after them not."""
    roots = intel_roots()
    positions = list(range(SIG_END))
    flips = [(i, 0x01) for i in positions]
    flips += [(i, 0xFF) for i in positions if i < PEM_START or i % 7 == 0]
    for i, mask in flips:
        data = bytearray(real_quote)
        data[i] ^= mask
        _assert_fails(check_quote(bytes(data), at=valid_at, roots=roots), f"{i}^{mask:#x}")
    assert len(flips) > 5000
    for i in range(SIG_END, len(real_quote)):
        data = bytearray(real_quote)
        data[i] ^= 0xFF
        assert check_quote(bytes(data), at=valid_at, roots=roots).ok, i


def test_truncations_are_format_errors(real_quote: bytes) -> None:
    for n in range(SIG_END):
        with pytest.raises(QuoteFormatError):
            parse_quote(real_quote[:n])
    for n in range(SIG_END, len(real_quote) + 1):  # only zero padding is cut
        parse_quote(real_quote[:n])


# What Google go-tdx-guest's tdx_prod_quote_SPR_E4.dat carries after its signature data.
TAIL_39 = bytes(range(0x41, 0x41 + 39))


@pytest.mark.parametrize("cut", [SIG_END, None])
def test_trailing_bytes_are_read_past(real_quote: bytes, valid_at: datetime,
                                      cut: int | None) -> None:
    """DCAP verifiers read a quote by its lengths: non-zero bytes after it are not refused."""
    data = real_quote[:cut] + TAIL_39
    assert len(data) - SIG_END in (39, 70 + 39) and all(TAIL_39)
    q = parse_quote(data)
    assert q.signed_region == real_quote[:632]
    assert q.pck_chain_der == parse_quote(real_quote).pck_chain_der
    v = verify_quote(data, at=valid_at, roots=intel_roots(), report_data=q.reportdata)
    assert all(s.ok for s in v.steps) and v.image_hash is not None
    assert v.image_hash.hex() == IMAGE_HASH


def test_truncated_with_tail_still_fails(real_quote: bytes, valid_at: datetime) -> None:
    """A quote whose declared lengths run past its end fails; bytes after a cut do not
    stand in for the part that was cut."""
    for n in (SIG_END - 1, SIG_END - 40, PEM_START + 10, 700):
        with pytest.raises(QuoteFormatError, match=r"exceeds|truncated"):
            parse_quote(real_quote[:n])
        res = check_quote(real_quote[:n], at=valid_at, roots=intel_roots())
        assert res.error is not None and res.error.rule == "quote_format"
    # the signature data length names 4304 bytes: 39 fewer than that are not a quote
    with pytest.raises(QuoteFormatError, match="exceeds"):
        parse_quote(real_quote[:SIG_END - 39])
    res = check_quote(real_quote[:SIG_END - 39] + TAIL_39, at=valid_at, roots=intel_roots())
    assert res.error is not None and res.error.rule == "quote_format"


@pytest.mark.parametrize("offset,value,match", [
    (0, struct.pack("<H", 3), "version"),
    (2, struct.pack("<H", 3), "key type"),
    (4, struct.pack("<I", 0), "TEE type"),
    (632, struct.pack("<I", 5000), "exceeds"),
    (632, struct.pack("<I", 4303), "does not fill"),
    (764, struct.pack("<H", 5), "type 5, expected 6"),
])
def test_precise_format_errors(real_quote: bytes, offset: int, value: bytes,
                               match: str) -> None:
    data = real_quote[:offset] + value + real_quote[offset + len(value):]
    with pytest.raises(QuoteFormatError, match=match):
        parse_quote(data)


def _v5(real_quote: bytes, body_type: int, body: bytes) -> bytes:
    header = struct.pack("<H", 5) + real_quote[2:48]
    return header + struct.pack("<HI", body_type, len(body)) + body + real_quote[632:]


def test_parse_v5_layouts(real_quote: bytes, valid_at: datetime) -> None:
    body10 = real_quote[48:632]
    q = parse_quote(_v5(real_quote, 2, body10))
    assert (q.version, q.body_type, q.mrtd) == (5, 2, real_quote[184:232])
    assert len(q.signed_region) == 48 + 6 + 584
    body15 = body10 + b"\x11" * 16 + b"\x22" * 48
    q = parse_quote(_v5(real_quote, 3, body15))
    assert (q.body_type, q.tee_tcb_svn2, q.mrservicetd) == (3, b"\x11" * 16, b"\x22" * 48)
    assert q.reportdata == real_quote[568:632]
    # the signature covered a v4 header||body, so a re-wrapped quote must not verify
    res = check_quote(_v5(real_quote, 2, body10), at=valid_at, roots=intel_roots())
    assert res.error is not None and res.error.rule == "quote_signature"
    with pytest.raises(QuoteFormatError, match="size"):
        parse_quote(_v5(real_quote, 3, body10))
    with pytest.raises(QuoteFormatError, match="body type 1"):
        parse_quote(_v5(real_quote, 1, body10))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=6000))
def test_fuzz_random_bytes(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        parse_quote(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutations_of_real_quote(real_quote: bytes, valid_at: datetime,
                                      data: st.DataObject) -> None:
    q = bytearray(real_quote)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        i = data.draw(st.integers(0, max(len(q) - 1, 0)))
        if op == "set" and q:
            q[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            q[i:i] = data.draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del q[i:i + data.draw(st.integers(1, 16))]
        else:
            del q[i:]
    with contextlib.suppress(AttestationError):
        parse_quote(bytes(q))
    res = check_quote(bytes(q), at=valid_at, roots=intel_roots())
    if res.error is not None:
        assert res.error.rule != "verify_internal", res.error
