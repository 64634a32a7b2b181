"""A test-made Intel PKI, quotes and collateral, so that every collateral check can fail.

:class:`Pki` is a root CA, a PCK CA under it, a PCK leaf carrying the Intel SGX extension
(FMSPC, PCE ID, SGX TCB components, PCE SVN) and a TCB signing certificate issued directly by
the root, as Intel's are. :func:`make_quote` builds a TDX quote v4 whose PCK chain is leaf ->
PCK CA -> root; :func:`collateral` signs TCB info and QE identity bodies and builds both
CRLs, in dcap-qvl's combined shape; :func:`to_pcs` turns that into the Intel PCS shape.
"""

from __future__ import annotations

import hashlib
import json
import struct
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from cocoon.attestation.tdx import SGX_EXT_OID

AT = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SGX = [3, 3, 2, 2, 4, 1, 0, 5] + [0] * 8  # the PCK leaf's SGX TCB components
PCESVN = 13
FMSPC = "90c06f000000"
TEE_TCB_SVN = bytes([7, 1, 3]) + bytes(13)  # TDX module 1, SVN 7; component 2 = 3
QE_MRSIGNER = hashlib.sha256(b"test TD QE signer").digest()
QE_ATTRIBUTES = bytes.fromhex("15000000000000000700000000000000")


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------- DER / PKI


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    ln = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(ln)]) + ln + content


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _int(v: int) -> bytes:
    return _tlv(0x02, v.to_bytes(v.bit_length() // 8 + 1, "big"))


def _pair(oid: str, value: bytes) -> bytes:
    return _tlv(0x30, _oid(oid) + value)


def sgx_extension(*, fmspc: str = FMSPC, sgx: Sequence[int] = SGX, pcesvn: int = PCESVN,
                  pce_id: str = "0000") -> bytes:
    """The DER value of the Intel SGX extension (OID 1.2.840.113741.1.13.1) of a PCK cert."""
    o = SGX_EXT_OID
    tcb = b"".join(_pair(f"{o}.2.{i + 1}", _int(s)) for i, s in enumerate(sgx))
    tcb += _pair(f"{o}.2.17", _int(pcesvn)) + _pair(f"{o}.2.18", _tlv(0x04, bytes(sgx)))
    return _tlv(0x30, b"".join((
        _pair(f"{o}.1", _tlv(0x04, bytes(16))), _pair(f"{o}.2", _tlv(0x30, tcb)),
        _pair(f"{o}.3", _tlv(0x04, bytes.fromhex(pce_id))),
        _pair(f"{o}.4", _tlv(0x04, bytes.fromhex(fmspc))))))


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cocoon test Intel"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def cert(subject: str | x509.Name, issuer: x509.Name, pub: ec.EllipticCurvePublicKey,
         signer: ec.EllipticCurvePrivateKey, *, ca: bool, at: datetime = AT,
         not_after: datetime | None = None, sgx_ext: bytes | None = None) -> x509.Certificate:
    b = (x509.CertificateBuilder()
         .subject_name(subject if isinstance(subject, x509.Name) else name(subject))
         .issuer_name(issuer).public_key(pub).serial_number(x509.random_serial_number())
         .not_valid_before(at - timedelta(days=1))
         .not_valid_after(not_after or at + timedelta(days=3650))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sgx_ext is not None:
        b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXT_OID),
                                                       sgx_ext), critical=False)
    return b.sign(signer, hashes.SHA256())


@dataclass
class Pki:
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    pck_ca_key: ec.EllipticCurvePrivateKey
    pck_ca: x509.Certificate
    pck_key: ec.EllipticCurvePrivateKey
    pck: x509.Certificate
    tcb_key: ec.EllipticCurvePrivateKey
    tcb: x509.Certificate

    @classmethod
    def generate(cls, *, label: str = "", sgx_ext: bytes | None = None) -> Pki:
        """A new PKI; ``label`` is appended to every name (default: Intel's names)."""
        root_key, pck_ca_key, pck_key, tcb_key = key(), key(), key(), key()
        root = cert(f"test SGX Root CA{label}", name(f"test SGX Root CA{label}"),
                    root_key.public_key(), root_key, ca=True)
        pck_ca = cert(f"test SGX PCK Platform CA{label}", root.subject,
                      pck_ca_key.public_key(), root_key, ca=True)
        pck = cert(f"test SGX PCK Certificate{label}", pck_ca.subject, pck_key.public_key(),
                   pck_ca_key, ca=False, sgx_ext=sgx_ext or sgx_extension())
        tcb = cert(f"test SGX TCB Signing{label}", root.subject, tcb_key.public_key(),
                   root_key, ca=False)
        return cls(root_key, root, pck_ca_key, pck_ca, pck_key, pck, tcb_key, tcb)


def pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(Encoding.PEM).decode() for c in certs)


def rs(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# ----------------------------------------------------------------------------- quotes


@dataclass
class QeFields:
    mrsigner: bytes = QE_MRSIGNER
    isvprodid: int = 2
    isvsvn: int = 6
    miscselect: int = 0
    attributes: bytes = QE_ATTRIBUTES


def make_quote(pki: Pki, *, qe: QeFields | None = None, tee_tcb_svn: bytes = TEE_TCB_SVN,
               report_data: bytes = bytes(64)) -> bytes:
    """A TDX quote v4 signed by a fresh attestation key, certified through ``pki``."""
    qe = qe or QeFields()
    att = key()
    header = struct.pack("<HHI", 4, 2, 0x81) + bytes(4) + bytes(16) + bytes(20)
    body = (tee_tcb_svn + bytes(48) + bytes(48) + bytes(8) + bytes(8) + bytes(8)
            + b"".join(hashlib.sha384(r.encode()).digest() for r in
                       ("mrtd", "mrconfigid", "mrowner", "mrownerconfig",
                        "rtmr0", "rtmr1", "rtmr2", "rtmr3"))
            + report_data)
    assert len(body) == 584
    att_pub = att.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
    auth = hashlib.sha256(b"auth").digest()
    report = bytearray(384)
    report[16:20] = qe.miscselect.to_bytes(4, "little")
    report[48:64] = qe.attributes
    report[128:160] = qe.mrsigner
    report[256:258] = qe.isvprodid.to_bytes(2, "little")
    report[258:260] = qe.isvsvn.to_bytes(2, "little")
    report[320:384] = hashlib.sha256(att_pub + auth).digest() + bytes(32)
    chain = pem(pki.pck, pki.pck_ca, pki.root).encode()
    cert6 = (bytes(report) + rs(pki.pck_key, bytes(report)) + struct.pack("<H", len(auth))
             + auth + struct.pack("<HI", 5, len(chain)) + chain)
    sig_data = rs(att, header + body) + att_pub + struct.pack("<HI", 6, len(cert6)) + cert6
    return header + body + struct.pack("<I", len(sig_data)) + sig_data


# ----------------------------------------------------------------------------- collateral


def level(status: str, *, sgx: Sequence[int] = SGX, pcesvn: int = PCESVN,
          tdx2: int = 3) -> dict[str, Any]:
    tdx = [0, 0, tdx2] + [0] * 13
    return {"tcb": {"sgxtcbcomponents": [{"svn": s} for s in sgx], "pcesvn": pcesvn,
                    "tdxtcbcomponents": [{"svn": s} for s in tdx]},
            "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": status}


def tcb_info(levels: list[dict[str, Any]] | None = None, *,
             module_levels: Sequence[tuple[int, str]] = ((7, "UpToDate"), (0, "OutOfDate")),
             fmspc: str = FMSPC, module_mrsigner: str = "00" * 48,
             issue: datetime = AT - timedelta(days=1),
             next_update: datetime = AT + timedelta(days=30)) -> str:
    """A TDX TCB info body (compact JSON text, as Intel serves it)."""
    mods = [{"id": "TDX_01", "mrsigner": module_mrsigner, "attributes": "00" * 8,
             "attributesMask": "ff" * 8,
             "tcbLevels": [{"tcb": {"isvsvn": s}, "tcbStatus": st} for s, st in module_levels]}]
    return json.dumps({
        "id": "TDX", "version": 3, "issueDate": iso(issue), "nextUpdate": iso(next_update),
        "fmspc": fmspc, "pceId": "0000", "tcbType": 0, "tcbEvaluationDataNumber": 17,
        "tdxModuleIdentities": mods, "tcbLevels": levels or [level("UpToDate")]},
        separators=(",", ":"))


def qe_identity(*, mrsigner: bytes = QE_MRSIGNER, isvprodid: int = 2,
                levels: Sequence[tuple[int, str]] = ((4, "UpToDate"),),
                miscselect: str = "00000000", miscselect_mask: str = "FFFFFFFF",
                attributes: str = "11000000000000000000000000000000",
                attributes_mask: str = "FBFFFFFFFFFFFFFF0000000000000000",
                issue: datetime = AT - timedelta(days=1),
                next_update: datetime = AT + timedelta(days=30)) -> str:
    """A TD_QE identity body (compact JSON text)."""
    return json.dumps({
        "id": "TD_QE", "version": 2, "issueDate": iso(issue), "nextUpdate": iso(next_update),
        "tcbEvaluationDataNumber": 17, "miscselect": miscselect,
        "miscselectMask": miscselect_mask, "attributes": attributes,
        "attributesMask": attributes_mask, "mrsigner": mrsigner.hex().upper(),
        "isvprodid": isvprodid,
        "tcbLevels": [{"tcb": {"isvsvn": s}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": st}
                      for s, st in levels]}, separators=(",", ":"))


def crl(issuer: x509.Certificate, signer: ec.EllipticCurvePrivateKey,
        revoked: Sequence[int] = (), *, this_update: datetime = AT - timedelta(hours=1),
        next_update: datetime = AT + timedelta(days=7)) -> bytes:
    """A DER CRL in ``issuer``'s name listing ``revoked`` serial numbers."""
    b = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject)
         .last_update(this_update).next_update(next_update))
    for serial in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(this_update).build())
    return b.sign(signer, hashes.SHA256()).public_bytes(Encoding.DER)


