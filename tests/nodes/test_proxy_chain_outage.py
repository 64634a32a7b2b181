"""The proxy's payments through a chain outage (issue 10, items 3 and 7): backoff bounded
and jittered, nothing escapes a tick or a publish, what accrued is published and redeemed
when the chain returns; unsigned credit bounded by a share of the real deposit."""

from __future__ import annotations

import asyncio
import hashlib
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.chain.base import ChannelState, ChannelStatus
from cocoon.chain.errors import ChainUnavailable
from cocoon.chain.vouchers import sign_voucher
from cocoon.config import BillingConfig, ProxyConfig
from cocoon.errors import ConfigError, PaymentRequired
from cocoon.ledger import Bill, Ledger
from cocoon.ledger.accounts import channel_account
from cocoon.ledger.store import SignedCharge
from cocoon.nodes.proxy.node import ProxyNode
from cocoon.nodes.proxy.payments import ChainHealth, ProxyPayments, _Client
from cocoon.transport import TcpListener
from cocoon.wire import Payment


def _key(name: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(name.encode()).digest())


def test_backoff_doubles_with_jitter_up_to_a_cap() -> None:
    now = [100.0]
    h = ChainHealth(base_s=0.5, cap_s=8.0, clock=lambda: now[0], wall=lambda: 1234.0,
                    rng=random.Random(7))
    assert h.due() and h.snapshot()["state"] == "up"
    delays = [h.failed(ChainUnavailable("gone")) for _ in range(12)]
    for n, d in enumerate(delays):
        nominal = min(8.0, 0.5 * 2**n)
        assert nominal / 2 <= d <= nominal  # jittered, never above the cap
    assert len({round(d, 6) for d in delays[6:]}) > 1  # jitter, not a fixed cap
    snap = h.snapshot()
    assert snap == {"state": "down", "since": 1234, "last_error": "ChainUnavailable: gone",
                    "retries": 12, "outages": 1}
    assert not h.due()
    now[0] = h.retry_at
    assert h.due()
    assert h.recovered() and not h.down and not h.recovered()
    h.failed(ChainUnavailable("again"))
    assert h.snapshot()["outages"] == 2 and h.retries == 1


