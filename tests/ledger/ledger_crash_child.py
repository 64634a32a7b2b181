"""Child process for the crash test: a proxy streaming requests through the ledger.

``python ledger_crash_child.py DIR [--drain]`` opens ``DIR/ledger.sqlite``, resolves the
reservations a previous (killed) run left open, brings the client/worker-side voucher copies up
to date (as the proxy's push on reconnect would), prints ``ready`` and then runs requests until
killed.  ``--drain`` stops after the recovery step.

Every request is planned deterministically from its index (:func:`plan`), so the parent can
recompute what each settled request must have been charged.  After each settle the child
appends ``request_id client_cost`` to ``DIR/acks`` (fsync'd): the parent checks that every
acknowledged settle survived the kill.  The sides' copies live in ``DIR/side-<kind>-<channel>``
and are replaced atomically after the ledger commit, so a kill can leave a side one voucher
behind the proxy, never ahead.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.ledger import (
    Bill,
    Ledger,
    Prices,
    SignedVoucher,
    VoucherBook,
    VoucherKind,
    price_usage,
    reservation_for,
)
from cocoon.ledger.vouchers import public_key_bytes
from cocoon.usage import Usage

KEY = Ed25519PrivateKey.from_private_bytes(b"\x2a" * 32)
PUB = public_key_bytes(KEY)
PRICES = Prices(price_per_token=7, worker_fee_per_token=5, cached_mult=2500, reasoning_mult=15000)
CLIENTS = ("c0", "c1", "c2")
WORKERS = ("w0", "w1")
TOP_UP = 50_000_000
CHANNELS: tuple[tuple[VoucherKind, tuple[str, ...]], ...] = (
    ("client_charge", CLIENTS),
    ("worker_payout", WORKERS),
)


@dataclass(frozen=True)
class Plan:
    request_id: str
    client: str
    worker: str
    amount: int
    outcome: str  # "complete" | "stream_cut" | "cancelled" | "failed"
    bill: Bill


def request_id(index: int) -> str:
    return f"req-{index:07d}"


def plan(index: int) -> Plan:
    """What request ``index`` is and how it ends."""
    rng = random.Random(index)
    coefficient = rng.choice([500, 1000, 1500, 4000])
    max_tokens = rng.randint(1, 2000)
    estimate = rng.randint(1, 1500)
    outcome = rng.choice(["complete", "complete", "stream_cut", "cancelled", "failed"])
    if outcome in ("cancelled", "failed"):
        usage = Usage()
    else:
        prompt = rng.randint(0, estimate)
        limit = max_tokens if outcome == "complete" else rng.randint(0, max_tokens)
        completion = rng.randint(0, limit)
        usage = Usage(prompt_tokens=prompt, cached_tokens=rng.randint(0, prompt),
                      completion_tokens=completion,
                      reasoning_tokens=rng.randint(0, completion))
    return Plan(
        request_id=request_id(index),
        client=CLIENTS[index % len(CLIENTS)],
        worker=WORKERS[rng.randrange(len(WORKERS))],
        amount=reservation_for(max_tokens, estimate, coefficient, PRICES),
        outcome=outcome,
        bill=price_usage(usage, coefficient, PRICES),
    )


def side_path(directory: Path, kind: str, channel: str) -> Path:
    return directory / f"side-{kind}-{channel}"


def load_side(directory: Path, kind: VoucherKind, channel: str) -> SignedVoucher | None:
    path = side_path(directory, kind, channel)
    return SignedVoucher.from_bytes(path.read_bytes()) if path.exists() else None


class Sides:
    """The clients' and workers' own copies of their last voucher, on disk."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.book = VoucherBook()
        for kind, channels in CHANNELS:
            for channel in channels:
                signed = load_side(directory, kind, channel)
                if signed is not None:
                    self.book.accept(signed, PUB)

    def receive(self, signed: SignedVoucher) -> None:
        # a replay or regression raises here and the child dies with a traceback
        v = self.book.accept(signed, PUB)
        path = side_path(self.directory, v.kind, v.channel)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(signed.to_bytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def sync(self, ledger: Ledger) -> None:
        for kind, channels in CHANNELS:
            for channel in channels:
                latest = ledger.last_voucher(kind, channel)
                if latest is None:
                    continue
                mine = self.book.last(kind, channel)
                if mine is None or mine.voucher.seqno < latest.voucher.seqno:
                    self.receive(latest)


def finish(ledger: Ledger, sides: Sides, acks: TextIO, p: Plan) -> None:
    if p.outcome == "failed":
        ledger.release(p.request_id)
        return
    s = ledger.settle(p.request_id, p.bill, KEY)
    for signed in (s.client_voucher, s.worker_voucher):
        if signed is not None:
            sides.receive(signed)
    acks.write(f"{p.request_id} {s.bill.client_cost}\n")
    acks.flush()
    os.fsync(acks.fileno())


def main(argv: list[str]) -> int:
    directory = Path(argv[1])
    drain = "--drain" in argv
    ledger = Ledger(directory / "ledger.sqlite")
    sides = Sides(directory)
    with open(directory / "acks", "a") as acks:
        # recovery: what a restarted proxy does with requests in flight at the crash
        for r in ledger.open_reservations():
            finish(ledger, sides, acks, plan(int(r.request_id.split("-")[1])))
        sides.sync(ledger)
        if drain:
            ledger.close()
            return 0
        totals = ledger.totals()
        index = ledger._conn.execute("SELECT COUNT(*) FROM reservations").fetchone()[0]
        if totals.deposited == 0:
            for client in CLIENTS:
                ledger.deposit(client, TOP_UP)
        print("ready", flush=True)
        while True:
            p = plan(index)
            if ledger.balance(p.client).available < p.amount:
                ledger.deposit(p.client, TOP_UP)
            ledger.reserve(p.request_id, p.client, p.worker, p.amount)
            finish(ledger, sides, acks, p)
            if index % 16 == 0:
                ledger.commit(at=index)
            index += 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
