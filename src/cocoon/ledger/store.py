"""The proxy's durable ledger: client balances, reservations, worker earnings, vouchers, commits.

One SQLite file in WAL mode with ``synchronous=FULL``: a commit that returned is on disk, and a
process killed at any instant (kill -9) leaves the last committed state.  Every public operation
is exactly one ``BEGIN IMMEDIATE ... COMMIT`` transaction, so each state change is all-or-
nothing and concurrent writers serialise.

Money is integer nanoTON stored in SQLite ``INTEGER`` (signed 64 bit: amounts up to ~9.2e9 TON;
larger values are refused with ``OverflowError`` before touching the file).  Value is conserved:
every nanoTON charged to a client is either a worker's income or the proxy's commission
(:meth:`Ledger.check_invariants`).

Vouchers are signed inside the settling transaction with a key the caller passes in; keys never
touch the database.  Inside a :meth:`Ledger.batch` (group commit), they are signed once per
account when the batch ends, still inside its transaction, covering every settlement of the
batch: a proxy under load signs two vouchers per batch, not two per request.  The proxy
signs both kinds (as in COCOON): the client-charge voucher states what the client has been
charged so far, the worker-payout voucher what the worker has earned.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.ledger.errors import (
    InsufficientFunds,
    LedgerError,
    PaymentError,
    ReservationError,
    VoucherRegression,
    VoucherReplay,
)
from cocoon.ledger.pricing import Bill, Prices
from cocoon.ledger.vouchers import (
    SignedVoucher,
    Voucher,
    VoucherKind,
    public_key_bytes,
    sign,
    verify,
)

__all__ = [
    "SCHEMA_VERSION",
    "ClientAccount",
    "Commit",
    "Ledger",
    "Reservation",
    "Settlement",
    "SignedCharge",
    "Totals",
    "WorkerAccount",
]

SCHEMA_VERSION = 2
_MAX_INT = (1 << 63) - 1

_SCHEMA = """
CREATE TABLE clients (
    client    TEXT PRIMARY KEY,
    deposited INTEGER NOT NULL DEFAULT 0 CHECK (deposited >= 0),
    charged   INTEGER NOT NULL DEFAULT 0 CHECK (charged >= 0),
    reserved  INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    tokens    INTEGER NOT NULL DEFAULT 0 CHECK (tokens >= 0)
) STRICT;
CREATE TABLE workers (
    worker TEXT PRIMARY KEY,
    earned INTEGER NOT NULL DEFAULT 0 CHECK (earned >= 0),
    tokens INTEGER NOT NULL DEFAULT 0 CHECK (tokens >= 0)
) STRICT;
CREATE TABLE proxy (
    id         INTEGER PRIMARY KEY CHECK (id = 0),
    commission INTEGER NOT NULL CHECK (commission >= 0)
) STRICT;
INSERT INTO proxy (id, commission) VALUES (0, 0);
CREATE TABLE reservations (
    request_id      TEXT PRIMARY KEY,
    client          TEXT NOT NULL REFERENCES clients (client),
    worker          TEXT NOT NULL,
    amount          INTEGER NOT NULL CHECK (amount >= 0),
    state           TEXT NOT NULL CHECK (state IN ('open', 'settled', 'released')),
    adjusted_tokens INTEGER,
    client_cost     INTEGER,
    worker_income   INTEGER,
    commission      INTEGER,
    price_per_token INTEGER,
    worker_fee      INTEGER,
    overage         INTEGER,
    client_voucher  BLOB,
    worker_voucher  BLOB
) STRICT;
CREATE INDEX reservations_open ON reservations (state, client);
CREATE TABLE vouchers (
    kind               TEXT NOT NULL,
    channel            TEXT NOT NULL,
    seqno              INTEGER NOT NULL,
    cumulative_nanoton INTEGER NOT NULL,
    cumulative_tokens  INTEGER NOT NULL,
    data               BLOB NOT NULL,
    PRIMARY KEY (kind, channel)
) STRICT;
CREATE TABLE commits (
    seqno      INTEGER PRIMARY KEY,
    charged    INTEGER NOT NULL,
    earned     INTEGER NOT NULL,
    commission INTEGER NOT NULL,
    at         INTEGER NOT NULL
) STRICT;
"""

# Version 2: the client's own signatures (on-chain charge vouchers the proxy redeems).
_SCHEMA_V2 = """
CREATE TABLE client_signed (
    client     TEXT PRIMARY KEY REFERENCES clients (client),
    channel    TEXT NOT NULL,
    seqno      INTEGER NOT NULL CHECK (seqno >= 0),
    cumulative INTEGER NOT NULL CHECK (cumulative >= 0),
    voucher    BLOB NOT NULL
) STRICT;
"""


def _amount(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int nanoTON amount")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if value > _MAX_INT:
        raise OverflowError(f"{name} does not fit the ledger's 64-bit integers")
    return value


@dataclass(frozen=True, slots=True)
class ClientAccount:
    client: str
    deposited: int
    charged: int
    reserved: int
    tokens: int

    @property
    def available(self) -> int:
        """What a new reservation may take: deposited - charged - reserved."""
        return self.deposited - self.charged - self.reserved


@dataclass(frozen=True, slots=True)
class WorkerAccount:
    worker: str
    earned: int
    tokens: int


@dataclass(frozen=True, slots=True)
class Reservation:
    request_id: str
    client: str
    worker: str
    amount: int
    state: str  # "open" | "settled" | "released"


@dataclass(frozen=True, slots=True)
class Settlement:
    """The result of settling one request (the same on a repeated settle)."""

    request_id: str
    client: str
    worker: str
    bill: Bill
    """What was charged: the reported bill, capped at the reservation."""
    overage: int
    """nanoTON the reported bill exceeded the reservation by (not charged)."""
    client_voucher: SignedVoucher | None
    worker_voucher: SignedVoucher | None


@dataclass(frozen=True, slots=True)
class Totals:
    deposited: int
    charged: int
    reserved: int
    earned: int
    commission: int
    open_reservations: int
    settled_requests: int


@dataclass(frozen=True, slots=True)
class SignedCharge:
    """A client's own signature over its cumulative charge (an on-chain voucher BOC)."""

    client: str
    channel: str
    seqno: int
    cumulative: int
    voucher: bytes