@dataclass
class Parts:
    """Everything :func:`collateral` puts in the file; override any field in a test."""

    tcb_info: str = field(default_factory=tcb_info)
    qe_identity: str = field(default_factory=qe_identity)
    tcb_signer: ec.EllipticCurvePrivateKey | None = None  # default: pki.tcb_key
    tcb_chain: Sequence[x509.Certificate] | None = None  # default: TCB signing, root
    qe_chain: Sequence[x509.Certificate] | None = None
    root_ca_crl: bytes | None = None  # default: by the root, nothing revoked
    pck_crl: bytes | None = None  # default: by the PCK CA, nothing revoked
    pck_crl_chain: Sequence[x509.Certificate] | None = None  # default: PCK CA, root


def collateral(pki: Pki, parts: Parts | None = None) -> dict[str, str]:
    """Collateral for ``pki`` in dcap-qvl's combined JSON shape (as a dict)."""
    p = parts or Parts()
    signer = p.tcb_signer or pki.tcb_key
    return {
        "tcb_info": p.tcb_info,
        "tcb_info_signature": rs(signer, p.tcb_info.encode()).hex(),
        "tcb_info_issuer_chain": pem(*(p.tcb_chain or (pki.tcb, pki.root))),
        "qe_identity": p.qe_identity,
        "qe_identity_signature": rs(signer, p.qe_identity.encode()).hex(),
        "qe_identity_issuer_chain": pem(*(p.qe_chain or (pki.tcb, pki.root))),
        "root_ca_crl": (p.root_ca_crl or crl(pki.root, pki.root_key)).hex(),
        "pck_crl": (p.pck_crl or crl(pki.pck_ca, pki.pck_ca_key)).hex(),
        "pck_crl_issuer_chain": pem(*(p.pck_crl_chain or (pki.pck_ca, pki.root))),
    }


def to_pcs(doc: dict[str, str]) -> dict[str, str]:
    """The same collateral in the Intel PCS shape: verbatim responses, header-style chains
    (URL-encoded), CRLs as PEM. The responses put ``signature`` first and add whitespace, so
    that only the exact body text can carry the signature."""
    def response(key: str, body: str, sig: str) -> str:
        return f'{{\n  "signature" : "{sig}",\n  "{key}" :  {body}\n}}\n'

    def crl_pem(hex_der: str) -> str:
        return x509.load_der_x509_crl(bytes.fromhex(hex_der)).public_bytes(
            Encoding.PEM).decode()

    return {
        "tcb_info_response": response("tcbInfo", doc["tcb_info"], doc["tcb_info_signature"]),
        "tcb_info_issuer_chain": urllib.parse.quote(doc["tcb_info_issuer_chain"]),
        "qe_identity_response": response("enclaveIdentity", doc["qe_identity"],
                                         doc["qe_identity_signature"]),
        "qe_identity_issuer_chain": urllib.parse.quote(doc["qe_identity_issuer_chain"]),
        "pck_crl": crl_pem(doc["pck_crl"]),
        "pck_crl_issuer_chain": doc["pck_crl_issuer_chain"],
        "root_ca_crl": crl_pem(doc["root_ca_crl"]),
    }
