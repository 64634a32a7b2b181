"""``cocoon attest ...``: inspect and verify TDX quotes from the command line.

:func:`add_attest_arguments` adds the ``attest`` command to cocoon's argparse subparsers;
:func:`run_attest` runs it and returns the exit status (0 only if the quote is valid):

* ``attest verify-quote FILE [--at ISO8601] [--collateral FILE] [--root PEM] [--json]``
* ``attest image-hash FILE``
* ``attest show-peer HOST:PORT [--fake-dir DIR] [--accept TIERS] [--allow-list FILE]
  [--allow-debug] [--timeout S] [--json]``: dial a node (a proxy) over RA-TLS as an
  unattested client, verify the evidence in its certificate with the ``tdx`` verifier (and
  ``fake-tdx`` with ``--fake-dir``), show claims, measurements and every step, and judge it
  with :func:`~cocoon.attestation.policy.decide` under the policy the flags describe. Exit 0:
  accepted; 1: verified but refused by that policy; 2: no connection, or the evidence did not
  verify (the failed rule is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cocoon.attestation.config import split_tiers
from cocoon.attestation.evidence import (
    TIERS,
    Claims,
    Evidence,
    EvidenceVerifier,
    Measurements,
    Step,
    Tier,
    VerifiedEvidence,
)
from cocoon.attestation.fake_tdx import FakeTdxAuthority
from cocoon.attestation.policy import AllowLists, Policy, StaticAllowLists, Verdict, decide
from cocoon.attestation.providers import NoneProvider
from cocoon.attestation.ratls import read_certificate
from cocoon.attestation.tdx import (
    TdxVerifier,
    check_quote,
    intel_roots,
    parse_collateral,
    parse_quote,
)
from cocoon.errors import AttestationError, CocoonError, ConfigError, TransportError
from cocoon.transport.tls import TlsConnector, TlsIdentity, accept_any, utcnow
from cocoon.validation import parse_hostport

__all__ = [
    "PeerReport",
    "add_attest_arguments",
    "inspect_peer",
    "peer_report_json",
    "run_attest",
    "show_peer_policy",
    "show_peer_verifiers",
]

def add_attest_arguments(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``attest`` (``verify-quote``, ``image-hash``, ``show-peer``) to ``subparsers``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "attest", help="inspect and verify TDX attestation quotes and RA-TLS peers")
    sub = p.add_subparsers(dest="attest_command", required=True)
    v = sub.add_parser("verify-quote", help="parse and verify a TDX quote file")
    v.add_argument("file", type=Path, help="raw quote bytes")
    v.add_argument("--at", help="verification time, ISO 8601 (default: now)")
    v.add_argument("--collateral", type=Path,
                   help="Intel collateral JSON: dcap-qvl's combined shape, or PCS responses "
                        "with issuer chains and CRLs (see cocoon.attestation.collateral)")
    v.add_argument("--root", type=Path, action="append", default=None,
                   help="pin this root CA (PEM) instead of the Intel SGX Root CA; repeatable")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    h = sub.add_parser("image-hash", help="print the COCOON image hash of a TDX quote")
    h.add_argument("file", type=Path, help="raw quote bytes")
    s = sub.add_parser(
        "show-peer", help="connect to a node over RA-TLS and show its verified evidence",
        description="Exit 0: the peer's evidence verified and the policy accepts it; 1: it "
                    "verified but the policy refuses it; 2: no connection or the evidence "
                    "did not verify.")
    s.add_argument("address", metavar="HOST:PORT", help="the node's RA-TLS listen address")
    s.add_argument("--fake-dir", type=Path,
                   help="also verify fake-tdx evidence issued by this simulated authority")
    s.add_argument("--accept", default="tdx", metavar="TIERS",
                   help="comma-separated tiers the policy accepts (default: tdx)")
    s.add_argument("--allow-list", type=Path, metavar="FILE",
                   help="TOML allow-list (image_hashes, model_hashes) for the policy")
    s.add_argument("--allow-debug", action="store_true", help="the policy accepts debug TDs")
    s.add_argument("--timeout", type=float, default=10.0,
                   help="connect and TLS handshake timeout in seconds (default 10)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_attest)
    return p


def _parse_at(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def run_attest(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run an ``attest`` subcommand; returns the process exit status."""
    out = out or sys.stdout
    if args.attest_command == "show-peer":
        return _run_show_peer(args, out)
    err = sys.stderr
    try:
        data = Path(args.file).read_bytes()
    except OSError as e:
        print(f"error: cannot read {args.file}: {e}", file=err)
        return 2
    if args.attest_command == "image-hash":
        try:
            quote = parse_quote(data)
        except AttestationError as e:
            print(f"error: {e.rule}: {e}", file=err)
            return 1
        print(quote.measurements().image_hash.hex(), file=out)
        return 0
    try:
        at = _parse_at(args.at)
        collateral = (parse_collateral(Path(args.collateral).read_bytes())
                      if args.collateral else None)
        roots = (tuple(x509.load_pem_x509_certificate(Path(r).read_bytes()) for r in args.root)
                 if args.root else intel_roots())
    except (OSError, ValueError, AttestationError) as e:
        print(f"error: {e}", file=err)
        return 2
    res = check_quote(data, at=at, roots=roots, collateral=collateral)
    q = res.quote
    info: dict[str, Any] = {"valid": res.ok, "at": at.isoformat()}
    if q is not None:
        info.update({
            "version": q.version, "tee_type": f"{q.tee_type:#x}", "mrtd": q.mrtd.hex(),
            "rtmr0": q.rtmr0.hex(), "rtmr1": q.rtmr1.hex(), "rtmr2": q.rtmr2.hex(),
            "rtmr3": q.rtmr3.hex(), "mrconfigid": q.mrconfigid.hex(),
            "mrowner": q.mrowner.hex(), "mrownerconfig": q.mrownerconfig.hex(),
            "td_attributes": q.td_attributes.hex(), "debug": q.measurements().debug,
            "report_data": q.reportdata.hex(),
            "image_hash": q.measurements().image_hash.hex(),
        })
    info["tcb_status"] = res.tcb_status
    info["steps"] = [{"name": s.name, "ok": s.ok, "detail": s.detail} for s in res.steps]
    if res.error is not None:
        info["error"] = {"rule": res.error.rule, "message": str(res.error)}
    if args.json:
        print(json.dumps(info, indent=2), file=out)
    else:
        for key, value in info.items():
            if key not in ("steps", "error", "valid"):
                print(f"{key:14} {value}", file=out)
        for s in res.steps:
            print(f"{'✓' if s.ok else '✗'} {s.name}: {s.detail}", file=out)
        print("VALID" if res.ok else f"INVALID ({res.error.rule if res.error else '?'})",
              file=out)
    return 0 if res.ok else 1


