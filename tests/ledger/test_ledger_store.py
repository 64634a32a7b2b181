"""The proxy's SQLite ledger: operations, idempotency, invariants, and a stateful property test
over random request sequences (deposits, reservations, streams, cancels, failures)."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from cocoon.ledger import (
    Bill,
    InsufficientFunds,
    Ledger,
    LedgerError,
    Prices,
    ReservationError,
    VoucherBook,
    price_usage,
    reservation_for,
)
from cocoon.ledger.store import SCHEMA_VERSION
from cocoon.ledger.vouchers import public_key_bytes
from cocoon.usage import Usage

KEY = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
PUB = public_key_bytes(KEY)
PRICES = Prices(price_per_token=3, worker_fee_per_token=2)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.sqlite")


def test_pragmas_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path) as led:
        conn = led._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version=99")
    raw.commit()
    raw.close()
    with pytest.raises(LedgerError):
        Ledger(path)


def test_request_lifecycle(ledger: Ledger) -> None:
    ledger.deposit("alice", 10_000)
    amount = reservation_for(1000, 200, 1000, PRICES)
    assert amount == 3600
    res = ledger.reserve("r1", "alice", "w1", amount)
    assert res.state == "open"
    assert ledger.balance("alice").available == 10_000 - 3600
    assert ledger.reserve("r1", "alice", "w1", amount) == res  # idempotent
    with pytest.raises(ReservationError):
        ledger.reserve("r1", "alice", "w1", amount + 1)
    bill = price_usage(Usage(prompt_tokens=34, cached_tokens=11, completion_tokens=100,
                             reasoning_tokens=10), 1000, PRICES)
    s = ledger.settle("r1", bill, KEY)
    assert s.bill == bill and s.overage == 0
    again = price_usage(Usage(prompt_tokens=1, completion_tokens=1), 1000, PRICES)
    assert ledger.settle("r1", again, KEY) == s
    acct = ledger.balance("alice")
    assert (acct.deposited, acct.charged, acct.reserved, acct.tokens) == (10_000, 402, 0, 134)
    assert ledger.earnings("w1").earned == 268
    assert ledger.totals().commission == 134
    assert s.client_voucher is not None and s.worker_voucher is not None
    assert s.client_voucher.voucher.cumulative_nanoton == 402
    assert s.worker_voucher.voucher.cumulative_nanoton == 268
    assert ledger.last_voucher("client_charge", "alice") == s.client_voucher
    with pytest.raises(ReservationError):
        ledger.release("r1")
    assert ledger.check_invariants(PUB) == []


def test_insufficient_funds_is_402(ledger: Ledger) -> None:
    ledger.deposit("bob", 100)
    ledger.reserve("a", "bob", "w", 60)
    with pytest.raises(InsufficientFunds) as info:
        ledger.reserve("b", "bob", "w", 41)
    assert info.value.status == 402 and info.value.available == 40
    with pytest.raises(InsufficientFunds):
        ledger.reserve("c", "nobody", "w", 1)
    ledger.reserve("free", "nobody", "w", 0)  # free workers need no balance
    assert ledger.reservation("b") is None
    assert ledger.check_invariants(PUB) == []


def test_release_and_zero_token_settle(ledger: Ledger) -> None:
    ledger.deposit("c", 1000)
    ledger.reserve("fail", "c", "w", 500)
    assert ledger.release("fail").state == "released"
    assert ledger.release("fail").state == "released"  # idempotent
    with pytest.raises(ReservationError):
        ledger.settle("fail", Bill.for_tokens(1, PRICES), KEY)
    with pytest.raises(ReservationError):
        ledger.release("unknown")
    with pytest.raises(ReservationError):
        ledger.settle("unknown", Bill.for_tokens(1, PRICES), KEY)
    ledger.reserve("cancel", "c", "w", 500)
    s = ledger.settle("cancel", Bill.for_tokens(0, PRICES), KEY)
    assert s.client_voucher is None and s.bill.client_cost == 0
    assert ledger.balance("c").available == 1000
    assert ledger.totals().settled_requests == 1
    assert ledger.check_invariants(PUB) == []


def test_overage_is_capped_and_recorded(ledger: Ledger) -> None:
    ledger.deposit("c", 1000)
    ledger.reserve("r", "c", "w", 100)
    s = ledger.settle("r", Bill.for_tokens(50, PRICES), KEY)  # 150 > 100 reserved
    assert s.bill.adjusted_tokens == 33 and s.bill.client_cost == 99 and s.overage == 51
    assert ledger.balance("c").charged == 99
    assert ledger.check_invariants(PUB) == []


def test_commits_record_totals(ledger: Ledger) -> None:
    ledger.deposit("c", 1000)
    assert ledger.commit(at=100).seqno == 1
    ledger.reserve("r", "c", "w", 300)
    ledger.settle("r", Bill.for_tokens(10, PRICES), KEY)
    c2 = ledger.commit(at=101)
    assert (c2.seqno, c2.charged, c2.earned, c2.commission, c2.at) == (2, 30, 20, 10, 101)
    assert [c.seqno for c in ledger.commits()] == [1, 2]


def test_check_invariants_detects_tampering(ledger: Ledger) -> None:
    ledger.deposit("c", 1000)
    ledger.reserve("r", "c", "w", 300)
    ledger.settle("r", Bill.for_tokens(10, PRICES), KEY)
    ledger.reserve("open", "c", "w", 100)
    assert ledger.check_invariants(PUB) == []
    assert ledger.check_invariants(public_key_bytes(Ed25519PrivateKey.generate())) != []
    conn = ledger._conn
    conn.execute("UPDATE workers SET earned = earned + 1")
    assert any("conservation" in v for v in ledger.check_invariants())
    conn.execute("UPDATE workers SET earned = earned - 1")
    conn.execute("UPDATE clients SET reserved = 0")
    assert any("reserved" in v for v in ledger.check_invariants())
    conn.execute("UPDATE clients SET reserved = 100, deposited = 50")
    assert any("charged" in v for v in ledger.check_invariants())
    conn.execute("UPDATE clients SET deposited = 1000")
    (data,) = conn.execute("SELECT data FROM vouchers WHERE kind = 'client_charge'").fetchone()
    conn.execute("UPDATE vouchers SET data = ? WHERE kind = 'client_charge'", (data[:-1] + b"0",))
    assert any("voucher" in v for v in ledger.check_invariants(PUB))


def test_reopen_keeps_state(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path) as led:
        led.deposit("c", 1000)
        led.reserve("r", "c", "w", 300)
        s = led.settle("r", Bill.for_tokens(10, PRICES), KEY)
        led.reserve("open", "c", "w", 100)
    with Ledger(path) as led:
        assert led.settlement("r") == s
        assert [r.request_id for r in led.open_reservations()] == ["open"]
        assert led.check_invariants(PUB) == []


def test_two_handles_settle_once(tmp_path: Path) -> None:
    # two proxy handles (or a retry after a lost reply) settling the same request
    path = tmp_path / "l.sqlite"
    with Ledger(path) as one, Ledger(path) as two:
        one.deposit("c", 1000)
        two.reserve("r", "c", "w", 300)
        first = one.settle("r", Bill.for_tokens(10, PRICES), KEY)
        assert two.settle("r", Bill.for_tokens(20, PRICES), KEY) == first
        assert two.balance("c").charged == 30
        assert one.check_invariants(PUB) == []


# -- stateful property test -----------------------------------------------------------------


@dataclass
class ModelRequest:
    client: str
    worker: str
    amount: int
    prices: Prices
    coefficient: int
    max_tokens: int
    prompt_estimate: int
    state: str = "open"
    charged: int | None = None


prices_st = st.builds(
    lambda price, fee_share, m: Prices(price, price * fee_share // 100, *m),
    st.integers(min_value=0, max_value=50).map(lambda p: 50 - p),
    st.integers(min_value=0, max_value=100),
    st.tuples(*[st.sampled_from([10000, 2500, 15000, 30000, 0])] * 4),
)


class LedgerMachine(RuleBasedStateMachine):
    requests = Bundle("requests")

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="ledger-sm-")
        self.ledger = Ledger(Path(self.dir) / "ledger.sqlite")
        self.deposited: dict[str, int] = {}
        self.charged: dict[str, int] = {}
        self.earned: dict[str, int] = {}
        self.commission = 0
        self.model: dict[str, ModelRequest] = {}
        self.client_side = VoucherBook()  # what clients and workers keep
        self.worker_side = VoucherBook()
        self.next_id = 0

    def teardown(self) -> None:
        self.ledger.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def reserved(self, client: str) -> int:
        return sum(
            r.amount for r in self.model.values() if r.client == client and r.state == "open"
        )

    @initialize(amounts=st.lists(st.integers(0, 10**7), min_size=3, max_size=3))
    def fund(self, amounts: list[int]) -> None:
        for client, amount in zip("abc", amounts, strict=True):
            self.deposit(client, amount)

    @rule(client=st.sampled_from(["a", "b", "c"]), amount=st.integers(0, 5 * 10**6))
    def deposit(self, client: str, amount: int) -> None:
        self.ledger.deposit(client, amount)
        self.deposited[client] = self.deposited.get(client, 0) + amount

    @rule(
        target=requests,
        client=st.sampled_from(["a", "b", "c"]),
        worker=st.sampled_from(["w1", "w2"]),
        prices=prices_st,
        coefficient=st.sampled_from([1000, 500, 1500, 4000, 0]),
        max_tokens=st.integers(0, 3000),
        prompt_estimate=st.integers(0, 2000),
    )
    def reserve(
        self,
        client: str,
        worker: str,
        prices: Prices,
        coefficient: int,
        max_tokens: int,
        prompt_estimate: int,
    ) -> str:
        rid = f"req-{self.next_id}"
        self.next_id += 1
        amount = reservation_for(max_tokens, prompt_estimate, coefficient, prices)
        available = (
            self.deposited.get(client, 0) - self.charged.get(client, 0) - self.reserved(client)
        )
        if available < amount:
            with pytest.raises(InsufficientFunds):
                self.ledger.reserve(rid, client, worker, amount)
            return rid  # never reserved: later operations on it must fail
        self.ledger.reserve(rid, client, worker, amount)
        self.model[rid] = ModelRequest(
            client, worker, amount, prices, coefficient, max_tokens, prompt_estimate
        )
        return rid

    @rule(
        rid=requests,
        outcome=st.sampled_from(["complete", "stream_cut", "cancelled", "over"]),
        data=st.data(),
    )
    def settle(self, rid: str, outcome: str, data: st.DataObject) -> None:
        req = self.model.get(rid)
        if req is None or req.state == "released":
            with pytest.raises(ReservationError):
                self.ledger.settle(rid, Bill.for_tokens(0, PRICES), KEY)
            return
        if req.state == "settled":
            before = self.ledger.settlement(rid)
            again = self.ledger.settle(rid, Bill.for_tokens(1, req.prices), KEY)
            assert again == before and again.bill.client_cost == req.charged
            return
        if outcome == "cancelled":
            usage = Usage()
        else:
            prompt = data.draw(st.integers(0, req.prompt_estimate))
            limit = req.max_tokens if outcome != "stream_cut" else req.max_tokens // 2
            completion = data.draw(st.integers(0, limit))
            if outcome == "over":  # a worker reporting beyond max_tokens
                prompt = req.prompt_estimate
                completion = req.max_tokens + data.draw(st.integers(1, 5000))
            usage = Usage(
                prompt_tokens=prompt,
                cached_tokens=data.draw(st.integers(0, prompt)),
                completion_tokens=completion,
                reasoning_tokens=data.draw(st.integers(0, completion)),
            )
        bill = price_usage(usage, req.coefficient, req.prices)
        if outcome != "over":
            assert bill.client_cost <= req.amount  # the reservation is an upper bound
        s = self.ledger.settle(rid, bill, KEY)
        expected = bill.capped(req.amount)
        assert s.bill == expected and s.overage == bill.client_cost - expected.client_cost
        req.state, req.charged = "settled", expected.client_cost
        self.charged[req.client] = self.charged.get(req.client, 0) + expected.client_cost
        self.earned[req.worker] = self.earned.get(req.worker, 0) + expected.worker_income
        self.commission += expected.commission
        if s.client_voucher is not None:
            assert s.worker_voucher is not None
            self.client_side.accept(s.client_voucher, PUB)
            self.worker_side.accept(s.worker_voucher, PUB)
        else:
            assert expected.adjusted_tokens == 0

    @rule(rid=requests)
    def release(self, rid: str) -> None:
        req = self.model.get(rid)
        if req is None or req.state == "settled":
            with pytest.raises(ReservationError):
                self.ledger.release(rid)
            return
        assert self.ledger.release(rid).state == "released"
        req.state = "released"

    @rule(rid=consumes(requests))
    def re_reserve(self, rid: str) -> None:
        req = self.model.get(rid)
        if req is None:
            return
        again = self.ledger.reserve(rid, req.client, req.worker, req.amount)
        assert again.state == req.state

    @rule(at=st.integers(0, 2**31))
    def commit(self, at: int) -> None:
        entry = self.ledger.commit(at)
        assert entry.charged == sum(self.charged.values())

    @invariant()
    def ledger_consistent(self) -> None:
        assert self.ledger.check_invariants(PUB) == []

    @invariant()
    def matches_model(self) -> None:
        t = self.ledger.totals()
        assert t.charged == sum(self.charged.values())
        assert t.earned == sum(self.earned.values())
        assert t.commission == self.commission
        assert t.charged == t.earned + t.commission  # to the nanoTON
        for client, deposited in self.deposited.items():
            acct = self.ledger.balance(client)
            assert acct.deposited == deposited
            assert acct.charged == self.charged.get(client, 0)
            assert acct.reserved == self.reserved(client)
            assert acct.charged + acct.reserved <= acct.deposited  # reservations fit
            assert acct.available >= 0
            local = self.client_side.last("client_charge", client)
            if local is not None:  # client's copy equals the proxy's last voucher
                assert local == self.ledger.last_voucher("client_charge", client)
        for worker, earned in self.earned.items():
            assert self.ledger.earnings(worker).earned == earned
            local = self.worker_side.last("worker_payout", worker)
            if local is not None:
                assert local == self.ledger.last_voucher("worker_payout", worker)


LedgerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_ledger_state_machine = LedgerMachine.TestCase
