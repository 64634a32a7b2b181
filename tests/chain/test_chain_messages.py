"""cocoon.chain.messages: every cell the contracts take, checked field by field (pure) and
byte for byte against the same cells built by @ton/core from contracts/README.md's layouts
(a node script; skipped with the reason when node / contracts/node_modules are missing)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytoniq_core.boc.address import Address
from pytoniq_core.boc.cell import Cell

from cocoon.chain import messages as m
from cocoon.chain.base import ChannelSpec
from cocoon.chain.errors import ChainError, ChainUnavailable
from cocoon.chain.vouchers import public_key

CONTRACTS = m.default_contracts_dir()
KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"proxy-key").digest())
FUNDER = "0:" + "11" * 32
PAYEE = "0:" + "22" * 32
OWNER = "0:" + "33" * 32
PROXY = "0:" + "44" * 32
H1 = bytes.fromhex("aa" * 32)
H2 = bytes.fromhex("0b" * 32)
STATE_HASH = bytes(range(32))
PARAMS = m.RegistryParams(
    price_per_token=20,
    worker_fee=15,
    prompt_mult=10000,
    cached_mult=1000,
    completion_mult=80000,
    reasoning_mult=80000,
    proxy_close_delay=86400,
    client_close_delay=3600,
    min_proxy_stake=10 * 10**9,
    min_client_stake=10**9,
)
SPEC = ChannelSpec(
    kind="client",
    funder=FUNDER,
    payee=PAYEE,
    signer_pubkey=bytes(range(32)),
    payee_pubkey=bytes(range(32, 64)),
    close_delay=3600,
    channel_id=7,
)
REGISTRY = "0:" + "55" * 32
STAKE = m.ProxyStakeSpec(
    owner=OWNER, proxy_pubkey=public_key(KEY), min_stake=10 * 10**9, unstake_delay=86400,
    registry=REGISTRY,
)
INFO = m.ProxyInfo("proxy.example:8443", "10.0.0.1:9443", ("smollm2", "llama-3"))


def _head(cell: Cell) -> tuple[int, int]:
    s = cell.begin_parse()
    return s.load_uint(32), s.load_uint(64)


# ---- pure layout ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "op"),
    [
        (m.request_close_body(query_id=5), m.OP_REQUEST_CLOSE),
        (m.finalize_close_body(query_id=5), m.OP_FINALIZE_CLOSE),
        (m.payee_close_body(query_id=5), m.OP_PAYEE_CLOSE),
        (m.withdraw_body(query_id=5), m.OP_WITHDRAW),
        (m.request_unstake_body(query_id=5), m.OP_REQUEST_UNSTAKE),
        (m.unstake_body(query_id=5), m.OP_UNSTAKE),
    ],
)
def test_bare_bodies(body: Cell, op: int) -> None:
    assert _head(body) == (op, 5)
    assert len(body.bits) == 96 and not body.refs


def test_amount_and_hash_bodies() -> None:
    for body, op in (
        (m.topup_body(123, query_id=9), m.OP_TOPUP),
        (m.add_stake_body(123, query_id=9), m.OP_ADD_STAKE),
    ):
        s = body.begin_parse()
        assert (s.load_uint(32), s.load_uint(64), s.load_coins()) == (op, 9, 123)
        assert s.remaining_bits == 0
    for fn, op in (
        (m.add_image_hash_body, m.OP_ADD_IMAGE_HASH),
        (m.del_image_hash_body, m.OP_DEL_IMAGE_HASH),
        (m.add_model_hash_body, m.OP_ADD_MODEL_HASH),
        (m.del_model_hash_body, m.OP_DEL_MODEL_HASH),
    ):
        s = fn(H1, query_id=3).begin_parse()
        assert (s.load_uint(32), s.load_uint(64), s.load_uint(256)) == (op, 3, int(H1.hex(), 16))
        assert s.remaining_bits == 0
    s = m.change_owner_body(OWNER).begin_parse()
    assert (s.load_uint(32), s.load_uint(64)) == (m.OP_CHANGE_OWNER, 0)
    assert s.load_address() == Address(OWNER)


def test_params_round_trip() -> None:
    body = m.update_params_body(PARAMS)
    assert _head(body) == (m.OP_UPDATE_PARAMS, 0)
    p = body.refs[0].begin_parse()
    got = (
        p.load_coins(),
        p.load_coins(),
        *(p.load_uint(32) for _ in range(6)),
        p.load_coins(),
        p.load_coins(),
        p.load_uint(32),  # training_mult
    )
    assert got == PARAMS.as_tuple() and p.remaining_bits == 0


def test_registry_initial_hashes_carry_version_1() -> None:
    data = m.registry_data(OWNER, PARAMS, [H1, H2], [H2]).begin_parse()
    assert data.load_address() == Address(OWNER)
    assert (data.load_uint(32), data.load_uint(32)) == (0, 0)
    data.load_ref()
    images = data.load_dict(256, value_deserializer=lambda s: s.load_uint(32))
    models = data.load_dict(256, value_deserializer=lambda s: s.load_uint(32))
    assert images == {int(H1.hex(), 16): 1, int(H2.hex(), 16): 1}
    assert models == {int(H2.hex(), 16): m.INITIAL_HASH_VERSION}
    book = data.load_ref().begin_parse()
    assert book.load_ref() == m.load_code("proxy_stake")  # listings are checked against it
    assert (book.load_bit(), book.remaining_bits, data.remaining_refs) == (0, 0, 0)
    empty = m.registry_data(OWNER, PARAMS).begin_parse()
    empty.load_address()
    empty.skip_bits(64)
    empty.load_ref()
    assert (empty.load_bit(), empty.load_bit(), empty.remaining_bits) == (0, 0, 0)


def test_proxy_info_round_trips_and_bad_info_is_named() -> None:
    cell = m.proxy_info_cell(INFO)
    assert m.parse_proxy_info(cell) == INFO
    body = m.register_body(INFO, query_id=4).begin_parse()
    assert (body.load_uint(32), body.load_uint(64)) == (m.OP_REGISTER, 4)
    assert body.load_ref() == cell
    assert _head(m.deregister_body(query_id=2)) == (m.OP_DEREGISTER, 2)
    with pytest.raises(ValueError, match="more than 2048"):
        m.proxy_info_cell(m.ProxyInfo("a:1", "b:2", tuple(f"model-{i:04}" for i in range(300))))
    from pytoniq_core.boc.builder import Builder
    for raw, problem in [(b"not json", "not JSON"), (b'{"v":2}', "version 1"),
                         (b'{"v":1,"client":1,"worker":"b:2"}', "host:port"),
                         (b'{"v":1,"client":"a:1","worker":"b:2","models":[1]}', "models")]:
        with pytest.raises(ValueError, match=problem):
            m.parse_proxy_info(Builder().store_snake_bytes(raw).end_cell())


def test_signed_commit_verifies() -> None:
    body = m.sign_commit(KEY, PROXY, 4, STATE_HASH, query_id=8)
    s = body.begin_parse()
    assert (s.load_uint(32), s.load_uint(64)) == (m.OP_STATE_COMMIT, 8)
    sig = s.load_bytes(64)
    payload = s.load_ref()
    assert payload.hash == m.commit_payload(PROXY, 4, STATE_HASH).hash
    KEY.public_key().verify(sig, payload.hash)
    p = payload.begin_parse()
    assert p.load_uint(32) == m.OP_STATE_COMMIT
    assert p.load_address() == Address(PROXY)
    assert (p.load_uint(64), p.load_bytes(32)) == (4, STATE_HASH)


def test_state_init_and_address() -> None:
    code = m.load_code("proxy_stake")
    data = m.proxy_stake_data(STAKE)
    si = m.state_init(code, data).begin_parse()
    assert (si.load_bit(), si.load_bit()) == (0, 0)  # no split depth, not special
    assert si.load_maybe_ref() == code and si.load_maybe_ref() == data
    assert si.load_maybe_ref() is None
    addr = m.contract_address(code, data)
    assert addr == "0:" + m.state_init(code, data).hash.hex() == m.proxy_stake_address(STAKE)
    assert m.contract_address(code, data, workchain=-1).startswith("-1:")


def test_bad_inputs_rejected() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        m.add_image_hash_body(b"\x01" * 31)
    with pytest.raises(ValueError, match="uint64"):
        m.withdraw_body(query_id=-1)
    with pytest.raises(ValueError, match="Coins"):
        m.topup_body(1 << 120)
    with pytest.raises(ValueError, match="close_delay"):
        m.channel_data(ChannelSpec("client", FUNDER, PAYEE, bytes(32), bytes(32), 1 << 32, 1))
    with pytest.raises(ValueError, match="prompt_mult"):
        m.params_cell(m.RegistryParams(0, 0, -1, 0, 0, 0, 0, 0, 0, 0))
    with pytest.raises(ValueError, match="proxy_pubkey"):
        m.proxy_stake_data(m.ProxyStakeSpec(OWNER, b"short", 0, 0))


def test_load_code_checks_the_hash(tmp_path: Path) -> None:
    code = m.load_code("client_channel")
    j = json.loads((CONTRACTS / "build" / "client_channel.json").read_text())
    assert code.hash.hex() == j["codeHashHex"]
    (tmp_path / "build").mkdir()
    j["codeHashHex"] = "00" * 32
    (tmp_path / "build" / "client_channel.json").write_text(json.dumps(j))
    with pytest.raises(ChainError, match="code hash"):
        m.load_code("client_channel", tmp_path)
    with pytest.raises(ChainUnavailable):
        m.load_code("nope", tmp_path)
    with pytest.raises(ValueError):
        m.load_code("../x")


# ---- byte parity with @ton/core -------------------------------------------------------------

_JS = r"""
const { beginCell, Address, Dictionary, contractAddress } = require('@ton/core');
const h = require('./tests/helpers');
const a = (s) => Address.parse(s);
const x = (s) => Buffer.from(s, 'hex');
const inp = JSON.parse(process.argv[1]);
const head = (op, q) => beginCell().storeUint(op, 32).storeUint(q, 64);
const p = inp.params;
const params = beginCell().storeCoins(BigInt(p[0])).storeCoins(BigInt(p[1]))
    .storeUint(p[2], 32).storeUint(p[3], 32).storeUint(p[4], 32).storeUint(p[5], 32)
    .storeUint(p[6], 32).storeUint(p[7], 32).storeCoins(BigInt(p[8])).storeCoins(BigInt(p[9]))
    .storeUint(p[10], 32).endCell();
