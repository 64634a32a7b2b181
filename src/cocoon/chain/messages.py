"""Every cell the Cocoon contracts take: initial data, StateInit, addresses, message bodies.

Pure (pytoniq-core 0.2.1), backend-independent: the embedded chain and a liteserver backend
send exactly these cells.  Layouts are those of contracts/README.md; the only I/O is
:func:`load_code` reading ``contracts/build/<name>.json`` (hash-checked).

Every body is ``op:uint32 query_id:uint64 fields``.  Hashes (registry image/model hashes,
proxy state hashes) are 32 raw bytes (``uint256`` big-endian on chain); addresses are raw
strings ``"0:<hex>"`` (any form pytoniq's :class:`Address` parses is accepted).

Registry initial data: the contract's ``image_hash_version`` / ``model_hash_version``
get-methods answer 0 for an absent hash, so a hash stored with value 0 could not be told from
an absent one.  :func:`registry_data` therefore stores :data:`INITIAL_HASH_VERSION` (1) for the
hashes it puts in the initial dictionaries ("present since the first version"); hashes added
later by a message carry ``version + 1`` as the contract sets it.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell
from pytoniq_core.boc.hashmap.hashmap import HashMap
from pytoniq_core.tlb.account import StateInit

from cocoon.chain.errors import ChainError, ChainUnavailable
from cocoon.chain.specs import ChannelSpec, ProxyInfo, ProxyStakeSpec, RegistryParams
from cocoon.chain.vouchers import ChannelKind, cell_boc, sign_payload

__all__ = [
    "CHANNEL_CONTRACTS",
    "INITIAL_HASH_VERSION",
    "OP_ADD_IMAGE_HASH",
    "OP_ADD_MODEL_HASH",
    "OP_ADD_STAKE",
    "OP_CHANGE_OWNER",
    "OP_DEL_IMAGE_HASH",
    "OP_DEL_MODEL_HASH",
    "OP_DEREGISTER",
    "OP_EXCESSES",
    "OP_FINALIZE_CLOSE",
    "OP_LIST_PROXY",
    "OP_PAYEE_CLOSE",
    "OP_PAYOUT",
    "OP_REFUND",
    "OP_REGISTER",
    "OP_REQUEST_CLOSE",
    "OP_REQUEST_UNSTAKE",
    "OP_STATE_COMMIT",
    "OP_TOPUP",
    "OP_UNLIST_PROXY",
    "OP_UNSTAKE",
    "OP_UPDATE_PARAMS",
    "OP_WITHDRAW",
    "PROXY_INFO_MAX_BYTES",
    "ChannelSpec",
    "ProxyInfo",
    "ProxyStakeSpec",
    "RegistryParams",
    "add_image_hash_body",
    "add_model_hash_body",
    "add_stake_body",
    "boc",
    "change_owner_body",
    "channel_address",
    "channel_code",
    "channel_data",
    "commit_payload",
    "contract_address",
    "default_contracts_dir",
    "del_image_hash_body",
    "del_model_hash_body",
    "deregister_body",
    "finalize_close_body",
    "load_code",
    "params_cell",
    "parse_proxy_info",
    "payee_close_body",
    "proxy_info_cell",
    "proxy_stake_address",
    "proxy_stake_data",
    "register_body",
    "registry_address",
    "registry_data",
    "request_close_body",
    "request_unstake_body",
    "sign_commit",
    "state_init",
    "topup_body",
    "unstake_body",
    "update_params_body",
    "withdraw_body",
]

# channels
OP_TOPUP = 0xF172E6C2
OP_REQUEST_CLOSE = 0xFAFA6CC1
OP_FINALIZE_CLOSE = 0x2F0B5C31
OP_PAYEE_CLOSE = 0x7C3E91A2
OP_WITHDRAW = 0xDA068E78
OP_PAYOUT = 0xC59A7CD3
"""Outgoing: voucher payout to the payee."""
OP_REFUND = 0xC68EBC7B
"""Outgoing: channel withdraw / proxy unstake refund to the owner."""
OP_EXCESSES = 0xD53276DB
"""Outgoing: what a voucher (or a payee close) carried, less gas, back to its sender."""
# root registry
OP_UPDATE_PARAMS = 0x022FA189
OP_ADD_IMAGE_HASH = 0xE34B1C60
OP_DEL_IMAGE_HASH = 0x8D94A79A
OP_ADD_MODEL_HASH = 0xC146134D
OP_DEL_MODEL_HASH = 0x92B11C18
OP_CHANGE_OWNER = 0xC4A1AE54
OP_LIST_PROXY = 0x4F1D2C83
"""Stake contract -> registry: list (or re-list) the proxy."""
OP_UNLIST_PROXY = 0x2B7E90D4
"""Stake contract -> registry: remove its listing."""
# proxy stake
OP_ADD_STAKE = 0x9713F187
OP_STATE_COMMIT = 0x5C1A7E3B
OP_REQUEST_UNSTAKE = 0x6A1F6A60
OP_UNSTAKE = 0xB51D5A01
OP_REGISTER = 0x7A3C51E9
OP_DEREGISTER = 0x91E4B6F2

CHANNEL_CONTRACTS: dict[ChannelKind, str] = {"client": "client_channel", "worker": "worker_channel"}
REGISTRY_CONTRACT = "root_registry"
PROXY_STAKE_CONTRACT = "proxy_stake"
INITIAL_HASH_VERSION = 1
"""Value stored for the hashes of a registry's initial data (see the module docstring)."""

