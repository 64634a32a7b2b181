"""RA-TLS certificates: attestation evidence carried inside a short-lived X.509 certificate.

A node makes a fresh ECDSA P-256 key, asks its :class:`~cocoon.attestation.evidence.Provider`
for evidence over :meth:`Claims.report_data` (which hashes the key's SubjectPublicKeyInfo, the
role, the model and the config hash) and puts claims and evidence into a self-signed
certificate. The TLS handshake proves the peer holds the certificate's key; this module checks
everything else (:func:`check_certificate`).

Extensions (all under the *provisional* arc ``1.3.6.1.4.1.59995.1`` -- an unregistered
private-enterprise number picked for COCOON; replace it once a number is registered):

* ``1.3.6.1.4.1.59995.1.1`` *cocoon-claims* (non-critical)
* ``1.3.6.1.4.1.59995.1.2`` *cocoon-evidence* (CRITICAL, so a verifier that does not know
  RA-TLS refuses the certificate instead of silently ignoring the evidence)

Each ``extnValue`` is a DER ``OCTET STRING`` whose content is::

    version (1 byte, = 1) || field_1 || field_2 || ...     field = u32 big-endian length || bytes

* claims fields: ``public_key`` (DER SPKI), ``role`` (UTF-8), ``model`` (UTF-8),
  ``config_hash``, ``model_hash``, ``seal_key`` (a worker's X25519 key, 32 bytes; else empty)
* evidence fields: ``kind`` (ASCII), ``quote``

Pure: no sockets, no clock (the caller passes ``at``).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cocoon.attestation.evidence import (
    Claims,
    Evidence,
    EvidenceKind,
    EvidenceVerifier,
    Step,
    VerifiedEvidence,
)
from cocoon.errors import EvidenceInvalid, PolicyRejected

__all__ = [
    "CLAIMS_OID",
    "COCOON_ARC",
    "EVIDENCE_OID",
    "binding_payload",
    "check_certificate",
    "make_certificate",
    "public_key_der",
    "read_certificate",
    "sign_binding",
    "verify_binding",
]

COCOON_ARC: Final = "1.3.6.1.4.1.59995.1"  # provisional, see module docstring
CLAIMS_OID: Final = x509.ObjectIdentifier(COCOON_ARC + ".1")
EVIDENCE_OID: Final = x509.ObjectIdentifier(COCOON_ARC + ".2")

_VERSION: Final = 1
_MAX_FIELD: Final = 1 << 20  # a TDX quote with its certification data is a few KiB


# --- encoding -------------------------------------------------------------------------


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _encode(fields: Sequence[bytes]) -> bytes:
    payload = bytes([_VERSION]) + b"".join(len(f).to_bytes(4, "big") + f for f in fields)
    return b"\x04" + _der_length(len(payload)) + payload


def _decode(value: bytes, count: int, what: str) -> list[bytes]:
    """Parse :func:`_encode`'s output into exactly ``count`` fields."""
    bad = EvidenceInvalid(f"malformed {what} extension", rule="cert_format")
    if len(value) < 2 or value[0] != 0x04:
        raise bad
    first = value[1]
    if first < 0x80:
        length, pos = first, 2
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or len(value) < 2 + n:
            raise bad
        length, pos = int.from_bytes(value[2:2 + n], "big"), 2 + n
        if length < 0x80 or value[2] == 0:  # DER: minimal length encoding
            raise bad
    if pos + length != len(value):
        raise bad
    payload = memoryview(value)[pos:]
    if not payload or payload[0] != _VERSION:
        raise EvidenceInvalid(f"unsupported {what} extension version", rule="cert_format")
    out: list[bytes] = []
    i = 1
    while i < len(payload):
        if i + 4 > len(payload):
            raise bad
        n = int.from_bytes(payload[i:i + 4], "big")
        i += 4
        if n > _MAX_FIELD or i + n > len(payload):
            raise bad
        out.append(bytes(payload[i:i + n]))
        i += n
    if len(out) != count:
        raise bad
    return out


def public_key_der(key: ec.EllipticCurvePublicKey | x509.Certificate) -> bytes:
    """DER SubjectPublicKeyInfo of a key (or of a certificate's key)."""
    pub = key.public_key() if isinstance(key, x509.Certificate) else key
    return pub.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


# --- making ---------------------------------------------------------------------------


def make_certificate(key: ec.EllipticCurvePrivateKey, claims: Claims, evidence: Evidence, *,
                     not_before: datetime, lifetime: timedelta) -> x509.Certificate:
    """A self-signed certificate for ``key`` carrying ``claims`` and ``evidence``.

    ``claims.public_key`` should be ``key``'s SPKI (:func:`check_certificate` refuses
    anything else); it is not enforced here so tests can build bad certificates."""
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("RA-TLS keys are ECDSA P-256")
    if not_before.tzinfo is None:
        raise ValueError("not_before must be timezone-aware")
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cocoon"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"cocoon-{claims.role or 'node'}"[:64]),
    ])
    claims_ext = _encode([claims.public_key, claims.role.encode(), claims.model.encode(),
                          claims.config_hash, claims.model_hash, claims.seal_key])
    evidence_ext = _encode([evidence.kind.encode(), evidence.quote])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(secrets.randbits(120) | 1)
        .not_valid_before(not_before)
        .not_valid_after(not_before + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.UnrecognizedExtension(CLAIMS_OID, claims_ext), critical=False)
        .add_extension(x509.UnrecognizedExtension(EVIDENCE_OID, evidence_ext), critical=True)
        .sign(key, hashes.SHA256())
    )


