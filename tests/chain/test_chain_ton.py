"""The ``ton`` backend (cocoon.chain.ton), offline: no liteserver is ever contacted.

1. What TonChain hands to its sender seam is byte-identical to what the embedded chain
   executed for the same operation (skipped without node / contracts/node_modules).
2. The real wallet layer builds and signs the external message offline, and it carries
   exactly the message of (1); it is the very BOC pytoniq's own WalletV4R2 would send.
3. Mnemonic files, network configs, the liteserver sender/reader (fakes): timeouts,
   exit-code mapping, wallet deploy, get-method stacks.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell
from pytoniq_core.tlb.account import StateInit
from pytoniq_core.tlb.transaction import ExternalMsgInfo, InternalMsgInfo, MessageAny

from cocoon.chain import messages as m
from cocoon.chain.base import (
    DEFAULT_MSG_VALUE,
    TOPUP_FEE,
    Chain,
    ChannelSpec,
    ChannelStatus,
    ProxyStakeSpec,
    ProxyStatus,
    RegistryParams,
    TxInfo,
    TxResult,
)
from cocoon.chain.errors import (
    ChainError,
    ChainUnavailable,
    ContractRejected,
    VoucherReplayed,
    WrongState,
)
from cocoon.chain.ton import (
    SEND_MODE,
    WALLET_ID,
    AccountSnapshot,
    ChainTimeout,
    LiteReader,
    LiteSender,
    OutgoingMessage,
    SeenTx,
    TonChain,
    TonWallet,
    load_mnemonic,
    load_network_config,
)
from cocoon.chain.vouchers import public_key, sign_voucher
from cocoon.errors import ConfigError, ToolchainMissing

TON = 1_000_000_000
T0 = 1_800_000_000
# A valid 24-word TON mnemonic made for these tests (holds nothing on any network).
MNEMONIC = [
    "burden", "swim", "thank", "upon", "junior", "bachelor", "conduct", "water",
    "between", "omit", "blossom", "chief", "embark", "twist", "visual", "ginger",
    "check", "cable", "vessel", "what", "achieve", "kit", "suit", "woman",
]
DEST = "0:" + "ab" * 32


def _key(name: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(name.encode()).digest())


CLIENT_KEY = _key("client-key")
PROXY_KEY = _key("proxy-key")
PARAMS = RegistryParams(1000, 800, 1000, 100, 4000, 4000, 3600, 600, 10 * TON, TON)


def _boc(cell: Cell) -> bytes:
    return m.boc(cell)


def _cell(boc: bytes) -> Cell:
    cell: Cell = Cell.one_from_boc(boc)
    return cell


def _ok(to: str, exit_code: int = 0) -> TxResult:
    info = TxInfo(address=to, exit_code=exit_code, aborted=exit_code != 0, total_fees=1,
                  in_value=0, out_messages=())
    return TxResult(to=to, exit_code=exit_code, success=exit_code == 0, transactions=(info,))


class RecordingSender:
    """The sender seam's fake: records every message; answers with ``exit_code``."""

    def __init__(self, exit_code: int = 0) -> None:
        self.sent: list[OutgoingMessage] = []
        self.exit_code = exit_code

    async def send(self, message: OutgoingMessage) -> TxResult:
        self.sent.append(message)
        return _ok(message.destination, self.exit_code)


class FakeReader:
    def __init__(self, stacks: dict[str, list[Any]] | None = None) -> None:
        self.stacks = stacks or {}
        self.calls: list[tuple[str, str, list[Any]]] = []

    async def run_get_method(self, address: str, method: str, stack: list[Any]) -> list[Any]:
        self.calls.append((address, method, stack))
        return self.stacks[method]


def _ton(address: str, sender: RecordingSender | None = None,
         reader: FakeReader | None = None) -> TonChain:
    return TonChain(address, sender or RecordingSender(), reader or FakeReader())


# ---- 1. byte-identical to what the embedded chain executes ------------------------------


def _toolchain() -> str | None:
    from cocoon.chain.embedded import find_toolchain

    try:
        find_toolchain()
    except ToolchainMissing as exc:
        return str(exc)
    return None