const dict = (hs) => {
    const d = Dictionary.empty(Dictionary.Keys.BigUint(256), Dictionary.Values.Uint(32));
    for (const hh of hs) d.set(BigInt('0x' + hh), 1);
    return d;
};
const book = beginCell().storeRef(h.loadCode('proxy_stake')).storeDict(null).endCell();
const registry = beginCell().storeAddress(a(inp.owner)).storeUint(0, 32).storeUint(0, 32)
    .storeRef(params).storeDict(dict(inp.images)).storeDict(dict(inp.models)).storeRef(book)
    .endCell();
const s = inp.stake;
const stake = beginCell().storeBuffer(x(s.pubkey), 32).storeCoins(0).storeUint(0, 2)
    .storeUint(0, 32).storeUint(0, 64).storeUint(0, 256).storeUint(0, 32)
    .storeRef(beginCell().storeAddress(a(s.owner)).storeCoins(BigInt(s.minStake))
        .storeUint(s.delay, 32).storeAddress(a(s.registry)).endCell())
    .endCell();
const c = inp.channel;
const channel = h.channelData({ funder: a(c.funder), payee: a(c.payee),
    signerPubkey: x(c.signer), payeePubkey: x(c.payeePub), closeDelay: c.delay,
    channelId: BigInt(c.id) });
