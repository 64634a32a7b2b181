"""``cocoon attest ...``: inspect and verify TDX quotes from the command line.

:func:`add_attest_arguments` adds the ``attest`` command to cocoon's argparse subparsers;
:func:`run_attest` runs it and returns the exit status (0 only if the quote is valid):

* ``attest verify-quote FILE [--at ISO8601] [--collateral FILE] [--root PEM] [--json]``
* ``attest image-hash FILE``
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509

from cocoon.attestation.tdx import check_quote, intel_roots, parse_collateral, parse_quote
from cocoon.errors import AttestationError

__all__ = ["add_attest_arguments", "run_attest"]


def add_attest_arguments(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``attest`` (with ``verify-quote`` and ``image-hash``) to ``subparsers``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "attest", help="inspect and verify TDX attestation quotes")
    sub = p.add_subparsers(dest="attest_command", required=True)
    v = sub.add_parser("verify-quote", help="parse and verify a TDX quote file")
    v.add_argument("file", type=Path, help="raw quote bytes")
    v.add_argument("--at", help="verification time, ISO 8601 (default: now)")
    v.add_argument("--collateral", type=Path, help="Intel TCB info JSON (+ crls) file")
    v.add_argument("--root", type=Path, action="append", default=None,
                   help="pin this root CA (PEM) instead of the Intel SGX Root CA; repeatable")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    h = sub.add_parser("image-hash", help="print the COCOON image hash of a TDX quote")
    h.add_argument("file", type=Path, help="raw quote bytes")
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