@dataclass(frozen=True, slots=True)
class Commit:
    seqno: int
    charged: int
    earned: int
    commission: int
    at: int

    def state_hash(self) -> bytes:
        """What the proxy publishes on chain for this commit: SHA-256 over
        ``b"cocoon-commit\\x00\\x01" || seqno u64 || charged, earned, commission u128 || at u64``
        (big-endian), so anyone holding the ledger's totals can check the published hash."""
        return hashlib.sha256(
            b"cocoon-commit\x00\x01" + self.seqno.to_bytes(8, "big")
            + self.charged.to_bytes(16, "big") + self.earned.to_bytes(16, "big")
            + self.commission.to_bytes(16, "big") + self.at.to_bytes(8, "big")).digest()


class Ledger:
    """The proxy's ledger in the SQLite file at ``path`` (created if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._in_batch = False
        # In a batch: the accounts settled meanwhile, with the requests whose rows get the
        # voucher signed for them at the batch's end, and the key to sign it with.
        self._unsigned: dict[tuple[VoucherKind, str], list[str]] = {}
        self._unsigned_key: Ed25519PrivateKey | None = None
        self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    # -- plumbing ---------------------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One change, all or nothing: its own transaction, or inside :meth:`batch` a
        savepoint of the batch's (undone alone if the change fails)."""
        conn = self._conn
        if self._in_batch:
            conn.execute("SAVEPOINT change")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK TO change")
                conn.execute("RELEASE change")
                raise
            conn.execute("RELEASE change")
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: the changes made inside commit together, in one transaction (one
        fsync), when the block ends; each is still all or nothing on its own (a failing one
        is undone, the others stay). Nothing is durable, so nobody may be told of any of
        them, before the block has ended."""
        if self._in_batch:
            raise RuntimeError("ledger batches do not nest")
        self._conn.execute("BEGIN IMMEDIATE")
        self._in_batch = True
        try:
            yield
            self._sign_unsigned()
        except BaseException:
            self._in_batch = False
            self._unsigned, self._unsigned_key = {}, None
            self._conn.execute("ROLLBACK")
            raise
        self._in_batch = False
        self._conn.execute("COMMIT")

    def _sign_unsigned(self) -> None:
        """Sign the vouchers a batch's settlements left for its end: one per account, for
        its cumulative amounts as they stand, stored on every settled row it covers."""
        unsigned, key = self._unsigned, self._unsigned_key
        if not unsigned or key is None:
            return
        with self._tx() as conn:  # a failure leaves them unsigned: the batch then fails
            self._sign_each(conn, unsigned, key)
        self._unsigned, self._unsigned_key = {}, None

    def _sign_each(self, conn: sqlite3.Connection,
                   unsigned: dict[tuple[VoucherKind, str], list[str]],
                   key: Ed25519PrivateKey) -> None:
        for (kind, channel), request_ids in unsigned.items():
            if kind == "client_charge":
                account = self._client(conn, channel)
                nanoton, tokens = account.charged, account.tokens
                column = "client_voucher"
            else:
                earner = self._worker(conn, channel)
                nanoton, tokens = earner.earned, earner.tokens
                column = "worker_voucher"
            blob = self._issue(conn, kind, channel, nanoton, tokens, key).to_bytes()
            conn.executemany(f"UPDATE reservations SET {column} = ? WHERE request_id = ?",
                             [(blob, r) for r in request_ids])

    def _migrate(self) -> None:
        with self._tx() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                version = 1
            if version == 1:
                for statement in _SCHEMA_V2.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise LedgerError(
                    f"{self.path}: ledger schema version {version}, this code knows "
                    f"{SCHEMA_VERSION}"
                )

    # -- operations (each one transaction) --------------------------------------------------

    def deposit(self, client: str, amount: int) -> ClientAccount:
        """Credit ``amount`` nanoTON to ``client`` (a confirmed top-up)."""
        _amount("amount", amount)
        with self._tx() as conn:
            conn.execute("INSERT OR IGNORE INTO clients (client) VALUES (?)", (client,))
            conn.execute(
                "UPDATE clients SET deposited = deposited + ? WHERE client = ?", (amount, client)
            )
            return self._client(conn, client)

    def sync_deposit(self, client: str, total: int) -> ClientAccount:
        """Raise ``client``'s deposits to ``total`` (what its on-chain channel has received in
        all: unspent balance + charged). Never lowers them: a stale reading changes nothing."""
        _amount("total", total)
        with self._tx() as conn:
            conn.execute("INSERT OR IGNORE INTO clients (client) VALUES (?)", (client,))
            conn.execute(
                "UPDATE clients SET deposited = MAX(deposited, ?) WHERE client = ?",
                (total, client),
            )
            return self._client(conn, client)

    def record_signed(self, client: str, channel: str, seqno: int, cumulative: int,
                      voucher: bytes) -> SignedCharge:
        """Keep the client's newest signed charge voucher (already verified by the caller).

        Refuses (VoucherReplay) a seqno not above the stored one, (VoucherRegression) a lower
        cumulative amount, and (ReservationError) more than the client has been charged."""
        _amount("cumulative", cumulative)
        if not isinstance(seqno, int) or not 0 <= seqno < 1 << 63:
            raise VoucherReplay(f"client voucher seqno {seqno!r} is out of range")
        with self._tx() as conn:
            charged = self._client(conn, client).charged
            if cumulative > charged:
                raise ReservationError(
                    f"client {client!r} signed {cumulative} nanoTON but was charged {charged}")
            old = self._signed(conn, client)
            if old is not None:
                if seqno <= old.seqno:
                    raise VoucherReplay(f"client voucher seqno {seqno} is not above {old.seqno}")
                if cumulative < old.cumulative:
                    raise VoucherRegression(
                        f"client voucher lowers the signed amount {old.cumulative} -> {cumulative}")
            conn.execute("INSERT OR IGNORE INTO clients (client) VALUES (?)", (client,))
            conn.execute(
                "INSERT INTO client_signed (client, channel, seqno, cumulative, voucher)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (client) DO UPDATE SET"
                " channel = excluded.channel, seqno = excluded.seqno,"
                " cumulative = excluded.cumulative, voucher = excluded.voucher",
                (client, channel, seqno, cumulative, voucher),
            )
            return SignedCharge(client, channel, seqno, cumulative, voucher)

    def signed(self, client: str) -> SignedCharge | None:
        """The client's newest signed charge voucher, if any."""
        return self._signed(self._conn, client)

    def all_signed(self) -> list[SignedCharge]:
        rows = self._conn.execute(
            "SELECT client, channel, seqno, cumulative, voucher FROM client_signed"
            " ORDER BY client").fetchall()
        return [SignedCharge(*r) for r in rows]

    def reserve(self, request_id: str, client: str, worker: str, amount: int) -> Reservation:
        """Hold ``amount`` of ``client``'s balance for a request served by ``worker``.

        Raises :class:`InsufficientFunds` when available < amount.  Idempotent: the same
        request id with the same parameters returns the existing reservation (whatever its
        state); with other parameters it raises :class:`ReservationError`."""
        _amount("amount", amount)
        with self._tx() as conn:
            existing = self._reservation(conn, request_id)
            if existing is not None:
                if (existing.client, existing.worker, existing.amount) != (client, worker, amount):
                    raise ReservationError(
                        f"request {request_id!r} is already reserved with other parameters"
                    )
                return existing
            conn.execute("INSERT OR IGNORE INTO clients (client) VALUES (?)", (client,))
            account = self._client(conn, client)
            if account.available < amount:
                raise InsufficientFunds(
                    f"client {client!r}: available {account.available} nanoTON < {amount}",
                    available=account.available,
                    requested=amount,
                )
            conn.execute(
                "UPDATE clients SET reserved = reserved + ? WHERE client = ?", (amount, client)
            )
            conn.execute(
                "INSERT INTO reservations (request_id, client, worker, amount, state)"
                " VALUES (?, ?, ?, ?, 'open')",
                (request_id, client, worker, amount),
            )
            return Reservation(request_id, client, worker, amount, "open")

    def settle(self, request_id: str, bill: Bill, signing_key: Ed25519PrivateKey) -> Settlement:
        """Charge the client for ``bill`` (capped at the reservation), credit the worker, keep
        the commission, release the reservation and sign the new cumulative vouchers.

        A zero-token bill (cancelled before any token) changes no amount and signs nothing.
        Inside a batch the vouchers are signed when it ends (see the module docstring): the
        returned settlement then has none; read them with :meth:`settlement` or
        :meth:`last_voucher`.  Idempotent: settling a settled request returns the first
        settlement unchanged (the new ``bill`` is ignored).  Raises
        :class:`ReservationError` for an unknown or released request."""
        defer = self._in_batch and (self._unsigned_key is None
                                    or self._unsigned_key is signing_key)
        settled = self._settle(request_id, bill, signing_key, defer)
        if defer and settled.bill.adjusted_tokens > 0:  # counted once the change stands
            self._unsigned_key = signing_key
            self._unsigned.setdefault(("client_charge", settled.client), []).append(request_id)
            self._unsigned.setdefault(("worker_payout", settled.worker), []).append(request_id)
        return settled

    def _settle(self, request_id: str, bill: Bill, signing_key: Ed25519PrivateKey,
                defer: bool) -> Settlement:
        with self._tx() as conn:
            row = conn.execute(
                "SELECT client, worker, amount, state FROM reservations WHERE request_id = ?",
                (request_id,),
            ).fetchone()
            if row is None:
                raise ReservationError(f"no reservation for request {request_id!r}")
            client, worker, amount, state = row
            if state == "settled":
                return self._settlement(conn, request_id)
            if state != "open":
                raise ReservationError(f"request {request_id!r} is {state}, cannot settle")
            charged = bill.capped(amount)
            overage = bill.client_cost - charged.client_cost
            _amount("client_cost", charged.client_cost)
            conn.execute(
                "UPDATE clients SET reserved = reserved - ?, charged = charged + ?,"
                " tokens = tokens + ? WHERE client = ?",
                (amount, charged.client_cost, charged.adjusted_tokens, client),
            )
            conn.execute("INSERT OR IGNORE INTO workers (worker) VALUES (?)", (worker,))
            conn.execute(
                "UPDATE workers SET earned = earned + ?, tokens = tokens + ? WHERE worker = ?",
                (charged.worker_income, charged.adjusted_tokens, worker),
            )
            conn.execute(
                "UPDATE proxy SET commission = commission + ? WHERE id = 0", (charged.commission,)
            )
            client_blob: bytes | None = None
            worker_blob: bytes | None = None
            if charged.adjusted_tokens > 0 and not defer:
                account = self._client(conn, client)
                earner = self._worker(conn, worker)
                client_blob = self._issue(
                    conn, "client_charge", client, account.charged, account.tokens, signing_key
                ).to_bytes()
                worker_blob = self._issue(
                    conn, "worker_payout", worker, earner.earned, earner.tokens, signing_key
                ).to_bytes()
            conn.execute(
                "UPDATE reservations SET state = 'settled', adjusted_tokens = ?,"
                " client_cost = ?, worker_income = ?, commission = ?, price_per_token = ?,"
                " worker_fee = ?, overage = ?, client_voucher = ?, worker_voucher = ?"
                " WHERE request_id = ?",
                (
                    charged.adjusted_tokens,
                    charged.client_cost,
                    charged.worker_income,
                    charged.commission,
                    charged.price_per_token,
                    charged.worker_fee_per_token,
                    overage,
                    client_blob,
                    worker_blob,
                    request_id,
                ),
            )
            return Settlement(
                request_id=request_id,
                client=client,
                worker=worker,
                bill=Bill.for_tokens(charged.adjusted_tokens,
                                     Prices(charged.price_per_token,
                                            charged.worker_fee_per_token)),
                overage=overage,
                client_voucher=None if client_blob is None
                else SignedVoucher.from_bytes(client_blob),
                worker_voucher=None if worker_blob is None
                else SignedVoucher.from_bytes(worker_blob),
            )

    def release(self, request_id: str) -> Reservation:
        """Give back an open reservation untouched (the request failed before any token).

        Idempotent on a released request; raises :class:`ReservationError` on a settled or
        unknown one."""
        with self._tx() as conn:
            existing = self._reservation(conn, request_id)
            if existing is None:
                raise ReservationError(f"no reservation for request {request_id!r}")
            if existing.state == "released":
                return existing
            if existing.state != "open":
                raise ReservationError(f"request {request_id!r} is {existing.state}")
            conn.execute(
                "UPDATE clients SET reserved = reserved - ? WHERE client = ?",
                (existing.amount, existing.client),
            )
            conn.execute(
                "UPDATE reservations SET state = 'released' WHERE request_id = ?", (request_id,)
            )
            return Reservation(
                request_id, existing.client, existing.worker, existing.amount, "released"
            )

    def commit(self, at: int) -> Commit:
        """Record a state commit (next seqno, current totals, time ``at`` in unix seconds)."""
        with self._tx() as conn:
            totals = self._totals(conn)
            last = conn.execute("SELECT COALESCE(MAX(seqno), 0) FROM commits").fetchone()[0]
            entry = Commit(last + 1, totals.charged, totals.earned, totals.commission, at)
            conn.execute(
                "INSERT INTO commits (seqno, charged, earned, commission, at)"
                " VALUES (?, ?, ?, ?, ?)",
                (entry.seqno, entry.charged, entry.earned, entry.commission, entry.at),
            )
            return entry

    # -- reads ------------------------------------------------------------------------------

    def balance(self, client: str) -> ClientAccount:
        """The client's account (all zero if unknown)."""
        return self._client(self._conn, client)

    def earnings(self, worker: str) -> WorkerAccount:
        """The worker's account (all zero if unknown)."""
        return self._worker(self._conn, worker)

    def totals(self) -> Totals:
        return self._totals(self._conn)

    def reservation(self, request_id: str) -> Reservation | None:
        return self._reservation(self._conn, request_id)

    def open_reservations(self) -> list[Reservation]:
        """Reservations neither settled nor released (to resolve after a restart)."""
        rows = self._conn.execute(
            "SELECT request_id, client, worker, amount, state FROM reservations"
            " WHERE state = 'open' ORDER BY request_id"
        ).fetchall()
        return [Reservation(*row) for row in rows]

    def settlement(self, request_id: str) -> Settlement | None:
        """The settlement of a settled request, else None."""
        self._sign_unsigned()
        state = self._conn.execute(
            "SELECT state FROM reservations WHERE request_id = ?", (request_id,)
        ).fetchone()
        if state is None or state[0] != "settled":
            return None
        return self._settlement(self._conn, request_id)

    def covering_seqno(self, client: str) -> int:
        """The seqno of the client's charge voucher that covers every settlement so far: the
        last signed, or, while some of its settlements wait for the end of this batch to be
        signed, the one signed then (0: none). Signs nothing."""
        row = self._conn.execute(
            "SELECT seqno FROM vouchers WHERE kind = 'client_charge' AND channel = ?",
            (client,)).fetchone()
        seqno = 0 if row is None else int(row[0])
        return seqno + 1 if ("client_charge", client) in self._unsigned else seqno

    def last_voucher(self, kind: VoucherKind, channel: str) -> SignedVoucher | None:
        """The last voucher signed on the channel (parsed, not verified)."""
        self._sign_unsigned()
        row = self._conn.execute(
            "SELECT data FROM vouchers WHERE kind = ? AND channel = ?", (kind, channel)
        ).fetchone()
        return None if row is None else SignedVoucher.from_bytes(row[0])

    def commits(self) -> list[Commit]:
        rows = self._conn.execute(
            "SELECT seqno, charged, earned, commission, at FROM commits ORDER BY seqno"
        ).fetchall()
        return [Commit(*row) for row in rows]

    def check_invariants(self, pubkey: bytes | None = None) -> list[str]:
        """Every violated ledger invariant, as a sentence (empty when consistent).

        With ``pubkey``, the stored vouchers' signatures are verified too."""
        self._sign_unsigned()
        conn = self._conn
        out: list[str] = []
        own = not self._in_batch  # in a batch, its transaction is the snapshot
        if own:
            conn.execute("BEGIN")  # one read snapshot for all checks
        try:
            t = self._totals(conn)
            if t.charged != t.earned + t.commission:
                out.append(
                    f"conservation: charged {t.charged} != earned {t.earned} + commission "
                    f"{t.commission}"
                )
            s_cost, s_income, s_comm, bad = conn.execute(
                "SELECT COALESCE(SUM(client_cost), 0), COALESCE(SUM(worker_income), 0),"
                " COALESCE(SUM(commission), 0),"
                " COALESCE(SUM(client_cost > amount OR client_cost != worker_income + commission"
                "   OR client_voucher IS NULL AND adjusted_tokens > 0), 0)"
                " FROM reservations WHERE state = 'settled'"
            ).fetchone()
            if (s_cost, s_income, s_comm) != (t.charged, t.earned, t.commission):
                out.append(
                    f"settled requests sum to ({s_cost}, {s_income}, {s_comm}), accounts to "
                    f"({t.charged}, {t.earned}, {t.commission})"
                )
            if bad:
                out.append(f"{bad} settled reservations are inconsistent")
            unsettled_with_amounts = conn.execute(
                "SELECT COUNT(*) FROM reservations WHERE state != 'settled'"
                " AND (client_cost IS NOT NULL OR client_voucher IS NOT NULL)"
            ).fetchone()[0]
            if unsettled_with_amounts:
                out.append(f"{unsettled_with_amounts} unsettled reservations carry a charge")
            for client, dep, chg, res, tok, open_sum, settled_tok in conn.execute(
                "SELECT c.client, c.deposited, c.charged, c.reserved, c.tokens,"
                " (SELECT COALESCE(SUM(amount), 0) FROM reservations r"
                "   WHERE r.client = c.client AND r.state = 'open'),"
                " (SELECT COALESCE(SUM(adjusted_tokens), 0) FROM reservations r"
                "   WHERE r.client = c.client AND r.state = 'settled')"
                " FROM clients c"
            ).fetchall():
                if min(dep, chg, res, tok) < 0:
                    out.append(f"client {client!r}: negative amount")
                if chg + res > dep:
                    out.append(f"client {client!r}: charged {chg} + reserved {res} > {dep}")
                if res != open_sum:
                    out.append(f"client {client!r}: reserved {res} != open reservations {open_sum}")
                if tok != settled_tok:
                    out.append(f"client {client!r}: tokens {tok} != settled tokens {settled_tok}")
                out += self._check_voucher(conn, "client_charge", client, chg, tok, pubkey)
                signed = self._signed(conn, client)
                if signed is not None and signed.cumulative > chg:
                    out.append(f"client {client!r}: signed {signed.cumulative} > charged {chg}")
            for worker, earned, tok, settled_income, settled_tok in conn.execute(
                "SELECT w.worker, w.earned, w.tokens,"
                " (SELECT COALESCE(SUM(worker_income), 0) FROM reservations r"
                "   WHERE r.worker = w.worker AND r.state = 'settled'),"
                " (SELECT COALESCE(SUM(adjusted_tokens), 0) FROM reservations r"
                "   WHERE r.worker = w.worker AND r.state = 'settled')"
                " FROM workers w"
            ).fetchall():
                if min(earned, tok) < 0:
                    out.append(f"worker {worker!r}: negative amount")
                if (earned, tok) != (settled_income, settled_tok):
                    out.append(f"worker {worker!r}: account != its settled requests")
                out += self._check_voucher(conn, "worker_payout", worker, earned, tok, pubkey)
            previous: Commit | None = None
            for entry in self.commits():
                if previous is not None and (
                    entry.seqno != previous.seqno + 1
                    or entry.charged < previous.charged
                    or entry.earned < previous.earned
                    or entry.commission < previous.commission
                ):
                    out.append(f"commit {entry.seqno} is not newer than {previous.seqno}")
                previous = entry
        finally:
            if own:
                conn.execute("COMMIT")
        return out

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _check_voucher(
        conn: sqlite3.Connection,
        kind: VoucherKind,
        channel: str,
        nanoton: int,
        tokens: int,
        pubkey: bytes | None,
    ) -> list[str]:
        row = conn.execute(
            "SELECT seqno, cumulative_nanoton, cumulative_tokens, data FROM vouchers"
            " WHERE kind = ? AND channel = ?",
            (kind, channel),
        ).fetchone()
        if row is None:
            return [] if tokens == 0 else [f"{kind} {channel!r}: no voucher for {tokens} tokens"]
        try:
            signed = SignedVoucher.from_bytes(row[3])
            if pubkey is not None:
                verify(signed, pubkey)
        except PaymentError as exc:
            return [f"{kind} {channel!r}: stored voucher invalid: {exc}"]
        v = signed.voucher
        if (v.kind, v.channel, v.seqno, v.cumulative_nanoton, v.cumulative_tokens) != (
            kind,
            channel,
            row[0],
            row[1],
            row[2],
        ):
            return [f"{kind} {channel!r}: voucher columns disagree with its bytes"]
        if (v.cumulative_nanoton, v.cumulative_tokens) != (nanoton, tokens):
            return [
                f"{kind} {channel!r}: voucher says ({v.cumulative_nanoton}, "
                f"{v.cumulative_tokens}), account ({nanoton}, {tokens})"
            ]
        return []

    @staticmethod
    def _issue(
        conn: sqlite3.Connection,
        kind: VoucherKind,
        channel: str,
        nanoton: int,
        tokens: int,
        key: Ed25519PrivateKey,
    ) -> SignedVoucher:
        row = conn.execute(
            "SELECT seqno FROM vouchers WHERE kind = ? AND channel = ?", (kind, channel)
        ).fetchone()
        seqno = 1 if row is None else row[0] + 1
        signed = sign(Voucher(kind, channel, seqno, nanoton, tokens, public_key_bytes(key)), key)
        conn.execute(
            "INSERT INTO vouchers (kind, channel, seqno, cumulative_nanoton, cumulative_tokens,"
            " data) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (kind, channel) DO UPDATE SET"
            " seqno = excluded.seqno, cumulative_nanoton = excluded.cumulative_nanoton,"
            " cumulative_tokens = excluded.cumulative_tokens, data = excluded.data",
            (kind, channel, seqno, nanoton, tokens, signed.to_bytes()),
        )
        return signed

    @staticmethod
    def _signed(conn: sqlite3.Connection, client: str) -> SignedCharge | None:
        row = conn.execute(
            "SELECT client, channel, seqno, cumulative, voucher FROM client_signed"
            " WHERE client = ?", (client,)).fetchone()
        return None if row is None else SignedCharge(*row)

    @staticmethod
    def _client(conn: sqlite3.Connection, client: str) -> ClientAccount:
        row = conn.execute(
            "SELECT deposited, charged, reserved, tokens FROM clients WHERE client = ?",
            (client,),
        ).fetchone()
        return ClientAccount(client, *(row or (0, 0, 0, 0)))

    @staticmethod
    def _worker(conn: sqlite3.Connection, worker: str) -> WorkerAccount:
        row = conn.execute(
            "SELECT earned, tokens FROM workers WHERE worker = ?", (worker,)
        ).fetchone()
        return WorkerAccount(worker, *(row or (0, 0)))

    @staticmethod
    def _reservation(conn: sqlite3.Connection, request_id: str) -> Reservation | None:
        row = conn.execute(
            "SELECT request_id, client, worker, amount, state FROM reservations"
            " WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        return None if row is None else Reservation(*row)

    @staticmethod
    def _settlement(conn: sqlite3.Connection, request_id: str) -> Settlement:
        row = conn.execute(
            "SELECT client, worker, adjusted_tokens, price_per_token, worker_fee, overage,"
            " client_voucher, worker_voucher FROM reservations WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        client, worker, tokens, price, fee, overage, cv, wv = row
        return Settlement(
            request_id=request_id,
            client=client,
            worker=worker,
            bill=Bill.for_tokens(tokens, Prices(price, fee)),
            overage=overage,
            client_voucher=None if cv is None else SignedVoucher.from_bytes(cv),
            worker_voucher=None if wv is None else SignedVoucher.from_bytes(wv),
        )

    @staticmethod
    def _totals(conn: sqlite3.Connection) -> Totals:
        dep, chg, res = conn.execute(
            "SELECT COALESCE(SUM(deposited), 0), COALESCE(SUM(charged), 0),"
            " COALESCE(SUM(reserved), 0) FROM clients"
        ).fetchone()
        earned = conn.execute("SELECT COALESCE(SUM(earned), 0) FROM workers").fetchone()[0]
        commission = conn.execute("SELECT commission FROM proxy WHERE id = 0").fetchone()[0]
        open_count, settled = conn.execute(
            "SELECT COALESCE(SUM(state = 'open'), 0), COALESCE(SUM(state = 'settled'), 0)"
            " FROM reservations"
        ).fetchone()
        return Totals(dep, chg, res, earned, commission, open_count, settled)
