"""The ledger's chain-facing parts (schema version 2): deposits synced from a channel's balance,
the client's own signed charge vouchers, their invariant, the v1 -> v2 migration, and the
state hash a commit publishes."""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.ledger import Bill, Ledger, LedgerError, Prices, ReservationError
from cocoon.ledger.errors import VoucherRegression, VoucherReplay
from cocoon.ledger.store import SCHEMA_VERSION, Commit, SignedCharge
from cocoon.ledger.vouchers import public_key_bytes

KEY = Ed25519PrivateKey.from_private_bytes(b"\x09" * 32)
PUB = public_key_bytes(KEY)
PRICES = Prices(price_per_token=3, worker_fee_per_token=2)
MAX_INT = (1 << 63) - 1
CHAN = "0:" + "cd" * 32

# The version-1 schema, frozen here on purpose (a copy of ``store._SCHEMA`` as schema 1 shipped):
# a later change to the module must still migrate files written by version 1.
SCHEMA_V1 = """
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


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "ledger.sqlite") as led:
        yield led


def charge(ledger: Ledger, client: str, tokens: int, request_id: str = "r1") -> int:
    """Drive one request through reserve + settle so ``client`` is charged; its new total."""
    bill = Bill.for_tokens(tokens, PRICES)
    ledger.deposit(client, bill.client_cost)
    ledger.reserve(request_id, client, "w1", bill.client_cost)
    ledger.settle(request_id, bill, KEY)
    return ledger.balance(client).charged


def client_rows(path: Path) -> list[tuple[object, ...]]:
    raw = sqlite3.connect(path)
    try:
        return raw.execute("SELECT * FROM clients ORDER BY client").fetchall()
    finally:
        raw.close()


# --- sync_deposit ---------------------------------------------------------------------------

def test_sync_deposit_creates_and_raises(ledger: Ledger) -> None:
    acct = ledger.sync_deposit("alice", 500)
    assert (acct.client, acct.deposited, acct.charged, acct.reserved) == ("alice", 500, 0, 0)
    assert ledger.sync_deposit("alice", 800).deposited == 800
    assert ledger.balance("alice").deposited == 800
    assert ledger.totals().deposited == 800
    assert ledger.check_invariants(PUB) == []


def test_sync_deposit_never_lowers(ledger: Ledger) -> None:
    ledger.sync_deposit("alice", 1000)
    assert ledger.sync_deposit("alice", 999).deposited == 1000  # a stale reading
    assert ledger.sync_deposit("alice", 0).deposited == 1000
    assert ledger.sync_deposit("alice", 1000).deposited == 1000
    assert ledger.balance("alice").deposited == 1000


def test_sync_deposit_after_deposit_and_charges(ledger: Ledger) -> None:
    charged = charge(ledger, "bob", 100)  # deposit 300, charged 300
    assert charged == 300
    ledger.deposit("bob", 200)  # 500 in all
    assert ledger.sync_deposit("bob", 400).deposited == 500
    acct = ledger.sync_deposit("bob", 900)
    assert (acct.deposited, acct.charged, acct.available) == (900, 300, 600)
    assert ledger.check_invariants(PUB) == []


def test_sync_deposit_accepts_the_largest_amount(ledger: Ledger) -> None:
    assert ledger.sync_deposit("big", MAX_INT).deposited == MAX_INT


@pytest.mark.parametrize(
    ("total", "error"),
    [(-1, ValueError), (MAX_INT + 1, OverflowError), (1 << 200, OverflowError),
     (True, TypeError), (1.0, TypeError), ("5", TypeError)],
)
def test_sync_deposit_refuses_bad_amounts_like_deposit(
    ledger: Ledger, total: object, error: type[Exception]
) -> None:
    ledger.sync_deposit("alice", 10)
    with pytest.raises(error):
        ledger.sync_deposit("alice", total)  # type: ignore[arg-type]
    with pytest.raises(error):
        ledger.deposit("alice", total)  # type: ignore[arg-type]
    with pytest.raises(error):
        ledger.sync_deposit("newcomer", total)  # type: ignore[arg-type]
    assert ledger.balance("alice").deposited == 10
    assert [r[0] for r in client_rows(ledger.path)] == ["alice"]  # nothing written


def test_sync_deposit_is_durable(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path) as led:
        led.sync_deposit("alice", 700)
    with Ledger(path) as led:
        assert led.balance("alice").deposited == 700
        assert led.sync_deposit("alice", 600).deposited == 700


# --- record_signed / signed / all_signed ----------------------------------------------------

def test_record_signed_stores_and_returns(ledger: Ledger) -> None:
    charge(ledger, "alice", 100)  # charged 300
    assert ledger.signed("alice") is None
    got = ledger.record_signed("alice", CHAN, 5, 200, b"boc-5")
    assert got == SignedCharge("alice", CHAN, 5, 200, b"boc-5")
    assert ledger.signed("alice") == got
    assert ledger.all_signed() == [got]
    assert isinstance(ledger.signed("alice").voucher, bytes)  # type: ignore[union-attr]
    assert ledger.check_invariants(PUB) == []


def test_record_signed_keeps_the_newest(ledger: Ledger) -> None:
    charge(ledger, "alice", 100)
    ledger.record_signed("alice", CHAN, 5, 100, b"a")
    ledger.record_signed("alice", CHAN, 6, 100, b"b")  # same amount, newer seqno: fine
    newest = ledger.record_signed("alice", CHAN, 1_000, 300, b"c")  # up to all it was charged
    assert ledger.signed("alice") == newest == SignedCharge("alice", CHAN, 1_000, 300, b"c")
    assert len(ledger.all_signed()) == 1


@pytest.mark.parametrize("seqno", [5, 4, 0])
def test_record_signed_replay(ledger: Ledger, seqno: int) -> None:
    charge(ledger, "alice", 100)
    first = ledger.record_signed("alice", CHAN, 5, 100, b"first")
    with pytest.raises(VoucherReplay) as info:
        ledger.record_signed("alice", CHAN, seqno, 200, b"replayed")
    assert type(info.value) is VoucherReplay  # not the VoucherRegression subclass
    assert info.value.status == 409
    assert ledger.signed("alice") == first


def test_record_signed_regression(ledger: Ledger) -> None:
    charge(ledger, "alice", 100)
    first = ledger.record_signed("alice", CHAN, 5, 200, b"first")
    with pytest.raises(VoucherRegression):
        ledger.record_signed("alice", CHAN, 6, 199, b"lower")
    with pytest.raises(VoucherRegression):
        ledger.record_signed("alice", CHAN, 7, 0, b"zero")
    assert ledger.signed("alice") == first
    assert ledger.record_signed("alice", CHAN, 6, 200, b"ok").seqno == 6  # 6 was not consumed


def test_record_signed_above_charged(ledger: Ledger) -> None:
    charged = charge(ledger, "alice", 100)
    with pytest.raises(ReservationError):
        ledger.record_signed("alice", CHAN, 1, charged + 1, b"too much")
    assert ledger.signed("alice") is None
    ledger.record_signed("alice", CHAN, 1, charged, b"exact")
    with pytest.raises(ReservationError):
        ledger.record_signed("alice", CHAN, 2, charged + 1, b"too much")
    assert ledger.signed("alice").voucher == b"exact"  # type: ignore[union-attr]
    assert ledger.check_invariants(PUB) == []


def test_record_signed_deposit_is_not_charge(ledger: Ledger) -> None:
    """Only what was charged may be signed for, not what was deposited or reserved."""
    ledger.deposit("carol", 10_000)
    ledger.reserve("open", "carol", "w1", 5_000)
    with pytest.raises(ReservationError):
        ledger.record_signed("carol", CHAN, 1, 1, b"x")
    assert ledger.signed("carol") is None


def test_record_signed_unknown_client(ledger: Ledger) -> None:
    with pytest.raises(ReservationError):
        ledger.record_signed("ghost", CHAN, 1, 1, b"x")
    assert client_rows(ledger.path) == []  # the refused transaction left nothing behind
    assert ledger.all_signed() == []


@pytest.mark.parametrize(
    ("cumulative", "error"),
    [(-1, ValueError), (MAX_INT + 1, OverflowError), (True, TypeError), (2.0, TypeError)],
)
def test_record_signed_bad_amounts(
    ledger: Ledger, cumulative: object, error: type[Exception]
) -> None:
    charge(ledger, "alice", 100)
    with pytest.raises(error):
        ledger.record_signed("alice", CHAN, 1, cumulative, b"x")  # type: ignore[arg-type]
    assert ledger.signed("alice") is None


def test_record_signed_negative_seqno_is_a_typed_error(ledger: Ledger) -> None:
    charge(ledger, "alice", 100)
    with pytest.raises((ValueError, VoucherReplay)):
        ledger.record_signed("alice", CHAN, -1, 100, b"x")


def test_all_signed_orders_by_client_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path) as led:
        for i, client in enumerate(["zed", "amy", "mia"]):
            charge(led, client, 10 * (i + 1), request_id=f"r-{client}")
            led.record_signed(client, f"0:{i:064x}", 10 + i, 30 * (i + 1), bytes([i]) * 3)
        before = led.all_signed()
    assert [s.client for s in before] == ["amy", "mia", "zed"]
    with Ledger(path) as led:
        assert led.all_signed() == before
        assert led.signed("amy") == SignedCharge("amy", f"0:{1:064x}", 11, 60, b"\x01" * 3)
        assert led.signed("nobody") is None
        with pytest.raises(VoucherReplay):
            led.record_signed("amy", f"0:{1:064x}", 11, 60, b"again")
        assert led.check_invariants(PUB) == []


# --- check_invariants on a tampered table ---------------------------------------------------

def test_check_invariants_reports_signed_above_charged(ledger: Ledger) -> None:
    charged = charge(ledger, "alice", 100)
    ledger.record_signed("alice", CHAN, 3, charged, b"v")
    assert ledger.check_invariants(PUB) == []
    raw = sqlite3.connect(ledger.path, isolation_level=None)
    try:
        raw.execute("UPDATE client_signed SET cumulative = ? WHERE client = 'alice'",
                    (charged + 5,))
    finally:
        raw.close()
    problems = ledger.check_invariants(PUB)
    assert problems == [f"client 'alice': signed {charged + 5} > charged {charged}"]
    assert ledger.check_invariants() == problems


# --- migration ------------------------------------------------------------------------------

def make_v1_file(path: Path) -> None:
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in SCHEMA_V1.split(";"):
            if statement.strip():
                raw.execute(statement)
        raw.execute("PRAGMA user_version=1")
        raw.execute("INSERT INTO clients (client, deposited, charged, reserved, tokens)"
                    " VALUES ('old', 5000, 0, 0, 0)")
        raw.execute("INSERT INTO commits (seqno, charged, earned, commission, at)"
                    " VALUES (1, 0, 0, 0, 1700000000)")
    finally:
        raw.close()


def test_new_file_is_schema_2(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    Ledger(path).close()
    raw = sqlite3.connect(path)
    try:
        assert SCHEMA_VERSION == 2
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 2
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "client_signed" in tables
    finally:
        raw.close()


def test_migrates_a_schema_1_file(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    make_v1_file(path)
    with Ledger(path) as led:
        acct = led.balance("old")
        assert (acct.deposited, acct.charged, acct.reserved, acct.tokens) == (5000, 0, 0, 0)
        assert led.commits() == [Commit(1, 0, 0, 0, 1700000000)]
        assert led._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert led.all_signed() == []
        # the new table works, with the old account
        charged = charge(led, "old", 100)
        assert charged == 300
        stored = led.record_signed("old", CHAN, 1, 300, b"v2")
        assert led.signed("old") == stored
        assert led.check_invariants(PUB) == []
    with Ledger(path) as led:  # reopening a migrated file does not migrate again
        assert led.signed("old") == stored
        assert led.balance("old").deposited == 5300


def test_migration_foreign_key_holds(tmp_path: Path) -> None:
    """client_signed.client references clients: a row for an unknown client is refused."""
    path = tmp_path / "v1.sqlite"
    make_v1_file(path)
    with Ledger(path) as led, pytest.raises(sqlite3.IntegrityError):
        led._conn.execute("INSERT INTO client_signed VALUES ('nobody', 'c', 1, 0, x'00')")


def test_unknown_future_version_refused(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite"
    Ledger(path).close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    raw.commit()
    raw.close()
    with pytest.raises(LedgerError, match="version 3"):
        Ledger(path)


# --- Commit.state_hash ----------------------------------------------------------------------

def _u128(value: int) -> bytes:
    return struct.pack(">QQ", value >> 64, value & (2**64 - 1))


def reference_state_hash(c: Commit) -> bytes:
    """The docstring's layout, written independently: tag, seqno u64, charged, earned,
    commission u128, at u64, all big-endian, SHA-256."""
    message = (b"cocoon-commit" + bytes([0, 1]) + struct.pack(">Q", c.seqno)
               + _u128(c.charged) + _u128(c.earned) + _u128(c.commission)
               + struct.pack(">Q", c.at))
    assert len(message) == 15 + 8 + 3 * 16 + 8
    return hashlib.sha256(message).digest()


@pytest.mark.parametrize(
    "commit",
    [Commit(1, 0, 0, 0, 0), Commit(7, 300, 200, 100, 1_700_000_000),
     Commit(2**64 - 1, 2**128 - 1, 2**100, 2**64, 2**64 - 1)],
)
def test_state_hash_layout(commit: Commit) -> None:
    h = commit.state_hash()
    assert len(h) == 32
    assert h == reference_state_hash(commit)
    assert h == Commit(commit.seqno, commit.charged, commit.earned, commit.commission,
                       commit.at).state_hash()  # deterministic


def test_state_hash_known_answer() -> None:
    msg = bytes.fromhex(
        "636f636f6f6e2d636f6d6d6974" "0001" "0000000000000002"
        + "00" * 15 + "0a" + "00" * 15 + "07" + "00" * 15 + "03" + "000000006553f100")
    assert Commit(2, 10, 7, 3, 1_700_000_000).state_hash() == hashlib.sha256(msg).digest()


def test_state_hash_changes_with_every_field() -> None:
    base = Commit(3, 1000, 600, 400, 1_700_000_123)
    seen = {base.state_hash()}
    for f in dataclasses.fields(Commit):
        changed = dataclasses.replace(base, **{f.name: getattr(base, f.name) + 1})
        seen.add(changed.state_hash())
        assert changed.state_hash() == reference_state_hash(changed)
    assert len(seen) == 1 + len(dataclasses.fields(Commit))
    # fields are positional: swapping two amounts changes the hash
    assert Commit(3, 600, 1000, 400, 1).state_hash() != Commit(3, 1000, 600, 400, 1).state_hash()


@pytest.mark.parametrize(
    "commit",
    [Commit(-1, 0, 0, 0, 0), Commit(1, 2**128, 0, 0, 0), Commit(2**64, 0, 0, 0, 0),
     Commit(1, 0, 0, 0, 2**64)],
)
def test_state_hash_refuses_values_outside_the_layout(commit: Commit) -> None:
    with pytest.raises(OverflowError):
        commit.state_hash()


def test_ledger_commits_hash_their_totals(ledger: Ledger) -> None:
    charge(ledger, "alice", 100)
    first = ledger.commit(at=1_700_000_000)
    assert (first.seqno, first.charged, first.earned, first.commission) == (1, 300, 200, 100)
    assert first.state_hash() == reference_state_hash(first)
    second = ledger.commit(at=1_700_000_060)
    assert second.seqno == 2 and second.state_hash() != first.state_hash()
    assert [c.state_hash() for c in ledger.commits()] == [first.state_hash(),
                                                         second.state_hash()]
