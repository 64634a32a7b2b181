"""Intel TDX quotes: strict parsing and verification (pure: bytes and time in, values out).

:func:`parse_quote` reads a quote v4 (TD report 1.0) or v5 (TD report 1.0 or 1.5) with ECDSA
P-256 certification data of type 6 (QE report) wrapping type 5 (PEM PCK chain). The quote is
read by its lengths, as DCAP verifiers read it: bytes after the signature data (zero padding,
or the non-zero bytes some production quotes carry) are not part of the quote and are
ignored, while every declared length must fit; anything malformed raises
:class:`~cocoon.errors.QuoteFormatError`. The PEM chain must be canonical PEM (64-column
base64, optionally NUL-terminated), so that every byte of the signature data matters.

:func:`check_quote` runs the verification steps in order and records each as a
:class:`~cocoon.attestation.evidence.Step`; :func:`verify_quote` raises
:class:`~cocoon.errors.EvidenceInvalid` (``rule`` = the failed step) at the first failure:

1. ``quote_signature``: ECDSA-P256-SHA256 over header||body under the attestation key;
2. ``qe_report_signature``: the QE report under the PCK leaf certificate's key;
3. ``qe_report_binding``: QE reportdata = SHA-256(attestation key || QE auth data) || 0^32;
4. ``pck_chain``: each certificate signed by the next, issuers are CAs, and the chain's root
   is byte-identical to a pinned root;
5. ``cert_validity``: every certificate valid at ``at``;
6. ``report_data_binding``: the quote's reportdata equals the expected value (if given);

and with :class:`~cocoon.attestation.collateral.Collateral` (checked against the same pinned
roots, never trusted; see :mod:`cocoon.attestation.collateral`):

7. ``collateral_signature``: TCB info and QE identity signed by Intel's TCB signing
   certificate, issued by a pinned root, valid at ``at``;
8. ``crl``: root CA CRL and PCK CRL verified, current at ``at``, and no certificate of the
   PCK chain or of the collateral chains revoked;
9. ``collateral_current``: TCB info and QE identity current at ``at``;
10. ``qe_identity``: the QE report matches the QE identity (MRSIGNER, ISVPRODID, MISCSELECT
    and ATTRIBUTES under their masks) and its ISV SVN reaches a QE TCB level that is not
    revoked (see :func:`qe_identity_status`);
11. ``tcb_status``: the platform's TCB level (see :func:`match_tcb`), converged with the QE's
    status; a revoked TCB fails.

:class:`TdxVerifier` is the :class:`~cocoon.attestation.evidence.EvidenceVerifier` for kind
``tdx`` pinned to the Intel SGX Root CA.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from cocoon.attestation.collateral import (
    Collateral,
    QeIdentity,
    TcbInfo,
    TcbLevel,
    TdxModuleIdentity,
    cert_issued_by,
    check_crls,
    check_current,
    check_signatures,
    parse_collateral,
    verify_rs,
)
from cocoon.attestation.evidence import Evidence, Measurements, Step, Tier, VerifiedEvidence
from cocoon.attestation.intel_root import INTEL_SGX_ROOT_CA_PEM
from cocoon.errors import AttestationError, EvidenceInvalid, QuoteFormatError

__all__ = [
    "ATT_KEY_ECDSA_P256",
    "TEE_TYPE_TDX",
    "Collateral",
    "PckTcb",
    "QeIdentity",
    "QeReport",
    "Quote",
    "QuoteCheck",
    "TcbInfo",
    "TcbLevel",
    "TdxModuleIdentity",
    "TdxVerifier",
    "check_quote",
    "intel_roots",
    "match_tcb",
    "parse_collateral",
    "parse_pck_tcb",
    "parse_quote",
    "qe_identity_status",
    "verify_quote",
]

ATT_KEY_ECDSA_P256: Final = 2
TEE_TYPE_TDX: Final = 0x81
HEADER_LEN: Final = 48
TD10_LEN: Final = 584
TD15_LEN: Final = 648
QE_REPORT_LEN: Final = 384
CERT_TYPE_QE_REPORT: Final = 6
CERT_TYPE_PCK_CHAIN: Final = 5
SGX_EXT_OID: Final = "1.2.840.113741.1.13.1"
_PEM_BEGIN: Final = b"-----BEGIN CERTIFICATE-----\n"


# ----------------------------------------------------------------------------- parsing


class _Reader:
    """Cursor over bytes that raises QuoteFormatError with the field name when short."""

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = start
        self.end = len(data) if end is None else end

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise QuoteFormatError(
                f"quote truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"{max(self.end - self.pos, 0)} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u16(self, what: str) -> int:
        return int(struct.unpack("<H", self.take(2, what))[0])

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])


@dataclass(frozen=True, slots=True)
class QeReport:
    """The 384-byte SGX report body of the Quoting Enclave."""

    raw: bytes
    cpusvn: bytes
    miscselect: int
    attributes: bytes
    mrenclave: bytes
    mrsigner: bytes
    isvprodid: int
    isvsvn: int
    reportdata: bytes


def _parse_qe_report(raw: bytes) -> QeReport:
    return QeReport(
        raw=raw, cpusvn=raw[0:16], miscselect=int.from_bytes(raw[16:20], "little"),
        attributes=raw[48:64], mrenclave=raw[64:96], mrsigner=raw[128:160],
        isvprodid=int.from_bytes(raw[256:258], "little"),
        isvsvn=int.from_bytes(raw[258:260], "little"), reportdata=raw[320:384])


@dataclass(frozen=True, slots=True)
class Quote:
    """A parsed TDX quote. ``signed_region`` is what the attestation key signs."""

    version: int
    att_key_type: int
    tee_type: int
    reserved: bytes
    qe_vendor_id: bytes
    user_data: bytes
    body_type: int  # 2: TD report 1.0, 3: TD report 1.5 (v4 is always 2)
    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    reportdata: bytes
    tee_tcb_svn2: bytes  # TD report 1.5 only, else b""
    mrservicetd: bytes  # TD report 1.5 only, else b""
    signature: bytes  # r || s, 64 bytes
    attestation_key: bytes  # x || y, 64 bytes
    qe_report: QeReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes
    pck_chain_der: tuple[bytes, ...]  # leaf first
    signed_region: bytes = field(repr=False)

    def measurements(self) -> Measurements:
        return Measurements(
            mrtd=self.mrtd, rtmr0=self.rtmr0, rtmr1=self.rtmr1, rtmr2=self.rtmr2,
            rtmr3=self.rtmr3, mrconfigid=self.mrconfigid, mrowner=self.mrowner,
            mrownerconfig=self.mrownerconfig, td_attributes=self.td_attributes)

    def certificates(self) -> tuple[x509.Certificate, ...]:
        return tuple(x509.load_der_x509_certificate(d) for d in self.pck_chain_der)


def _parse_pem_chain(pem: bytes) -> tuple[bytes, ...]:
    body = pem.rstrip(b"\0")
    if len(pem) - len(body) > 1:
        raise QuoteFormatError("PCK chain has more than one trailing NUL")
    if not body.startswith(_PEM_BEGIN):
        raise QuoteFormatError("PCK chain does not start with a PEM certificate")
    try:
        certs = x509.load_pem_x509_certificates(body)
    except (ValueError, x509.InvalidVersion) as e:
        raise QuoteFormatError(f"PCK chain PEM does not parse: {e}") from None
    canonical = b"".join(c.public_bytes(Encoding.PEM) for c in certs)
    if canonical != body:
        raise QuoteFormatError("PCK chain is not canonical PEM (64-column base64, LF)")
    for i, c in enumerate(certs):  # cryptography decodes fields lazily: force them now
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # e.g. a country name of the wrong length
                _ = (c.subject, c.issuer, c.extensions, c.public_key(), c.not_valid_before_utc,
                     c.not_valid_after_utc, c.signature_algorithm_oid, c.signature,
                     c.tbs_certificate_bytes, c.serial_number)
                for ext in c.extensions:
                    _ = ext.value
        except (ValueError, TypeError, Warning, UnsupportedAlgorithm, x509.InvalidVersion,
                x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as e:
            raise QuoteFormatError(f"PCK chain certificate {i} is malformed: {e}") from None
    if len(certs) < 2:
        raise QuoteFormatError(f"PCK chain has {len(certs)} certificate(s), need at least 2")
    return tuple(c.public_bytes(Encoding.DER) for c in certs)


def parse_quote(data: bytes) -> Quote:
    """Parse a TDX quote v4/v5 with ECDSA-P256 certification data; strict on every length.

    Bytes after the signature data are ignored (see the module docstring).
    """
    data = bytes(data)
    r = _Reader(data)
    version = r.u16("header.version")
    if version not in (4, 5):
        raise QuoteFormatError(f"unsupported quote version {version} (need 4 or 5)")
    att_key_type = r.u16("header.att_key_type")
    if att_key_type != ATT_KEY_ECDSA_P256:
        raise QuoteFormatError(f"unsupported attestation key type {att_key_type} (need 2)")
    tee_type = r.u32("header.tee_type")
    if tee_type != TEE_TYPE_TDX:
        raise QuoteFormatError(f"TEE type {tee_type:#x} is not TDX (0x81)")
    reserved = r.take(4, "header.reserved")
    qe_vendor_id = r.take(16, "header.qe_vendor_id")
    user_data = r.take(20, "header.user_data")
    if version == 4:
        body_type, body_len = 2, TD10_LEN
    else:
        body_type = r.u16("body descriptor type")
        body_len = r.u32("body descriptor size")
        expected = {2: TD10_LEN, 3: TD15_LEN}.get(body_type)
        if expected is None:
            raise QuoteFormatError(f"quote v5 body type {body_type} is not a TD report (2 or 3)")
        if body_len != expected:
            raise QuoteFormatError(
                f"quote v5 body type {body_type} has size {body_len}, expected {expected}")
    body = r.take(body_len, "TD report body")
    signed_region = data[:r.pos]
    b = _Reader(body)
    fields = {name: b.take(n, name) for name, n in (
        ("tee_tcb_svn", 16), ("mrseam", 48), ("mrsignerseam", 48), ("seam_attributes", 8),
        ("td_attributes", 8), ("xfam", 8), ("mrtd", 48), ("mrconfigid", 48), ("mrowner", 48),
        ("mrownerconfig", 48), ("rtmr0", 48), ("rtmr1", 48), ("rtmr2", 48), ("rtmr3", 48),
        ("reportdata", 64))}
    tee_tcb_svn2 = b.take(16, "tee_tcb_svn2") if body_type == 3 else b""
    mrservicetd = b.take(48, "mrservicetd") if body_type == 3 else b""

    sig_len = r.u32("signature data length")
    sig_end = r.pos + sig_len
    if sig_end > len(data):
        raise QuoteFormatError(
            f"signature data length {sig_len} exceeds the {len(data) - r.pos} bytes left")
    s = _Reader(data, r.pos, sig_end)
    signature = s.take(64, "quote signature")
    attestation_key = s.take(64, "attestation key")
    cert_type = s.u16("certification data type")
    if cert_type != CERT_TYPE_QE_REPORT:
        raise QuoteFormatError(f"certification data type {cert_type}, expected 6 (QE report)")
    cert_size = s.u32("certification data size")
    if s.pos + cert_size != sig_end:
        raise QuoteFormatError(
            f"certification data size {cert_size} does not fill the signature data "
            f"({sig_end - s.pos} bytes left)")
    qe_report = _parse_qe_report(s.take(QE_REPORT_LEN, "QE report"))
    qe_report_signature = s.take(64, "QE report signature")
    auth_len = s.u16("QE auth data size")
    qe_auth_data = s.take(auth_len, "QE auth data")
    inner_type = s.u16("inner certification data type")
    if inner_type != CERT_TYPE_PCK_CHAIN:
        raise QuoteFormatError(
            f"inner certification data type {inner_type}, expected 5 (PCK chain)")
    inner_size = s.u32("inner certification data size")
    if s.pos + inner_size != sig_end:
        raise QuoteFormatError(
            f"PCK chain size {inner_size} does not fill the certification data "
            f"({sig_end - s.pos} bytes left)")
    pem = s.take(inner_size, "PCK chain")
    chain = _parse_pem_chain(pem)
    return Quote(
        version=version, att_key_type=att_key_type, tee_type=tee_type, reserved=reserved,
        qe_vendor_id=qe_vendor_id, user_data=user_data, body_type=body_type, **fields,
        tee_tcb_svn2=tee_tcb_svn2, mrservicetd=mrservicetd, signature=signature,
        attestation_key=attestation_key, qe_report=qe_report,
        qe_report_signature=qe_report_signature, qe_auth_data=qe_auth_data, pck_chain_pem=pem,
        pck_chain_der=chain, signed_region=signed_region)


# ----------------------------------------------------------------------------- collateral


@dataclass(frozen=True, slots=True)
class PckTcb:
    """The TCB the PCK leaf certificate certifies (Intel SGX extension)."""

    sgx_components: tuple[int, ...]  # 16 SVNs
    pcesvn: int
    cpusvn: bytes
    fmspc: bytes
    pce_id: bytes


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """Split concatenated DER TLVs (short and long lengths) into (tag, content)."""
    out, i = [], 0
    while i < len(data):
        if i + 2 > len(data):
            raise ValueError("DER truncated")
        tag, ln = data[i], data[i + 1]
        i += 2
        if ln & 0x80:
            n = ln & 0x7F
            if n == 0 or n > 4 or i + n > len(data):
                raise ValueError("bad DER length")
            ln = int.from_bytes(data[i:i + n], "big")
            i += n
        if i + ln > len(data):
            raise ValueError("DER truncated")
        out.append((tag, data[i:i + ln]))
        i += ln
    return out


def _oid(content: bytes) -> str:
    parts, v = [], 0
    for byte in content:
        v = (v << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(v)
            v = 0
    first = min(parts[0] // 40, 2)
    return ".".join(str(p) for p in [first, parts[0] - 40 * first, *parts[1:]])


def _oid_values(seq_content: bytes) -> dict[str, tuple[int, bytes]]:
    out = {}
    for tag, content in _der_items(seq_content):
        if tag != 0x30:
            raise ValueError("expected SEQUENCE")
        inner = _der_items(content)
        if len(inner) != 2 or inner[0][0] != 0x06:
            raise ValueError("expected (OID, value)")
        out[_oid(inner[0][1])] = inner[1]
    return out


def parse_pck_tcb(cert: x509.Certificate) -> PckTcb:
    """Read the SGX extension (OID 1.2.840.113741.1.13.1) of a PCK certificate."""
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXT_OID))
        raw = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else b""
        (_tag, content), = _der_items(raw)
        top = _oid_values(content)
        tcb = _oid_values(top[SGX_EXT_OID + ".2"][1])
        comps = tuple(int.from_bytes(tcb[f"{SGX_EXT_OID}.2.{i}"][1], "big") for i in range(1, 17))
        return PckTcb(comps, int.from_bytes(tcb[SGX_EXT_OID + ".2.17"][1], "big"),
                      tcb[SGX_EXT_OID + ".2.18"][1], top[SGX_EXT_OID + ".4"][1],
                      top[SGX_EXT_OID + ".3"][1])
    except (ValueError, KeyError, IndexError, x509.ExtensionNotFound) as e:
        raise AttestationError(f"PCK certificate SGX extension unreadable: {e!r}",
                               rule="tcb_status") from None


_SEVERITY: Final = {
    "UpToDate": 0, "SWHardeningNeeded": 1, "ConfigurationNeeded": 2,
    "ConfigurationAndSWHardeningNeeded": 3, "OutOfDate": 4, "OutOfDateConfigurationNeeded": 5,
    "Revoked": 6,
}


def _worse(platform: str, other: str) -> str:
    """The platform status converged with a QE or TDX module status (Intel's QVL rule).

    The worse of the two, except that an out-of-date QE or module on a platform that needs
    configuration gives ``OutOfDateConfigurationNeeded`` (both facts kept). Unknown statuses
    count as worse than any known one.
    """
    if other == "OutOfDate" and platform in ("ConfigurationNeeded",
                                             "ConfigurationAndSWHardeningNeeded"):
        return "OutOfDateConfigurationNeeded"
    return other if _SEVERITY.get(other, 7) > _SEVERITY.get(platform, 7) else platform


def match_tcb(quote: Quote, pck: PckTcb, tcb_info: TcbInfo) -> str:
    """Intel's TDX TCB level matching (simplified; see module notes in the report).

    The first TCB level (Intel lists them best first) whose SGX components and PCE SVN are
    <= the PCK certificate's, and whose TDX components are <= the quote's tee_tcb_svn, gives
    the platform status. When tee_tcb_svn[1] (TDX module major version) > 0, components 0 and
    1 are instead matched against ``tdxModuleIdentities`` ``TDX_<major:02X>``: its mrsigner
    and masked attributes must match the quote's SEAM, and the first level with isvsvn <=
    tee_tcb_svn[0] gives the module status. The result is the two converged (:func:`_worse`).
    """
    if pck.fmspc != tcb_info.fmspc:
        raise AttestationError(f"collateral FMSPC {tcb_info.fmspc.hex()} != PCK FMSPC "
                               f"{pck.fmspc.hex()}", rule="tcb_status")
    if pck.pce_id != tcb_info.pce_id:
        raise AttestationError("collateral PCE ID does not match the PCK certificate",
                               rule="tcb_status")
    svn = quote.tee_tcb_svn
    module = svn[1] > 0 and bool(tcb_info.module_identities)
    skip = 2 if module else 0
    status = None
    for lv in tcb_info.levels:
        if (all(c <= p for c, p in zip(lv.sgx_components, pck.sgx_components, strict=True))
                and lv.pcesvn <= pck.pcesvn
                and all(lv.tdx_components[i] <= svn[i] for i in range(skip, 16))):
            status = lv.status
            break
    if status is None:
        raise AttestationError("no TCB level matches this platform (TCB unrecognized)",
                               rule="tcb_status")
    if module:
        ident = next((m for m in tcb_info.module_identities
                      if m.id == f"TDX_{svn[1]:02X}"), None)
        if ident is None:
            raise AttestationError(f"no TDX module identity TDX_{svn[1]:02X} in collateral",
                                   rule="tcb_status")
        mask = ident.attributes_mask
        seam_attrs = bytes(a & m for a, m in zip(quote.seam_attributes, mask, strict=False))
        want_attrs = bytes(a & m for a, m in zip(ident.attributes, mask, strict=False))
        if ident.mrsigner != quote.mrsignerseam or seam_attrs != want_attrs:
            raise AttestationError(f"TDX module does not match identity {ident.id}",
                                   rule="tcb_status")
        mstatus = next((st for isvsvn, st in ident.levels if isvsvn <= svn[0]), None)
        if mstatus is None:
            raise AttestationError("TDX module SVN matches no level", rule="tcb_status")
        status = _worse(status, mstatus)
    if status == "Revoked":
        raise AttestationError("platform TCB is revoked", rule="tcb_status")
    return status


def qe_identity_status(report: QeReport, identity: QeIdentity) -> str:
    """The QE's TCB status, after checking its report against the QE identity.

    MRSIGNER and ISVPRODID must equal the identity's, MISCSELECT and ATTRIBUTES must equal
    them under the identity's masks; the first QE TCB level (best first) whose ISV SVN is <=
    the report's gives the status. No such level, or a revoked one, fails (rule
    ``qe_identity``).
    """
    def fail(why: str) -> EvidenceInvalid:
        return EvidenceInvalid(f"QE report does not match the QE identity: {why}",
                               rule="qe_identity")

    if report.mrsigner != identity.mrsigner:
        raise fail(f"MRSIGNER {report.mrsigner.hex()} != {identity.mrsigner.hex()}")
    if report.isvprodid != identity.isvprodid:
        raise fail(f"ISVPRODID {report.isvprodid} != {identity.isvprodid}")
    mask = identity.miscselect_mask
    if report.miscselect & mask != identity.miscselect & mask:
        raise fail(f"MISCSELECT {report.miscselect:08x} under mask {mask:08x}")
    amask = identity.attributes_mask
    got = bytes(a & m for a, m in zip(report.attributes, amask, strict=True))
    want = bytes(a & m for a, m in zip(identity.attributes, amask, strict=True))
    if got != want:
        raise fail(f"ATTRIBUTES {report.attributes.hex()} under mask {amask.hex()}")
    status = next((st for isvsvn, st in identity.levels if isvsvn <= report.isvsvn), None)
    if status is None:
        raise fail(f"ISV SVN {report.isvsvn} is below every QE TCB level (TCB unrecognized)")
    if status == "Revoked":
        raise fail(f"QE ISV SVN {report.isvsvn} is revoked")
    return status


# ----------------------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class QuoteCheck:
    """Outcome of :func:`check_quote`: the steps run, and the first failure (if any)."""

    quote: Quote | None
    steps: tuple[Step, ...]
    error: AttestationError | None
    tcb_status: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _steps(data: bytes, at: datetime, roots: Sequence[x509.Certificate],
           collateral: Collateral | None, report_data: bytes | None,
           steps: list[Step], out: list[Any]) -> None:
    quote = parse_quote(data)
    out.append(quote)
    try:
        certs = quote.certificates()
    except ValueError as e:  # pragma: no cover - parse already loaded them
        raise QuoteFormatError(f"PCK chain: {e}") from None

    def ok(name: str, detail: str) -> None:
        steps.append(Step(name, True, detail))

    def fail(name: str, detail: str) -> EvidenceInvalid:
        steps.append(Step(name, False, detail))
        return EvidenceInvalid(detail, rule=name)

    try:
        att_key = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), b"\x04" + quote.attestation_key)
    except ValueError:
        raise fail("quote_signature", "attestation key is not a P-256 point") from None
    if not verify_rs(att_key, quote.signature, quote.signed_region):
        raise fail("quote_signature", "quote signature does not verify under the attestation key")
    ok("quote_signature", "ECDSA-P256 over header||body verifies under the attestation key")

    leaf_key = certs[0].public_key()
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey) or \
            not isinstance(leaf_key.curve, ec.SECP256R1):
        raise fail("qe_report_signature", "PCK leaf key is not ECDSA P-256")
    if not verify_rs(leaf_key, quote.qe_report_signature, quote.qe_report.raw):
        raise fail("qe_report_signature", "QE report signature does not verify under PCK key")
    ok("qe_report_signature", "QE report signed by the PCK leaf key")

    want = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
    if quote.qe_report.reportdata != want:
        raise fail("qe_report_binding",
                   "QE reportdata != SHA-256(attestation key || QE auth data) || 0^32")
    ok("qe_report_binding", "QE report binds the attestation key and auth data")

    for cert, issuer in itertools.pairwise(certs):
        why = cert_issued_by(cert, issuer)
        if why:
            raise fail("pck_chain", why)
    root = certs[-1]
    why = cert_issued_by(root, root)
    if why:
        raise fail("pck_chain", f"root is not self-signed: {why}")
    root_der = root.public_bytes(Encoding.DER)
    if not any(root_der == r.public_bytes(Encoding.DER) for r in roots):
        raise fail("pck_chain",
                   f"chain root {root.subject.rfc4514_string()} "
                   f"(sha256 {root.fingerprint(hashes.SHA256()).hex()}) is not a pinned root")
    ok("pck_chain", f"{len(certs)} certificates up to pinned root {root.subject.rfc4514_string()}")

    for c in certs:
        if not c.not_valid_before_utc <= at <= c.not_valid_after_utc:
            raise fail("cert_validity",
                       f"{c.subject.rfc4514_string()} not valid at {at.isoformat()} "
                       f"({c.not_valid_before_utc.isoformat()} .. "
                       f"{c.not_valid_after_utc.isoformat()})")
    ok("cert_validity", f"all certificates valid at {at.isoformat()}")

    if report_data is not None:
        if quote.reportdata != report_data:
            raise fail("report_data_binding", "quote reportdata differs from the expected value")
        ok("report_data_binding", "quote reportdata equals the expected value")

    if collateral is not None:
        out.append(_collateral_steps(quote, certs, collateral, roots, at, ok, fail))


def _collateral_steps(quote: Quote, certs: Sequence[x509.Certificate], c: Collateral,
                      roots: Sequence[x509.Certificate], at: datetime,
                      ok: Callable[[str, str], None],
                      fail: Callable[[str, str], EvidenceInvalid]) -> str:
    """Steps 7-11 of the module docstring; returns the overall TCB status."""
    def run(name: str, check: Callable[[], str],
            describe: Callable[[str], str] = lambda r: r) -> str:
        try:
            result = check()
        except AttestationError as e:
            raise fail(name, str(e)) from None
        ok(name, describe(result))
        return result

    run("collateral_signature", lambda: check_signatures(c, roots=roots, at=at))
    run("crl", lambda: check_crls(c, pck_chain=certs, roots=roots, at=at))
    run("collateral_current", lambda: check_current(c, at))
    qe = quote.qe_report
    qe_status = run("qe_identity", lambda: qe_identity_status(qe, c.qe_identity),
                    lambda st: f"QE report matches the QE identity; ISV SVN {qe.isvsvn}: {st}")
    return run("tcb_status", lambda: _tcb_status(quote, certs[0], c.tcb_info, qe_status),
               lambda st: f"TCB status {st} (platform converged with QE {qe_status})")


def _tcb_status(quote: Quote, pck_leaf: x509.Certificate, tcb_info: TcbInfo,
                qe_status: str) -> str:
    status = _worse(match_tcb(quote, parse_pck_tcb(pck_leaf), tcb_info), qe_status)
    if status == "Revoked":
        raise AttestationError("TCB is revoked", rule="tcb_status")
    return status


def check_quote(data: bytes, *, at: datetime, roots: Sequence[x509.Certificate],
                collateral: Collateral | None = None,
                report_data: bytes | None = None) -> QuoteCheck:
    """Run every verification step in order; never raises for bad input."""
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    steps: list[Step] = []
    out: list[Any] = []
    error: AttestationError | None = None
    try:
        _steps(data, at, roots, collateral, report_data, steps, out)
    except AttestationError as e:
        error = e
        if not steps or steps[-1].ok:
            steps.append(Step(e.rule, False, str(e)))
    # Defensive: nothing else may escape; tests assert this path is never taken.
    except (ValueError, TypeError, struct.error, UnsupportedAlgorithm) as e:
        error = EvidenceInvalid(f"quote could not be verified: {e!r}", rule="verify_internal")
        steps.append(Step("verify_internal", False, str(error)))
    quote = out[0] if out else None
    status = out[1] if len(out) > 1 else None
    return QuoteCheck(quote, tuple(steps), error, status)


def verify_quote(data: bytes, *, at: datetime, roots: Sequence[x509.Certificate],
                 collateral: Collateral | None = None, report_data: bytes | None = None,
                 tier: Tier = "tdx") -> VerifiedEvidence:
    """Verify a quote; raise the first failure (QuoteFormatError / EvidenceInvalid)."""
    res = check_quote(data, at=at, roots=roots, collateral=collateral, report_data=report_data)
    if res.error is not None:
        raise res.error
    assert res.quote is not None
    return VerifiedEvidence(tier=tier, report_data=res.quote.reportdata,
                            measurements=res.quote.measurements(), tcb_status=res.tcb_status,
                            steps=res.steps)


def intel_roots() -> tuple[x509.Certificate, ...]:
    return (x509.load_pem_x509_certificate(INTEL_SGX_ROOT_CA_PEM),)


class TdxVerifier:
    """EvidenceVerifier for real TDX quotes (kind ``tdx``), pinned to the Intel SGX Root CA."""

    kind: str = "tdx"
    tier: Tier = "tdx"

    def __init__(self, roots: Sequence[x509.Certificate] | None = None,
                 collateral: Collateral | None = None) -> None:
        self.roots = tuple(roots) if roots is not None else intel_roots()
        self.collateral = collateral

    def verify(self, evidence: Evidence, report_data: bytes, at: datetime) -> VerifiedEvidence:
        if evidence.kind != self.kind:
            raise EvidenceInvalid(f"{type(self).__name__} accepts evidence of kind "
                                  f"{self.kind!r}, got {evidence.kind!r}", rule="evidence_kind")
        return verify_quote(evidence.quote, at=at, roots=self.roots, collateral=self.collateral,
                            report_data=report_data, tier=self.tier)
