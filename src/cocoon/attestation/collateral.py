"""Intel DCAP collateral for TDX quotes: loaded from JSON, then checked, never trusted.

Collateral is what a verifier needs besides the quote to say how current a platform is: the
TDX **TCB info** and the **QE identity** (JSON bodies that Intel signs with its TCB signing
key), the issuer chains of their signer (TCB signing certificate -> Intel SGX Root CA), and
two CRLs: the **root CA CRL** (signed by the root, revoking the CAs it issued: the PCK
Platform/Processor CA and the TCB signing certificate) and the **PCK CRL** (signed by the PCK
Platform/Processor CA, revoking PCK leaf certificates), with the PCK CRL's issuer chain.

:func:`parse_collateral` reads a JSON file in either of two shapes, told apart by its keys.

(a) Intel PCS responses, kept verbatim::

        {"tcb_info_response":        "<body of GET /tdx/certification/v4/tcb?fmspc=...>",
         "tcb_info_issuer_chain":    "<its TCB-Info-Issuer-Chain header>",
         "qe_identity_response":     "<body of GET /tdx/certification/v4/qe/identity>",
         "qe_identity_issuer_chain": "<its SGX-Enclave-Identity-Issuer-Chain header>",
         "pck_crl":                  "<body of GET /sgx/certification/v4/pckcrl?ca=platform>",
         "pck_crl_issuer_chain":     "<its SGX-PCK-CRL-Issuer-Chain header>",
         "root_ca_crl":              "<the Intel SGX Root CA CRL>"}

    A response is a JSON string holding the response text exactly as received
    (``{"tcbInfo":{...},"signature":"<hex>"}``, ``{"enclaveIdentity":{...},"signature":...}``).
    The signed bytes are the text of the ``tcbInfo`` / ``enclaveIdentity`` value as it stands
    in that response (located by position, never re-serialised). Issuer chains are PEM, as is
    or URL-encoded as in the HTTP header.

(b) Phala dcap-qvl's combined collateral JSON (``QuoteCollateralV3``): ``tcb_info`` and
    ``qe_identity`` (the signed bodies, as strings), ``tcb_info_signature`` and
    ``qe_identity_signature`` (hex), ``tcb_info_issuer_chain``, ``qe_identity_issuer_chain``,
    ``pck_crl_issuer_chain`` (PEM), ``pck_crl`` and ``root_ca_crl``.

In both shapes a CRL is PEM or hex-encoded DER, and a signature is hex of raw r||s (64
bytes, ECDSA P-256 over SHA-256 of the body bytes). Both load to equal :class:`Collateral`
values. A bare TCB info response (the unsigned file read before) is refused: without its
issuer chain nothing in it can be checked. Malformed input raises
:class:`~cocoon.errors.AttestationError` with rule ``collateral``.

The checks are pure (pinned roots and time passed in) and raise
:class:`~cocoon.errors.EvidenceInvalid` with the rule that failed:

* :func:`check_signatures` (``collateral_signature``): each body's signer is issued directly
  by a pinned root (so no PCK or other leaf key under the root can sign collateral), every
  certificate of its chain is valid at ``at``, and the signature verifies over the body.
* :func:`check_crls` (``crl``): the root CA CRL is signed by the pinned root that anchors every
  chain (the quote's PCK chain and the three collateral chains); the PCK CRL is signed by the
  CA that issued the quote's PCK leaf, reached through its own issuer chain to that root; both
  are current at ``at`` (thisUpdate <= at <= nextUpdate); no certificate of any chain is
  listed by the CRL of its issuer.
* :func:`check_current` (``collateral_current``): ``at`` lies within issueDate..nextUpdate of
  the TCB info and of the QE identity.

What the collateral says about a quote (TCB level, QE identity) is applied in
:mod:`cocoon.attestation.tdx`.
"""

from __future__ import annotations

import itertools
import json
import urllib.parse
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from cocoon.errors import AttestationError, EvidenceInvalid

__all__ = [
    "Collateral",
    "QeIdentity",
    "SignedBody",
    "TcbInfo",
    "TcbLevel",
    "TdxModuleIdentity",
    "cert_issued_by",
    "check_crls",
    "check_current",
    "check_signatures",
    "parse_collateral",
    "verify_rs",
]

_ALLOWED_SIG_OIDS: Final = (
    x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256,
    x509.SignatureAlgorithmOID.ECDSA_WITH_SHA384,
)