# --- show-peer ------------------------------------------------------------------------


def show_peer_verifiers(fake_dir: Path | None = None) -> dict[str, EvidenceVerifier]:
    """The real ``tdx`` verifier (Intel root), plus ``fake-tdx`` pinned to the simulated
    authority in ``fake_dir`` when given. Raises ConfigError if that cannot be loaded."""
    verifiers: dict[str, EvidenceVerifier] = {"tdx": TdxVerifier()}
    if fake_dir is not None:
        try:
            verifiers["fake-tdx"] = FakeTdxAuthority.load(fake_dir).verifier()
        except (OSError, ValueError, AttestationError) as exc:
            raise ConfigError(f"--fake-dir {fake_dir}: {exc}") from None
    return verifiers


def show_peer_policy(accept: str, allow_list: Path | None = None,
                     allow_debug: bool = False) -> tuple[Policy, AllowLists]:
    """The policy (and allow-lists) the verdict is computed under. Raises ConfigError."""
    tiers = split_tiers(accept)
    unknown = [t for t in tiers if t not in TIERS]
    if unknown or not tiers:
        raise ConfigError(f"--accept: expected tiers from {', '.join(TIERS)}, got {accept!r}")
    lists = (StaticAllowLists.from_file(str(allow_list)).allow_lists()
             if allow_list is not None else AllowLists())
    accepted = frozenset(t for t in TIERS if t in tiers)
    return Policy(accepted_tiers=accepted, allow_debug=allow_debug), lists


@dataclass
class PeerReport:
    """What :func:`inspect_peer` learned about one peer. ``error`` (rule, message) is set
    when it could not connect (``connect`` / ``tls_handshake`` / ``handshake_timeout``)
    or its certificate or evidence failed a check (that check's rule); then ``verified``
    is None and ``measurements`` (if any) are unverified."""

    address: str
    connected: bool = False
    certificate: x509.Certificate | None = None
    claims: Claims | None = None
    evidence: Evidence | None = None
    verified: VerifiedEvidence | None = None
    measurements: Measurements | None = None
    steps: tuple[Step, ...] = ()
    error: tuple[str, str] | None = None
    tls: dict[str, Any] = field(default_factory=dict)

    @property
    def tier(self) -> Tier | None:
        return self.verified.tier if self.verified is not None else None


