"""``ton`` chain backend: the Cocoon contracts on TON testnet or mainnet, through liteservers.

:class:`TonChain` implements :class:`cocoon.chain.base.Chain` with pytoniq 0.1.43.  Every
operation builds its message body (and, for deploys, its StateInit) with
:mod:`cocoon.chain.messages` -- the very cells the embedded chain executes -- and hands one
:class:`OutgoingMessage` to a :class:`MessageSender`; get-methods go through a
:class:`GetMethodReader`.  The real sender (:class:`LiteSender`) signs an external message
for the node's wallet, sends it through a ``LiteBalancer`` and waits, bounded, for the
destination's transaction; a rejection raises the same
:class:`cocoon.chain.errors.ContractRejected` subclass the embedded chain raises.

Pointing cocoon at testnet
--------------------------

1. A wallet.  The backend sends from one **WalletV4R2** wallet (workchain 0, the standard
   subwallet id 698983191): the "v4R2" wallet Tonkeeper and Tonhub show for the same 24
   words.  Put the 24 mnemonic words (separated by spaces or newlines) in a file readable
   only by you::

       install -m 600 /dev/null ~/.config/cocoon/wallet.mnemonic
       $EDITOR ~/.config/cocoon/wallet.mnemonic        # 24 words
       chmod 600 ~/.config/cocoon/wallet.mnemonic      # refused when group/others can read it

   Fund the wallet's address (``TonWallet.from_file(path).address``; a wallet app shows
   the same v4R2 address for these words; testnet coins come from the testnet faucet bot).
   It need not be deployed: the first message it sends carries the wallet's StateInit.
2. Liteservers.  ``network_config`` is the path of a TON global config JSON (the
   ``liteservers`` + ``validator.init_block`` file published for each network), or
   ``"testnet"`` / ``"mainnet"`` (also ``""`` = testnet): the config is then downloaded at
   start-up from the URL pytoniq uses (:data:`NETWORK_CONFIG_URLS`; pytoniq ships no config
   file).  Without internet access to that URL, download the file once and give its path.
3. The node's ``[chain]`` section::

       [chain]
       backend = "ton"
       mnemonic_file = "/home/me/.config/cocoon/wallet.mnemonic"
       network_config = "testnet"        # or a path to testnet-global.config.json

Trust: liteserver answers are checked with pytoniq's ``trust_level`` (default 2: answers
are trusted, no proofs -- fast start-up; 0 or 1 verify block and shard proofs).
Time: a real chain's clock cannot be moved; :meth:`TonChain.advance_time` raises
:class:`ChainError` (a close delay must really elapse).

Waiting: after sending, :class:`LiteSender` polls the wallet for the transaction of its
external message, then the destination for the transaction of the wallet's internal message
(``timeout`` seconds in all, 120 by default).  A :class:`ChainTimeout` does not mean the
message was dropped: it may still be applied; look at the destination before resending.
Messages from one :class:`LiteSender` are sent one at a time (the wallet's seqno orders
them).  The returned :class:`TxResult` holds the wallet's and the destination's
transactions, not the rest of the trace (e.g. a voucher's payout to the payee).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell
from pytoniq_core.boc.slice import Slice
from pytoniq_core.crypto.keys import mnemonic_is_valid, mnemonic_to_private_key
from pytoniq_core.tlb.account import StateInit

from cocoon.chain import messages
from cocoon.chain.base import DEFAULT_MSG_VALUE, OutMessage, TxInfo, TxResult
from cocoon.chain.errors import ChainError, ChainUnavailable, rejection_for
from cocoon.chain.ops import ContractOps
from cocoon.errors import ConfigError

if TYPE_CHECKING:
    from cocoon.config import ChainConfig

__all__ = [
    "DEFAULT_TIMEOUT",
    "NETWORK_CONFIG_URLS",
    "SEND_MODE",
    "WALLET_ID",
    "AccountSnapshot",
    "ChainTimeout",
    "GetMethodReader",
    "LiteApi",
    "LiteReader",
    "LiteSender",
    "MessageSender",
    "OutgoingMessage",
    "PytoniqLite",
    "SeenTx",
    "TonChain",
    "TonWallet",
    "load_mnemonic",
    "load_network_config",
]

NETWORK_CONFIG_URLS = {
    "testnet": "https://ton.org/testnet-global.config.json",
    "mainnet": "https://ton.org/global-config.json",
}
"""Where ``network_config = "testnet" | "mainnet"`` is downloaded from (pytoniq's URLs)."""
WALLET_ID = 698983191
"""Standard WalletV4R2 subwallet id for workchain 0 (what wallet apps use)."""
SEND_MODE = 3
"""Wallet send mode: pay forward fees separately (1) + ignore action errors (2), so a failed
send still bumps the wallet's seqno instead of letting the external be replayed."""
DEFAULT_TIMEOUT = 120.0
"""Seconds :class:`LiteSender` waits for a message's transactions."""
MESSAGE_TTL = 120
"""Seconds an external message stays valid (the wallet's ``valid_until``)."""
_CALL_TIMEOUT = 30.0
_START_TIMEOUT = 60.0
_MNEMONIC_WORDS = 24

T = TypeVar("T")


class ChainTimeout(ChainError):
    """A liteserver call, or the wait for a message's transaction, ran past its deadline."""


def _parse(cell: Cell) -> Slice:
    s: Slice = cell.begin_parse()  # type: ignore[no-untyped-call]
    return s


def _empty_cell() -> Cell:
    c: Cell = Cell.empty()  # type: ignore[no-untyped-call]
    return c


def _raw(address: Address | str) -> str:
    """Canonical raw form ``"<wc>:<hex>"`` of any address form."""
    a = address if isinstance(address, Address) else Address(address)
    return f"{a.wc}:{a.hash_part.hex()}"


# ---- wallet --------------------------------------------------------------------------------


def load_mnemonic(path: str | os.PathLike[str]) -> list[str]:
    """The 24 words of a TON mnemonic file; ConfigError (naming the file, never echoing the
    words) when the file is missing, accessible by group/others, or not a valid mnemonic."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise ConfigError(f"chain.mnemonic_file {p}: cannot read it ({exc.strerror})") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"chain.mnemonic_file {p} is accessible by group/others (mode {mode:o}); "
            f"chmod 600 {p}"
        )
    try:
        words = p.read_text("utf-8").split()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"chain.mnemonic_file {p}: cannot read it ({exc})") from None
    if len(words) != _MNEMONIC_WORDS:
        raise ConfigError(
            f"chain.mnemonic_file {p}: expected {_MNEMONIC_WORDS} words, found {len(words)}"
        )
    words = [w.lower() for w in words]
    if not mnemonic_is_valid(words):
        raise ConfigError(
            f"chain.mnemonic_file {p}: not a valid TON mnemonic (wrong word or checksum; "
            "mnemonics with a password are not supported)"
        )
    return words


def _v4r2_code() -> Cell:
    from pytoniq.contract.wallets.wallet import WALLET_V4_R2_CODE

    code: Cell = WALLET_V4_R2_CODE
    return code


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One internal message a :class:`TonChain` operation sends from its wallet."""

    destination: str
    value: int
    body: Cell
    state_init: Cell | None = None
    bounce: bool = True
    what: str = "message"


@dataclass(frozen=True, slots=True)
class TonWallet:
    """A WalletV4R2 (workchain 0, subwallet :data:`WALLET_ID`) and its key; builds and signs
    the external messages that make it send an :class:`OutgoingMessage`.  Pure."""

    public_key: bytes
    secret_key: bytes = field(repr=False)
    wallet_id: int = WALLET_ID

    @classmethod
    def from_mnemonic(cls, words: Sequence[str]) -> TonWallet:
        public, secret = mnemonic_to_private_key(list(words))
        return cls(public_key=bytes(public), secret_key=bytes(secret))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TonWallet:
        return cls.from_mnemonic(load_mnemonic(path))

    def data(self) -> Cell:
        from pytoniq.contract.wallets.wallet import WalletV4

        cell: Cell = WalletV4.create_data_cell(self.public_key, self.wallet_id, 0)
        return cell

    def state_init(self) -> Cell:
        return messages.state_init(_v4r2_code(), self.data())

    @property
    def address(self) -> str:
        return messages.contract_address(_v4r2_code(), self.data())

    def internal_message(self, msg: OutgoingMessage) -> Any:
        """pytoniq's ``WalletMessage`` (send mode + the internal message) for ``msg``."""
        from pytoniq.contract.wallets.wallet import Wallet

        init = (
            None if msg.state_init is None else StateInit.deserialize(_parse(msg.state_init))
        )
        return Wallet.create_wallet_internal_message(
            destination=Address(msg.destination),
            send_mode=SEND_MODE,
            value=msg.value,
            body=msg.body,
            state_init=init,
            bounce=msg.bounce,
        )

    def transfer_body(self, msg: OutgoingMessage, *, seqno: int, valid_until: int) -> Cell:
        """The signed body of the external message: signature + the v4 signing message."""
        from pytoniq.contract.wallets.wallet import WalletV4

        cell: Cell = WalletV4.raw_create_transfer_msg(
            private_key=self.secret_key,
            seqno=seqno,
            wallet_id=self.wallet_id,
            messages=[self.internal_message(msg)],
            valid_until=valid_until,
        )
        return cell

    def external_message(
        self, msg: OutgoingMessage, *, seqno: int, valid_until: int, deploy: bool
    ) -> Cell:
        """The whole external message to the wallet (with the wallet's StateInit when
        ``deploy``, i.e. the wallet is not active yet); send its BOC to a liteserver."""
        from pytoniq.contract.contract import Contract

        init = StateInit.deserialize(_parse(self.state_init())) if deploy else None
        ext = Contract.create_external_msg(
            dest=Address(self.address),
            state_init=init,
            body=self.transfer_body(msg, seqno=seqno, valid_until=valid_until),
        )
        cell: Cell = ext.serialize()
        return cell


# ---- liteserver access ---------------------------------------------------------------------


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
    s = _parse(body)
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
        to = _raw(m.info.dest)
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
        in_src=_raw(msg.info.src) if in_internal else None,
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
        from pytoniq.liteclient.balancer import LiteBalancer

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
        from pytoniq_core.tlb.account import SimpleAccount

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


async def _bounded(aw: Awaitable[T], seconds: float, what: str) -> T:
    try:
        return await asyncio.wait_for(aw, seconds)
    except TimeoutError:
        raise ChainTimeout(f"ton chain: {what}: no answer within {seconds:g} s") from None


# ---- the two seams -------------------------------------------------------------------------


@runtime_checkable
class MessageSender(Protocol):
    """Sends one internal message from the backend's wallet; returns the trace once the
    destination's transaction is known (a failed one too: the caller maps it to an error)."""

    async def send(self, message: OutgoingMessage) -> TxResult: ...


@runtime_checkable
class GetMethodReader(Protocol):
    """Runs a get-method; the result stack as pytoniq values (int, Cell, Slice, None, list)."""

    async def run_get_method(self, address: str, method: str, stack: list[Any]) -> list[Any]: ...


class LiteReader:
    """:class:`GetMethodReader` over a :class:`LiteApi`, each call bounded."""

    def __init__(self, lite: LiteApi, *, timeout: float = _CALL_TIMEOUT) -> None:
        self.lite = lite
        self.timeout = timeout

    async def run_get_method(self, address: str, method: str, stack: list[Any]) -> list[Any]:
        try:
            return await _bounded(
                self.lite.run_get_method(address, method, stack), self.timeout,
                f"get-method {method} on {address}",
            )
        except ChainError:
            raise
        except Exception as exc:  # pytoniq: RunGetMethodError, LiteServerError, ...
            code = getattr(exc, "exit_code", None)
            detail = f"exit code {code}" if code is not None else f"{type(exc).__name__}: {exc}"
            raise ChainError(f"get-method {method} on {address}: {detail}") from exc


class LiteSender:
    """:class:`MessageSender`: signs an external message for the wallet, sends it through a
    liteserver, then waits for the wallet's transaction and the destination's one."""

    def __init__(
        self,
        lite: LiteApi,
        wallet: TonWallet,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        poll_interval: float = 2.0,
        call_timeout: float = _CALL_TIMEOUT,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.lite = lite
        self.wallet = wallet
        self.address = wallet.address
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.call_timeout = call_timeout
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._lock = asyncio.Lock()

    async def _call(self, aw: Awaitable[T], what: str) -> T:
        return await _bounded(aw, self.call_timeout, what)

    async def send(self, message: OutgoingMessage) -> TxResult:
        async with self._lock:  # one seqno at a time
            return await self._send(message)

    async def _send(self, message: OutgoingMessage) -> TxResult:
        dest = _raw(message.destination)
        me = await self._call(self.lite.account(self.address), "wallet state")
        if me.status == "frozen":
            raise ChainError(f"wallet {self.address} is frozen")
        if me.balance < message.value:
            raise ChainError(
                f"wallet {self.address} holds {me.balance} nanoTON, cannot send "
                f"{message.value} ({message.what}); fund it first"
            )
        deploy = me.status != "active"
        seqno = 0
        if not deploy:
            stack = await self._call(
                self.lite.run_get_method(self.address, "seqno", []), "wallet seqno"
            )
            seqno = int(stack[0])
        before = await self._call(self.lite.account(dest), "destination state")
        ext = self.wallet.external_message(
            message, seqno=seqno, valid_until=int(self._clock()) + MESSAGE_TTL, deploy=deploy
        )
        ext_body_hash = _external_body_hash(ext)
        await self._call(self.lite.send_boc(messages.boc(ext)), "send external message")

        deadline = self._monotonic() + self.timeout
        wallet_tx = await self._wait(
            self.address, me.last_lt, deadline, message,
            lambda t: t.in_external and t.in_body_hash == ext_body_hash,
            f"the wallet's transaction (seqno {seqno})",
        )
        sent = [lt for (to, lt) in wallet_tx.out_created if to == dest]
        if not wallet_tx.success or not sent:
            raise ChainError(
                f"{message.what}: wallet {self.address} did not send the message to {dest} "
                f"(exit code {wallet_tx.info.exit_code}; balance too low?)"
            )
        created_lt = sent[0]
        dest_tx = await self._wait(
            dest, before.last_lt, deadline, message,
            lambda t: t.in_src == self.address and t.in_created_lt == created_lt,
            f"the transaction of {dest}",
        )
        return TxResult(
            to=dest,
            exit_code=dest_tx.info.exit_code,
            success=dest_tx.success,
            transactions=(wallet_tx.info, dest_tx.info),
        )

    async def _wait(
        self,
        address: str,
        after_lt: int,
        deadline: float,
        message: OutgoingMessage,
        match: Callable[[SeenTx], bool],
        what: str,
    ) -> SeenTx:
        while True:
            txs = await self._call(
                self.lite.transactions(address, after_lt=after_lt), f"transactions of {address}"
            )
            for t in txs:
                if match(t):
                    return t
            if self._monotonic() >= deadline:
                raise ChainTimeout(
                    f"{message.what} to {_raw(message.destination)}: {what} did not appear "
                    f"within {self.timeout:g} s; it may still be applied -- check the "
                    "destination before sending again"
                )
            await self._sleep(self.poll_interval)


def _external_body_hash(ext: Cell) -> bytes:
    from pytoniq_core.tlb.transaction import MessageAny

    body: Cell = MessageAny.deserialize(_parse(ext)).body
    return bytes(body.hash)


# ---- config --------------------------------------------------------------------------------


async def load_network_config(spec: str, *, timeout_s: float = _CALL_TIMEOUT) -> dict[str, Any]:
    """The global config named by ``spec``: ``""`` / ``"testnet"`` / ``"mainnet"``
    (downloaded from :data:`NETWORK_CONFIG_URLS`) or a JSON file path."""
    name = spec or "testnet"
    if name in NETWORK_CONFIG_URLS:
        import aiohttp

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


# ---- get-method stacks ---------------------------------------------------------------------


def _stack_json(item: Any) -> dict[str, Any]:
    """A pytoniq stack value in the JSON form :meth:`EmbeddedChain.get` returns."""
    if item is None:
        return {"type": "null"}
    if isinstance(item, bool):
        return {"type": "int", "value": str(-1 if item else 0)}
    if isinstance(item, int):
        return {"type": "int", "value": str(item)}
    if isinstance(item, Cell):
        return {"type": "cell", "boc": base64.b64encode(messages.boc(item)).decode()}
    if isinstance(item, Slice):
        cell: Cell = item.to_cell()  # type: ignore[no-untyped-call]
        out: dict[str, Any] = {
            "type": "slice",
            "boc": base64.b64encode(messages.boc(cell)).decode(),
        }
        try:
            a = _parse(cell).load_address()
        except Exception:  # not an address: plain slice
            a = None
        if isinstance(a, Address):
            out["address"] = _raw(a)
        return out
    if isinstance(item, list | tuple):
        return {"type": "tuple", "items": [_stack_json(x) for x in item]}
    return {"type": type(item).__name__}


def _stack_arg(arg: dict[str, Any]) -> Any:
    t = arg.get("type")
    if t == "int":
        return int(arg["value"])
    if t == "address":
        cell: Cell = Builder().store_address(Address(arg["value"])).end_cell()
        return _parse(cell)
    if t == "cell":
        return Cell.one_from_boc(base64.b64decode(arg["boc"]))
    if t == "slice":
        return _parse(Cell.one_from_boc(base64.b64decode(arg["boc"])))
    raise ChainError(f"bad get-method argument type {t!r}")


def _int(item: Any, what: str) -> int:
    if isinstance(item, bool) or not isinstance(item, int):
        raise ChainError(f"{what}: expected an int on the stack, got {type(item).__name__}")
    return item


# ---- the backend ---------------------------------------------------------------------------


class TonChain(ContractOps):
    """A :class:`cocoon.chain.base.Chain` on TON testnet/mainnet (see the module docstring).

    ``sender`` names in the Chain calls are not wallets here: the backend has one wallet
    (``address``); a ``sender`` given as an address must be that wallet's."""

    def __init__(
        self,
        address: str,
        sender: MessageSender,
        reader: GetMethodReader,
        *,
        lite: LiteApi | None = None,
        contracts_dir: Path | None = None,
        call_timeout: float = _CALL_TIMEOUT,
    ) -> None:
        self.address = _raw(address)
        self.sender = sender
        self.reader = reader
        self.lite = lite
        self.contracts_dir = contracts_dir
        self.call_timeout = call_timeout

    # ---- construction --------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        mnemonic_file: str | os.PathLike[str],
        network_config: str = "testnet",
        *,
        trust_level: int = 2,
        wait_s: float = DEFAULT_TIMEOUT,
        contracts_dir: Path | None = None,
    ) -> TonChain:
        """Load the wallet (before any network access, so key-file errors come first), the
        network config, and start a liteserver balancer."""
        wallet = TonWallet.from_file(mnemonic_file)
        config = await load_network_config(network_config)
        lite = await PytoniqLite.start(config, trust_level=trust_level)
        return cls(
            wallet.address,
            LiteSender(lite, wallet, timeout=wait_s),
            LiteReader(lite),
            lite=lite,
            contracts_dir=contracts_dir,
        )

    @classmethod
    async def from_config(cls, config: ChainConfig) -> TonChain:
        """From a node's ``[chain]`` section (``mnemonic_file``, ``network_config``)."""
        return await cls.connect(config.mnemonic_file, config.network_config or "testnet")

    async def __aenter__(self) -> TonChain:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self.lite is not None:
            lite, self.lite = self.lite, None
            await lite.aclose()

    # ---- plumbing ------------------------------------------------------------------------

    def _check_sender(self, sender: str) -> None:
        if ":" in sender and _raw(sender) != self.address:
            raise ChainError(
                f"ton chain: sender {sender} is not this backend's wallet {self.address}"
            )

    async def _send(self, sender: str, message: OutgoingMessage) -> TxResult:
        self._check_sender(sender)
        res = await self.sender.send(message)
        if not res.success:
            cls = rejection_for(res.exit_code)
            raise cls(
                f"{message.what} rejected by {res.to}",
                exit_code=res.exit_code, address=res.to, result=res,
            )
        return res

    def _lite(self) -> LiteApi:
        if self.lite is None:
            raise ChainError("ton chain: no liteserver connection (closed, or none given)")
        return self.lite

    async def get(
        self, address: str, method: str, args: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """Run a get-method with :meth:`EmbeddedChain.get`'s JSON stack items in and out."""
        stack = await self.reader.run_get_method(
            _raw(address), method, [_stack_arg(a) for a in args or []]
        )
        return [_stack_json(x) for x in stack]

    # ---- Chain: the wallet, and the primitives of ContractOps ----------------------------

    async def wallet(self, name: str) -> str:
        """This backend's one wallet, whatever ``name``."""
        return self.address

    def deploy_message(
        self, contract: str, data: Cell, value: int, body: Cell | None, *, what: str = "deploy"
    ) -> OutgoingMessage:
        """The deploy message of ``contracts/build/<contract>.json`` with initial ``data``:
        StateInit + ``body`` (None: empty), non-bounceable, to the StateInit's address."""
        code = messages.load_code(contract, self.contracts_dir)
        return OutgoingMessage(
            destination=messages.contract_address(code, data),
            value=value,
            body=_empty_cell() if body is None else body,
            state_init=messages.state_init(code, data),
            bounce=False,
            what=what,
        )

    async def _deploy(
        self, sender: str, contract: str, data: Cell, value: int, body: Cell | None
    ) -> TxResult:
        msg = self.deploy_message(contract, data, value, body, what=f"deploy {contract}")
        return await self._send(sender, msg)

    async def _send_cell(
        self, sender: str, to: str, body: Cell, *, what: str, value: int = DEFAULT_MSG_VALUE
    ) -> TxResult:
        return await self._send(sender, OutgoingMessage(_raw(to), value, body, what=what))

    async def _ints(self, address: str, method: str, *args: int) -> list[int]:
        stack = await self.reader.run_get_method(_raw(address), method, list(args))
        return [_int(x, f"{method} on {address}") for x in stack]

    # accounts and time

    async def balance(self, address: str) -> int:
        acc = await _bounded(
            self._lite().account(_raw(address)), self.call_timeout, f"account {address}"
        )
        return acc.balance

    async def account(self, address: str) -> dict[str, Any]:
        """The account's state, balance and (active) code and data as base64 BOCs: the same
        shape as :meth:`EmbeddedChain.account` (what the registry reader parses)."""
        import base64

        acc = await _bounded(
            self._lite().account(_raw(address)), self.call_timeout, f"account {address}"
        )
        out: dict[str, Any] = {"state": acc.status, "balance": str(acc.balance)}
        if acc.code is not None:
            out["code"] = base64.b64encode(acc.code).decode()
        if acc.data is not None:
            out["data"] = base64.b64encode(acc.data).decode()
        return out

    async def now(self) -> int:
        return await _bounded(self._lite().time(), self.call_timeout, "liteserver time")

    async def advance_time(self, seconds: int) -> int:
        raise ChainError(
            "ton chain: a real chain's clock cannot be moved (advance_time is for the embedded "
            "chain); wait for the time to pass"
        )


if TYPE_CHECKING:
    from cocoon.chain.base import Chain

    def _conforms(chain: TonChain) -> Chain:  # mypy: TonChain is a Chain
        return chain
