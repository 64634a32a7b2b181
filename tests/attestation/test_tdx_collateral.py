"""Collateral that is checked, not trusted: signatures, chains, CRLs, QE identity, TCB levels.

Two sources: the real quote ``tdx-quote-v4-b.dat`` with the Intel collateral dcap-qvl ships for
it (what genuine collateral verifies to, and that tampering with it fails), and a test-made
Intel PKI (``collateral_kit``) for everything that needs a key we do not have: re-signed
bodies, revoked certificates, expired CRLs, QE identities that do not match.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from collateral_kit import (
    AT,
    SGX,
    Parts,
    Pki,
    QeFields,
    cert,
    collateral,
    crl,
    key,
    level,
    make_quote,
    qe_identity,
    tcb_info,
    to_pcs,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cocoon.attestation.evidence import Evidence
from cocoon.attestation.tdx import (
    Collateral,
    QuoteCheck,
    TdxVerifier,
    check_quote,
    intel_roots,
    parse_collateral,
    parse_pck_tcb,
    parse_quote,
    qe_identity_status,
    verify_quote,
)
from cocoon.errors import AttestationError, EvidenceInvalid

STEPS = ["quote_signature", "qe_report_signature", "qe_report_binding", "pck_chain",
         "cert_validity", "collateral_signature", "crl", "collateral_current", "qe_identity",
         "tcb_status"]


def load(doc: dict[str, Any]) -> Collateral:
    return parse_collateral(json.dumps(doc).encode())


def failed(res: QuoteCheck, rule: str, match: str = "") -> str:
    """Assert ``res`` failed at step ``rule`` (after every earlier step passed)."""
    assert res.error is not None, "verified, but should have failed"
    assert isinstance(res.error, EvidenceInvalid)
    assert res.error.rule == rule, res.error
    assert [s.name for s in res.steps] == STEPS[:STEPS.index(rule) + 1]
    assert [s.ok for s in res.steps[:-1]] == [True] * (len(res.steps) - 1)
    assert match in str(res.error), res.error
    return str(res.error)


# ----------------------------------------------------------------------------- real collateral


@pytest.fixture(scope="module")
def b_doc(real_collateral_b: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(real_collateral_b)
    return doc


def check_b(quote: bytes, doc: dict[str, Any], at: datetime) -> QuoteCheck:
    return check_quote(quote, at=at, roots=intel_roots(), collateral=load(doc))


def test_real_collateral_verifies(real_quote_b: bytes, real_collateral_b: bytes,
                                  collateral_b_at: datetime) -> None:
    c = parse_collateral(real_collateral_b)
    assert c.tcb_info.fmspc.hex() == parse_pck_tcb(
        parse_quote(real_quote_b).certificates()[0]).fmspc.hex() == "20a06f000000"
    v = verify_quote(real_quote_b, at=collateral_b_at, roots=intel_roots(), collateral=c)
    assert v.tcb_status == "UpToDate"
    assert [s.name for s in v.steps] == STEPS and all(s.ok for s in v.steps)
    q = parse_quote(real_quote_b)
    got = TdxVerifier(collateral=c).verify(Evidence("tdx", real_quote_b), q.reportdata,
                                           collateral_b_at)
    assert got.tcb_status == "UpToDate"


def test_real_shapes_load_alike(real_quote_b: bytes, b_doc: dict[str, Any],
                                collateral_b_at: datetime) -> None:
    combined, pcs = load(b_doc), load(to_pcs(b_doc))
    assert combined == pcs
    for c in (combined, pcs):
        v = verify_quote(real_quote_b, at=collateral_b_at, roots=intel_roots(), collateral=c)
        assert v.tcb_status == "UpToDate"


def _flip(text: str, old: str, new: str) -> str:
    assert text.count(old) >= 1
    return text.replace(old, new, 1)


@pytest.mark.parametrize("key,old,new", [
    ("tcb_info", '"tcbDate":"2018-01-04T00:00:00Z"', '"tcbDate":"2018-01-05T00:00:00Z"'),
    ("tcb_info", '"tcbStatus":"OutOfDate"', '"tcbStatus":"UpToDate"'),
    ("qe_identity", '"isvsvn":4', '"isvsvn":3'),
    ("qe_identity", '"tcbEvaluationDataNumber":17', '"tcbEvaluationDataNumber":18'),
])
def test_real_body_tampered(real_quote_b: bytes, b_doc: dict[str, Any],
                            collateral_b_at: datetime, key: str, old: str, new: str) -> None:
    doc = {**b_doc, key: _flip(b_doc[key], old, new)}
    failed(check_b(real_quote_b, doc, collateral_b_at), "collateral_signature",
           "signature does not verify")


@pytest.mark.parametrize("key", ["tcb_info_signature", "qe_identity_signature"])
@pytest.mark.parametrize("pos", [0, 63, 127])
def test_real_signature_flipped(real_quote_b: bytes, b_doc: dict[str, Any],
                                collateral_b_at: datetime, key: str, pos: int) -> None:
    sig = bytearray(bytes.fromhex(b_doc[key]))
    sig[pos // 2] ^= 0x01
    failed(check_b(real_quote_b, {**b_doc, key: sig.hex()}, collateral_b_at),
           "collateral_signature", "signature does not verify")


def test_real_body_reserialised(real_quote_b: bytes, b_doc: dict[str, Any],
                                collateral_b_at: datetime) -> None:
    """The same JSON, serialised differently, is not what Intel signed."""
    body = json.dumps(json.loads(b_doc["tcb_info"]), indent=1)
    failed(check_b(real_quote_b, {**b_doc, "tcb_info": body}, collateral_b_at),
           "collateral_signature")
    pcs = to_pcs(b_doc)
    pcs["qe_identity_response"] = json.dumps(json.loads(pcs["qe_identity_response"]))
    assert load(pcs).qe_identity == load(b_doc).qe_identity  # same content ...
    failed(check_quote(real_quote_b, at=collateral_b_at, roots=intel_roots(),
                       collateral=load(pcs)), "collateral_signature")  # ... other bytes


def _forged(real: x509.Certificate) -> x509.Certificate:
    """Same names and key as ``real``, but signed by a key that is not its issuer's."""
    pub = real.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    return (x509.CertificateBuilder().subject_name(real.subject).issuer_name(real.issuer)
            .public_key(pub).serial_number(x509.random_serial_number())
            .not_valid_before(real.not_valid_before_utc)
            .not_valid_after(real.not_valid_after_utc)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key(), hashes.SHA256()))


