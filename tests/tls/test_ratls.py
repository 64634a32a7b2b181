"""RA-TLS certificates without sockets: make, read, check; each rule; identity renewal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from tls_support import VERIFIERS, HmacProvider, NoneProvider

from cocoon.attestation.evidence import Claims, Evidence
from cocoon.attestation.ratls import (
    CLAIMS_OID,
    EVIDENCE_OID,
    check_certificate,
    make_certificate,
    public_key_der,
    read_certificate,
)
from cocoon.errors import AttestationError, EvidenceInvalid, PolicyRejected
from cocoon.transport.tls import TlsIdentity

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LIFE = timedelta(hours=1)


def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def claims_for(k: ec.EllipticCurvePrivateKey, role: str = "worker") -> Claims:
    return Claims(public_key_der(k.public_key()), role, "m", b"\x01" * 32)


def cert(k: ec.EllipticCurvePrivateKey | None = None, *, claims: Claims | None = None,
         evidence: Evidence | None = None) -> x509.Certificate:
    k = k or key()
    c = claims or claims_for(k)
    ev = evidence or HmacProvider().evidence(c.report_data())
    return make_certificate(k, c, ev, not_before=NOW, lifetime=LIFE)


def rule(c: x509.Certificate, *, at: datetime = NOW + timedelta(minutes=1),
         expect_role: str | None = None, verifiers: object = VERIFIERS) -> str:
    with pytest.raises(AttestationError) as info:
        check_certificate(c, verifiers=verifiers, at=at, expect_role=expect_role)  # type: ignore[arg-type]
    return info.value.rule


def test_roundtrip_and_check() -> None:
    k = key()
    c = cert(k)
    claims, ev = read_certificate(c)
    assert claims == claims_for(k)
    assert ev.kind == "fake-tdx" and len(ev.quote) == 96
    v = check_certificate(c, verifiers=VERIFIERS, at=NOW + timedelta(minutes=1),
                          expect_role="worker")
    assert v.tier == "fake-tdx"
    assert v.report_data == claims.report_data()
    assert [s.name for s in v.steps] == ["cert_signature", "cert_validity", "claims_key",
                                         "quote_signature", "report_data_binding", "role"]
    assert all(s.ok for s in v.steps)


def test_extension_criticality() -> None:
    c = cert()
    assert c.extensions.get_extension_for_oid(EVIDENCE_OID).critical
    assert not c.extensions.get_extension_for_oid(CLAIMS_OID).critical
    assert c.not_valid_after_utc - c.not_valid_before_utc == LIFE


def test_none_evidence_is_unattested() -> None:
    k = key()
    c = cert(k, evidence=Evidence("none"))
    v = check_certificate(c, verifiers={}, at=NOW, expect_role=None)
    assert v.tier == "unattested"
    assert v.report_data == claims_for(k).report_data()


@pytest.mark.parametrize("at", [NOW - timedelta(seconds=1), NOW + LIFE + timedelta(seconds=1)])
def test_validity_window(at: datetime) -> None:
    assert rule(cert(), at=at) == "cert_validity"


def test_naive_time_is_utc() -> None:
    check_certificate(cert(), verifiers=VERIFIERS, at=(NOW + timedelta(minutes=1)).replace(
        tzinfo=None), expect_role=None)


def test_claims_for_another_key() -> None:
    other = key()
    c = cert(claims=claims_for(other))  # evidence matches the claims, claims name `other`
    assert rule(c) == "claims_key"


def test_evidence_bound_to_another_key() -> None:
    other = HmacProvider().evidence(claims_for(key()).report_data())
    assert rule(cert(evidence=other)) == "report_data_binding"


def test_evidence_bound_to_another_role() -> None:
    k = key()
    ev = HmacProvider().evidence(claims_for(k, "proxy").report_data())
    assert rule(cert(k, claims=claims_for(k, "worker"), evidence=ev)) == "report_data_binding"


def test_verifier_refuses() -> None:
    k = key()
    ev = HmacProvider(key=b"another machine").evidence(claims_for(k).report_data())
    with pytest.raises(EvidenceInvalid) as info:
        check_certificate(cert(k, evidence=ev), verifiers=VERIFIERS, at=NOW, expect_role=None)
    assert info.value.rule == "quote_signature"


def test_unknown_kind() -> None:
    k = key()
    ev = HmacProvider(kind="tdx").evidence(claims_for(k).report_data())
    assert rule(cert(k, evidence=ev)) == "evidence_kind"


def test_none_with_bytes_is_malformed() -> None:
    assert rule(cert(evidence=Evidence("none", b"x"))) == "cert_format"


def test_role() -> None:
    with pytest.raises(PolicyRejected) as info:
        check_certificate(cert(), verifiers=VERIFIERS, at=NOW, expect_role="proxy")
    assert info.value.rule == "role"


def _builder(k: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "x")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(k.public_key()).serial_number(1)
            .not_valid_before(NOW).not_valid_after(NOW + LIFE))


def test_bad_signature() -> None:
    k, forger = key(), key()
    c = _builder(k).sign(forger, hashes.SHA256())
    assert rule(c) == "cert_signature"


def test_missing_extensions() -> None:
    k = key()
    assert rule(_builder(k).sign(k, hashes.SHA256())) == "cert_format"


@pytest.mark.parametrize("value", [b"", b"\x04\x05abc", b"\x04\x01\x02", b"\x30\x00",
                                   b"\x04\x05\x01\x00\x00\x00\x09"])
def test_malformed_extension(value: bytes) -> None:
    k = key()
    good = cert(k)
    ev_ext = good.extensions.get_extension_for_oid(EVIDENCE_OID).value
    c = (_builder(k)
         .add_extension(x509.UnrecognizedExtension(CLAIMS_OID, value), critical=False)
         .add_extension(ev_ext, critical=True)
         .sign(k, hashes.SHA256()))
    assert rule(c) == "cert_format"


def test_non_p256_key_refused() -> None:
    k = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError):
        make_certificate(k, claims_for(key()), Evidence("none"), not_before=NOW, lifetime=LIFE)
    assert rule(_builder(k).sign(k, hashes.SHA256())) == "cert_key"


def test_identity_create_and_refresh() -> None:
    ident = TlsIdentity.create(HmacProvider(), "worker", "m", b"h", lifetime=LIFE, now=NOW)
    assert ident.claims.public_key == public_key_der(ident.key.public_key())
    v = check_certificate(ident.certificate, verifiers=VERIFIERS, at=NOW, expect_role="worker")
    assert v.tier == "fake-tdx"
    first = ident.certificate
    assert not ident.refresh_if_needed(NOW + timedelta(minutes=30))
    assert ident.refresh_if_needed(NOW + timedelta(minutes=50))
    assert ident.generation == 1 and ident.certificate != first
    assert ident.claims.public_key != read_certificate(first)[0].public_key
    check_certificate(ident.certificate, verifiers=VERIFIERS, at=NOW + LIFE,
                      expect_role="worker")
    none = TlsIdentity.create(NoneProvider(), "client")
    assert none.evidence == Evidence("none")


def test_model_hash_travels_in_the_certificate_and_is_bound() -> None:
    ident = TlsIdentity.create(HmacProvider(), "worker", "m", b"cfg", model_hash=b"\x05" * 32)
    claims, _ = read_certificate(ident.certificate)
    assert claims.model_hash == b"\x05" * 32 and claims == ident.claims
    # The evidence binds the model hash too: a different one changes the report data.
    other = Claims(claims.public_key, claims.role, claims.model, claims.config_hash, b"\x06" * 32)
    assert other.report_data() != claims.report_data()
    ident.refresh_if_needed(datetime.now(UTC) + timedelta(days=1))
    assert ident.claims.model_hash == b"\x05" * 32
