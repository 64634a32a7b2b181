"""``embedded`` chain backend: a local TON chain running the compiled contracts.

Python has no TVM emulator that runs Tolk 1.3 output reliably, so the chain is a long-lived
Node child process (``contracts/chain-server/server.js``) running ``@ton/sandbox`` 0.41.0,
driven over stdin/stdout with newline-delimited JSON-RPC.  With a ``state_path`` the server
persists the whole blockchain (sandbox snapshot, serialised) after every mutating command,
atomically; a new :class:`EmbeddedChain` on the same path continues where the last one
stopped.  Time only moves when told to (:meth:`EmbeddedChain.advance_time` /
:meth:`EmbeddedChain.set_time`).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

from cocoon.chain.base import (
    DEFAULT_MSG_VALUE,
    TOPUP_FEE,
    ChannelSpec,
    ChannelState,
    ChannelStatus,
    OutMessage,
    TxInfo,
    TxResult,
)
from cocoon.chain.errors import ChainError, ChainUnavailable, rejection_for
from cocoon.chain.vouchers import ChainVoucher

__all__ = ["CONTRACT_NAMES", "EmbeddedChain", "default_contracts_dir", "find_toolchain"]

CONTRACT_NAMES = {"client": "client_channel", "worker": "worker_channel"}
_START_TIMEOUT = 60.0
_CALL_TIMEOUT = 60.0
_LINE_LIMIT = 64 * 1024 * 1024


def default_contracts_dir() -> Path:
    """``$COCOON_CONTRACTS_DIR`` or the repository's ``contracts/`` next to ``src/``."""
    env = os.environ.get("COCOON_CONTRACTS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "contracts"


def find_toolchain(contracts_dir: Path | None = None) -> tuple[str, Path]:
    """``(node executable, server.js)``; raises :class:`ChainUnavailable` with the fix."""
    cdir = contracts_dir or default_contracts_dir()
    node = shutil.which("node")
    if node is None:
        raise ChainUnavailable(
            "embedded chain: `node` (Node.js >= 20) is not on PATH; install it, then run "
            f"`cd {cdir} && npm ci`"
        )
    server = cdir / "chain-server" / "server.js"
    if not server.is_file():
        raise ChainUnavailable(f"embedded chain: {server} not found (set COCOON_CONTRACTS_DIR)")
    if not (cdir / "node_modules" / "@ton" / "sandbox").is_dir():
        raise ChainUnavailable(
            f"embedded chain: {cdir / 'node_modules'} is missing the contracts toolchain; "
            f"run `cd {cdir} && npm ci`"
        )
    return node, server


def _tx(d: dict[str, Any]) -> TxInfo:
    return TxInfo(
        address=d["address"],
        exit_code=d["exitCode"],
        aborted=d["aborted"],
        total_fees=int(d["totalFees"]),
        in_value=int(d["inValue"]),
        out_messages=tuple(
            OutMessage(to=m["to"], value=int(m["value"]), fwd_fee=int(m["fwdFee"]), op=m["op"])
            for m in d["outMessages"]
        ),
    )


def _int(item: dict[str, Any]) -> int:
    if item.get("type") != "int":
        raise ChainError(f"expected an int on the stack, got {item.get('type')}")
    return int(item["value"])


class EmbeddedChain:
    """A :class:`cocoon.chain.base.Chain` backed by ``@ton/sandbox`` in a Node child process."""

    def __init__(self, proc: asyncio.subprocess.Process, state_path: Path | None) -> None:
        self._proc = proc
        self.state_path = state_path
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._stderr: collections.deque[str] = collections.deque(maxlen=50)
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        self._closed = False

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        state_path: str | os.PathLike[str] | None = None,
        *,
        now: int | None = None,
        contracts_dir: Path | None = None,
    ) -> EmbeddedChain:
        """Spawn the server; with ``state_path`` it loads that state if present and persists
        to it after every mutating command.  ``now`` sets the clock of a *fresh* chain."""
        node, server = find_toolchain(contracts_dir)
        args = [str(server)]
        path = Path(state_path) if state_path is not None else None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            args += ["--state", str(path)]
        if now is not None:
            args += ["--now", str(int(now))]
        proc = await asyncio.create_subprocess_exec(
            node,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
        )
        chain = cls(proc, path)
        try:
            line = await asyncio.wait_for(chain._readline(), _START_TIMEOUT)
            ready = json.loads(line)
            if not ready.get("ready"):
                raise ChainError(f"embedded chain: unexpected greeting {line!r}")
            chain.restored = bool(ready.get("restored"))
        except BaseException:
            await chain.kill()
            raise
        return chain

    restored: bool = False
    """Whether :meth:`start` loaded an existing state file."""

    async def _drain_stderr(self) -> None:
        assert self._proc.stderr is not None
        async for raw in self._proc.stderr:
            self._stderr.append(raw.decode(errors="replace").rstrip())

    async def _readline(self) -> str:
        assert self._proc.stdout is not None
        raw = await self._proc.stdout.readline()
        if not raw:
            await asyncio.sleep(0.05)  # let stderr drain
            tail = "\n".join(self._stderr)
            raise ChainError(f"embedded chain process exited ({self._proc.returncode}): {tail}")
        return raw.decode()

    async def aclose(self) -> None:
        """Stop the server cleanly (state is already on disk after every mutation)."""
        if self._closed:
            return
        with contextlib.suppress(ChainError, OSError, TimeoutError):
            await asyncio.wait_for(self._call("shutdown"), 10)
        self._closed = True
        try:
            await asyncio.wait_for(self._proc.wait(), 10)
        except TimeoutError:
            await self.kill()
        await self._stop_stderr()

    async def kill(self) -> None:
        """Kill the server at once (tests: simulate a crash)."""
        self._closed = True
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()
        await self._stop_stderr()

    async def _stop_stderr(self) -> None:
        self._stderr_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._stderr_task

    async def __aenter__(self) -> EmbeddedChain:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- RPC -------------------------------------------------------------------------------

    async def _call(self, cmd: str, **params: Any) -> dict[str, Any]:
        if self._closed:
            raise ChainError("embedded chain is closed")
        async with self._lock:
            assert self._proc.stdin is not None
            rid = next(self._ids)
            line = json.dumps({"id": rid, "cmd": cmd, **params}) + "\n"
            try:
                self._proc.stdin.write(line.encode())
                await self._proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ChainError(f"embedded chain process is gone: {exc}") from exc
            resp = json.loads(await asyncio.wait_for(self._readline(), _CALL_TIMEOUT))
        if resp.get("id") != rid:
            raise ChainError(f"embedded chain: response id {resp.get('id')} != {rid}")
        if not resp.get("ok"):
            raise ChainError(f"embedded chain {cmd}: {resp.get('error')}")
        result: dict[str, Any] = resp["result"]
        return result

    @staticmethod
    def _result(to: str, r: dict[str, Any], what: str) -> TxResult:
        res = TxResult(
            to=to,
            exit_code=r["exitCode"],
            success=bool(r["success"]),
            transactions=tuple(_tx(t) for t in r["transactions"]),
        )
        if not res.success:
            cls = rejection_for(res.exit_code)
            raise cls(f"{what} rejected by {to}", exit_code=res.exit_code, address=to, result=res)
        return res

    # ---- generic ---------------------------------------------------------------------------

    async def wallet(self, name: str) -> str:
        r = await self._call("treasury", name=name)
        return str(r["address"])

    async def send(
        self,
        sender: str,
        to: str,
        value: int,
        *,
        body: bytes | None = None,
        op: dict[str, Any] | None = None,
        bounce: bool = True,
        what: str = "message",
    ) -> TxResult:
        """Send an internal message from wallet ``sender``: ``body`` is a BOC, or ``op`` a
        structured op the server builds (``{"name": "topup", "queryId": 0, "amount": "1"}``).
        Raises a :class:`ContractRejected` subclass when the destination rejects it."""
        params: dict[str, Any] = {"from": sender, "to": to, "value": str(value), "bounce": bounce}
        if body is not None:
            params["body"] = base64.b64encode(body).decode()
        if op is not None:
            params["op"] = op
        return self._result(to, await self._call("send", **params), what)

    async def get(
        self, address: str, method: str, args: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """Run a get-method; the stack as JSON items (``{"type": "int", "value": "..."}``)."""
        r = await self._call("get", address=address, method=method, args=args or [])
        if r["exitCode"] != 0:
            raise ChainError(f"get-method {method} on {address}: exit code {r['exitCode']}")
        stack: list[dict[str, Any]] = r["stack"]
        return stack

    async def snapshot(self, path: str | os.PathLike[str]) -> None:
        """Write the whole chain state to ``path`` (loadable with ``start(path)``)."""
        await self._call("snapshot", path=os.fspath(path))

    # ---- Chain -----------------------------------------------------------------------------

    async def deploy_channel(self, spec: ChannelSpec, *, sender: str, deposit: int) -> TxResult:
        data = {
            "funder": spec.funder,
            "payee": spec.payee,
            "signerPubkey": spec.signer_pubkey.hex(),
            "payeePubkey": spec.payee_pubkey.hex(),
            "closeDelay": spec.close_delay,
            "channelId": str(spec.channel_id),
        }
        params: dict[str, Any] = {
            "contract": CONTRACT_NAMES[spec.kind],
            "from": sender,
            "data": data,
        }
        if deposit > 0:
            params["value"] = str(deposit + TOPUP_FEE)
            params["op"] = {"name": "topup", "amount": str(deposit)}
        else:
            params["value"] = str(DEFAULT_MSG_VALUE)
        r = await self._call("deploy", **params)
        return self._result(str(r["address"]), r, "deploy")

    async def deposit(self, channel: str, amount: int, *, sender: str) -> TxResult:
        return await self.send(
            sender,
            channel,
            amount + TOPUP_FEE,
            op={"name": "topup", "amount": str(amount)},
            what="top-up",
        )

    async def submit_voucher(self, channel: str, voucher: ChainVoucher, *, sender: str) -> TxResult:
        return await self.send(
            sender, channel, DEFAULT_MSG_VALUE, body=voucher.body_boc(), what="voucher"
        )

    async def _simple(self, channel: str, name: str, sender: str, query_id: int) -> TxResult:
        return await self.send(
            sender, channel, DEFAULT_MSG_VALUE, op={"name": name, "queryId": query_id}, what=name
        )

    async def request_close(self, channel: str, *, sender: str, query_id: int = 0) -> TxResult:
        return await self._simple(channel, "request_close", sender, query_id)

    async def close(self, channel: str, *, sender: str, query_id: int = 0) -> TxResult:
        return await self._simple(channel, "finalize_close", sender, query_id)

    async def payee_close(self, channel: str, *, sender: str, query_id: int = 0) -> TxResult:
        return await self._simple(channel, "payee_close", sender, query_id)

    async def withdraw(self, channel: str, *, sender: str, query_id: int = 0) -> TxResult:
        return await self._simple(channel, "withdraw", sender, query_id)

    async def channel_state(self, channel: str) -> ChannelState:
        s = await self.get(channel, "get_channel_state")
        return ChannelState(
            status=ChannelStatus(_int(s[0])),
            balance=_int(s[1]),
            charged=_int(s[2]),
            last_seqno=_int(s[3]),
            close_at=_int(s[4]),
        )

    async def balance(self, address: str) -> int:
        r = await self._call("balance", address=address)
        return int(r["balance"])

    async def now(self) -> int:
        r = await self._call("now")
        return int(r["now"])

    async def set_time(self, unixtime: int) -> int:
        r = await self._call("set_time", now=int(unixtime))
        return int(r["now"])

    async def advance_time(self, seconds: int) -> int:
        if seconds < 0:
            raise ValueError("time only moves forward")
        return await self.set_time(await self.now() + seconds)