# ----------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class TcbLevel:
    sgx_components: tuple[int, ...]
    pcesvn: int
    tdx_components: tuple[int, ...]
    status: str
    date: str = ""


@dataclass(frozen=True, slots=True)
class TdxModuleIdentity:
    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    levels: tuple[tuple[int, str], ...]  # (isvsvn, status), best first


@dataclass(frozen=True, slots=True)
class TcbInfo:
    """The TDX TCB info body (``id`` TDX, version 3) for one FMSPC."""

    fmspc: bytes
    pce_id: bytes
    issue_date: datetime
    next_update: datetime
    levels: tuple[TcbLevel, ...]
    module_identities: tuple[TdxModuleIdentity, ...] = ()


@dataclass(frozen=True, slots=True)
class QeIdentity:
    """The TD Quoting Enclave identity body (``id`` TD_QE, version 2)."""

    issue_date: datetime
    next_update: datetime
    miscselect: int
    miscselect_mask: int
    attributes: bytes  # 16 bytes, in QE report order
    attributes_mask: bytes
    mrsigner: bytes  # 32 bytes
    isvprodid: int
    levels: tuple[tuple[int, str], ...]  # (isvsvn, status), best first


@dataclass(frozen=True, slots=True)
class SignedBody:
    """Bytes as signed, the raw r||s signature, and the signer's chain (DER, signer first)."""

    body: bytes
    signature: bytes
    issuer_chain: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Collateral:
    """Parsed collateral; its parts are parsed from exactly the bytes that are signed."""

    tcb_info: TcbInfo
    qe_identity: QeIdentity
    tcb_info_signed: SignedBody
    qe_identity_signed: SignedBody
    root_ca_crl: bytes  # DER
    pck_crl: bytes  # DER
    pck_crl_issuer_chain: tuple[bytes, ...]  # DER, CRL signer first


# ----------------------------------------------------------------------------- parsing


def _malformed(msg: str) -> AttestationError:
    return AttestationError(f"collateral is malformed: {msg}", rule="collateral")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _json(text: str | bytes) -> Any:
    return json.loads(text, object_pairs_hook=_no_duplicates)


def _str(doc: dict[str, Any], key: str) -> str:
    v = doc.get(key)
    if not isinstance(v, str):
        raise ValueError(f"{key} must be a string")
    return v