class _DownChain:
    """The ``Chain`` calls the proxy makes, failing while ``down``; a tiny in-memory chain."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0
        self.charged: dict[str, int] = {}
        self.commits: list[int] = []

    def _call(self) -> None:
        self.calls += 1
        if self.down:
            raise ChainUnavailable("chain service at http://127.0.0.1:1/rpc is unreachable")

    async def now(self) -> int:
        self._call()
        return 0

    async def channel_state(self, channel: str) -> ChannelState:
        self._call()
        charged = self.charged.get(channel, 0)
        return ChannelState(ChannelStatus.OPEN, 10_000 - charged, charged, 0, 0)

    async def submit_voucher(self, channel: str, voucher: Any, *, sender: str) -> None:
        self._call()
        self.charged[channel] = voucher.cumulative

    async def commit_state(self, proxy: str, body: Any, *, sender: str) -> None:
        self._call()
        self.commits.append(len(self.commits) + 1)


class _NodeChain:
    def __init__(self, chain: _DownChain) -> None:
        self.chain = chain
        self.wallet = "0:" + "11" * 32
        self.sender = "proxy"

    async def state(self, channel: str) -> ChannelState:
        return await self.chain.channel_state(channel)


@pytest.fixture
def ledger_pool(tmp_path: Path) -> Any:
    pool = ThreadPoolExecutor(max_workers=1)
    ledger = pool.submit(Ledger, tmp_path / "ledger.sqlite").result()
    yield ledger, pool
    pool.submit(ledger.close).result()
    pool.shutdown()


def _payments(ledger: Ledger, pool: ThreadPoolExecutor, chain: _DownChain, *,
              max_unsigned: int = 10**9, fraction: float = 0.1,
              health: ChainHealth | None = None) -> ProxyPayments:
    async def run(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    return ProxyPayments(_NodeChain(chain), _key("proxy"), run, ledger,  # type: ignore[arg-type]
                         max_unsigned, "0:" + "22" * 32, max_unsigned_fraction=fraction,
                         health=health)


async def test_unsigned_credit_is_bounded_by_a_share_of_the_deposit(ledger_pool: Any) -> None:
    ledger, pool = ledger_pool
    p = _payments(ledger, pool, _DownChain(), max_unsigned=10**9, fraction=0.1)
    p.clients["channel:a"] = _Client("0:" + "aa" * 32, b"k" * 32, deposit=1_000, charged=100)
    await p.check_signed("channel:a")  # 100 unsigned <= 10% of 1,000
    assert p.unsigned_limit("channel:a") == 100 and p.within_limits("channel:a")
    p.note_charged("channel:a", 101)
    with pytest.raises(PaymentRequired, match=r"limit 0.0000001 TON"):
        await p.check_signed("channel:a")
    # the proxy's guess before it starts a worker early says the same, without a chain read
    assert not p.within_limits("channel:a") and not p.within_limits("channel:nobody")
    # a large deposit: the flat limit applies
    p.clients["channel:b"] = _Client("0:" + "bb" * 32, b"k" * 32, deposit=10**12)
    assert p.unsigned_limit("channel:b") == 10**9
    # exact integers: a float product would round 10**18 - 1 nanoTON x 0.1 up to 10**17
    p.max_unsigned = 10**18
    p.clients["channel:c"] = _Client("0:" + "cc" * 32, b"k" * 32, deposit=10**18 - 1)
    assert p.unsigned_limit("channel:c") == 10**17 - 1


def test_the_fraction_is_validated() -> None:
    assert BillingConfig().max_unsigned_fraction == 0.1
    with pytest.raises(ConfigError, match=r"billing\.max_unsigned_fraction"):
        BillingConfig(max_unsigned_fraction=1.5)


async def test_an_outage_is_waited_out_and_what_accrued_reaches_the_chain(
        ledger_pool: Any) -> None:
    ledger, pool = ledger_pool
    now = [0.0]
    chain = _DownChain()
    health = ChainHealth(clock=lambda: now[0], rng=random.Random(1))
    p = _payments(ledger, pool, chain, health=health)
    channel, account, client_key = "0:" + "aa" * 32, "channel:aa", _key("client")

    def charge() -> None:
        ledger.sync_deposit(account, 10_000)
        ledger.reserve("r1", account, "worker:w", 500)
        ledger.settle("r1", Bill(250, 500, 250, 250, 2, 1), _key("proxy"))

    pool.submit(charge).result()
    voucher = sign_voucher(client_key, "client", channel, 1, 500).body_boc()
    p.clients[account] = _Client(channel, b"", deposit=10_000, charged=500,
                                 signed=SignedCharge(account, channel, 1, 500, voucher),
                                 dirty=True)
    commit = pool.submit(ledger.commit, 1).result()

    chain.down = True
    await p.publish(commit)  # does not raise; kept for later
    assert health.down and p.snapshot()["state"] == "down"
    assert p.snapshot()["commit_pending"] == commit.seqno and p.errors == 0
    calls = chain.calls
    await p.tick()  # not due yet: no call to the chain, but the signature is made durable
    assert chain.calls == calls
    assert pool.submit(ledger.signed, account).result() is not None
    now[0] = health.retry_at
    await p.tick()  # due: tried, still down, backed off further
    assert chain.calls == calls + 1 and health.retries == 2
    assert not await p.try_refresh(account)  # a reservation is not held up by the chain

    chain.down = False
    now[0] = health.retry_at
    await p.tick()
    assert not health.down and p.snapshot()["state"] == "up"
    assert chain.commits == [1] and p.commits_published == 1
    assert chain.charged[channel] == 500 and p.collected == 500
    assert p.snapshot()["commit_pending"] is None and p.errors == 0


class _Hello:
    node_id = "c1"


class _Peer:
    """What the proxy's payment handling uses of a client connection."""

    def __init__(self) -> None:
        self.closed = False
        self.hello = _Hello()
        self.tasks: list[asyncio.Task[None]] = []
        self.sent: list[Any] = []

    def spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self.tasks.append(task)
        return task

    def send(self, msg: Any) -> None:
        self.sent.append(msg)