_COINS_LIMIT = 1 << 120


# ---- checked field writers ---------------------------------------------------------------


def _uint(value: int, bits: int, name: str) -> int:
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{name} out of uint{bits} range: {value}")
    return value


def _coins(value: int, name: str) -> int:
    if not 0 <= value < _COINS_LIMIT:
        raise ValueError(f"{name} out of Coins range: {value}")
    return value


def _hash(h: bytes, name: str = "hash") -> int:
    if len(h) != 32:
        raise ValueError(f"{name} must be 32 bytes, got {len(h)}")
    return int.from_bytes(h, "big")


def _pubkey(k: bytes, name: str) -> bytes:
    if len(k) != 32:
        raise ValueError(f"{name} must be a 32-byte Ed25519 public key, got {len(k)} bytes")
    return k


def _addr(a: Address | str) -> Address:
    return a if isinstance(a, Address) else Address(a)


def _head(op: int, query_id: int) -> Builder:
    b: Builder = Builder().store_uint(op, 32).store_uint(_uint(query_id, 64, "query_id"), 64)
    return b


def _end(b: Builder) -> Cell:
    cell: Cell = b.end_cell()
    return cell


def boc(cell: Cell) -> bytes:
    """The standard BOC of a cell (what a wallet or the chain server sends as a body)."""
    return cell_boc(cell)


# ---- code, StateInit, addresses ----------------------------------------------------------