@pytest.mark.parametrize("chain_key,rule", [
    ("tcb_info_issuer_chain", "collateral_signature"),
    ("qe_identity_issuer_chain", "collateral_signature"),
    ("pck_crl_issuer_chain", "crl"),
])
def test_real_intermediate_not_signed_by_root(real_quote_b: bytes, b_doc: dict[str, Any],
                                              collateral_b_at: datetime, chain_key: str,
                                              rule: str) -> None:
    certs = x509.load_pem_x509_certificates(b_doc[chain_key].encode())
    pem = "".join(c.public_bytes(Encoding.PEM).decode()
                  for c in (_forged(certs[0]), *certs[1:]))
    failed(check_b(real_quote_b, {**b_doc, chain_key: pem}, collateral_b_at), rule,
           "does not verify")


def test_real_chain_to_another_root(real_quote_b: bytes, b_doc: dict[str, Any],
                                    collateral_b_at: datetime) -> None:
    other = Pki.generate()
    doc = {**b_doc, "tcb_info_issuer_chain": "".join(
        c.public_bytes(Encoding.PEM).decode() for c in (other.tcb, other.root))}
    failed(check_b(real_quote_b, doc, collateral_b_at), "collateral_signature",
           "does not end at a pinned root")


def test_real_crl_not_signed_by_root(real_quote_b: bytes, b_doc: dict[str, Any],
                                     collateral_b_at: datetime) -> None:
    root = intel_roots()[0]
    doc = {**b_doc, "root_ca_crl": crl(root, key(), this_update=collateral_b_at - timedelta(
        days=1), next_update=collateral_b_at + timedelta(days=1)).hex()}
    failed(check_b(real_quote_b, doc, collateral_b_at), "crl",
           "root CA CRL signature does not verify")