class _BindingPayments:
    """Binding fails with an outage ``fail`` times, then succeeds."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.calls = 0
        self.health = ChainHealth(base_s=0.01, cap_s=0.02)

    async def bind_client(self, channel: str, voucher: bytes) -> str:
        self.calls += 1
        if self.calls <= self.fail:
            raise ChainUnavailable("chain service down")
        return channel_account(channel)

    def note_outage(self, exc: BaseException, what: str) -> None:
        self.health.failed(exc)

    def note_reached(self) -> None:
        self.health.recovered()


async def test_a_client_binding_met_by_an_outage_is_retried_until_it_binds(
        tmp_path: Path) -> None:
    """Found under `cocoon up`: a client whose first Payment reached the proxy while the
    chain was down stayed unbound (402 "no payment channel") after the chain returned."""
    config = ProxyConfig(listen="127.0.0.1:0", http="127.0.0.1:0", billing=BillingConfig(
        enabled=True, ledger_path=str(tmp_path / "l.sqlite"),
        signing_key_file=str(tmp_path / "k.pem")))
    proxy = ProxyNode(config, listener=TcpListener())
    assert proxy.billing is not None
    fake = _BindingPayments(fail=3)
    proxy.billing.payments = fake  # type: ignore[assignment]
    peer, channel = _Peer(), "0:" + "ab" * 32
    try:
        await proxy._on_payment(peer, Payment(channel, b"voucher"))  # type: ignore[arg-type]
        assert peer not in proxy._accounts and fake.health.down
        await proxy._on_payment(peer, Payment(channel, b"voucher"))  # type: ignore[arg-type]
        assert len(peer.tasks) == 1  # one retry loop per client, not one per Payment
        await asyncio.wait_for(peer.tasks[0], 5)
        assert proxy._accounts[peer] == channel_account(channel)  # type: ignore[index]
        assert fake.calls == 4 and not fake.health.down
    finally:
        proxy.billing.close()


async def test_requests_that_find_a_stale_channel_together_share_one_read(
        ledger_pool: Any) -> None:
    """Issue 12 (found under `cocoon bench --mode up`): 200 requests arriving once the
    channel's last read is older than billing.channel_recheck_s each read it from the chain,
    all at once; now they wait for one read."""
    ledger, pool = ledger_pool
    chain = _DownChain()
    p = _payments(ledger, pool, chain)
    p.recheck_s = 0.001
    p.clients["channel:a"] = _Client("0:" + "aa" * 32, b"k" * 32, deposit=10_000)
    await asyncio.sleep(0.002)
    await asyncio.gather(*(p.check_signed("channel:a") for _ in range(200)))
    assert chain.calls == 1
    assert p.clients["channel:a"].read_at > 0  # it was read
    await asyncio.sleep(0.002)
    assert not p.within_limits("channel:a")  # due a read: no worker starts before it
    await p.check_signed("channel:a")  # stale again: a new read
    assert chain.calls == 2


async def test_a_watched_chain_spares_requests_the_channel_read(ledger_pool: Any) -> None:
    """While the watcher follows the chain (every transaction re-reads the channels), a
    request does not re-read its stale channel: at one request a second that read was a chain
    call per request (+30 ms TTFT under `cocoon bench --mode up --streams 1`)."""
    ledger, pool = ledger_pool
    chain = _DownChain()
    p = _payments(ledger, pool, chain)
    p.recheck_s = 0.001
    p.clients["channel:a"] = _Client("0:" + "aa" * 32, b"k" * 32, deposit=10_000)
    p.watching = True
    await asyncio.sleep(0.002)
    await p.check_signed("channel:a")
    assert chain.calls == 0 and p.within_limits("channel:a")
    p.watching = False  # the watcher is down (an outage): requests read again
    await p.check_signed("channel:a")
    assert chain.calls == 1