def default_contracts_dir() -> Path:
    """``$COCOON_CONTRACTS_DIR`` or the repository's ``contracts/`` next to ``src/``."""
    env = os.environ.get("COCOON_CONTRACTS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "contracts"


@functools.lru_cache(maxsize=32)
def _load_code(path: Path) -> Cell:
    try:
        j = json.loads(path.read_text("utf-8"))
    except FileNotFoundError as exc:
        raise ChainUnavailable(
            f"compiled contract {path} not found (set COCOON_CONTRACTS_DIR)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ChainError(f"compiled contract {path}: unreadable: {exc}") from exc
    code: Cell = Cell.one_from_boc(j["codeBoc64"])
    if code.hash.hex() != str(j["codeHashHex"]).lower():
        raise ChainError(f"compiled contract {path}: code hash does not match codeHashHex")
    return code


def load_code(name: str, contracts_dir: Path | None = None) -> Cell:
    """The code cell of ``contracts/build/<name>.json``; its hash is checked against the
    file's ``codeHashHex``."""
    if not name.isidentifier():
        raise ValueError(f"bad contract name {name!r}")
    cdir = contracts_dir if contracts_dir is not None else default_contracts_dir()
    return _load_code((cdir / "build" / f"{name}.json").resolve())


def state_init(code: Cell, data: Cell) -> Cell:
    """StateInit with code and data only (no split depth, special or libraries)."""
    cell: Cell = StateInit(code=code, data=data).serialize()
    return cell


def contract_address(code: Cell, data: Cell, workchain: int = 0) -> str:
    """Raw address ``"<wc>:<hex>"``: the StateInit's representation hash in ``workchain``."""
    return f"{workchain}:{state_init(code, data).hash.hex()}"


# ---- channels ----------------------------------------------------------------------------


def channel_code(kind: ChannelKind, contracts_dir: Path | None = None) -> Cell:
    return load_code(CHANNEL_CONTRACTS[kind], contracts_dir)


def channel_data(spec: ChannelSpec) -> Cell:
    """ChannelStorage of a fresh channel: balance = charged = lastSeqno = state = closeAt = 0,
    signerPubkey, ^ChannelParties {funder, payee, payeePubkey, closeDelay, channelId}."""
    parties = (
        Builder()
        .store_address(_addr(spec.funder))
        .store_address(_addr(spec.payee))
        .store_bytes(_pubkey(spec.payee_pubkey, "payee_pubkey"))
        .store_uint(_uint(spec.close_delay, 32, "close_delay"), 32)
        .store_uint(_uint(spec.channel_id, 64, "channel_id"), 64)
    )
    return _end(
        Builder()
        .store_coins(0)
        .store_coins(0)
        .store_uint(0, 64)
        .store_uint(0, 2)
        .store_uint(0, 32)
        .store_bytes(_pubkey(spec.signer_pubkey, "signer_pubkey"))
        .store_ref(_end(parties))
    )


def channel_address(spec: ChannelSpec, contracts_dir: Path | None = None) -> str:
    return contract_address(channel_code(spec.kind, contracts_dir), channel_data(spec))


def topup_body(amount: int, *, query_id: int = 0) -> Cell:
    """Top-up: credits ``amount``; the message must carry ``amount + 0.01 TON``."""
    return _end(_head(OP_TOPUP, query_id).store_coins(_coins(amount, "amount")))


def request_close_body(*, query_id: int = 0) -> Cell:
    return _end(_head(OP_REQUEST_CLOSE, query_id))


def finalize_close_body(*, query_id: int = 0) -> Cell:
    return _end(_head(OP_FINALIZE_CLOSE, query_id))


def payee_close_body(*, query_id: int = 0) -> Cell:
    return _end(_head(OP_PAYEE_CLOSE, query_id))


def withdraw_body(*, query_id: int = 0) -> Cell:
    return _end(_head(OP_WITHDRAW, query_id))


# ---- root registry -----------------------------------------------------------------------


def params_cell(p: RegistryParams) -> Cell:
    """``Params``: Coins Coins uint32 x6 Coins Coins uint32."""
    return _end(
        Builder()
        .store_coins(_coins(p.price_per_token, "price_per_token"))
        .store_coins(_coins(p.worker_fee, "worker_fee"))
        .store_uint(_uint(p.prompt_mult, 32, "prompt_mult"), 32)
        .store_uint(_uint(p.cached_mult, 32, "cached_mult"), 32)
        .store_uint(_uint(p.completion_mult, 32, "completion_mult"), 32)
        .store_uint(_uint(p.reasoning_mult, 32, "reasoning_mult"), 32)
        .store_uint(_uint(p.proxy_close_delay, 32, "proxy_close_delay"), 32)
        .store_uint(_uint(p.client_close_delay, 32, "client_close_delay"), 32)
        .store_coins(_coins(p.min_proxy_stake, "min_proxy_stake"))
        .store_coins(_coins(p.min_client_stake, "min_client_stake"))
        .store_uint(_uint(p.training_mult, 32, "training_mult"), 32)
    )


def _hash_dict(hashes: Iterable[bytes], what: str) -> Cell | None:
    d = HashMap(256).with_uint_values(32)
    for h in hashes:
        d.set_int_key(_hash(h, what), INITIAL_HASH_VERSION)
    cell: Cell | None = d.serialize()
    return cell


def registry_data(
    owner: Address | str,
    params: RegistryParams,
    image_hashes: Iterable[bytes] = (),
    model_hashes: Iterable[bytes] = (),
    contracts_dir: Path | None = None,
) -> Cell:
    """RegistryStorage of a fresh registry: owner, version = paramsVersion = 0, ^Params,
    imageHashes and modelHashes (HashmapE 256 uint32, each initial hash ->
    :data:`INITIAL_HASH_VERSION`), ^ProxyBook {the proxy stake code, no listings}."""
    book = _end(Builder().store_ref(load_code(PROXY_STAKE_CONTRACT, contracts_dir))
                .store_dict(None))
    return _end(
        Builder()
        .store_address(_addr(owner))
        .store_uint(0, 32)
        .store_uint(0, 32)
        .store_ref(params_cell(params))
        .store_dict(_hash_dict(image_hashes, "image hash"))
        .store_dict(_hash_dict(model_hashes, "model hash"))
        .store_ref(book)
    )


def registry_address(
    owner: Address | str,
    params: RegistryParams,
    image_hashes: Iterable[bytes] = (),
    model_hashes: Iterable[bytes] = (),
    contracts_dir: Path | None = None,
) -> str:
    code = load_code(REGISTRY_CONTRACT, contracts_dir)
    return contract_address(
        code, registry_data(owner, params, image_hashes, model_hashes, contracts_dir))


def update_params_body(params: RegistryParams, *, query_id: int = 0) -> Cell:
    return _end(_head(OP_UPDATE_PARAMS, query_id).store_ref(params_cell(params)))


def _hash_body(op: int, h: bytes, query_id: int) -> Cell:
    return _end(_head(op, query_id).store_uint(_hash(h), 256))


def add_image_hash_body(h: bytes, *, query_id: int = 0) -> Cell:
    return _hash_body(OP_ADD_IMAGE_HASH, h, query_id)


def del_image_hash_body(h: bytes, *, query_id: int = 0) -> Cell:
    return _hash_body(OP_DEL_IMAGE_HASH, h, query_id)


def add_model_hash_body(h: bytes, *, query_id: int = 0) -> Cell:
    return _hash_body(OP_ADD_MODEL_HASH, h, query_id)


def del_model_hash_body(h: bytes, *, query_id: int = 0) -> Cell:
    return _hash_body(OP_DEL_MODEL_HASH, h, query_id)


def change_owner_body(new_owner: Address | str, *, query_id: int = 0) -> Cell:
    return _end(_head(OP_CHANGE_OWNER, query_id).store_address(_addr(new_owner)))


# ---- proxy stake -------------------------------------------------------------------------


def proxy_stake_data(spec: ProxyStakeSpec) -> Cell:
    """ProxyStorage of a fresh stake: proxyPubkey, stake = state = unlockAt = commitSeqno =
    commitHash = committedAt = 0, ^ProxyConfig {owner, minStake, unstakeDelay, registry}."""
    config = (
        Builder()
        .store_address(_addr(spec.owner))
        .store_coins(_coins(spec.min_stake, "min_stake"))
        .store_uint(_uint(spec.unstake_delay, 32, "unstake_delay"), 32)
        .store_address(_addr(spec.registry))
    )
    return _end(
        Builder()
        .store_bytes(_pubkey(spec.proxy_pubkey, "proxy_pubkey"))
        .store_coins(0)
        .store_uint(0, 2)
        .store_uint(0, 32)
        .store_uint(0, 64)
        .store_uint(0, 256)
        .store_uint(0, 32)
        .store_ref(_end(config))
    )


def proxy_stake_address(spec: ProxyStakeSpec, contracts_dir: Path | None = None) -> str:
    return contract_address(load_code(PROXY_STAKE_CONTRACT, contracts_dir), proxy_stake_data(spec))


def add_stake_body(amount: int, *, query_id: int = 0) -> Cell:
    """Add stake: credits ``amount``; the message must carry ``amount + 0.01 TON``."""
    return _end(_head(OP_ADD_STAKE, query_id).store_coins(_coins(amount, "amount")))


def request_unstake_body(*, query_id: int = 0) -> Cell:
    return _end(_head(OP_REQUEST_UNSTAKE, query_id))


def unstake_body(*, query_id: int = 0) -> Cell:
    return _end(_head(OP_UNSTAKE, query_id))


PROXY_INFO_MAX_BYTES = 2048
"""A listing's info (compact JSON, snake bytes) may not be longer: readers skip longer ones."""


def proxy_info_cell(info: ProxyInfo) -> Cell:
    """A listing's info: ``{"v":1,"client":…,"worker":…,"models":[…]}`` as UTF-8 snake
    bytes (written and read only off chain; the contracts store it as it is)."""
    raw = json.dumps({"v": 1, "client": info.client_endpoint, "worker": info.worker_endpoint,
                      "models": list(info.models)}, separators=(",", ":")).encode()
    if len(raw) > PROXY_INFO_MAX_BYTES:
        raise ValueError(f"a proxy listing's info is {len(raw)} bytes encoded, more than "
                         f"{PROXY_INFO_MAX_BYTES}: list fewer or shorter model names")
    return _end(Builder().store_snake_bytes(raw))


def parse_proxy_info(cell: Cell) -> ProxyInfo:
    """The inverse of :func:`proxy_info_cell`; ``ValueError`` naming what is wrong."""
    try:
        raw = cell.begin_parse().load_snake_bytes()  # type: ignore[no-untyped-call]
    except Exception as exc:  # pytoniq-core asserts on a cell that is not snake bytes
        raise ValueError(f"not snake bytes: {exc}") from None
    if len(raw) > PROXY_INFO_MAX_BYTES:
        raise ValueError(f"{len(raw)} bytes, more than {PROXY_INFO_MAX_BYTES}")
    try:
        d = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(d, dict) or d.get("v") != 1:
        raise ValueError("not a version 1 listing")
    client, worker, models = d.get("client"), d.get("worker"), d.get("models", [])
    if not isinstance(client, str) or not isinstance(worker, str):
        raise ValueError("client and worker must be host:port strings")
    if not isinstance(models, list) or not all(isinstance(x, str) for x in models):
        raise ValueError("models must be a list of strings")
    return ProxyInfo(client, worker, tuple(models))


def register_body(info: ProxyInfo, *, query_id: int = 0) -> Cell:
    """Owner -> its stake: list the proxy in the stake's registry with ``info`` (the stake
    must be active and hold its minimum; the registry checks the network's minimum)."""
    return _end(_head(OP_REGISTER, query_id).store_ref(proxy_info_cell(info)))


def deregister_body(*, query_id: int = 0) -> Cell:
    """Owner -> its stake: remove the listing (the stake stays)."""
    return _end(_head(OP_DEREGISTER, query_id))


def commit_payload(
    proxy_addr: Address | str, seqno: int, state_hash: bytes, *, op: int = OP_STATE_COMMIT
) -> Cell:
    """CommitPayload: op:uint32 proxy:MsgAddressInt seqno:uint64 stateHash:uint256.  ``op``
    is overridable only so tests can build the wrong-kind case."""
    return _end(
        Builder()
        .store_uint(_uint(op, 32, "op"), 32)
        .store_address(_addr(proxy_addr))
        .store_uint(_uint(seqno, 64, "seqno"), 64)
        .store_uint(_hash(state_hash, "state_hash"), 256)
    )


def sign_commit(
    key: Ed25519PrivateKey | bytes,
    proxy_addr: Address | str,
    seqno: int,
    state_hash: bytes,
    *,
    query_id: int = 0,
) -> Cell:
    """The full state-commit message body: ``op query_id signature:bits512 ^CommitPayload``,
    the signature being Ed25519(proxy key, CommitPayload cell hash)."""
    payload = commit_payload(proxy_addr, seqno, state_hash)
    return _end(
        _head(OP_STATE_COMMIT, query_id).store_bytes(sign_payload(payload, key)).store_ref(payload)
    )
