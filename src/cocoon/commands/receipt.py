"""``cocoon receipt verify FILE [--json] [--id ID] [--fake-dir DIR] [--collateral FILE]``:
check receipts offline (``cocoon.attestation.receipt``) and say who produced each answer and
what it cost.

FILE is one receipt's JSON (``GET /v1/receipts/{id}`` on the client, or the compact one of
the ``x-cocoon-receipt`` header), a client's daily receipt file
(``receipts-YYYY-MM-DD.jsonl`` in ``client.receipt_dir``: every line is checked, or the one
``--id`` names), or ``-`` for standard input. A compact receipt's certificates are read from
``certificates/`` beside FILE, where the client keeps them (or ``--certificates DIR``).
Each certificate's evidence is checked at the time its signature was made: ``tdx`` quotes
against the pinned Intel root (with ``--collateral``, their TCB status too), ``fake-tdx``
quotes against the local fake authority (``--fake-dir``, by default the one ``cocoon up``
made in its data directory).
Exit 0: every receipt holds; 1: one does not (the rule it broke is printed); 2: the file
cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from cocoon.attestation.evidence import Claims, EvidenceVerifier, VerifiedEvidence
from cocoon.attestation.fake_tdx import FakeTdxAuthority
from cocoon.attestation.ratls import check_certificate, read_certificate
from cocoon.attestation.receipt import CERTIFICATES, Receipt, VerifiedReceipt, verify
from cocoon.attestation.tdx import TdxVerifier, parse_collateral
from cocoon.commands.up import default_data_dir
from cocoon.errors import AttestationError, ConfigError, EvidenceInvalid
from cocoon.money import format_ton, iso_utc

__all__ = ["add_receipt_arguments", "run_receipt"]


def add_receipt_arguments(sub: Any) -> None:
    p = sub.add_parser("receipt", help="verify the receipts of answers, offline",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    actions = p.add_subparsers(dest="action", required=True)
    v = actions.add_parser("verify", help="check a receipt's signatures and evidence")
    v.add_argument("file", metavar="FILE",
                   help="a receipt's JSON, a client's receipts-*.jsonl, or - (stdin)")
    v.add_argument("--id", help="in a .jsonl file: only the receipt with this id")
    v.add_argument("--json", action="store_true", help="print each result as a JSON line")
    v.add_argument("--fake-dir", type=Path, default=None,
                   help="the fake TDX authority to check fake-tdx evidence with (default: "
                        "the one in cocoon up's data directory, if there is one)")
    v.add_argument("--collateral", type=Path, default=None,
                   help="Intel collateral (JSON) for the TCB status of tdx evidence")
    v.add_argument("--certificates", type=Path, default=None, metavar="DIR",
                   help="where the certificates of compact receipts are (SHA256.der; "
                        "default: certificates/ beside FILE, as the client keeps them)")


def _verifiers(args: argparse.Namespace) -> dict[str, EvidenceVerifier]:
    collateral = None
    if args.collateral is not None:
        try:
            collateral = parse_collateral(args.collateral.read_bytes())
        except OSError as exc:
            raise ConfigError(f"--collateral: {exc}") from None
    out: dict[str, EvidenceVerifier] = {"tdx": TdxVerifier(collateral=collateral)}
    fake_dir = args.fake_dir or default_data_dir() / "fake-tdx"
    if fake_dir.is_dir():
        try:
            out["fake-tdx"] = FakeTdxAuthority.load(fake_dir).verifier(collateral)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{fake_dir} is not a fake TDX authority: {exc}") from None
    elif args.fake_dir is not None:
        raise ConfigError(f"--fake-dir: {fake_dir} is not a directory")
    return out


def _checker(verifiers: dict[str, EvidenceVerifier]) -> Any:
    def check(der: bytes, role: str, at: int
              ) -> tuple[x509.Certificate, Claims, VerifiedEvidence]:
        try:
            cert = x509.load_der_x509_certificate(der)
        except (ValueError, x509.InvalidVersion):
            raise EvidenceInvalid("not a DER certificate", rule="cert_format") from None
        verified = check_certificate(cert, verifiers=verifiers,
                                     at=datetime.fromtimestamp(at, UTC), expect_role=role)
        return cert, read_certificate(cert)[0], verified
    return check


def _receipts(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """(where, the parsed JSON or the raw text) of each receipt in FILE."""
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{args.file}: {exc}") from None
    stripped = text.strip()
    lines = stripped.splitlines()
    out: list[tuple[str, Any]] = []
    if len(lines) > 1 and all(line.lstrip().startswith("{") for line in lines if line.strip()):
        for n, line in enumerate(lines, 1):
            if line.strip():
                out.append((f"line {n}", line))
    else:
        out.append((args.file, stripped))
    if args.id is not None:
        out = [(w, raw) for w, raw in out if _id_of(raw) == args.id]
        if not out:
            raise ConfigError(f"{args.file}: no receipt with id {args.id}")
    return out


def _id_of(raw: str) -> str | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data.get("id") if isinstance(data, dict) else None


def _describe(v: VerifiedReceipt, receipt_id: str | None) -> str:
    w, p = v.receipt.worker, v.receipt.proxy
    lines = [f"receipt {receipt_id or '(no id)'}: valid",
             f"  answered by worker {w.worker} ({v.worker_tier}"
             + (f", image {v.worker_image_hash[:16]}…" if v.worker_image_hash else "")
             + f") with model {w.model}"
             + (f" (weights {w.model_hash[:16]}…)" if w.model_hash else "")
             + (", sealed to it" if w.sealed else ", sent in the clear"),
             f"  at {iso_utc(w.time)}: {w.prompt_tokens} prompt + {w.completion_tokens} "
             f"completion tokens"]
    if p is None:
        lines.append("  no proxy countersignature")
    else:
        lines.append(f"  billed by proxy {p.proxy} ({v.proxy_tier}): "
                     f"{format_ton(p.cost_nanoton)} TON for {p.billed_tokens} tokens "
                     f"(coefficient {p.coefficient / 1000:g}x), covered by voucher "
                     f"#{p.voucher_seqno} (charged {format_ton(p.charged_total_nanoton)} TON "
                     f"in all)")
    return "\n".join(lines)


def _certificates(args: argparse.Namespace) -> Any:
    """Where the certificates of compact receipts are: ``--certificates``, or the
    ``certificates/`` directory beside FILE (as the client keeps them)."""
    folder = args.certificates or (Path(args.file).parent / CERTIFICATES
                                   if args.file != "-" else None)

    def find(digest: str) -> bytes | None:
        if folder is None or not all(c in "0123456789abcdef" for c in digest):
            return None
        try:
            return (folder / f"{digest}.der").read_bytes()
        except OSError:
            return None
    return find


def run_receipt(args: argparse.Namespace) -> int:
    check = _checker(_verifiers(args))
    find = _certificates(args)
    status = 0
    for where, raw in _receipts(args):
        receipt_id = _id_of(raw)
        try:
            verified = verify(Receipt.decode(raw).with_certificates(find), check)
        except AttestationError as exc:
            status = 1
            if args.json:
                print(json.dumps({"id": receipt_id, "where": where, "valid": False,
                                  "rule": exc.rule, "error": str(exc)}))
            else:
                print(f"receipt {receipt_id or where}: INVALID ({exc.rule}): {exc}")
            continue
        if args.json:
            print(json.dumps({"id": receipt_id, **verified.summary()}))
        else:
            print(_describe(verified, receipt_id))
    return status
