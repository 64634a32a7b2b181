"""Collateral: TDX TCB level matching and CRLs, on synthetic TCB info for the real quote.

The real quote's PCK certificate certifies FMSPC 90c06f000000, PCE ID 0000, SGX components
3,3,2,2,4,1,0,5,0.. and PCE SVN 13; its tee_tcb_svn is 07 01 03 00.. (TDX module 1, SVN 7).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from cocoon.attestation.fake_tdx import FakeTdxAuthority, fake_measurements
from cocoon.attestation.tdx import (
    check_quote,
    intel_roots,
    parse_collateral,
    parse_pck_tcb,
    parse_quote,
    verify_quote,
)
from cocoon.errors import AttestationError, EvidenceInvalid

SGX = [3, 3, 2, 2, 4, 1, 0, 5] + [0] * 8


def comps(svns: list[int]) -> list[dict[str, Any]]:
    return [{"svn": s} for s in svns]


def level(status: str, *, sgx: list[int] = SGX, pcesvn: int = 13, tdx2: int = 3) -> Any:
    tdx = [0, 0, tdx2] + [0] * 13
    return {"tcb": {"sgxtcbcomponents": comps(sgx), "pcesvn": pcesvn,
                    "tdxtcbcomponents": comps(tdx)},
            "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": status}


def tcb_info(levels: list[Any], *, module_levels: list[tuple[int, str]] | None = None,
             fmspc: str = "90c06f000000", mrsigner: str = "00" * 48,
             issue: str = "2025-07-01T00:00:00Z", next_update: str = "2035-01-01T00:00:00Z",
             crls: list[str] | None = None) -> bytes:
    mods = [{"id": "TDX_01", "mrsigner": mrsigner, "attributes": "00" * 8,
             "attributesMask": "ff" * 8,
             "tcbLevels": [{"tcb": {"isvsvn": s}, "tcbStatus": st}
                           for s, st in (module_levels or [(7, "UpToDate"), (0, "OutOfDate")])]}]
    doc: dict[str, Any] = {"tcbInfo": {
        "id": "TDX", "version": 3, "issueDate": issue, "nextUpdate": next_update,
        "fmspc": fmspc, "pceId": "0000", "tcbType": 0, "tcbEvaluationDataNumber": 17,
        "tdxModuleIdentities": mods, "tcbLevels": levels}, "signature": "00"}
    if crls is not None:
        doc["crls"] = crls
    return json.dumps(doc).encode()


def status(real_quote: bytes, at: datetime, info: bytes) -> str | None:
    v = verify_quote(real_quote, at=at, roots=intel_roots(), collateral=parse_collateral(info))
    assert v.steps[-1].name == "tcb_status" and v.steps[-1].ok
    return v.tcb_status


def fails(real_quote: bytes, at: datetime, info: bytes, match: str) -> None:
    with pytest.raises(EvidenceInvalid, match=match) as e:
        verify_quote(real_quote, at=at, roots=intel_roots(), collateral=parse_collateral(info))
    assert e.value.rule == "tcb_status"


def test_pck_extension(real_quote: bytes) -> None:
    tcb = parse_pck_tcb(parse_quote(real_quote).certificates()[0])
    assert (tcb.sgx_components, tcb.pcesvn) == (tuple(SGX), 13)
    assert (tcb.fmspc.hex(), tcb.pce_id.hex()) == ("90c06f000000", "0000")


def test_up_to_date(real_quote: bytes, valid_at: datetime) -> None:
    assert status(real_quote, valid_at, tcb_info([level("UpToDate")])) == "UpToDate"


def test_first_matching_level_wins(real_quote: bytes, valid_at: datetime) -> None:
    info = tcb_info([level("UpToDate", tdx2=5), level("SWHardeningNeeded", pcesvn=14),
                     level("OutOfDate", tdx2=3), level("Revoked", tdx2=0)])
    assert status(real_quote, valid_at, info) == "OutOfDate"
    info = tcb_info([level("UpToDate", sgx=[4, *SGX[1:]]), level("ConfigurationNeeded")])
    assert status(real_quote, valid_at, info) == "ConfigurationNeeded"


def test_module_status_can_lower(real_quote: bytes, valid_at: datetime) -> None:
    info = tcb_info([level("UpToDate")], module_levels=[(8, "UpToDate"), (5, "OutOfDate")])
    assert status(real_quote, valid_at, info) == "OutOfDate"


def test_failures(real_quote: bytes, valid_at: datetime) -> None:
    fails(real_quote, valid_at, tcb_info([level("UpToDate", tdx2=9)]), "unrecognized")
    fails(real_quote, valid_at, tcb_info([level("Revoked")]), "revoked")
    fails(real_quote, valid_at, tcb_info([level("UpToDate")], fmspc="00606a000000"), "FMSPC")
    fails(real_quote, valid_at, tcb_info([level("UpToDate")], mrsigner="11" * 48),
          "TDX module")
    fails(real_quote, valid_at,
          tcb_info([level("UpToDate")], module_levels=[(9, "UpToDate")]), "module SVN")
    stale = (valid_at - timedelta(days=1)).isoformat()
    fails(real_quote, valid_at, tcb_info([level("UpToDate")], next_update=stale), "not current")


def test_malformed_collateral() -> None:
    for bad in (b"not json", b"{}", tcb_info([{"tcb": {}}]),
                tcb_info([level("UpToDate", sgx=[1, 2])]), b'{"tcbInfo": {"id": "SGX"}}'):
        with pytest.raises(AttestationError) as e:
            parse_collateral(bad)
        assert e.value.rule == "collateral"


def test_crl_with_bad_signature(real_quote: bytes, valid_at: datetime) -> None:
    inter = parse_quote(real_quote).certificates()[1]
    key = ec.generate_private_key(ec.SECP256R1())
    crl = (x509.CertificateRevocationListBuilder().issuer_name(inter.subject)
           .last_update(valid_at - timedelta(days=1)).next_update(valid_at + timedelta(days=30))
           .sign(key, hashes.SHA256()))
    info = tcb_info([level("UpToDate")], crls=[crl.public_bytes(Encoding.PEM).decode()])
    fails(real_quote, valid_at, info, "bad signature")


def test_crl_revokes_fake_pck(valid_at: datetime) -> None:
    auth = FakeTdxAuthority.generate(valid_at)
    quote = auth.make_quote(bytes(64), fake_measurements(), valid_at)

    def crl(serials: list[int], next_update: datetime) -> str:
        b = (x509.CertificateRevocationListBuilder().issuer_name(auth.root_cert.subject)
             .last_update(valid_at - timedelta(hours=1)).next_update(next_update))
        for s in serials:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(s)
                .revocation_date(valid_at - timedelta(hours=1)).build())
        return b.sign(auth.root_key, hashes.SHA256()).public_bytes(Encoding.PEM).decode()

    week = valid_at + timedelta(days=7)
    for crls, match in (([crl([auth.pck_cert.serial_number], week)], "is revoked"),
                        ([crl([], valid_at - timedelta(minutes=1))], "not current"),
                        ([crl([12345], week)], "SGX extension")):  # fake PCK has no TCB ext
        res = check_quote(quote, at=valid_at, roots=[auth.root_cert],
                          collateral=parse_collateral(tcb_info([level("UpToDate")], crls=crls)))
        assert res.error is not None and res.error.rule == "tcb_status"
        assert match in str(res.error)


def test_cli_collateral(tmp_path: Path, real_quote: bytes, valid_at: datetime) -> None:
    from test_attest_cli import main

    q = tmp_path / "q"
    q.write_bytes(real_quote)
    c = tmp_path / "c.json"
    c.write_bytes(tcb_info([level("OutOfDate")]))
    rc, out = main(["attest", "verify-quote", str(q), "--at", valid_at.isoformat(),
                    "--collateral", str(c), "--json"])
    assert rc == 0 and json.loads(out)["tcb_status"] == "OutOfDate"