class _InspectingConnector(TlsConnector):
    """A TlsConnector that remembers the peer's certificate even when its check fails, so
    that show-peer can still show what the peer presented."""

    peer_certificate: x509.Certificate | None = None

    def _check(self, proto: Any) -> dict[str, Any]:
        cert = proto.conn.get_peer_certificate(as_cryptography=True)
        if isinstance(cert, x509.Certificate):
            self.peer_certificate = cert
        return super()._check(proto)


def _failure_details(report: PeerReport, verifiers: Mapping[str, EvidenceVerifier],
                     at: datetime, exc: AttestationError) -> None:
    """After a failed check: what the certificate claims, its evidence (unverified) and,
    for quotes, the quote verification steps up to the one that failed."""
    cert = report.certificate
    steps: list[Step] = []
    if cert is not None:
        with contextlib.suppress(AttestationError):
            report.claims, report.evidence = read_certificate(cert)
    ev, claims = report.evidence, report.claims
    if ev is not None and ev.quote:
        with contextlib.suppress(AttestationError):
            report.measurements = parse_quote(ev.quote).measurements()
        verifier = verifiers.get(ev.kind)
        if isinstance(verifier, TdxVerifier) and claims is not None:
            res = check_quote(ev.quote, at=at, roots=verifier.roots,
                              collateral=verifier.collateral,
                              report_data=claims.report_data())
            if res.error is not None and res.error.rule == exc.rule:
                steps.extend(res.steps)
    if not steps or steps[-1].ok or steps[-1].name != exc.rule:
        steps.append(Step(exc.rule, False, str(exc)))
    report.steps = tuple(steps)


async def inspect_peer(host: str, port: int, verifiers: Mapping[str, EvidenceVerifier], *,
                       handshake_timeout: float = 10.0,
                       now: datetime | None = None) -> PeerReport:
    """Dial ``host:port`` over RA-TLS as an unattested client, accept whatever verifies
    (:func:`~cocoon.transport.tls.accept_any`) and report what the peer presented."""
    at = now or utcnow()
    identity = TlsIdentity.create(NoneProvider(), "client", now=at)
    connector = _InspectingConnector(identity, verifiers, accept_any, clock=lambda: at,
                                    handshake_timeout=handshake_timeout)
    report = PeerReport(f"{host}:{port}")
    try:
        _, writer = await connector.connect(host, port)
    except AttestationError as exc:
        report.connected = True
        report.error = (exc.rule, str(exc))
        report.certificate = connector.peer_certificate
        _failure_details(report, verifiers, at, exc)
        return report
    except TransportError as exc:
        text = str(exc)
        rule = ("handshake_timeout" if "timed out" in text
                else "tls_handshake" if "TLS" in text else "connect")
        report.error = (rule, text)
        return report
    try:
        report.connected = True
        cert = writer.get_extra_info("peer_certificate")
        report.certificate = cert
        report.claims = writer.get_extra_info("peer_claims")
        report.verified = writer.get_extra_info("verified_evidence")
        if isinstance(cert, x509.Certificate):
            report.evidence = read_certificate(cert)[1]
        if report.verified is not None:
            report.measurements = report.verified.measurements
            report.steps = report.verified.steps
        report.tls = {"version": writer.get_extra_info("tls_version"),
                      "cipher": writer.get_extra_info("cipher")}
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2.0)
    return report


def _judge(report: PeerReport, policy: Policy, lists: AllowLists,
           now: datetime) -> Verdict | None:
    if report.verified is None or report.claims is None or report.certificate is None:
        return None
    return decide(policy, lists, report.verified, report.claims,
                  issued_at=report.certificate.not_valid_before_utc, now=now)