const payload = beginCell().storeUint(0x5c1a7e3b, 32).storeAddress(a(inp.proxy))
    .storeUint(4, 64).storeUint(BigInt('0x' + inp.stateHash), 256).endCell();
const hb = (op) => head(op, 3).storeUint(BigInt('0x' + inp.images[0]), 256).endCell();
const cells = {
    channel, registry, stake, payload,
    channel_si: beginCell().storeBit(0).storeBit(0).storeMaybeRef(h.loadCode('client_channel'))
        .storeMaybeRef(channel).storeMaybeRef(null).endCell(),
    topup: head(0xf172e6c2, 9).storeCoins(123n).endCell(),
    request_close: head(0xfafa6cc1, 5).endCell(),
    finalize_close: head(0x2f0b5c31, 5).endCell(),
    payee_close: head(0x7c3e91a2, 5).endCell(),
    withdraw: head(0xda068e78, 5).endCell(),
    update_params: head(0x022fa189, 0).storeRef(params).endCell(),
    add_image: hb(0xe34b1c60), del_image: hb(0x8d94a79a),
    add_model: hb(0xc146134d), del_model: hb(0x92b11c18),
    change_owner: head(0xc4a1ae54, 0).storeAddress(a(inp.owner)).endCell(),
    add_stake: head(0x9713f187, 0).storeCoins(5n).endCell(),
    request_unstake: head(0x6a1f6a60, 5).endCell(),
    unstake: head(0xb51d5a01, 5).endCell(),
    register: head(0x7a3c51e9, 6).storeRef(beginCell().storeStringTail(inp.info).endCell())
        .endCell(),
    deregister: head(0x91e4b6f2, 5).endCell(),
};
const out = {};
for (const [k, v] of Object.entries(cells)) out[k] = v.hash().toString('hex');
out.channel_address = contractAddress(0, { code: h.loadCode('client_channel'), data: channel })
    .toRawString();
out.stake_address = contractAddress(0, { code: h.loadCode('proxy_stake'), data: stake })
    .toRawString();