@pytest.mark.parametrize("at,rule,match", [
    # the PCK CRL has expired (07:03:51) before the TCB info (07:41:59)
    ("2025-10-02T07:20:00+00:00", "crl", "PCK CRL not current"),
    ("2025-10-03T00:00:00+00:00", "crl", "PCK CRL not current"),
    # the PCK CRL is current, the QE identity (07:10:03) and TCB info not yet issued
    ("2025-09-02T07:05:00+00:00", "collateral_current", "TCB info not current"),
    # everything current but the TCB info, issued at 07:41:59
    ("2025-09-02T07:30:00+00:00", "collateral_current", "TCB info not current"),
])
def test_real_collateral_outside_its_windows(real_quote_b: bytes, b_doc: dict[str, Any],
                                             at: str, rule: str, match: str) -> None:
    failed(check_b(real_quote_b, b_doc, datetime.fromisoformat(at)), rule, match)


def test_real_qe_identity_against_other_values(real_quote_b: bytes,
                                               real_collateral_b: bytes) -> None:
    """The pure QE identity check on the real QE report (ISV SVN 6, ISVPRODID 2)."""
    qe = parse_quote(real_quote_b).qe_report
    ident = parse_collateral(real_collateral_b).qe_identity
    assert qe_identity_status(qe, ident) == "UpToDate"
    for change, match in (
            ({"mrsigner": bytes(32)}, "MRSIGNER"), ({"isvprodid": 1}, "ISVPRODID"),
            ({"miscselect": 1}, "MISCSELECT"),
            ({"attributes": bytes.fromhex("13" + "00" * 15)}, "ATTRIBUTES"),
            ({"levels": ((7, "UpToDate"),)}, "below every"),
            ({"levels": ((8, "UpToDate"), (6, "Revoked"))}, "revoked")):
        with pytest.raises(EvidenceInvalid, match=match) as e:
            qe_identity_status(qe, dataclasses.replace(ident, **change))
        assert e.value.rule == "qe_identity"
    # bits outside the masks do not matter
    assert qe_identity_status(qe, dataclasses.replace(
        ident, attributes=bytes.fromhex("15" + "00" * 15))) == "UpToDate"
    assert qe_identity_status(qe, dataclasses.replace(
        ident, levels=((8, "UpToDate"), (5, "OutOfDate")))) == "OutOfDate"


def test_cli_collateral(tmp_path: Path, real_quote_b: bytes, real_collateral_b: bytes,
                        collateral_b_at: datetime, b_doc: dict[str, Any]) -> None:
    from test_attest_cli import main

    q = tmp_path / "q"
    q.write_bytes(real_quote_b)
    for n, blob in enumerate((real_collateral_b, json.dumps(to_pcs(b_doc)).encode())):
        c = tmp_path / f"c{n}.json"
        c.write_bytes(blob)
        rc, out = main(["attest", "verify-quote", str(q), "--at", collateral_b_at.isoformat(),
                        "--collateral", str(c), "--json"])
        assert rc == 0 and json.loads(out)["tcb_status"] == "UpToDate"


# ----------------------------------------------------------------------------- test-made PKI


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.generate()


@pytest.fixture(scope="module")
def quote(pki: Pki) -> bytes:
    return make_quote(pki)


def check(pki: Pki, quote: bytes, parts: Parts | None = None, *,
          at: datetime = AT, pcs: bool = False) -> QuoteCheck:
    doc = collateral(pki, parts)
    return check_quote(quote, at=at, roots=[pki.root], collateral=load(to_pcs(doc) if pcs
                                                                         else doc))