def _measurements_json(m: Measurements | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {"mrtd": m.mrtd.hex(), "rtmr0": m.rtmr0.hex(), "rtmr1": m.rtmr1.hex(),
            "rtmr2": m.rtmr2.hex(), "rtmr3": m.rtmr3.hex(), "mrconfigid": m.mrconfigid.hex(),
            "mrowner": m.mrowner.hex(), "mrownerconfig": m.mrownerconfig.hex(),
            "td_attributes": m.td_attributes.hex(), "debug": m.debug,
            "image_hash": m.image_hash.hex()}


def peer_report_json(report: PeerReport, verdict: Verdict | None,
                     policy: Policy) -> dict[str, Any]:
    """The JSON object ``show-peer --json`` prints."""
    c, cert, v = report.claims, report.certificate, report.verified
    image = v.image_hash if v is not None else None
    return {
        "peer": report.address,
        "connected": report.connected,
        "tls": report.tls or None,
        "certificate": None if cert is None else {
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "sha256": hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
        },
        "claims": None if c is None else {
            "role": c.role, "model": c.model, "config_hash": c.config_hash.hex(),
            "public_key_sha256": hashlib.sha256(c.public_key).hexdigest()},
        "evidence_kind": report.evidence.kind if report.evidence is not None else None,
        "verified": v is not None,
        "tier": report.tier,
        "image_hash": image.hex() if image else None,
        "tcb_status": v.tcb_status if v is not None else None,
        "measurements": _measurements_json(report.measurements),
        "steps": [{"name": s.name, "ok": s.ok, "detail": s.detail} for s in report.steps],
        "error": None if report.error is None else {"rule": report.error[0],
                                                    "message": report.error[1]},
        "policy": {"accept": sorted(policy.accepted_tiers),
                   "allow_debug": policy.allow_debug,
                   "min_tcb_status": policy.min_tcb_status},
        "verdict": None if verdict is None else {
            "accepted": verdict.accepted, "tier": verdict.tier,
            "reasons": [{"rule": r, "why": w} for r, w in verdict.reasons],
            "explain": verdict.explain()},
    }


def _print_report(doc: dict[str, Any], out: TextIO) -> None:
    def line(key: str, value: Any) -> None:
        print(f"{key:16} {'-' if value is None or value == '' else value}", file=out)

    line("peer", doc["peer"])
    if not doc["connected"]:
        err = doc["error"]
        print(f"NOT CONNECTED ({err['rule']}): {err['message']}", file=out)
        return
    if doc["tls"]:
        line("tls", f"{doc['tls']['version']} {doc['tls']['cipher']}")
    if doc["certificate"]:
        line("cert valid", f"{doc['certificate']['not_before']} .. "
                           f"{doc['certificate']['not_after']}")
    claims = doc["claims"] or {}
    line("role", claims.get("role"))
    line("model", claims.get("model"))
    line("evidence", doc["evidence_kind"])
    line("tier", doc["tier"] if doc["verified"] else "(not verified)")
    line("image_hash", doc["image_hash"])
    line("tcb_status", doc["tcb_status"])
    m = doc["measurements"]
    if m is not None:
        if not doc["verified"]:
            print("measurements (UNVERIFIED):", file=out)
        for key, value in m.items():
            if key != "image_hash" or not doc["verified"]:
                line(key, value)
    for s in doc["steps"]:
        print(f"{'✓' if s['ok'] else '✗'} {s['name']}{': ' + s['detail'] if s['detail'] else ''}",
              file=out)
    err = doc["error"]
    if err is not None:
        print(f"NOT VERIFIED ({err['rule']}): {err['message']}", file=out)
        return
    verdict = doc["verdict"]
    accept = ",".join(doc["policy"]["accept"])
    if verdict is None:
        print("verdict          - (nothing to judge)", file=out)
    elif verdict["accepted"]:
        print(f"verdict          ACCEPTED under accept={accept}", file=out)
    else:
        print(f"verdict          REJECTED under accept={accept}: {verdict['explain']}",
              file=out)


def _run_show_peer(args: argparse.Namespace, out: TextIO) -> int:
    err = sys.stderr
    try:
        host, port = parse_hostport(args.address, "show-peer address")
        if not args.timeout > 0:
            raise ConfigError("--timeout must be greater than 0")
        policy, lists = show_peer_policy(args.accept, args.allow_list, args.allow_debug)
        verifiers = show_peer_verifiers(args.fake_dir)
    except CocoonError as exc:
        print(f"error: {exc}", file=err)
        return 2
    now = datetime.now(UTC)
    report = asyncio.run(inspect_peer(host, port, verifiers,
                                       handshake_timeout=args.timeout, now=now))
    verdict = _judge(report, policy, lists, now)
    doc = peer_report_json(report, verdict, policy)
    if args.json:
        print(json.dumps(doc, indent=2), file=out)
    else:
        _print_report(doc, out)
    if verdict is None:
        return 2
    return 0 if verdict.accepted else 1