class _Spy:
    """Wraps EmbeddedChain.rpc: keeps every request and response of the chain server."""

    def __init__(self, chain: Any) -> None:
        self.log: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self._rpc = chain.rpc
        chain.rpc = self.rpc

    async def rpc(self, cmd: str, params: dict[str, Any]) -> dict[str, Any]:
        resp: dict[str, Any] = await self._rpc(cmd, params)
        self.log.append((cmd, params, resp))
        return resp

    def last_send(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        return next(e for e in reversed(self.log) if e[0] in ("send", "deploy"))


@pytest.fixture
async def embedded() -> AsyncIterator[Any]:
    reason = _toolchain()
    if reason is not None:
        pytest.skip(reason)
    from cocoon.chain.embedded import EmbeddedChain

    chain = await EmbeddedChain.start(now=T0)
    try:
        yield chain
    finally:
        await chain.aclose()


async def test_messages_are_byte_identical_to_the_embedded_chain(embedded: Any) -> None:
    """For every operation: the message TonChain hands to its sender seam has the same
    destination, value, bounce flag, body BOC and StateInit as the internal message the
    embedded chain's wallet actually sent (taken from the executed transaction)."""
    spy = _Spy(embedded)
    wallets = {n: await embedded.wallet(n) for n in ("client", "proxy", "admin")}
    rec = RecordingSender()
    tons = {n: TonChain(a, rec, FakeReader()) for n, a in wallets.items()}
    compared: list[str] = []

    async def same(name: str, what: str, op: str, *args: Any, **kw: Any) -> Any:
        res = await getattr(embedded, op)(*args, sender=name, **kw)
        cmd, params, resp = spy.last_send()
        assert resp["ok"] and resp["result"]["success"], (what, resp)
        await getattr(tons[name], op)(*args, sender=name, **kw)
        sent = rec.sent[-1]
        # the message the embedded wallet really sent: its transaction's outgoing message
        (wtx,) = [t for t in resp["result"]["transactions"]
                  if t["address"] == wallets[name] and t["from"] is None]  # external in
        (out,) = wtx["outMessages"]
        assert sent.destination == out["to"] == res.to, what
        assert sent.value == int(out["value"]), what
        executed_body = base64.b64decode(out["body"])
        # @ton/core writes its BOCs with a CRC32C: the same bytes as ours with that flag
        assert sent.body.to_boc(hash_crc32=True) == executed_body, what
        assert _boc(sent.body) == _boc(_cell(executed_body)), what
        assert sent.body.hash == _cell(executed_body).hash, what
        if cmd == "deploy":
            # the account's address is the hash of the StateInit it was deployed with, and
            # its code is the one our StateInit carries
            assert sent.state_init is not None and sent.bounce is False, what
            assert f"0:{sent.state_init.hash.hex()}" == resp["result"]["address"], what
            acct = await embedded._call("account", address=res.to)
            code = _cell(base64.b64decode(acct["code"]))
            si = StateInit.deserialize(sent.state_init.begin_parse())
            assert _boc(si.code) == _boc(code), what
        else:
            assert sent.state_init is None, what
            assert sent.bounce is params["bounce"] is True, what
        compared.append(what)
        return res

    # channels
    spec = ChannelSpec("client", wallets["client"], wallets["proxy"], public_key(CLIENT_KEY),
                       public_key(PROXY_KEY), 3600, 1)
    ch = (await same("client", "deploy channel + deposit", "deploy_channel", spec,
                     deposit=3 * TON)).to
    await same("client", "top-up", "deposit", ch, TON, query_id=7)
    v = sign_voucher(CLIENT_KEY, "client", ch, 1, TON // 3)
    await same("proxy", "voucher", "submit_voucher", ch, v)
    await same("client", "request close", "request_close", ch, query_id=3)
    await embedded.advance_time(3600)
    await same("client", "finalize close", "close", ch)
    await same("client", "withdraw", "withdraw", ch, query_id=9)
    spec2 = ChannelSpec("worker", wallets["proxy"], wallets["client"], public_key(PROXY_KEY),
                        public_key(CLIENT_KEY), 60, 2)
    ch2 = (await same("proxy", "deploy channel, no deposit", "deploy_channel", spec2,
                      deposit=0)).to
    await same("client", "payee close", "payee_close", ch2)

    # root registry
    h1, h2, h3 = (hashlib.sha256(x).digest() for x in (b"img1", b"img2", b"model"))
    reg = (await same("admin", "deploy registry", "deploy_registry", wallets["admin"], PARAMS,
                      [h1], [h3])).to
    for what, body in [
        ("add image hash", m.add_image_hash_body(h2, query_id=1)),
        ("del image hash", m.del_image_hash_body(h1)),
        ("add model hash", m.add_model_hash_body(h1)),
        ("del model hash", m.del_model_hash_body(h3)),
        ("update params", m.update_params_body(PARAMS)),
        ("change owner", m.change_owner_body(wallets["client"])),
    ]:
        await same("admin", what, "registry_update", reg, body)

    # proxy stake
    pspec = ProxyStakeSpec(wallets["proxy"], public_key(PROXY_KEY), TON, 600)
    px = (await same("proxy", "deploy proxy stake + stake", "deploy_proxy_stake", pspec,
                     stake=2 * TON)).to
    await same("proxy", "add stake", "add_stake", px, TON, query_id=5)
    commit = m.sign_commit(PROXY_KEY, px, 1, hashlib.sha256(b"ledger").digest())
    await same("client", "state commit", "commit_state", px, commit)
    await same("proxy", "request unstake", "request_unstake", px)
    await embedded.advance_time(600)
    await same("proxy", "unstake", "unstake", px)
    pspec2 = ProxyStakeSpec(wallets["client"], public_key(CLIENT_KEY), TON, 600)
    await same("client", "deploy proxy stake, no stake", "deploy_proxy_stake", pspec2, stake=0)

    assert len(compared) == 21 == len(rec.sent)


async def test_transactions_are_read_like_the_tvm_wrote_them() -> None:
    """Real TVM transactions (@ton/sandbox, serialised back to cells by @ton/core) parsed
    with pytoniq and read by the backend: what LiteSender matches on (external in, the
    wallet's outgoing created_lt, the destination's in-message source and created_lt) and the
    exit code / success it maps."""
    reason = _toolchain()
    if reason is not None:
        pytest.skip(reason)
    from pytoniq_core.tlb.transaction import Transaction

    from cocoon.chain.embedded import default_contracts_dir
    from cocoon.chain.ton.lite import _seen

    spec = ChannelSpec("client", DEST, DEST, public_key(CLIENT_KEY), public_key(PROXY_KEY), 60, 1)
    deploy = _ton(DEST).deploy_message(
        "client_channel", m.channel_data(spec), TON + TOPUP_FEE, m.topup_body(TON))
    assert deploy.state_init is not None
    si = StateInit.deserialize(deploy.state_init.begin_parse())
    close = m.request_close_body(query_id=5)  # from a non-funder: exit 100
    sends = [(deploy.value, deploy.body, True, 0), (DEFAULT_MSG_VALUE, close, False, 100)]
    req = {
        "code": base64.b64encode(_boc(si.code)).decode(),
        "data": base64.b64encode(_boc(si.data)).decode(),
        "sends": [{"value": str(v), "body": base64.b64encode(_boc(b)).decode(), "init": i}
                  for v, b, i, _ in sends],
    }
    cdir = default_contracts_dir()
    script = Path(__file__).with_name("sandbox_tx.js")
    proc = await asyncio.create_subprocess_exec(
        "node", str(script), json.dumps(req), stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(cdir / "node_modules")},
    )
    stdout, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    out = json.loads(stdout)
    wallet, contract = out["wallet"], out["contract"]
    assert contract == deploy.destination
    for (value, body, _, exit_code), send in zip(sends, out["sends"], strict=True):
        seen = [_seen(Transaction.deserialize(_cell(base64.b64decode(t["boc"])).begin_parse()),
                      0) for t in send["txs"]]
        assert [t.info.address for t in seen] == [t["address"] for t in send["txs"]]
        wtx = seen[0]
        assert wtx.info.address == wallet and wtx.in_external and wtx.success
        assert wtx.info.exit_code == 0 and wtx.in_src is None
        ((to, created_lt),) = wtx.out_created
        assert to == contract and wtx.info.out_messages[0].value == value
        (ctx,) = [t for t in seen if t.in_src == wallet and t.in_created_lt == created_lt]
        assert ctx.info.address == contract and ctx.in_body_hash == body.hash
        assert ctx.info.exit_code == exit_code and ctx.success is (exit_code == 0)
        assert ctx.info.in_value == value and ctx.info.total_fees > 0
        if exit_code:
            assert ctx.info.aborted is True
            (bounced,) = ctx.info.out_messages  # bounced back to the wallet
            assert bounced.to == wallet and bounced.op == 0xFFFFFFFF
        else:
            assert ctx.info.aborted is False and ctx.info.out_messages == ()


# ---- 2. the wallet layer, offline ---------------------------------------------------------


def _parse_external(boc: bytes) -> tuple[MessageAny, dict[str, Any], MessageAny]:
    """(external message, signed fields, the internal message inside)."""
    ext = MessageAny.deserialize(_cell(boc).begin_parse())
    assert isinstance(ext.info, ExternalMsgInfo)
    s = ext.body.begin_parse()
    signature = s.load_bytes(64)
    signing = s.to_cell()
    fields = {
        "signature": signature,
        "signing_hash": signing.hash,
        "wallet_id": s.load_uint(32),
        "valid_until": s.load_uint(32),
        "seqno": s.load_uint(32),
        "op": s.load_uint(8),
        "send_mode": s.load_uint(8),
    }
    inner = MessageAny.deserialize(s.load_ref().begin_parse())
    assert s.remaining_bits == 0 and s.remaining_refs == 0
    return ext, fields, inner


def _check_inner(inner: MessageAny, msg: OutgoingMessage) -> None:
    assert isinstance(inner.info, InternalMsgInfo)
    dest = inner.info.dest
    assert f"{dest.wc}:{dest.hash_part.hex()}" == msg.destination
    assert inner.info.value.grams == msg.value
    assert inner.info.bounce is msg.bounce
    assert _boc(inner.body) == _boc(msg.body)
    if msg.state_init is None:
        assert inner.init is None
    else:
        assert _boc(inner.init.serialize()) == _boc(msg.state_init)


def _deploy_msg(wallet: str) -> OutgoingMessage:
    spec = ChannelSpec("client", wallet, DEST, public_key(CLIENT_KEY), public_key(PROXY_KEY),
                       3600, 1)
    return _ton(wallet).deploy_message(
        "client_channel", m.channel_data(spec), 2 * TON + TOPUP_FEE, m.topup_body(2 * TON)
    )


@pytest.mark.parametrize("deploy_wallet", [False, True])
def test_external_message_carries_exactly_the_message(deploy_wallet: bool) -> None:
    w = TonWallet.from_mnemonic(MNEMONIC)
    for msg in [
        _deploy_msg(w.address),
        OutgoingMessage(DEST, DEFAULT_MSG_VALUE,
                        sign_voucher(CLIENT_KEY, "client", DEST, 4, TON).body()),
        OutgoingMessage(DEST, TON + TOPUP_FEE, m.topup_body(TON)),
    ]:
        ext_cell = w.external_message(msg, seqno=0 if deploy_wallet else 12,
                                      valid_until=T0 + 60, deploy=deploy_wallet)
        ext, f, inner = _parse_external(_boc(ext_cell))
        assert f"{ext.info.dest.wc}:{ext.info.dest.hash_part.hex()}" == w.address
        if deploy_wallet:  # the wallet's own StateInit rides along; its hash is its address
            assert ext.init is not None
            assert f"0:{ext.init.serialize().hash.hex()}" == w.address
            assert f["seqno"] == 0 and f["valid_until"] == 0xFFFFFFFF
        else:
            assert ext.init is None
            assert (f["seqno"], f["valid_until"]) == (12, T0 + 60)
        assert (f["wallet_id"], f["op"], f["send_mode"]) == (WALLET_ID, 0, SEND_MODE)
        Ed25519PublicKey.from_public_bytes(w.public_key).verify(f["signature"],
                                                                f["signing_hash"])
        _check_inner(inner, msg)


async def test_external_message_is_what_pytoniq_wallet_sends() -> None:
    """pytoniq's own WalletV4R2 (with a provider that never touches the network) derives the
    same address and sends the very same external message BOC."""
    from pytoniq.contract.wallets.wallet import WalletV4R2

    class OfflineProvider:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        async def raw_get_account_state(self, address: Any) -> tuple[None, None]:
            return None, None

        async def raw_send_message(self, boc: bytes) -> int:
            self.sent.append(boc)
            return 1

    provider = OfflineProvider()
    pw = await WalletV4R2.from_mnemonic(provider=provider, mnemonics=MNEMONIC)
    w = TonWallet.from_mnemonic(MNEMONIC)
    assert pw.address.to_str(is_user_friendly=False) == w.address
    assert pw.public_key == w.public_key and pw.wallet_id == w.wallet_id

    msg = _deploy_msg(w.address)
    await pw.raw_transfer([w.internal_message(msg)], seqno_from_get_meth=False)  # seqno 0
    ours = w.external_message(msg, seqno=0, valid_until=0, deploy=False)
    assert provider.sent == [_boc(ours)]


def test_wallet_repr_hides_the_secret() -> None:
    w = TonWallet.from_mnemonic(MNEMONIC)
    assert w.secret_key.hex() not in repr(w) and len(w.secret_key) == 64


# ---- 3a. mnemonic files and network configs -----------------------------------------------


def _write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    p = tmp_path / "wallet.mnemonic"
    p.write_text(text)
    os.chmod(p, mode)
    return p


def test_mnemonic_file_ok(tmp_path: Path) -> None:
    p = _write(tmp_path, "\n".join(MNEMONIC) + "\n")
    assert load_mnemonic(p) == MNEMONIC
    assert TonWallet.from_file(p).address == TonWallet.from_mnemonic(MNEMONIC).address


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_mnemonic_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    p = _write(tmp_path, " ".join(MNEMONIC), mode)
    with pytest.raises(ConfigError) as ei:
        load_mnemonic(p)
    assert str(p) in str(ei.value) and "chmod 600" in str(ei.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (" ".join(MNEMONIC[:12]), "expected 24 words, found 12"),
        (" ".join([*MNEMONIC[:23], "abandon"]), "not a valid TON mnemonic"),
        (" ".join([*MNEMONIC[:23], "notaword"]), "not a valid TON mnemonic"),
        ("", "found 0"),
    ],
)
def test_mnemonic_file_parse_errors(tmp_path: Path, text: str, needle: str) -> None:
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_mnemonic(p)
    msg = str(ei.value)
    assert needle in msg and str(p) in msg
    assert MNEMONIC[0] not in msg  # never echoes the words