def status(pki: Pki, quote: bytes, parts: Parts | None = None) -> str | None:
    res = check(pki, quote, parts)
    assert res.error is None, res.error
    assert [s.name for s in res.steps] == STEPS and all(s.ok for s in res.steps)
    return res.tcb_status


def test_made_collateral_verifies_in_both_shapes(pki: Pki, quote: bytes) -> None:
    for pcs in (False, True):
        res = check(pki, quote, pcs=pcs)
        assert res.error is None and res.tcb_status == "UpToDate"
    doc = collateral(pki)
    assert load(doc) == load(to_pcs(doc))


def test_first_matching_level_wins(pki: Pki, quote: bytes) -> None:
    info = tcb_info([level("UpToDate", tdx2=5), level("SWHardeningNeeded", pcesvn=14),
                     level("OutOfDate", tdx2=3), level("Revoked", tdx2=0)])
    assert status(pki, quote, Parts(tcb_info=info)) == "OutOfDate"
    info = tcb_info([level("UpToDate", sgx=[4, *SGX[1:]]), level("ConfigurationNeeded")])
    assert status(pki, quote, Parts(tcb_info=info)) == "ConfigurationNeeded"


def test_module_status_can_lower(pki: Pki, quote: bytes) -> None:
    info = tcb_info(module_levels=[(8, "UpToDate"), (5, "OutOfDate")])
    assert status(pki, quote, Parts(tcb_info=info)) == "OutOfDate"


