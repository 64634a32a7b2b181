"""The simulated TDX: real layout, real verification, never trusted as Intel."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cocoon.attestation.evidence import Evidence, Measurements
from cocoon.attestation.fake_tdx import (
    FakeTdxAuthority,
    FakeTdxProvider,
    FakeTdxVerifier,
    fake_measurements,
)
from cocoon.attestation.tdx import TdxVerifier, check_quote, parse_quote
from cocoon.errors import AttestationError, EvidenceInvalid

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RD = bytes(range(64))


@pytest.fixture(scope="module")
def authority() -> FakeTdxAuthority:
    return FakeTdxAuthority.generate(AT)


def test_round_trip(authority: FakeTdxAuthority) -> None:
    m = fake_measurements("my-image")
    quote = authority.make_quote(RD, m, AT)
    q = parse_quote(quote)
    assert (q.version, q.tee_type, len(q.pck_chain_der)) == (4, 0x81, 2)
    assert q.measurements() == m
    v = authority.verifier().verify(Evidence("fake-tdx", quote), RD, AT)
    assert v.tier == "fake-tdx" and v.report_data == RD
    assert v.image_hash == m.image_hash
    assert all(s.ok for s in v.steps) and len(v.steps) == 6


def test_measurements_are_stable() -> None:
    assert fake_measurements("a") == fake_measurements("a")
    assert fake_measurements("a").image_hash != fake_measurements("b").image_hash
    # pinned: changing the derivation changes every fake deployment's image hash
    assert fake_measurements("cocoon").image_hash.hex() == (
        "62defb5446e05318ebe573120e4349b6cd80d4409247c9114cecff0bb20f430b")
    assert not fake_measurements().debug


def test_never_verifies_as_intel(authority: FakeTdxAuthority) -> None:
    quote = authority.make_quote(RD, fake_measurements(), AT)
    with pytest.raises(EvidenceInvalid) as e:
        TdxVerifier().verify(Evidence("tdx", quote), RD, AT)
    assert e.value.rule == "pck_chain"
    with pytest.raises(EvidenceInvalid) as e:
        TdxVerifier().verify(Evidence("fake-tdx", quote), RD, AT)
    assert e.value.rule == "evidence_kind"
    with pytest.raises(EvidenceInvalid) as e:
        authority.verifier().verify(Evidence("tdx", quote), RD, AT)
    assert e.value.rule == "evidence_kind"


def test_other_authority_rejected(authority: FakeTdxAuthority) -> None:
    other = FakeTdxAuthority.generate(AT)
    quote = other.make_quote(RD, fake_measurements(), AT)
    with pytest.raises(EvidenceInvalid) as e:
        authority.verifier().verify(Evidence("fake-tdx", quote), RD, AT)
    assert e.value.rule == "pck_chain"


def test_report_data_mismatch(authority: FakeTdxAuthority) -> None:
    quote = authority.make_quote(RD, fake_measurements(), AT)
    with pytest.raises(EvidenceInvalid) as e:
        authority.verifier().verify(Evidence("fake-tdx", quote), bytes(64), AT)
    assert e.value.rule == "report_data_binding"


def test_expired(authority: FakeTdxAuthority) -> None:
    quote = authority.make_quote(RD, fake_measurements(), AT)
    with pytest.raises(EvidenceInvalid) as e:
        authority.verifier().verify(Evidence("fake-tdx", quote), RD, AT + timedelta(days=4000))
    assert e.value.rule == "cert_validity"
    with pytest.raises(AttestationError):
        authority.make_quote(RD, fake_measurements(), AT - timedelta(days=2))


def test_every_byte_flip_fails(authority: FakeTdxAuthority) -> None:
    quote = authority.make_quote(RD, fake_measurements(), AT)
    roots = [authority.root_cert]
    assert check_quote(quote, at=AT, roots=roots).ok
    for i in range(len(quote)):
        data = bytearray(quote)
        data[i] ^= 0x01 if i % 2 else 0x80
        res = check_quote(bytes(data), at=AT, roots=roots, report_data=RD)
        assert res.error is not None, f"flip at {i} still verifies"
        assert res.error.rule != "verify_internal", f"flip at {i}: {res.error}"


def test_debug_td_is_exposed(authority: FakeTdxAuthority) -> None:
    m = fake_measurements()
    dbg = Measurements(m.mrtd, m.rtmr0, m.rtmr1, m.rtmr2, m.rtmr3, m.mrconfigid, m.mrowner,
                       m.mrownerconfig, b"\x01" + bytes(7))
    v = authority.verifier().verify(
        Evidence("fake-tdx", authority.make_quote(RD, dbg, AT)), RD, AT)
    assert v.measurements is not None and v.measurements.debug


def test_save_load(tmp_path: Path, authority: FakeTdxAuthority) -> None:
    d = tmp_path / "fake"
    authority.save(d)
    assert (os.stat(d / "root_key.pem").st_mode & 0o777) == 0o600
    assert (os.stat(d / "pck_key.pem").st_mode & 0o777) == 0o600
    loaded = FakeTdxAuthority.load(d)
    quote = loaded.make_quote(RD, fake_measurements(), AT)
    authority.verifier().verify(Evidence("fake-tdx", quote), RD, AT)  # same CA
    assert FakeTdxAuthority.load_or_generate(d, AT).root_cert == authority.root_cert
    os.chmod(d / "pck_key.pem", 0o644)
    with pytest.raises(AttestationError) as e:
        FakeTdxAuthority.load(d)
    assert e.value.rule == "fake_tdx_keys"
    fresh = FakeTdxAuthority.load_or_generate(tmp_path / "new", AT)
    assert (tmp_path / "new" / "root_cert.pem").exists()
    assert fresh.root_cert != authority.root_cert


def test_provider(authority: FakeTdxAuthority) -> None:
    p = FakeTdxProvider(authority, fake_measurements("img"), now=lambda: AT)
    assert p.name == "fake-tdx"
    ev = p.evidence(RD)
    v = FakeTdxVerifier([authority.root_cert]).verify(ev, RD, AT)
    assert v.image_hash == fake_measurements("img").image_hash