# --- reading and checking -------------------------------------------------------------


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier, what: str) -> bytes:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        raise EvidenceInvalid(f"certificate has no {what} extension",
                              rule="cert_format") from None
    except ValueError as exc:  # duplicate or unparsable extensions
        raise EvidenceInvalid(f"certificate extensions invalid: {exc}",
                              rule="cert_format") from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise EvidenceInvalid(f"{what} extension has an unexpected type", rule="cert_format")
    return value.value


def read_certificate(cert: x509.Certificate) -> tuple[Claims, Evidence]:
    """The claims and evidence a certificate carries (unchecked). Raises AttestationError
    (rule ``cert_format``) when either is missing or malformed."""
    pub, role, model, config_hash, model_hash, seal_key = _decode(
        _extension(cert, CLAIMS_OID, "claims"), 6, "claims")
    kind, quote = _decode(_extension(cert, EVIDENCE_OID, "evidence"), 2, "evidence")
    try:
        claims = Claims(public_key=pub, role=role.decode(), model=model.decode(),
                        config_hash=config_hash, model_hash=model_hash, seal_key=seal_key)
        kind_s = kind.decode("ascii")
    except UnicodeDecodeError:
        raise EvidenceInvalid("claims are not valid UTF-8", rule="cert_format") from None
    # Kinds are checked against the verifiers we have (rule evidence_kind), not here.
    return claims, Evidence(cast(EvidenceKind, kind_s), quote)


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def check_certificate(cert: x509.Certificate, *, verifiers: Mapping[str, EvidenceVerifier],
                      at: datetime, expect_role: str | None) -> VerifiedEvidence:
    """Check an RA-TLS certificate the peer proved it holds the key of; return what verified.

    In order: ECDSA P-256 key (``cert_key``), self-signature (``cert_signature``), validity
    window contains ``at`` (``cert_validity``), claims/evidence well formed (``cert_format``),
    claimed key is the certificate's key (``claims_key``), evidence verified by
    ``verifiers[kind]`` (``evidence_kind`` when there is none; the verifier's own rules),
    evidence bound to these claims (``report_data_binding``), role (``role``).
    Kind ``none`` binds nothing and yields tier ``unattested``; policy decides if that is
    acceptable. Raises :class:`~cocoon.errors.AttestationError` naming the failed rule."""
    steps: list[Step] = []
    pub = cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(pub.curve,
                                                                          ec.SECP256R1):
        raise EvidenceInvalid("certificate key is not ECDSA P-256", rule="cert_key")
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise EvidenceInvalid(f"certificate is not validly self-signed: {exc or 'bad signature'}",
                              rule="cert_signature") from None
    steps.append(Step("cert_signature", True))
    at = _aware(at)
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not nb <= at <= na:
        raise EvidenceInvalid(f"certificate valid {nb:%Y-%m-%dT%H:%M:%SZ} to "
                              f"{na:%Y-%m-%dT%H:%M:%SZ}, not at {at:%Y-%m-%dT%H:%M:%SZ}",
                              rule="cert_validity")
    steps.append(Step("cert_validity", True, f"until {na:%Y-%m-%dT%H:%M:%SZ}"))
    claims, evidence = read_certificate(cert)
    if claims.public_key != public_key_der(pub):
        raise EvidenceInvalid("claims name another key than the certificate's",
                              rule="claims_key")
    steps.append(Step("claims_key", True))
    expected = claims.report_data()
    if evidence.kind == "none":
        if evidence.quote:
            raise EvidenceInvalid("evidence of kind none carries bytes", rule="cert_format")
        verified = VerifiedEvidence(tier="unattested", report_data=expected,
                                    steps=(Step("evidence", True, "none: unattested"),))
    else:
        verifier = verifiers.get(evidence.kind)
        if verifier is None:
            raise EvidenceInvalid(f"no verifier for evidence kind {evidence.kind[:32]!r}",
                                  rule="evidence_kind")
        verified = verifier.verify(evidence, expected, at)
        if verified.report_data != expected:
            raise EvidenceInvalid("evidence binds other report data than these claims",
                                  rule="report_data_binding")
    steps.append(Step("report_data_binding", True))
    if expect_role is not None and claims.role != expect_role:
        raise PolicyRejected(f"peer role is {claims.role[:32]!r}, expected {expect_role!r}",
                             rule="role")
    steps.append(Step("role", True, claims.role))
    return dataclasses.replace(verified, steps=(*steps[:3], *verified.steps, *steps[3:]))



# --- binding application messages to the channel ----------------------------------------

_BINDING_DOMAIN: Final = b"cocoon-hello-binding-v1"


def binding_payload(channel_binding: bytes, role: str, node_id: str) -> bytes:
    """What a node signs in its Hello: the channel's TLS exporter and who it says it is."""
    return _encode([_BINDING_DOMAIN, channel_binding, role.encode(), node_id.encode()])


def sign_binding(key: ec.EllipticCurvePrivateKey, payload: bytes) -> bytes:
    return key.sign(payload, ec.ECDSA(hashes.SHA256()))


def verify_binding(cert: x509.Certificate, signature: bytes, payload: bytes) -> None:
    """Check a peer's Hello binding under its certificate key; EvidenceInvalid if it fails
    (a Hello replayed from another channel, or signed by another key)."""
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise EvidenceInvalid("certificate key is not ECDSA", rule="channel_binding")
    try:
        key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise EvidenceInvalid("the peer's hello is not bound to this channel",
                              rule="channel_binding") from None
