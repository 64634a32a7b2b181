"""The ``ton`` backend's liteserver side: the network config (global config JSON), the reads
and writes it needs (:class:`LiteApi`, real: :class:`PytoniqLite` over pytoniq's
``LiteBalancer``), get-methods (:class:`GetMethodReader`, :class:`LiteReader`), every call
bounded by a deadline (:class:`~cocoon.errors.ChainTimeout`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import aiohttp
from pytoniq.liteclient.balancer import LiteBalancer
from pytoniq_core.boc.address import Address
from pytoniq_core.boc.cell import Cell
from pytoniq_core.tlb.account import SimpleAccount

from cocoon.chain.base import OutMessage, TxInfo
from cocoon.chain.errors import ChainError, ChainTimeout, ChainUnavailable
from cocoon.chain.ton._cells import parse, raw
from cocoon.errors import ConfigError

__all__ = [
    "CALL_TIMEOUT",
    "NETWORK_CONFIG_URLS",
    "AccountSnapshot",
    "GetMethodReader",
    "LiteApi",
    "LiteReader",
    "PytoniqLite",
    "SeenTx",
    "bounded",
    "load_network_config",
]

NETWORK_CONFIG_URLS = {
    "testnet": "https://ton.org/testnet-global.config.json",
    "mainnet": "https://ton.org/global-config.json",
}
"""Where ``network_config = "testnet" | "mainnet"`` is downloaded from (pytoniq's URLs)."""
CALL_TIMEOUT = 30.0
"""Seconds one liteserver call may take."""
_START_TIMEOUT = 60.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    address: str
    status: Literal["nonexist", "uninit", "active", "frozen"]
    balance: int
    last_lt: int
    code: bytes | None = None  # BOCs of an active account's code and data
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class SeenTx:
    """What :class:`LiteSender` needs of one transaction."""

    lt: int
    in_external: bool
    in_src: str | None
    in_body_hash: bytes | None
    in_created_lt: int | None
    out_created: tuple[tuple[str, int], ...]  # (destination, created_lt) of internal messages
    success: bool
    info: TxInfo


class LiteApi(Protocol):
    """The liteserver reads and writes the ``ton`` backend uses (real: :class:`PytoniqLite`)."""

    async def send_boc(self, boc: bytes) -> None: ...

    async def run_get_method(self, address: str, method: str, stack: list[Any]) -> list[Any]: ...

    async def account(self, address: str) -> AccountSnapshot: ...

    async def transactions(self, address: str, *, after_lt: int) -> list[SeenTx]:
        """Transactions of ``address`` with ``lt > after_lt``, newest first."""
        ...

    async def time(self) -> int: ...

    async def aclose(self) -> None: ...


def _op(body: Cell) -> int | None:
    s = parse(body)
    return int(s.load_uint(32)) if s.remaining_bits >= 32 else None


def _seen(tx: Any, workchain: int) -> SeenTx:
    """A pytoniq ``Transaction`` as a :class:`SeenTx`."""
    d = tx.description
    compute = getattr(d, "compute_ph", None)
    action = getattr(d, "action", None)
    vm: Any = compute if compute is not None and compute.type_ == "vm" else None
    exit_code: int | None = None if vm is None else int(vm.exit_code)
    aborted: bool | None = getattr(d, "aborted", None)
    success = bool(
        vm is not None and vm.success and not aborted and (action is None or action.success)
    )
    msg = tx.in_msg
    in_internal = msg is not None and msg.is_internal
    outs: list[OutMessage] = []
    created: list[tuple[str, int]] = []
    for m in tx.out_msgs:
        if not m.is_internal:
            continue
        to = raw(m.info.dest)
        outs.append(
            OutMessage(to=to, value=int(m.info.value.grams), fwd_fee=int(m.info.fwd_fee),
                       op=_op(m.body))
        )
        created.append((to, int(m.info.created_lt)))
    info = TxInfo(
        address=f"{workchain}:{tx.account_addr.hex()}",
        exit_code=exit_code,
        aborted=aborted,
        total_fees=int(tx.total_fees.grams),
        in_value=int(msg.info.value.grams) if in_internal else 0,
        out_messages=tuple(outs),
    )
    return SeenTx(
        lt=int(tx.lt),
        in_external=msg is not None and msg.is_external,
        in_src=raw(msg.info.src) if in_internal else None,
        in_body_hash=bytes(msg.body.hash) if msg is not None else None,
        in_created_lt=int(msg.info.created_lt) if in_internal else None,
        out_created=tuple(created),
        success=success,
        info=info,
    )


class PytoniqLite:
    """:class:`LiteApi` over a started pytoniq ``LiteBalancer`` (owned: closed by
    :meth:`aclose`)."""

    def __init__(self, balancer: Any) -> None:
        self._b = balancer

    @classmethod
    async def start(cls, config: dict[str, Any], *, trust_level: int = 2) -> PytoniqLite:
        try:
            balancer = LiteBalancer.from_config(config, trust_level=trust_level)
        except (KeyError, IndexError, TypeError, ValueError, OSError, RuntimeError) as exc:
            raise ConfigError(
                f"chain.network_config: malformed liteserver entry ({exc!r})"
            ) from None
        try:
            await asyncio.wait_for(balancer.start_up(), _START_TIMEOUT)
        except BaseException as exc:
            await _close_balancer(balancer)
            if isinstance(exc, (TimeoutError, OSError)):
                raise ChainUnavailable(
                    f"ton chain: no liteserver of the network config answered ({exc!r})"
                ) from exc
            raise
        if not balancer.alive_peers_num:
            await _close_balancer(balancer)
            raise ChainUnavailable("ton chain: no liteserver of the network config is reachable")
        return cls(balancer)

    async def send_boc(self, boc: bytes) -> None:
        await self._b.raw_send_message(boc)

    async def run_get_method(self, address: str, method: str, stack: list[Any]) -> list[Any]:
        result: list[Any] = await self._b.run_get_method(address, method, stack)
        return result

    async def account(self, address: str) -> AccountSnapshot:
        acc, shard = await self._b.raw_get_account_state(address)
        if acc is None or shard is None:
            return AccountSnapshot(address, "nonexist", 0, 0)
        simple = SimpleAccount.from_raw(acc, Address(address))
        status: Literal["uninit", "active", "frozen"] = (
            "active" if simple.is_active() else "frozen" if simple.is_frozen() else "uninit"
        )
        init = simple.state.state_init if status == "active" else None
        code = init.code if init is not None else None
        data = init.data if init is not None else None
        return AccountSnapshot(address, status, int(simple.balance), int(shard.last_trans_lt),
                               None if code is None else bytes(code.to_boc()),
                               None if data is None else bytes(data.to_boc()))

    async def transactions(self, address: str, *, after_lt: int) -> list[SeenTx]:
        _, shard = await self._b.raw_get_account_state(address)
        if shard is None or shard.last_trans_lt <= after_lt:
            return []
        txs = await self._b.get_transactions(
            address, 32, from_lt=shard.last_trans_lt, from_hash=shard.last_trans_hash,
            to_lt=after_lt,
        )
        wc = Address(address).wc
        return [_seen(t, wc) for t in txs if t.lt > after_lt]

    async def time(self) -> int:
        r = await self._b.get_time()
        return int(r["now"])

    async def aclose(self) -> None:
        await _close_balancer(self._b)


async def _close_balancer(balancer: Any) -> None:
    # LiteBalancer.close_all() assumes start_up() finished (it cancels the peer checker task
    # start_up creates); after a failed start only the connected peers need closing.
    if getattr(balancer, "_checker", None) is None:
        for peer in balancer._peers:
            if peer.inited:
                await peer.close()
        return
    await balancer.close_all()


async def bounded(aw: Awaitable[T], seconds: float, what: str) -> T:
    try:
        return await asyncio.wait_for(aw, seconds)
    except TimeoutError:
        raise ChainTimeout(f"ton chain: {what}: no answer within {seconds:g} s") from None


@runtime_checkable
class GetMethodReader(Protocol):
    """Runs a get-method; the result stack as pytoniq values (int, Cell, Slice, None, list)."""

    async def run_get_method(self, address: str, method: str, stack: list[Any]) -> list[Any]: ...


class LiteReader:
    """:class:`GetMethodReader` over a :class:`LiteApi`, each call bounded."""

    def __init__(self, lite: LiteApi, *, timeout: float = CALL_TIMEOUT) -> None:
        self.lite = lite
        self.timeout = timeout

    async def run_get_method(self, address: str, method: str, stack: list[Any]) -> list[Any]:
        try:
            return await bounded(
                self.lite.run_get_method(address, method, stack), self.timeout,
                f"get-method {method} on {address}",
            )
        except ChainError:
            raise
        except Exception as exc:  # pytoniq: RunGetMethodError, LiteServerError, ...
            code = getattr(exc, "exit_code", None)
            detail = f"exit code {code}" if code is not None else f"{type(exc).__name__}: {exc}"
            raise ChainError(f"get-method {method} on {address}: {detail}") from exc


# ---- config --------------------------------------------------------------------------------


async def load_network_config(spec: str, *, timeout_s: float = CALL_TIMEOUT) -> dict[str, Any]:
    """The global config named by ``spec``: ``""`` / ``"testnet"`` / ``"mainnet"``
    (downloaded from :data:`NETWORK_CONFIG_URLS`) or a JSON file path."""
    name = spec or "testnet"
    if name in NETWORK_CONFIG_URLS:
        url = NETWORK_CONFIG_URLS[name]
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s,
                s.get(url) as resp,
            ):
                resp.raise_for_status()
                config: dict[str, Any] = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ChainUnavailable(
                f"ton chain: cannot download the {name} config from {url} ({exc!r}); "
                "download it elsewhere and set chain.network_config to its path"
            ) from exc
    else:
        p = Path(name)
        try:
            config = json.loads(await asyncio.to_thread(p.read_text, "utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"chain.network_config {p}: not a readable JSON file ({exc})"
            ) from None
    if not isinstance(config, dict) or not config.get("liteservers") or "validator" not in config:
        raise ConfigError(
            f"chain.network_config {spec!r}: not a TON global config (no liteservers/validator)"
        )
    return config
