"""The embedded chain: the compiled contracts run in @ton/sandbox (Node child process), driven
from Python through cocoon.chain.embedded.EmbeddedChain.

Skipped, with the reason, when `node` or contracts/node_modules is missing.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytoniq_core.boc.builder import Builder

from cocoon.chain import Chain, ChannelSpec, ChannelStatus, TxResult, sign_voucher
from cocoon.chain.base import DEFAULT_MSG_VALUE, TOPUP_FEE
from cocoon.chain.embedded import EmbeddedChain, find_toolchain
from cocoon.chain.errors import (
    BadVoucherSignature,
    EarlyClose,
    UnknownOp,
    VoucherAmountDecreased,
    VoucherReplayed,
    VoucherWrongChannel,
    VoucherWrongKind,
    WrongSender,
    WrongState,
)
from cocoon.chain.vouchers import (
    OP_CLIENT_CHARGE,
    cell_boc,
    public_key,
    voucher_message,
    voucher_payload,
)
from cocoon.errors import ConfigError, PaymentError, ToolchainMissing

try:
    find_toolchain()
except ToolchainMissing as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)

TON = 1_000_000_000
T0 = 1_800_000_000
CLOSE_DELAY = 3600
OP_PAYOUT = 0xC59A7CD3
OP_EXCESSES = 0xD53276DB
OP_REFUND = 0xC68EBC7B


def _key(name: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(name.encode()).digest())


CLIENT_KEY = _key("client-key")
PROXY_KEY = _key("proxy-key")


def _pub(key: Ed25519PrivateKey) -> bytes:
    return public_key(key)


@pytest.fixture
async def chain() -> AsyncIterator[EmbeddedChain]:
    c = await EmbeddedChain.start(now=T0)
    try:
        yield c
    finally:
        await c.aclose()


async def _open_channel(chain: EmbeddedChain, deposit: int, channel_id: int = 1) -> str:
    client = await chain.wallet("client")
    proxy = await chain.wallet("proxy")
    spec = ChannelSpec(
        kind="client",
        funder=client,
        payee=proxy,
        signer_pubkey=_pub(CLIENT_KEY),
        payee_pubkey=_pub(PROXY_KEY),
        close_delay=CLOSE_DELAY,
        channel_id=channel_id,
    )
    before = await chain.balance(client)
    res = await chain.deploy_channel(spec, sender="client", deposit=deposit)
    assert res.success and res.exit_code == 0
    assert await chain.balance(client) == before + res.balance_delta(client)
    return res.to


async def _check_delta(chain: EmbeddedChain, res: TxResult, before: dict[str, int]) -> None:
    """Every account's balance moved exactly as the trace says, to the nanoTON."""
    for addr, bal in before.items():
        assert await chain.balance(addr) == bal + res.balance_delta(addr), addr


async def test_is_a_chain(chain: EmbeddedChain) -> None:
    assert isinstance(chain, Chain)
    assert await chain.now() == T0