def test_mnemonic_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_mnemonic(tmp_path / "nope")


async def test_connect_fails_on_the_key_file_before_any_network(tmp_path: Path) -> None:
    p = _write(tmp_path, " ".join(MNEMONIC), 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        await TonChain.connect(p, "mainnet")


async def test_network_config_file(tmp_path: Path) -> None:
    good = {"liteservers": [{"ip": 1, "port": 2, "id": {"key": "x"}}], "validator": {}}
    p = tmp_path / "net.json"
    p.write_text(json.dumps(good))
    assert await load_network_config(str(p)) == good
    p.write_text("{not json")
    with pytest.raises(ConfigError, match=r"net\.json"):
        await load_network_config(str(p))
    p.write_text(json.dumps({"liteservers": []}))
    with pytest.raises(ConfigError, match="not a TON global config"):
        await load_network_config(str(p))
    with pytest.raises(ConfigError):
        await load_network_config(str(tmp_path / "missing.json"))


def _loopback_config(port: int, key: bytes) -> dict[str, Any]:
    zero = base64.b64encode(bytes(32)).decode()
    return {
        "liteservers": [{"ip": 0x7F000001, "port": port,
                         "id": {"@type": "pub.ed25519", "key": base64.b64encode(key).decode()}}],
        "validator": {"init_block": {"workchain": -1, "shard": -(1 << 63), "seqno": 1,
                                     "root_hash": zero, "file_hash": zero}},
    }


async def test_liteserver_start_failures() -> None:
    """The real pytoniq balancer, pointed at a closed loopback port (no liteserver is
    contacted): ChainUnavailable, and nothing left running; a bad key is a ConfigError."""
    import socket

    from nacl.signing import SigningKey

    from cocoon.chain.ton import PytoniqLite

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = bytes(SigningKey(bytes(range(32))).verify_key)
    with pytest.raises(ChainUnavailable, match="no liteserver"):
        await PytoniqLite.start(_loopback_config(port, key))
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    with pytest.raises(ConfigError, match="malformed liteserver"):
        await PytoniqLite.start(_loopback_config(port, b"\x01" * 31))


# ---- 3b. TonChain over fakes ----------------------------------------------------------------


async def test_is_a_chain_and_rejections_are_typed() -> None:
    me = TonWallet.from_mnemonic(MNEMONIC).address
    chain = _ton(me, RecordingSender(exit_code=106))
    assert isinstance(chain, Chain)
    assert await chain.wallet("anything") == me
    with pytest.raises(WrongState) as ei:
        await chain.request_close(DEST, sender="default")
    assert ei.value.exit_code == 106 and ei.value.address == DEST
    chain.sender = RecordingSender(exit_code=102)
    with pytest.raises(VoucherReplayed):
        await chain.submit_voucher(DEST, sign_voucher(CLIENT_KEY, "client", DEST, 1, 1),
                                   sender="x")
    chain.sender = RecordingSender(exit_code=77)
    with pytest.raises(ContractRejected) as eu:
        await chain.withdraw(DEST, sender="x")
    assert type(eu.value) is ContractRejected and eu.value.exit_code == 77


async def test_sender_must_be_this_wallet() -> None:
    me = TonWallet.from_mnemonic(MNEMONIC).address
    rec = RecordingSender()
    chain = _ton(me, rec)
    await chain.request_close(DEST, sender=me)
    await chain.request_close(DEST, sender=Address(me).to_str())  # user-friendly form
    with pytest.raises(ChainError, match="not this backend's wallet"):
        await chain.request_close(DEST, sender=DEST)
    assert len(rec.sent) == 2


async def test_advance_time_is_refused() -> None:
    with pytest.raises(ChainError, match="cannot be moved"):
        await _ton(DEST).advance_time(10)


async def test_get_methods_through_the_reader() -> None:
    owner = Builder().store_address(Address(DEST)).end_cell()
    reader = FakeReader({
        "get_channel_state": [1, 5 * TON, TON, 3, T0],
        "get_proxy_state": [0, TON, 0, 2, 0xAB, T0],
        "get_params": list(PARAMS.as_tuple()),
        "get_versions": [4, 2],
        "get_owner": [owner.begin_parse()],
        "image_hash_version": [3],
        "model_hash_version": [0],
    })
    chain = _ton(DEST, reader=reader)
    st = await chain.channel_state(DEST)
    assert (st.status, st.balance, st.charged, st.last_seqno, st.close_at) == (
        ChannelStatus.CLOSING, 5 * TON, TON, 3, T0)
    ps = await chain.proxy_state(DEST)
    assert ps.state is ProxyStatus.ACTIVE and ps.commit_hash == (0xAB).to_bytes(32, "big")
    assert await chain.registry_params(DEST) == PARAMS
    assert await chain.registry_versions(DEST) == (4, 2)
    assert await chain.registry_owner(DEST) == DEST
    h = bytes(range(32))
    assert await chain.image_hash_allowed(DEST, h) is True
    assert await chain.model_hash_allowed(DEST, h) is False
    assert reader.calls[-1] == (DEST, "model_hash_version", [int.from_bytes(h, "big")])
    # the JSON stack form of EmbeddedChain.get (what cocoon.chain.connect reads)
    items = await chain.get(DEST, "get_owner")
    assert items[0]["type"] == "slice" and items[0]["address"] == DEST
    assert await chain.get(DEST, "get_versions") == [
        {"type": "int", "value": "4"}, {"type": "int", "value": "2"}]
    reader.stacks["get_channel_state"] = [owner, 1, 2, 3, 4]
    with pytest.raises(ChainError, match="expected an int"):
        await chain.channel_state(DEST)


# ---- 3c. the liteserver sender and reader over a fake liteserver ---------------------------


class FakeLite:
    """A scripted liteserver: the wallet's and the destination's accounts and transactions.
    ``on_send`` decides which transactions appear once an external message is sent."""

    def __init__(self, wallet: TonWallet, *, status: str = "active", balance: int = 10 * TON,
                 seqno: int = 7, dest_exit: int | None = 0, wallet_sends: bool = True) -> None:
        self.wallet = wallet
        self.status = status
        self.balance = balance
        self.seqno = seqno
        self.dest_exit = dest_exit
        self.wallet_sends = wallet_sends
        self.sent: list[bytes] = []
        self.txs: dict[str, list[SeenTx]] = {}
        self.polls = 0
        self.hang = False
        self.closed = False

    async def _maybe_hang(self) -> None:
        if self.hang:
            await asyncio.Event().wait()

    async def send_boc(self, boc: bytes) -> None:
        await self._maybe_hang()
        self.sent.append(boc)
        ext, _, inner = _parse_external(boc)
        dest = f"{inner.info.dest.wc}:{inner.info.dest.hash_part.hex()}"
        me = self.wallet.address
        created = ((dest, 9001),) if self.wallet_sends else ()
        self.txs[me] = [SeenTx(100, True, None, ext.body.hash, None, created, True,
                               TxInfo(me, 0, False, 5, 0, ()))]
        if self.dest_exit is not None and self.wallet_sends:
            ok = self.dest_exit == 0
            self.txs[dest] = [SeenTx(200, False, me, inner.body.hash, 9001, (), ok,
                                     TxInfo(dest, self.dest_exit, not ok, 3,
                                            inner.info.value.grams, ()))]

    async def run_get_method(self, address: str, method: str, stack: list[Any]) -> list[Any]:
        await self._maybe_hang()
        assert (address, method) == (self.wallet.address, "seqno")
        return [self.seqno]

    async def account(self, address: str) -> AccountSnapshot:
        await self._maybe_hang()
        if address == self.wallet.address:
            return AccountSnapshot(address, self.status, self.balance, 50)  # type: ignore[arg-type]
        return AccountSnapshot(address, "active", 123, 60)

    async def transactions(self, address: str, *, after_lt: int) -> list[SeenTx]:
        self.polls += 1
        return [t for t in self.txs.get(address, []) if t.lt > after_lt]

    async def time(self) -> int:
        return T0

    async def aclose(self) -> None:
        self.closed = True


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps = 0

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.t += seconds


def _lite_chain(lite: FakeLite, clock: FakeClock | None = None,
                **kw: Any) -> tuple[TonChain, LiteSender]:
    clock = clock or FakeClock()
    sender = LiteSender(lite, lite.wallet, clock=lambda: T0, monotonic=clock.monotonic,
                        sleep=clock.sleep, **kw)
    return TonChain(lite.wallet.address, sender, LiteReader(lite), lite=lite), sender


async def test_lite_sender_success_and_trace() -> None:
    w = TonWallet.from_mnemonic(MNEMONIC)
    lite = FakeLite(w, seqno=7)
    chain, _ = _lite_chain(lite)
    res = await chain.deposit(DEST, TON, sender="default")
    assert res.success and res.to == DEST and res.exit_code == 0
    assert [t.address for t in res.transactions] == [w.address, DEST]
    (boc,) = lite.sent
    ext, f, inner = _parse_external(boc)
    assert ext.init is None and f["seqno"] == 7 and f["valid_until"] == T0 + 120
    _check_inner(inner, OutgoingMessage(DEST, TON + TOPUP_FEE, m.topup_body(TON)))
    assert await chain.now() == T0
    assert await chain.balance(DEST) == 123
    await chain.aclose()
    assert lite.closed
    with pytest.raises(ChainError, match="no liteserver connection"):
        await chain.now()


async def test_lite_sender_deploys_an_uninitialised_wallet() -> None:
    w = TonWallet.from_mnemonic(MNEMONIC)
    lite = FakeLite(w, status="uninit", seqno=99)
    chain, _ = _lite_chain(lite)
    await chain.request_close(DEST, sender="default")
    ext, f, _ = _parse_external(lite.sent[0])
    assert ext.init is not None and _boc(ext.init.serialize()) == _boc(w.state_init())
    assert f["seqno"] == 0


async def test_lite_sender_maps_the_destination_exit_code() -> None:
    lite = FakeLite(TonWallet.from_mnemonic(MNEMONIC), dest_exit=106)
    chain, _ = _lite_chain(lite)
    with pytest.raises(WrongState) as ei:
        await chain.withdraw(DEST, sender="default")
    assert ei.value.exit_code == 106 and ei.value.result.transactions[1].exit_code == 106


async def test_lite_sender_times_out_when_the_transaction_never_appears() -> None:
    lite = FakeLite(TonWallet.from_mnemonic(MNEMONIC), dest_exit=None)
    clock = FakeClock()
    chain, _ = _lite_chain(lite, clock, timeout=30, poll_interval=2)
    with pytest.raises(ChainTimeout) as ei:
        await chain.withdraw(DEST, sender="default")
    assert "within 30 s" in str(ei.value) and "may still be applied" in str(ei.value)
    assert isinstance(ei.value, ChainError)
    assert clock.t >= 30 and clock.sleeps == 15  # bounded: polls every 2 s for 30 s


async def test_lite_sender_wallet_did_not_send() -> None:
    lite = FakeLite(TonWallet.from_mnemonic(MNEMONIC), wallet_sends=False)
    chain, _ = _lite_chain(lite)
    with pytest.raises(ChainError, match="did not send"):
        await chain.withdraw(DEST, sender="default")


async def test_lite_sender_refuses_without_funds_or_when_frozen() -> None:
    w = TonWallet.from_mnemonic(MNEMONIC)
    lite = FakeLite(w, status="nonexist", balance=0)
    chain, _ = _lite_chain(lite)
    with pytest.raises(ChainError, match="fund it first"):
        await chain.deposit(DEST, TON, sender="default")
    lite = FakeLite(w, status="frozen")
    chain, _ = _lite_chain(lite)
    with pytest.raises(ChainError, match="frozen"):
        await chain.withdraw(DEST, sender="default")
    assert lite.sent == []


async def test_hanging_liteserver_calls_time_out() -> None:
    lite = FakeLite(TonWallet.from_mnemonic(MNEMONIC))
    lite.hang = True
    chain, _ = _lite_chain(lite, call_timeout=0.05)
    with pytest.raises(ChainTimeout, match="wallet state"):
        await chain.withdraw(DEST, sender="default")
    reader = LiteReader(lite, timeout=0.05)
    with pytest.raises(ChainTimeout, match="get-method seqno"):
        await reader.run_get_method(lite.wallet.address, "seqno", [])


async def test_lite_reader_maps_get_method_failures() -> None:
    class RunGetMethodError(Exception):
        def __init__(self) -> None:
            super().__init__("boom")
            self.exit_code = 11

    class Failing:
        async def run_get_method(self, address: str, method: str, stack: list[Any]) -> list[Any]:
            raise RunGetMethodError()

    reader = LiteReader(Failing())  # type: ignore[arg-type]
    with pytest.raises(ChainError, match=r"get_channel_state on .*: exit code 11"):
        await reader.run_get_method(DEST, "get_channel_state", [])


async def test_sends_are_serialised_per_wallet() -> None:
    """Two concurrent sends never share a seqno: the second waits for the first."""
    w = TonWallet.from_mnemonic(MNEMONIC)
    lite = FakeLite(w)
    chain, _ = _lite_chain(lite)
    seqnos: list[int] = []
    orig = lite.send_boc

    async def send_boc(boc: bytes) -> None:
        seqnos.append(_parse_external(boc)[1]["seqno"])
        lite.seqno += 1
        await orig(boc)

    lite.send_boc = send_boc  # type: ignore[method-assign]
    await asyncio.gather(chain.request_close(DEST, sender="d"), chain.withdraw(DEST, sender="d"))
    assert seqnos == [7, 8]