process.stdout.write(JSON.stringify(out));
"""


def _node_ready() -> bool:
    return shutil.which("node") is not None and (CONTRACTS / "node_modules" / "@ton").is_dir()


@pytest.mark.skipif(not _node_ready(), reason="node or contracts/node_modules missing")
def test_cells_match_ton_core_byte_for_byte() -> None:
    inp = {
        "params": [str(v) for v in PARAMS.as_tuple()],
        "owner": OWNER,
        "proxy": PROXY,
        "images": [H1.hex(), H2.hex()],
        "models": [H2.hex()],
        "stateHash": STATE_HASH.hex(),
        "stake": {
            "pubkey": STAKE.proxy_pubkey.hex(),
            "owner": OWNER,
            "minStake": str(STAKE.min_stake),
            "delay": STAKE.unstake_delay,
            "registry": REGISTRY,
        },
        "info": m.proxy_info_cell(INFO).begin_parse().load_snake_bytes().decode(),
        "channel": {
            "funder": FUNDER,
            "payee": PAYEE,
            "signer": SPEC.signer_pubkey.hex(),
            "payeePub": SPEC.payee_pubkey.hex(),
            "delay": SPEC.close_delay,
            "id": str(SPEC.channel_id),
        },
    }
    res = subprocess.run(
        ["node", "-e", _JS, json.dumps(inp)],
        cwd=CONTRACTS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    js = json.loads(res.stdout)
    ours = {
        "channel": m.channel_data(SPEC),
        "registry": m.registry_data(OWNER, PARAMS, [H1, H2], [H2]),
        "stake": m.proxy_stake_data(STAKE),
        "payload": m.commit_payload(PROXY, 4, STATE_HASH),
        "channel_si": m.state_init(m.channel_code("client"), m.channel_data(SPEC)),
        "topup": m.topup_body(123, query_id=9),
        "request_close": m.request_close_body(query_id=5),
        "finalize_close": m.finalize_close_body(query_id=5),
        "payee_close": m.payee_close_body(query_id=5),
        "withdraw": m.withdraw_body(query_id=5),
        "update_params": m.update_params_body(PARAMS),
        "add_image": m.add_image_hash_body(H1, query_id=3),
        "del_image": m.del_image_hash_body(H1, query_id=3),
        "add_model": m.add_model_hash_body(H1, query_id=3),
        "del_model": m.del_model_hash_body(H1, query_id=3),
        "change_owner": m.change_owner_body(OWNER),
        "add_stake": m.add_stake_body(5),
        "request_unstake": m.request_unstake_body(query_id=5),
        "unstake": m.unstake_body(query_id=5),
        "register": m.register_body(INFO, query_id=6),
        "deregister": m.deregister_body(query_id=5),
    }
    assert {k: c.hash.hex() for k, c in ours.items()} == {k: js[k] for k in ours}
    assert m.channel_address(SPEC) == js["channel_address"]
    assert m.proxy_stake_address(STAKE) == js["stake_address"]
    # the BOC round-trips to the same cell
    assert Cell.one_from_boc(m.boc(ours["registry"])).hash == ours["registry"].hash


def test_registry_listings_parse_and_only_live_ones_are_used() -> None:
    """A listing whose info cannot be read is kept with its problem and never used; one
    below the current minimum stake is shown but not used."""
    from pytoniq_core.boc.builder import Builder
    from pytoniq_core.boc.hashmap.hashmap import HashMap

    from cocoon.chain.registry import parse_registry

    def entry(stake: int, info: Cell) -> Builder:
        return Builder().store_ref(Builder().store_address(OWNER).store_bytes(bytes(32))
                                   .store_coins(stake).store_uint(3, 32).store_ref(info)
                                   .end_cell())

    entries = HashMap(256, value_serializer=lambda b, dest: dest.store_cell(b.end_cell()))
    entries.set_int_key(1, entry(PARAMS.min_proxy_stake, m.proxy_info_cell(INFO)))
    entries.set_int_key(2, entry(PARAMS.min_proxy_stake - 1, m.proxy_info_cell(INFO)))
    entries.set_int_key(3, entry(PARAMS.min_proxy_stake,
                                 Builder().store_snake_bytes(b"garbage").end_cell()))
    base = m.registry_data(OWNER, PARAMS).begin_parse()
    head = (Builder().store_address(base.load_address()).store_uint(base.load_uint(32), 32)
            .store_uint(base.load_uint(32), 32).store_ref(base.load_ref())
            .store_dict(None).store_dict(None))
    book = Builder().store_ref(m.load_code("proxy_stake")).store_dict(entries.serialize())
    state = parse_registry(m.boc(head.store_ref(book.end_cell()).end_cell()))
    assert [p.stake_contract[-1] for p in state.proxies] == ["1", "2", "3"]
    assert state.proxies[0].info == INFO and state.proxies[0].version == 3
    assert "not JSON" in state.proxies[2].problem and state.proxies[2].info is None
    assert [p.stake_contract[-1] for p in state.live_proxies()] == ["1"]
    assert state.proxies[2].as_json()["problem"].startswith("unreadable info")