async def test_full_lifecycle(chain: EmbeddedChain) -> None:
    client = await chain.wallet("client")
    proxy = await chain.wallet("proxy")
    addr = await _open_channel(chain, 10 * TON)
    st = await chain.channel_state(addr)
    assert (st.status, st.balance, st.charged, st.last_seqno) == (
        ChannelStatus.OPEN,
        10 * TON,
        0,
        0,
    )

    # deposit from the funder
    before = {a: await chain.balance(a) for a in (client, addr)}
    res = await chain.deposit(addr, 5 * TON, sender="client")
    await _check_delta(chain, res, before)
    assert res.on(addr)[0].in_value == 5 * TON + TOPUP_FEE
    assert (await chain.channel_state(addr)).balance == 15 * TON

    # three cumulative vouchers: the proxy is paid exactly each delta
    prev = 0
    for seqno, cumulative in [(1, 300_000_000), (2, 1_000_000_001), (3, 2_500_000_000)]:
        v = sign_voucher(CLIENT_KEY, "client", addr, seqno, cumulative)
        before = {a: await chain.balance(a) for a in (client, proxy, addr)}
        res = await chain.submit_voucher(addr, v, sender="proxy")
        sent = res.sent_by(addr)
        payouts = [m for m in sent if m.op == OP_PAYOUT]
        assert len(payouts) == 1
        assert payouts[0].to == proxy and payouts[0].op == OP_PAYOUT
        # the value the proxy attached goes back to it, less the gas (issue 10, finding 2)
        excess = [m for m in sent if m.op == OP_EXCESSES]
        assert len(excess) == 1 and excess[0].to == proxy
        assert 0 < excess[0].value < DEFAULT_MSG_VALUE
        assert payouts[0].value == cumulative - prev
        await _check_delta(chain, res, before)
        prev = cumulative
    st = await chain.channel_state(addr)
    assert (st.balance, st.charged, st.last_seqno) == (15 * TON - prev, prev, 3)

    # replay: typed error with the exit code, nothing changes
    with pytest.raises(VoucherReplayed) as ei:
        await chain.submit_voucher(
            addr, sign_voucher(CLIENT_KEY, "client", addr, 3, 9 * TON), sender="proxy"
        )
    assert ei.value.exit_code == 102 and isinstance(ei.value, PaymentError)
    assert "replay" in ei.value.meaning
    with pytest.raises(VoucherAmountDecreased) as ed:
        await chain.submit_voucher(
            addr, sign_voucher(CLIENT_KEY, "client", addr, 4, 1), sender="proxy"
        )
    assert ed.value.exit_code == 103
    assert (await chain.channel_state(addr)).charged == prev

    # close: only the funder, only after the delay
    with pytest.raises(WrongSender):
        await chain.request_close(addr, sender="proxy")
    await chain.request_close(addr, sender="client")
    st = await chain.channel_state(addr)
    assert st.status is ChannelStatus.CLOSING and st.close_at == T0 + CLOSE_DELAY
    with pytest.raises(EarlyClose) as ee:
        await chain.close(addr, sender="client")
    assert ee.value.exit_code == 105
    with pytest.raises(WrongState):
        await chain.withdraw(addr, sender="client")
    assert await chain.advance_time(CLOSE_DELAY - 1) == T0 + CLOSE_DELAY - 1
    with pytest.raises(EarlyClose):
        await chain.close(addr, sender="client")
    await chain.advance_time(1)
    await chain.close(addr, sender="client")
    assert (await chain.channel_state(addr)).status is ChannelStatus.CLOSED
    with pytest.raises(WrongState) as ews:
        await chain.submit_voucher(
            addr, sign_voucher(CLIENT_KEY, "client", addr, 9, 3 * TON), sender="proxy"
        )
    assert ews.value.exit_code == 106

    # withdraw: the whole account goes back to the funder, exact to the nanoTON
    account_before = await chain.balance(addr)
    before = {a: await chain.balance(a) for a in (client, addr)}
    res = await chain.withdraw(addr, sender="client", query_id=42)
    refunds = res.sent_by(addr)
    assert len(refunds) == 1 and refunds[0].to == client and refunds[0].op == OP_REFUND
    assert refunds[0].value >= 15 * TON - prev
    wtx = res.on(addr)[0]
    assert refunds[0].value + refunds[0].fwd_fee + wtx.total_fees == (
        account_before + DEFAULT_MSG_VALUE
    )
    await _check_delta(chain, res, before)
    assert await chain.balance(addr) == 0
    st = await chain.channel_state(addr)
    assert (st.status, st.balance, st.charged, st.last_seqno) == (ChannelStatus.CLOSED, 0, prev, 3)