def _int(v: Any, what: str, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
        raise ValueError(f"{what} must be an integer in 0..{hi}, got {v!r}")
    return v


def _hex(v: Any, n: int, what: str) -> bytes:
    if not isinstance(v, str) or len(v) != 2 * n:
        raise ValueError(f"{what} must be {n} bytes of hex")
    return bytes.fromhex(v)


def _time(v: Any, what: str) -> datetime:
    if not isinstance(v, str):
        raise ValueError(f"{what} missing")
    t = datetime.fromisoformat(v.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _svns(items: Any, what: str) -> tuple[int, ...]:
    if not isinstance(items, list) or len(items) != 16:
        raise ValueError(f"{what} must be a list of 16 components")
    return tuple(_int(it.get("svn") if isinstance(it, dict) else None, f"{what} svn", 255)
                 for it in items)


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    v = doc.get(key)
    if not isinstance(v, list) or not v:
        raise ValueError(f"{key} must be a non-empty list")
    return v


def _isv_levels(items: list[Any], what: str) -> tuple[tuple[int, str], ...]:
    out = []
    for lv in items:
        tcb = lv.get("tcb") if isinstance(lv, dict) else None
        if not isinstance(tcb, dict) or not isinstance(lv.get("tcbStatus"), str):
            raise ValueError(f"{what} level needs tcb and tcbStatus")
        out.append((_int(tcb.get("isvsvn"), f"{what} isvsvn", 0xFFFF), lv["tcbStatus"]))
    return tuple(out)


def _parse_tcb_info(body: bytes) -> TcbInfo:
    info = _json(body)
    if not isinstance(info, dict):
        raise ValueError("tcbInfo is not an object")
    if info.get("id") != "TDX" or info.get("version") != 3:
        raise ValueError(f"tcbInfo is {info.get('id')!r} version {info.get('version')!r}, "
                         "need TDX version 3")
    levels = []
    for lv in _list(info, "tcbLevels"):
        tcb = lv.get("tcb") if isinstance(lv, dict) else None
        if not isinstance(tcb, dict) or not isinstance(lv.get("tcbStatus"), str):
            raise ValueError("TCB level needs tcb and tcbStatus")
        levels.append(TcbLevel(
            _svns(tcb.get("sgxtcbcomponents"), "sgxtcbcomponents"),
            _int(tcb.get("pcesvn"), "pcesvn", 0xFFFF),
            _svns(tcb.get("tdxtcbcomponents"), "tdxtcbcomponents"), lv["tcbStatus"],
            str(lv.get("tcbDate", ""))))
    modules = []
    for m in info.get("tdxModuleIdentities", []):
        if not isinstance(m, dict):
            raise ValueError("tdxModuleIdentities entry is not an object")
        modules.append(TdxModuleIdentity(
            _str(m, "id"), _hex(m.get("mrsigner"), 48, "module mrsigner"),
            _hex(m.get("attributes"), 8, "module attributes"),
            _hex(m.get("attributesMask"), 8, "module attributesMask"),
            _isv_levels(_list(m, "tcbLevels"), "module")))
    return TcbInfo(
        _hex(info.get("fmspc"), 6, "fmspc"), _hex(info.get("pceId"), 2, "pceId"),
        _time(info.get("issueDate"), "tcbInfo issueDate"),
        _time(info.get("nextUpdate"), "tcbInfo nextUpdate"), tuple(levels), tuple(modules))


def _parse_qe_identity(body: bytes) -> QeIdentity:
    ident = _json(body)
    if not isinstance(ident, dict):
        raise ValueError("enclaveIdentity is not an object")
    if ident.get("id") != "TD_QE" or ident.get("version") != 2:
        raise ValueError(f"enclaveIdentity is {ident.get('id')!r} version "
                         f"{ident.get('version')!r}, need TD_QE version 2")
    return QeIdentity(
        _time(ident.get("issueDate"), "enclaveIdentity issueDate"),
        _time(ident.get("nextUpdate"), "enclaveIdentity nextUpdate"),
        int.from_bytes(_hex(ident.get("miscselect"), 4, "miscselect"), "big"),
        int.from_bytes(_hex(ident.get("miscselectMask"), 4, "miscselectMask"), "big"),
        _hex(ident.get("attributes"), 16, "attributes"),
        _hex(ident.get("attributesMask"), 16, "attributesMask"),
        _hex(ident.get("mrsigner"), 32, "mrsigner"),
        _int(ident.get("isvprodid"), "isvprodid", 0xFFFF),
        _isv_levels(_list(ident, "tcbLevels"), "QE identity"))


def _touch_cert(c: x509.Certificate) -> None:
    """Decode every field now: cryptography parses some lazily."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _ = (c.subject, c.issuer, c.public_key(), c.not_valid_before_utc, c.not_valid_after_utc,
             c.signature_algorithm_oid, c.serial_number, c.tbs_certificate_bytes)
        for ext in c.extensions:
            _ = ext.value


def _chain(v: Any, what: str) -> tuple[bytes, ...]:
    if not isinstance(v, str):
        raise ValueError(f"{what} must be a PEM string")
    if "%" in v:  # URL-encoded, as sent in the PCS response header (PEM has no '%')
        v = urllib.parse.unquote(v)
    certs = x509.load_pem_x509_certificates(v.encode())
    for c in certs:
        _touch_cert(c)
    return tuple(c.public_bytes(Encoding.DER) for c in certs)


def _crl(v: Any, what: str) -> bytes:
    if not isinstance(v, str):
        raise ValueError(f"{what} must be a PEM or hex string")
    text = v.strip()
    crl = (x509.load_pem_x509_crl(text.encode()) if text.startswith("-----BEGIN")
           else x509.load_der_x509_crl(bytes.fromhex(text)))
    _ = (crl.issuer, crl.last_update_utc, crl.next_update_utc, crl.signature_algorithm_oid,
         crl.tbs_certlist_bytes, [r.serial_number for r in crl])
    return crl.public_bytes(Encoding.DER)


def _signature(v: Any, what: str) -> bytes:
    return _hex(v, 64, f"{what} (raw r||s)")


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\n\r":
        i += 1
    return i


def _signed_value(response: str, key: str) -> tuple[bytes, bytes]:
    """(the raw text of ``key``'s value, the signature) from a PCS response's text.

    The top-level object is walked with ``raw_decode`` so that the value's position, and thus
    its exact bytes as Intel signed them, are known; the response must be valid JSON with
    exactly the keys ``key`` and ``signature``.
    """
    dec = json.JSONDecoder(object_pairs_hook=_no_duplicates)
    doc = dec.decode(response)  # validates the whole text, duplicates refused
    if not isinstance(doc, dict) or set(doc) != {key, "signature"}:
        raise ValueError(f"response must be an object with keys {key!r} and 'signature'")
    i = _skip_ws(response, 0)
    if response[i:i + 1] != "{":
        raise ValueError("response is not a JSON object")
    spans: dict[str, tuple[int, int]] = {}
    i += 1
    while len(spans) < len(doc):
        i = _skip_ws(response, i)
        name, i = dec.raw_decode(response, i)
        i = _skip_ws(response, i)
        if response[i:i + 1] != ":":
            raise ValueError("expected ':' in response")
        start = _skip_ws(response, i + 1)
        _, end = dec.raw_decode(response, start)
        spans[name] = (start, end)
        i = _skip_ws(response, end)
        i += 1  # ',' or the closing '}', as decode() has already checked
    start, end = spans[key]
    return response[start:end].encode(), _signature(doc["signature"], f"{key} signature")


def _parse_pcs(doc: dict[str, Any]) -> tuple[SignedBody, SignedBody]:
    tcb, tcb_sig = _signed_value(_str(doc, "tcb_info_response"), "tcbInfo")
    qe, qe_sig = _signed_value(_str(doc, "qe_identity_response"), "enclaveIdentity")
    return (SignedBody(tcb, tcb_sig, _chain(doc.get("tcb_info_issuer_chain"),
                                            "tcb_info_issuer_chain")),
            SignedBody(qe, qe_sig, _chain(doc.get("qe_identity_issuer_chain"),
                                          "qe_identity_issuer_chain")))


def _parse_dcap_qvl(doc: dict[str, Any]) -> tuple[SignedBody, SignedBody]:
    return (SignedBody(_str(doc, "tcb_info").encode(),
                       _signature(doc.get("tcb_info_signature"), "tcb_info_signature"),
                       _chain(doc.get("tcb_info_issuer_chain"), "tcb_info_issuer_chain")),
            SignedBody(_str(doc, "qe_identity").encode(),
                       _signature(doc.get("qe_identity_signature"), "qe_identity_signature"),
                       _chain(doc.get("qe_identity_issuer_chain"), "qe_identity_issuer_chain")))


def parse_collateral(data: bytes) -> Collateral:
    """Load collateral in either shape (see the module docstring); nothing is checked yet.

    Malformed input, an unknown shape, or the old unsigned TCB-info-only file raise
    AttestationError with rule ``collateral``.
    """
    try:
        doc = _json(data)
        if not isinstance(doc, dict):
            raise ValueError("collateral must be a JSON object")
        if "tcb_info_response" in doc:
            tcb, qe = _parse_pcs(doc)
        elif "tcb_info" in doc:
            tcb, qe = _parse_dcap_qvl(doc)
        elif "tcbInfo" in doc:
            raise _malformed(
                "a TCB info response alone cannot be checked: give the Intel PCS responses "
                "with their issuer chains and CRLs (tcb_info_response, ...) or dcap-qvl's "
                "collateral JSON (tcb_info, ...)")
        else:
            raise ValueError("unknown shape: expected keys tcb_info_response (Intel PCS "
                             "responses) or tcb_info (dcap-qvl collateral)")
        return Collateral(
            _parse_tcb_info(tcb.body), _parse_qe_identity(qe.body), tcb, qe,
            _crl(doc.get("root_ca_crl"), "root_ca_crl"), _crl(doc.get("pck_crl"), "pck_crl"),
            _chain(doc.get("pck_crl_issuer_chain"), "pck_crl_issuer_chain"))
    except AttestationError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError,
            UnsupportedAlgorithm, Warning, x509.InvalidVersion, x509.DuplicateExtension,
            x509.UnsupportedGeneralNameType) as e:
        raise _malformed(str(e) or type(e).__name__) from None


# ----------------------------------------------------------------------------- checking


def verify_rs(pub: ec.EllipticCurvePublicKey, rs: bytes, msg: bytes) -> bool:
    """ECDSA-SHA256 of ``msg`` with a raw 64-byte r||s signature (the DCAP encoding)."""
    if len(rs) != 64:
        return False
    sig = encode_dss_signature(int.from_bytes(rs[:32], "big"), int.from_bytes(rs[32:], "big"))
    try:
        pub.verify(sig, msg, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def cert_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """None if ``issuer`` (an ECDSA CA) issued and signed ``cert``, else why not."""
    if cert.issuer != issuer.subject:
        return f"issuer of {cert.subject.rfc4514_string()} is not the next certificate"
    try:
        bc = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return f"{issuer.subject.rfc4514_string()} has no basicConstraints"
    if not bc.ca:
        return f"{issuer.subject.rfc4514_string()} is not a CA"
    if cert.signature_algorithm_oid not in _ALLOWED_SIG_OIDS:
        return f"{cert.subject.rfc4514_string()} has an unsupported signature algorithm"
    pub = issuer.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        return f"{issuer.subject.rfc4514_string()} key is not ECDSA"
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return f"signature on {cert.subject.rfc4514_string()} does not verify"
    return None


def _der(c: x509.Certificate) -> bytes:
    return c.public_bytes(Encoding.DER)


def _anchored(ders: Sequence[bytes], roots: Sequence[x509.Certificate], at: datetime,
              what: str, rule: str) -> tuple[tuple[x509.Certificate, ...], x509.Certificate]:
    """The certificates of a chain below its pinned root (first first), and that root.

    The chain may end with a copy of the root or with a certificate the root issued; each
    certificate must be issued by the next, and all must be valid at ``at``.
    """
    certs = [x509.load_der_x509_certificate(d) for d in ders]
    if not certs:
        raise EvidenceInvalid(f"{what} is empty", rule=rule)
    last = certs[-1]
    root = {_der(r): r for r in roots}.get(_der(last))
    if root is not None:
        certs.pop()
    elif last.issuer == last.subject:
        raise EvidenceInvalid(
            f"{what} does not end at a pinned root: it ends at {last.subject.rfc4514_string()} "
            f"(sha256 {last.fingerprint(hashes.SHA256()).hex()})", rule=rule)
    else:
        tried = [(r, cert_issued_by(last, r)) for r in roots if r.subject == last.issuer]
        root = next((r for r, why in tried if why is None), None)
        if root is None:
            reason = tried[0][1] if tried else (
                f"does not end at a pinned root (last issuer {last.issuer.rfc4514_string()})")
            raise EvidenceInvalid(f"{what}: {reason}", rule=rule)
    for cert, issuer in itertools.pairwise([*certs, root]):
        problem = cert_issued_by(cert, issuer)
        if problem:
            raise EvidenceInvalid(f"{what}: {problem}", rule=rule)
    for c in (*certs, root):
        if not c.not_valid_before_utc <= at <= c.not_valid_after_utc:
            raise EvidenceInvalid(
                f"{what}: {c.subject.rfc4514_string()} not valid at {at.isoformat()}",
                rule=rule)
    return tuple(certs), root


def _check_body(signed: SignedBody, roots: Sequence[x509.Certificate], at: datetime,
                what: str) -> x509.Certificate:
    rule = "collateral_signature"
    below, root = _anchored(signed.issuer_chain, roots, at, f"{what} issuer chain", rule)
    if len(below) != 1:
        raise EvidenceInvalid(f"{what} must be signed by a certificate the root issued "
                              f"directly; its chain has {len(below)} below the root", rule=rule)
    signer = below[0]
    pub = signer.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(pub.curve, ec.SECP256R1):
        raise EvidenceInvalid(f"{what} signer key is not ECDSA P-256", rule=rule)
    if not verify_rs(pub, signed.signature, signed.body):
        raise EvidenceInvalid(f"{what} signature does not verify under "
                              f"{signer.subject.rfc4514_string()}", rule=rule)
    return root


def check_signatures(c: Collateral, *, roots: Sequence[x509.Certificate],
                     at: datetime) -> str:
    """TCB info and QE identity signed by a certificate a pinned root issued (see module)."""
    _check_body(c.tcb_info_signed, roots, at, "TCB info")
    root = _check_body(c.qe_identity_signed, roots, at, "QE identity")
    return f"TCB info and QE identity signed under {root.subject.rfc4514_string()}"


def _current_crl(crl: x509.CertificateRevocationList, pub: object, at: datetime,
                 what: str) -> None:
    if crl.signature_algorithm_oid not in _ALLOWED_SIG_OIDS or \
            not isinstance(pub, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(pub):
        raise EvidenceInvalid(f"{what} signature does not verify", rule="crl")
    nxt = crl.next_update_utc
    if nxt is None or not crl.last_update_utc <= at <= nxt:
        raise EvidenceInvalid(
            f"{what} not current at {at.isoformat()} (this update "
            f"{crl.last_update_utc.isoformat()}, next update "
            f"{nxt.isoformat() if nxt else 'none'})", rule="crl")


def check_crls(c: Collateral, *, pck_chain: Sequence[x509.Certificate],
               roots: Sequence[x509.Certificate], at: datetime) -> str:
    """Verify both CRLs and apply them to every chain (see the module docstring).

    ``pck_chain`` is the quote's PCK chain, leaf first, already verified up to a pinned root.
    """
    if len(pck_chain) < 2:
        raise EvidenceInvalid("PCK chain has no issuer", rule="crl")
    pck_root = pck_chain[-1]
    root_crl = x509.load_der_x509_crl(c.root_ca_crl)
    if root_crl.issuer != pck_root.subject:
        raise EvidenceInvalid(
            f"root CA CRL is issued by {root_crl.issuer.rfc4514_string()}, not by the PCK "
            f"chain's root {pck_root.subject.rfc4514_string()}", rule="crl")
    _current_crl(root_crl, pck_root.public_key(), at, "root CA CRL")

    crl_chain, crl_root = _anchored(c.pck_crl_issuer_chain, roots, at,
                                    "PCK CRL issuer chain", "crl")
    _, tcb_root = _anchored(c.tcb_info_signed.issuer_chain, roots, at, "TCB info chain", "crl")
    _, qe_root = _anchored(c.qe_identity_signed.issuer_chain, roots, at, "QE identity chain",
                           "crl")
    for name, r in (("PCK CRL issuer chain", crl_root), ("TCB info chain", tcb_root),
                    ("QE identity chain", qe_root)):
        if _der(r) != _der(pck_root):
            raise EvidenceInvalid(f"{name} is anchored at {r.subject.rfc4514_string()}, "
                                  "which the root CA CRL does not cover", rule="crl")
    pck_crl = x509.load_der_x509_crl(c.pck_crl)
    crl_signer = crl_chain[0] if crl_chain else crl_root
    leaf_issuer = pck_chain[1]
    if pck_crl.issuer != leaf_issuer.subject or crl_signer.subject != leaf_issuer.subject or \
            crl_signer.public_key() != leaf_issuer.public_key():
        raise EvidenceInvalid(
            f"PCK CRL is issued by {pck_crl.issuer.rfc4514_string()}, not by the PCK leaf's "
            f"issuer {leaf_issuer.subject.rfc4514_string()}", rule="crl")
    _current_crl(pck_crl, crl_signer.public_key(), at, "PCK CRL")

    chains = (*pck_chain, *crl_chain, crl_root,
              *(x509.load_der_x509_certificate(d) for d in
                (*c.tcb_info_signed.issuer_chain, *c.qe_identity_signed.issuer_chain)))
    for crl in (root_crl, pck_crl):
        for cert in chains:
            if cert.issuer == crl.issuer and \
                    crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                raise EvidenceInvalid(
                    f"certificate {cert.subject.rfc4514_string()} (serial "
                    f"{cert.serial_number:x}) is revoked by the CRL of "
                    f"{crl.issuer.rfc4514_string()}", rule="crl")
    return (f"root CA CRL ({len(root_crl)} revoked) and PCK CRL ({len(pck_crl)} revoked) "
            f"current at {at.isoformat()}; no certificate revoked")


def check_current(c: Collateral, at: datetime) -> str:
    """``at`` lies within the issue date and next update of the TCB info and QE identity."""
    for what, issued, nxt in (
            ("TCB info", c.tcb_info.issue_date, c.tcb_info.next_update),
            ("QE identity", c.qe_identity.issue_date, c.qe_identity.next_update)):
        if not issued <= at <= nxt:
            raise EvidenceInvalid(
                f"{what} not current at {at.isoformat()} (issued {issued.isoformat()}, "
                f"next update {nxt.isoformat()})", rule="collateral_current")
    return f"TCB info and QE identity current at {at.isoformat()}"
