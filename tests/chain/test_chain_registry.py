"""Root registry and proxy stake through EmbeddedChain: Python-built cells (cocoon.chain.messages)
executed by the compiled contracts in @ton/sandbox, every op and its rejection paths.

Skipped, with the reason, when `node` or contracts/node_modules is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell

from cocoon.chain import ChannelSpec
from cocoon.chain import messages as m
from cocoon.chain.base import TOPUP_FEE, ProxyStatus
from cocoon.chain.embedded import EmbeddedChain, find_toolchain
from cocoon.chain.errors import (
    BadVoucherSignature,
    ContractRejected,
    EarlyClose,
    HashAlreadyPresent,
    HashNotPresent,
    InsufficientValue,
    StakeTooLow,
    UnknownOp,
    VoucherReplayed,
    VoucherWrongChannel,
    VoucherWrongKind,
    WrongSender,
    WrongState,
)
from cocoon.chain.registry import ensure_listed, read_registry
from cocoon.chain.vouchers import public_key, sign_payload
from cocoon.errors import ToolchainMissing

try:
    find_toolchain()
except ToolchainMissing as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)

TON = 1_000_000_000
T0 = 1_800_000_000
DELAY = 86400
H1 = bytes.fromhex("aa" * 32)
H2 = bytes.fromhex("0b" * 32)
H3 = bytes.fromhex("c3" * 32)
PARAMS = m.RegistryParams(
    price_per_token=20,
    worker_fee=15,
    prompt_mult=10000,
    cached_mult=1000,
    completion_mult=80000,
    reasoning_mult=80000,
    proxy_close_delay=86400,
    client_close_delay=3600,
    min_proxy_stake=10 * TON,
    min_client_stake=TON,
)


def _key(name: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(name.encode()).digest())


PROXY_KEY = _key("proxy-key")
OTHER_KEY = _key("attacker")


@pytest.fixture
async def chain() -> AsyncIterator[EmbeddedChain]:
    c = await EmbeddedChain.start(now=T0)
    try:
        yield c
    finally:
        await c.aclose()


# ---- addresses agree with the JS side ------------------------------------------------------


async def test_channel_data_matches_server_built(chain: EmbeddedChain) -> None:
    """The server builds channel data in JS from structured fields; Python's cell must give the
    same address, and deploy_channel (now sending Python's dataBoc) must land there too."""
    spec = ChannelSpec(
        kind="worker",
        funder=await chain.wallet("proxy"),
        payee=await chain.wallet("worker"),
        signer_pubkey=public_key(PROXY_KEY),
        payee_pubkey=public_key(OTHER_KEY),
        close_delay=600,
        channel_id=42,
    )
    r: dict[str, Any] = await chain._call(
        "deploy",
        contract="worker_channel",
        **{"from": "proxy"},
        value=str(TON),
        data={
            "funder": spec.funder,
            "payee": spec.payee,
            "signerPubkey": spec.signer_pubkey.hex(),
            "payeePubkey": spec.payee_pubkey.hex(),
            "closeDelay": spec.close_delay,
            "channelId": str(spec.channel_id),
        },
    )
    assert r["address"] == m.channel_address(spec)
    res = await chain.deploy_channel(spec, sender="proxy", deposit=TON)
    assert res.to == r["address"]
    assert (await chain.channel_state(res.to)).balance == TON


# ---- registry ------------------------------------------------------------------------------


async def _registry(chain: EmbeddedChain) -> tuple[str, str]:
    owner = await chain.wallet("owner")
    res = await chain.deploy_registry(owner, PARAMS, [H1], [H2], sender="owner")
    assert res.success
    assert res.to == m.registry_address(owner, PARAMS, [H1], [H2])
    return res.to, owner


async def test_registry_initial_state(chain: EmbeddedChain) -> None:
    reg, owner = await _registry(chain)
    assert await chain.registry_params(reg) == PARAMS
    assert await chain.registry_versions(reg) == (0, 0)
    assert await chain.registry_owner(reg) == owner
    assert await chain.image_hash_allowed(reg, H1)
    assert not await chain.image_hash_allowed(reg, H2)
    assert await chain.model_hash_allowed(reg, H2)
    assert not await chain.model_hash_allowed(reg, H1)
    # the raw get-method: initial entries carry INITIAL_HASH_VERSION, absent ones 0
    stack = await chain.get(
        reg, "image_hash_version", [{"type": "int", "value": str(int(H1.hex(), 16))}]
    )
    assert stack == [{"type": "int", "value": str(m.INITIAL_HASH_VERSION)}]


async def test_registry_hash_ops(chain: EmbeddedChain) -> None:
    reg, _ = await _registry(chain)
    await chain.registry_update(reg, m.add_image_hash_body(H2, query_id=1), sender="owner")
    assert await chain.image_hash_allowed(reg, H2)
    assert await chain.registry_versions(reg) == (1, 0)
    with pytest.raises(HashAlreadyPresent) as ei:
        await chain.registry_update(reg, m.add_image_hash_body(H1), sender="owner")
    assert ei.value.exit_code == 110 and ei.value.address == reg
    with pytest.raises(HashNotPresent):
        await chain.registry_update(reg, m.del_image_hash_body(H3), sender="owner")
    await chain.registry_update(reg, m.del_image_hash_body(H1), sender="owner")
    assert not await chain.image_hash_allowed(reg, H1)

    await chain.registry_update(reg, m.add_model_hash_body(H3), sender="owner")
    assert await chain.model_hash_allowed(reg, H3)
    with pytest.raises(HashAlreadyPresent):
        await chain.registry_update(reg, m.add_model_hash_body(H2), sender="owner")
    await chain.registry_update(reg, m.del_model_hash_body(H2), sender="owner")
    assert not await chain.model_hash_allowed(reg, H2)
    with pytest.raises(HashNotPresent):
        await chain.registry_update(reg, m.del_model_hash_body(H2), sender="owner")
    assert await chain.registry_versions(reg) == (4, 0)


async def test_registry_owner_only(chain: EmbeddedChain) -> None:
    reg, _ = await _registry(chain)
    for body in (
        m.add_image_hash_body(H3),
        m.del_image_hash_body(H1),
        m.add_model_hash_body(H3),
        m.del_model_hash_body(H2),
        m.update_params_body(PARAMS),
        m.change_owner_body(await chain.wallet("stranger")),
    ):
        with pytest.raises(WrongSender):
            await chain.registry_update(reg, body, sender="stranger")
    assert await chain.registry_versions(reg) == (0, 0)


async def test_registry_params_and_owner_change(chain: EmbeddedChain) -> None:
    reg, owner = await _registry(chain)
    new = m.RegistryParams(*(v + 1 for v in PARAMS.as_tuple()))
    await chain.registry_update(reg, m.update_params_body(new), sender="owner")
    assert await chain.registry_params(reg) == new
    assert await chain.registry_versions(reg) == (1, 1)

    # a truncated params cell is rejected (cell underflow), nothing changes
    bad = (
        Builder()
        .store_uint(m.OP_UPDATE_PARAMS, 32)
        .store_uint(0, 64)
        .store_ref(Builder().store_coins(1).end_cell())
        .end_cell()
    )
    with pytest.raises(ContractRejected) as ei:
        await chain.registry_update(reg, bad, sender="owner")
    assert ei.value.exit_code == 9
    with pytest.raises(UnknownOp):
        await chain.registry_update(reg, _op_only(0x12345678), sender="owner")

    newcomer = await chain.wallet("newcomer")
    await chain.registry_update(reg, m.change_owner_body(newcomer), sender="owner")
    assert await chain.registry_owner(reg) == newcomer
    with pytest.raises(WrongSender):
        await chain.registry_update(reg, m.add_image_hash_body(H3), sender="owner")
    await chain.registry_update(reg, m.add_image_hash_body(H3), sender="newcomer")
    assert await chain.registry_versions(reg) == (3, 1)
    assert owner != newcomer


def _op_only(op: int) -> Cell:
    cell: Cell = Builder().store_uint(op, 32).store_uint(0, 64).end_cell()
    return cell


# ---- proxy stake ---------------------------------------------------------------------------


async def _stake(chain: EmbeddedChain, stake: int = 6 * TON) -> tuple[str, str]:
    owner = await chain.wallet("proxy-owner")
    spec = m.ProxyStakeSpec(
        owner=owner, proxy_pubkey=public_key(PROXY_KEY), min_stake=10 * TON, unstake_delay=DELAY
    )
    res = await chain.deploy_proxy_stake(spec, sender="proxy-owner", stake=stake)
    assert res.success and res.to == m.proxy_stake_address(spec)
    return res.to, owner


async def test_stake_deploy_and_add(chain: EmbeddedChain) -> None:
    addr, _ = await _stake(chain)
    st = await chain.proxy_state(addr)
    assert (st.state, st.stake, st.unlock_at, st.commit_seqno) == (
        ProxyStatus.ACTIVE,
        6 * TON,
        0,
        0,
    )
    assert st.commit_hash == bytes(32)
    stranger = await chain.wallet("stranger")
    res = await chain.add_stake(addr, 4 * TON, sender="stranger")
    assert res.on(addr)[0].in_value == 4 * TON + TOPUP_FEE
    assert res.sent_by(stranger) and (await chain.proxy_state(addr)).stake == 10 * TON
    with pytest.raises(InsufficientValue):
        await chain.send("stranger", addr, TON, body=m.boc(m.add_stake_body(TON)))
    assert (await chain.proxy_state(addr)).stake == 10 * TON


async def test_state_commit_round_trip(chain: EmbeddedChain) -> None:
    addr, _ = await _stake(chain)
    state_hash = hashlib.sha256(b"ledger state 1").digest()
    with pytest.raises(StakeTooLow):
        await chain.commit_state(addr, m.sign_commit(PROXY_KEY, addr, 1, state_hash), sender="x")
    await chain.add_stake(addr, 4 * TON, sender="proxy-owner")
    await chain.advance_time(100)
    await chain.commit_state(addr, m.sign_commit(PROXY_KEY, addr, 1, state_hash), sender="x")
    st = await chain.proxy_state(addr)
    assert (st.commit_seqno, st.commit_hash, st.committed_at) == (1, state_hash, T0 + 100)

    h5 = hashlib.sha256(b"ledger state 5").digest()
    await chain.commit_state(addr, m.sign_commit(PROXY_KEY, addr, 5, h5, query_id=9), sender="x")
    assert (await chain.proxy_state(addr)).commit_seqno == 5

    with pytest.raises(VoucherReplayed):  # seqno not newer
        await chain.commit_state(addr, m.sign_commit(PROXY_KEY, addr, 5, h5), sender="x")
    with pytest.raises(VoucherReplayed):
        await chain.commit_state(addr, m.sign_commit(PROXY_KEY, addr, 3, h5), sender="x")
    with pytest.raises(BadVoucherSignature):
        await chain.commit_state(addr, m.sign_commit(OTHER_KEY, addr, 6, h5), sender="x")
    with pytest.raises(VoucherWrongChannel):
        other = "0:" + "55" * 32
        await chain.commit_state(addr, m.sign_commit(PROXY_KEY, other, 6, h5), sender="x")
    wrong_op = m.commit_payload(addr, 6, h5, op=0x12345678)
    forged = (
        Builder()
        .store_uint(m.OP_STATE_COMMIT, 32)
        .store_uint(0, 64)
        .store_bytes(sign_payload(wrong_op, PROXY_KEY))
        .store_ref(wrong_op)
        .end_cell()
    )
    with pytest.raises(VoucherWrongKind):
        await chain.commit_state(addr, forged, sender="x")
    st = await chain.proxy_state(addr)
    assert (st.commit_seqno, st.commit_hash) == (5, h5)


async def test_unstake(chain: EmbeddedChain) -> None:
    addr, owner = await _stake(chain, 10 * TON)
    with pytest.raises(WrongSender):
        await chain.request_unstake(addr, sender="stranger")
    with pytest.raises(WrongState):  # not unstaking yet
        await chain.unstake(addr, sender="proxy-owner")
    await chain.request_unstake(addr, sender="proxy-owner")
    st = await chain.proxy_state(addr)
    assert (st.state, st.unlock_at) == (ProxyStatus.UNSTAKING, T0 + DELAY)
    with pytest.raises(WrongState):
        await chain.add_stake(addr, TON, sender="proxy-owner")
    with pytest.raises(WrongState):
        body = m.sign_commit(PROXY_KEY, addr, 1, bytes(32))
        await chain.commit_state(addr, body, sender="x")
    with pytest.raises(WrongState):
        await chain.request_unstake(addr, sender="proxy-owner")
    with pytest.raises(EarlyClose):
        await chain.unstake(addr, sender="proxy-owner")
    await chain.advance_time(DELAY)
    with pytest.raises(WrongSender):
        await chain.unstake(addr, sender="stranger")
    held = await chain.balance(addr)
    res = await chain.unstake(addr, sender="proxy-owner", query_id=77)
    (refund,) = res.sent_by(addr)
    assert refund.to == owner and refund.op == m.OP_REFUND
    assert refund.value + refund.fwd_fee >= held  # the whole balance (plus the message value)
    assert await chain.balance(addr) == 0
    st = await chain.proxy_state(addr)
    assert (st.state, st.stake) == (ProxyStatus.CLOSED, 0)


# ---- proxy listings ------------------------------------------------------------------------


async def _listed_stake(chain: EmbeddedChain, registry: str, *, stake: int = 10 * TON,
                        min_stake: int = 10 * TON, seed: str = "proxy-key") -> str:
    spec = m.ProxyStakeSpec(owner=await chain.wallet("proxy-owner"),
                            proxy_pubkey=public_key(_key(seed)), min_stake=min_stake,
                            unstake_delay=DELAY, registry=registry)
    return (await chain.deploy_proxy_stake(spec, sender="proxy-owner", stake=stake)).to


async def test_a_staked_proxy_lists_itself_and_readers_see_it(chain: EmbeddedChain) -> None:
    registry, _ = await _registry(chain)
    stake = await _listed_stake(chain, registry)
    info = m.ProxyInfo("10.0.0.1:11100", "10.0.0.1:11100", ("smollm2",))
    listing, sent = await ensure_listed(chain, registry, stake, info, sender="proxy-owner")
    assert sent and listing.info == info and listing.stake == 10 * TON
    assert listing.owner == await chain.wallet("proxy-owner")
    assert listing.pubkey == public_key(PROXY_KEY) and listing.stake_contract == stake
    state = await read_registry(chain, registry)
    assert state.live_proxies() == (listing,) and state.version == listing.version == 1
    # the same info again: nothing sent; new info: listed again, in place
    assert (await ensure_listed(chain, registry, stake, info, sender="proxy-owner"))[1] is False
    moved = m.ProxyInfo("10.0.0.2:11100", "10.0.0.2:11100")
    listing, sent = await ensure_listed(chain, registry, stake, moved, sender="proxy-owner")
    assert sent and listing.info == moved and listing.version == 2
    assert len((await read_registry(chain, registry)).proxies) == 1
    # raising the network's minimum above the stake hides the listing from readers
    await chain.registry_update(registry, m.update_params_body(
        dataclasses.replace(PARAMS, min_proxy_stake=11 * TON)), sender="owner")
    state = await read_registry(chain, registry)
    assert len(state.proxies) == 1 and state.live_proxies() == ()
    await chain.registry_update(registry, m.update_params_body(PARAMS), sender="owner")
    # deregistering removes it; again: the registry refuses (nothing listed), typed
    with pytest.raises(WrongSender):
        await chain.deregister_proxy(stake, sender="stranger")
    await chain.deregister_proxy(stake, sender="proxy-owner")
    assert (await read_registry(chain, registry)).proxies == ()
    with pytest.raises(HashNotPresent, match="unlisting refused by the registry"):
        await chain.deregister_proxy(stake, sender="proxy-owner")


async def test_listing_refusals_are_typed(chain: EmbeddedChain) -> None:
    registry, _ = await _registry(chain)
    info = m.ProxyInfo("h:1", "h:1")
    # the stake's own minimum is met, the network's (10 TON) is not: the registry refuses
    low = await _listed_stake(chain, registry, stake=5 * TON, min_stake=TON, seed="low")
    with pytest.raises(StakeTooLow, match="listing refused by the registry"):
        await chain.register_proxy(low, info, sender="proxy-owner")
    # below the stake's own minimum: the stake refuses
    short = await _listed_stake(chain, registry, stake=5 * TON, seed="short")
    with pytest.raises(StakeTooLow, match="register rejected"):
        await chain.register_proxy(short, info, sender="proxy-owner")
    with pytest.raises(WrongSender):
        await chain.register_proxy(await _listed_stake(chain, registry, seed="ok"), info,
                                   sender="stranger")
    # unstaking removes the listing, and an unstaking stake cannot list again
    ok = await _listed_stake(chain, registry, seed="ok")
    await chain.register_proxy(ok, info, sender="proxy-owner")
    assert [p.stake_contract for p in (await read_registry(chain, registry)).proxies] == [ok]
    await chain.request_unstake(ok, sender="proxy-owner")
    assert (await read_registry(chain, registry)).proxies == ()
    with pytest.raises(WrongState):
        await chain.register_proxy(ok, info, sender="proxy-owner")
    # a forged listing straight to the registry, with a real stake's terms
    forged = (Builder().store_uint(m.OP_LIST_PROXY, 32).store_uint(0, 64)
              .store_bytes(public_key(_key("low"))).store_coins(10 * TON)
              .store_ref(m.proxy_stake_data(m.ProxyStakeSpec(  # the config cell of `low`
                  await chain.wallet("proxy-owner"), public_key(_key("low")), TON, DELAY,
                  registry)).refs[0])
              .store_ref(m.proxy_info_cell(info)).end_cell())
    with pytest.raises(WrongSender):
        await chain.registry_update(registry, forged, sender="stranger")
    assert (await read_registry(chain, registry)).proxies == ()