async def test_forged_vouchers_rejected(chain: EmbeddedChain) -> None:
    addr = await _open_channel(chain, 3 * TON)
    with pytest.raises(BadVoucherSignature) as ei:
        await chain.submit_voucher(
            addr, sign_voucher(_key("attacker"), "client", addr, 1, TON), sender="proxy"
        )
    assert ei.value.exit_code == 101
    # a valid signature over 1 TON, the payload swapped for 2 TON
    good = sign_voucher(CLIENT_KEY, "client", addr, 1, TON)
    tampered = voucher_message(
        OP_CLIENT_CHARGE, 1, good.signature, voucher_payload(OP_CLIENT_CHARGE, addr, 1, 2 * TON)
    )
    with pytest.raises(BadVoucherSignature):
        await chain.send("proxy", addr, DEFAULT_MSG_VALUE, body=cell_boc(tampered))
    # a worker-payout voucher is an unknown op for a client channel ...
    worker_v = sign_voucher(CLIENT_KEY, "worker", addr, 1, TON)
    with pytest.raises(UnknownOp) as eu:
        await chain.submit_voucher(addr, worker_v, sender="proxy")
    assert eu.value.exit_code == 0xFFFF
    # ... and its payload wrapped in a client-charge message is the wrong kind
    wrapped = voucher_message(OP_CLIENT_CHARGE, 1, worker_v.signature, worker_v.payload())
    with pytest.raises(VoucherWrongKind) as ek:
        await chain.send("proxy", addr, DEFAULT_MSG_VALUE, body=cell_boc(wrapped))
    assert ek.value.exit_code == 109
    other = "0:" + "77" * 32
    with pytest.raises(VoucherWrongChannel):
        await chain.submit_voucher(
            addr, sign_voucher(CLIENT_KEY, "client", other, 1, TON), sender="proxy"
        )
    st = await chain.channel_state(addr)
    assert (st.charged, st.last_seqno, st.balance) == (0, 0, 3 * TON)
    # the genuine one still works afterwards
    res = await chain.submit_voucher(addr, good, sender="proxy")
    assert res.sent_by(addr)[0].value == TON
    # an empty-body plain transfer is accepted (reserve, not credited)
    await chain.send("proxy", addr, TON // 10, body=cell_boc(Builder().end_cell()))
    assert (await chain.channel_state(addr)).balance == 2 * TON


async def _state_of(chain: EmbeddedChain, addr: str) -> tuple[object, ...]:
    st = await chain.channel_state(addr)
    client = await chain.wallet("client")
    proxy = await chain.wallet("proxy")
    return (
        st,
        await chain.balance(addr),
        await chain.balance(client),
        await chain.balance(proxy),
        await chain.now(),
    )


async def test_persistence_across_restarts(tmp_path: Path) -> None:
    state = tmp_path / "chain" / "state.json"
    c1 = await EmbeddedChain.start(state, now=T0)
    assert not c1.restored
    addr = await _open_channel(c1, 4 * TON)
    await c1.submit_voucher(addr, sign_voucher(CLIENT_KEY, "client", addr, 1, TON), sender="proxy")
    await c1.submit_voucher(
        addr, sign_voucher(CLIENT_KEY, "client", addr, 2, 2 * TON), sender="proxy"
    )
    await c1.advance_time(100)
    snap1 = await _state_of(c1, addr)
    await c1.aclose()
    assert state.is_file()

    # clean restart: the whole state is back
    c2 = await EmbeddedChain.start(state, now=1)  # `now` is ignored when restoring
    try:
        assert c2.restored
        assert await _state_of(c2, addr) == snap1
        st = await c2.channel_state(addr)
        assert (st.last_seqno, st.charged, st.balance) == (2, 2 * TON, 2 * TON)
        assert await c2.now() == T0 + 100
        # and it keeps operating: replay still rejected, a newer voucher pays the delta
        with pytest.raises(VoucherReplayed):
            await c2.submit_voucher(
                addr, sign_voucher(CLIENT_KEY, "client", addr, 2, 3 * TON), sender="proxy"
            )
        res = await c2.submit_voucher(
            addr, sign_voucher(CLIENT_KEY, "client", addr, 3, 3 * TON), sender="proxy"
        )
        assert res.sent_by(addr)[0].value == TON
        await c2.request_close(addr, sender="client")
        snap2 = await _state_of(c2, addr)
    finally:
        # crash: no clean shutdown; state was persisted after the last mutation
        await c2.kill()

    c3 = await EmbeddedChain.start(state)
    try:
        assert c3.restored
        assert await _state_of(c3, addr) == snap2
        st = await c3.channel_state(addr)
        assert st.status is ChannelStatus.CLOSING and st.close_at == T0 + 100 + CLOSE_DELAY
        await c3.advance_time(CLOSE_DELAY)
        await c3.close(addr, sender="client")
        await c3.withdraw(addr, sender="client")
        assert await c3.balance(addr) == 0
    finally:
        await c3.aclose()


async def test_snapshot_command(chain: EmbeddedChain, tmp_path: Path) -> None:
    addr = await _open_channel(chain, TON)
    snap = tmp_path / "snap.json"
    await chain.snapshot(snap)
    c2 = await EmbeddedChain.start(snap)
    try:
        assert (await c2.channel_state(addr)).balance == TON
    finally:
        await c2.aclose()


async def test_missing_toolchain_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "chain-server").mkdir()
    (tmp_path / "chain-server" / "server.js").write_text("")
    with pytest.raises(ConfigError, match="npm ci"):
        await EmbeddedChain.start(contracts_dir=tmp_path)