@pytest.mark.parametrize("platform,qe,overall", [
    ("UpToDate", "UpToDate", "UpToDate"),
    ("UpToDate", "OutOfDate", "OutOfDate"),
    ("SWHardeningNeeded", "OutOfDate", "OutOfDate"),
    ("ConfigurationNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
    ("SWHardeningNeeded", "UpToDate", "SWHardeningNeeded"),
    ("OutOfDateConfigurationNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
])
def test_qe_status_converges(pki: Pki, quote: bytes, platform: str, qe: str,
                             overall: str) -> None:
    """The QE report's ISV SVN is 6: level 8 is above it, level 5 gives the QE's status."""
    parts = Parts(tcb_info=tcb_info([level(platform)]),
                  qe_identity=qe_identity(levels=[(8, "UpToDate"), (5, qe)]))
    assert status(pki, quote, parts) == overall


@pytest.mark.parametrize("qe,ident,match", [
    (QeFields(mrsigner=bytes(32)), {}, "MRSIGNER"),
    (QeFields(), {"mrsigner": b"\x01" * 32}, "MRSIGNER"),
    (QeFields(isvprodid=1), {}, "ISVPRODID"),
    (QeFields(miscselect=1), {}, "MISCSELECT"),
    (QeFields(attributes=bytes.fromhex("13" + "00" * 15)), {}, "ATTRIBUTES"),
    (QeFields(isvsvn=3), {}, "below every QE TCB level"),
    (QeFields(), {"levels": [(7, "UpToDate"), (6, "Revoked")]}, "revoked"),
])
def test_qe_identity_mismatch(pki: Pki, qe: QeFields, ident: dict[str, Any],
                              match: str) -> None:
    res = check(pki, make_quote(pki, qe=qe), Parts(qe_identity=qe_identity(**ident)))
    failed(res, "qe_identity", match)


def test_qe_masks(pki: Pki) -> None:
    """Bits outside MISCSELECT / ATTRIBUTES masks are not compared."""
    qe = QeFields(miscselect=0x80000000, attributes=bytes.fromhex("15" + "ff" * 15))
    ident = qe_identity(miscselect_mask="7FFFFFFF",
                        attributes_mask="FF" + "00" * 15, attributes="15" + "00" * 15)
    assert status(pki, make_quote(pki, qe=qe), Parts(qe_identity=ident)) == "UpToDate"


def test_tcb_failures(pki: Pki, quote: bytes) -> None:
    for info, match in (
            (tcb_info([level("UpToDate", tdx2=9)]), "unrecognized"),
            (tcb_info([level("Revoked")]), "revoked"),
            (tcb_info(fmspc="00606a000000"), "FMSPC"),
            (tcb_info(module_mrsigner="11" * 48), "TDX module"),
            (tcb_info(module_levels=[(9, "UpToDate")]), "module SVN")):
        failed(check(pki, quote, Parts(tcb_info=info)), "tcb_status", match)


def test_collateral_not_current(pki: Pki, quote: bytes) -> None:
    stale = tcb_info(next_update=AT - timedelta(minutes=1))
    failed(check(pki, quote, Parts(tcb_info=stale)), "collateral_current", "TCB info")
    early = qe_identity(issue=AT + timedelta(minutes=1))
    failed(check(pki, quote, Parts(qe_identity=early)), "collateral_current", "QE identity")


def test_signature_over_other_bytes(pki: Pki, quote: bytes) -> None:
    doc = collateral(pki)
    doc["tcb_info"] = doc["tcb_info"].replace('"tcbEvaluationDataNumber":17',
                                              '"tcbEvaluationDataNumber":16')
    failed(check_quote(quote, at=AT, roots=[pki.root], collateral=load(doc)),
           "collateral_signature", "TCB info signature does not verify")
    doc = collateral(pki)
    doc["qe_identity_signature"] = collateral(
        pki, Parts(qe_identity=qe_identity(isvprodid=3)))["qe_identity_signature"]
    failed(check_quote(quote, at=AT, roots=[pki.root], collateral=load(doc)),
           "collateral_signature", "QE identity signature does not verify")


def test_signer_chain_failures(pki: Pki, quote: bytes) -> None:
    other = Pki.generate()
    impostor = cert(pki.tcb.subject, pki.root.subject, pki.tcb_key.public_key(), key(),
                    ca=False)  # the right key and names, not signed by the root
    expired = cert("test SGX TCB Signing", pki.root.subject, pki.tcb_key.public_key(),
                   pki.root_key, ca=False, not_after=AT - timedelta(seconds=1))
    for parts, match in (
            (Parts(tcb_chain=(impostor, pki.root)), "does not verify"),
            (Parts(qe_chain=(impostor,)), "does not verify"),
            (Parts(tcb_chain=(other.tcb, other.root), tcb_signer=other.tcb_key),
             "does not end at a pinned root"),
            (Parts(tcb_chain=(expired, pki.root)), "not valid at"),
            # a leaf under the root (here the PCK key) must not sign collateral
            (Parts(tcb_chain=(pki.pck, pki.pck_ca, pki.root), qe_chain=(pki.pck, pki.pck_ca),
                   tcb_signer=pki.pck_key), "issued directly"),
            (Parts(tcb_signer=key()), "signature does not verify")):
        failed(check(pki, quote, parts), "collateral_signature", match)
    # the signer's chain may omit the root: it is pinned
    assert status(pki, quote, Parts(tcb_chain=(pki.tcb,), qe_chain=(pki.tcb,))) == "UpToDate"


def test_crl_revocations(pki: Pki, quote: bytes) -> None:
    root_crl = lambda *serials: crl(pki.root, pki.root_key, serials)  # noqa: E731
    pck_crl = lambda *serials: crl(pki.pck_ca, pki.pck_ca_key, serials)  # noqa: E731
    for parts, match in (
            (Parts(pck_crl=pck_crl(5, pki.pck.serial_number, 7)), "PCK Certificate"),
            (Parts(root_ca_crl=root_crl(pki.tcb.serial_number)), "TCB Signing"),
            (Parts(root_ca_crl=root_crl(pki.pck_ca.serial_number)), "PCK Platform CA"),
            (Parts(root_ca_crl=root_crl(pki.root.serial_number)), "Root CA")):
        failed(check(pki, quote, parts), "crl", f"certificate CN=test SGX {match},")
    # serials of others, and serials listed by another issuer's CRL, revoke nothing
    assert status(pki, quote, Parts(pck_crl=pck_crl(pki.tcb.serial_number, 5),
                                    root_ca_crl=root_crl(pki.pck.serial_number))) == "UpToDate"


def test_crl_failures(pki: Pki, quote: bytes) -> None:
    other = Pki.generate(label=" 2")
    hour = timedelta(hours=1)
    for parts, match in (
            (Parts(root_ca_crl=crl(pki.root, pki.root_key, next_update=AT - hour)),
             "root CA CRL not current"),
            (Parts(pck_crl=crl(pki.pck_ca, pki.pck_ca_key, next_update=AT - hour)),
             "PCK CRL not current"),
            (Parts(pck_crl=crl(pki.pck_ca, pki.pck_ca_key, this_update=AT + hour)),
             "PCK CRL not current"),
            (Parts(root_ca_crl=crl(pki.root, key())), "root CA CRL signature"),
            (Parts(pck_crl=crl(pki.pck_ca, key())), "PCK CRL signature"),
            (Parts(pck_crl=crl(pki.root, pki.root_key)), "not by the PCK leaf's issuer"),
            (Parts(root_ca_crl=crl(other.root, other.root_key)), "not by the PCK chain's root"),
            (Parts(pck_crl_chain=(_forged(pki.pck_ca), pki.root)), "does not verify"),
            (Parts(pck_crl_chain=(other.pck_ca, other.root)), "does not end at a pinned root")):
        failed(check(pki, quote, parts), "crl", match)


def test_chains_under_another_pinned_root(pki: Pki, quote: bytes) -> None:
    """A second pinned root may anchor the collateral only if the root CA CRL covers it."""
    other = Pki.generate(label=" 2")
    doc = collateral(pki, Parts(tcb_chain=(other.tcb, other.root), tcb_signer=other.tcb_key,
                                qe_chain=(other.tcb, other.root)))
    res = check_quote(quote, at=AT, roots=[pki.root, other.root], collateral=load(doc))
    failed(res, "crl", "which the root CA CRL does not cover")


# ----------------------------------------------------------------------------- loading


def test_malformed_collateral(pki: Pki) -> None:
    good = collateral(pki)
    pcs = to_pcs(good)
    legacy = json.dumps({"tcbInfo": json.loads(good["tcb_info"]), "signature": "00"})
    bad: list[Any] = [
        b"not json", b"[]", b"{}", legacy.encode(),
        {**good, "tcb_info_signature": "00" * 63},
        {**good, "tcb_info_issuer_chain": "junk"},
        {**good, "pck_crl": "zz"},
        {k: v for k, v in good.items() if k != "root_ca_crl"},
        {**good, "tcb_info": tcb_info().replace('"id":"TDX"', '"id":"SGX"')},
        {**good, "tcb_info": tcb_info([{"tcb": {}}])},
        {**good, "tcb_info": tcb_info([level("UpToDate", sgx=[1, 2])])},
        {**good, "tcb_info": tcb_info().replace('"pcesvn":13', '"pcesvn":"13"')},
        {**good, "qe_identity": qe_identity().replace('"id":"TD_QE"', '"id":"QE"')},
        {**good, "qe_identity": qe_identity().replace('"isvprodid":2', '"isvprodid":true')},
        {**pcs, "tcb_info_response": pcs["tcb_info_response"].replace(
            '"signature"', '"tcbInfo": {}, "signature"')},  # duplicate key
        {**pcs, "qe_identity_response": pcs["qe_identity_response"].replace(
            '"signature"', '"extra": 1, "signature"')},
        {**pcs, "tcb_info_response": pcs["tcb_info_response"] + "x"},
    ]
    for b in bad:
        with pytest.raises(AttestationError) as e:
            parse_collateral(b if isinstance(b, bytes) else json.dumps(b).encode())
        assert e.value.rule == "collateral", b
    with pytest.raises(AttestationError, match="cannot be checked"):
        parse_collateral(legacy.encode())


def test_pcs_body_is_taken_verbatim(pki: Pki) -> None:
    """The signed bytes are the value's text in the response, whitespace included."""
    doc = collateral(pki)
    spaced = doc["tcb_info"].replace(",", ", ")
    pcs = to_pcs({**doc, "tcb_info": spaced})
    assert load(pcs).tcb_info_signed.body == spaced.encode()
    assert load(pcs).tcb_info == load(doc).tcb_info


def _without_root_copies(c: Any) -> Any:
    """``c`` with every chain's trailing copy of a pinned root left off."""
    roots = {r.public_bytes(Encoding.DER) for r in intel_roots()}

    def cut(chain: tuple[bytes, ...]) -> tuple[bytes, ...]:
        return chain[:-1] if chain and chain[-1] in roots else chain

    return dataclasses.replace(
        c, pck_crl_issuer_chain=cut(c.pck_crl_issuer_chain),
        tcb_info_signed=dataclasses.replace(c.tcb_info_signed,
                                            issuer_chain=cut(c.tcb_info_signed.issuer_chain)),
        qe_identity_signed=dataclasses.replace(
            c.qe_identity_signed, issuer_chain=cut(c.qe_identity_signed.issuer_chain)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzz_collateral_bytes(real_quote_b: bytes, real_collateral_b: bytes,
                               collateral_b_at: datetime, data: st.DataObject) -> None:
    """Any changed byte of the collateral file is refused as malformed or fails a check."""
    blob = bytearray(real_collateral_b)
    i = data.draw(st.integers(0, len(blob) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != blob[i]))
    blob[i] = new
    try:
        c = parse_collateral(bytes(blob))
    except AttestationError as e:
        assert e.rule == "collateral"
        return
    res = check_quote(real_quote_b, at=collateral_b_at, roots=intel_roots(), collateral=c)
    if res.error is None:  # only a change that leaves the content as it was (hex case, ...)
        # or that cut a chain's trailing copy of the pinned root (a PEM boundary broken): a
        # chain may end with a certificate the root issued, so the content is the same
        assert _without_root_copies(c) == _without_root_copies(
            parse_collateral(real_collateral_b))
        assert res.tcb_status == "UpToDate"
    else:
        assert res.error.rule in STEPS, res.error


def test_a_chain_cut_before_its_root_copy_still_verifies_as_the_same_content(
        real_quote_b: bytes, real_collateral_b: bytes, collateral_b_at: datetime) -> None:
    """A broken PEM boundary before a chain's trailing copy of the pinned root drops that
    copy (found by the fuzz test above): the chain then ends with a certificate the root
    issued, which is as good, and the collateral verifies the same."""
    boundary = real_collateral_b.index(b"-----\\n-----BEGIN") + 7  # the second BEGIN
    blob = bytearray(real_collateral_b)
    blob[boundary] = 32
    c = parse_collateral(bytes(blob))
    original = parse_collateral(real_collateral_b)
    assert len(c.pck_crl_issuer_chain) == len(original.pck_crl_issuer_chain) - 1
    assert _without_root_copies(c) == _without_root_copies(original)
    res = check_quote(real_quote_b, at=collateral_b_at, roots=intel_roots(), collateral=c)
    assert res.error is None and res.tcb_status == "UpToDate"


def test_a_certificate_of_an_unknown_x509_version_is_malformed_collateral(
        real_collateral_b: bytes) -> None:
    """Found by the fuzz test in CI: one base64 character changed the PCK CRL issuer's
    version to 6, which cryptography refuses with an exception of its own (not a
    ValueError); it is malformed collateral like any other."""
    blob = bytearray(real_collateral_b)
    blob[70] = ord("B")
    with pytest.raises(AttestationError) as caught:
        parse_collateral(bytes(blob))
    assert caught.value.rule == "collateral"
