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

from pytoniq_core.boc.cell import Cell

from cocoon.chain import messages as m
from cocoon.chain.base import DEFAULT_MSG_VALUE, OutMessage, TxInfo, TxResult
from cocoon.chain.errors import ChainError, ChainUnauthorized, ChainUnavailable, rejection_for
from cocoon.chain.messages import default_contracts_dir
from cocoon.chain.ops import ContractOps
from cocoon.errors import ToolchainMissing

__all__ = ["CONTRACT_NAMES", "EmbeddedChain", "default_contracts_dir", "find_toolchain"]

CONTRACT_NAMES = m.CHANNEL_CONTRACTS
_START_TIMEOUT = 60.0
_CALL_TIMEOUT = 60.0
_LINE_LIMIT = 64 * 1024 * 1024
# Commands that apply transactions (server.js MUTATING, less set_time: time moving changes
# no account): each one moves the chain's change mark (see EmbeddedChain.wait_for_change).
_MOVING = frozenset({"deploy", "send", "treasury"})


def find_toolchain(contracts_dir: Path | None = None) -> tuple[str, Path]:
    """``(node executable, server.js)``; raises ToolchainMissing saying how to install it."""
    cdir = contracts_dir or default_contracts_dir()
    node = shutil.which("node")
    if node is None:
        raise ToolchainMissing(
            "embedded chain: `node` (Node.js >= 20) is not on PATH; install it, then run "
            f"`cd {cdir} && npm ci`"
        )
    server = cdir / "chain-server" / "server.js"
    if not server.is_file():
        raise ToolchainMissing(f"embedded chain: {server} not found (set COCOON_CONTRACTS_DIR)")
    if not (cdir / "node_modules" / "@ton" / "sandbox").is_dir():
        raise ToolchainMissing(
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


class _PipeTransport:
    """JSON-RPC lines to the chain server over its stdin/stdout (the owning process)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._stderr: collections.deque[str] = collections.deque(maxlen=50)
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        self._broken = ""

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self._stderr.append(raw.decode(errors="replace").rstrip())

    async def readline(self) -> str:
        assert self.proc.stdout is not None
        raw = await self.proc.stdout.readline()
        if not raw:
            await asyncio.sleep(0.05)  # let stderr drain
            tail = "\n".join(self._stderr)
            raise ChainError(f"embedded chain process exited ({self.proc.returncode}): {tail}")
        return raw.decode()

    async def call(self, cmd: str, params: dict[str, Any]) -> dict[str, Any]:
        # Shielded: a caller cancelled mid-exchange (e.g. an HTTP client of the chain service
        # that went away) must not leave its response unread in the pipe, where the next
        # call would read it as its own.
        if self._broken:
            raise ChainError(f"embedded chain connection is out of step: {self._broken}")
        fut = asyncio.ensure_future(self._exchange(cmd, params))
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # always retrieved
        return await asyncio.shield(fut)

    async def _exchange(self, cmd: str, params: dict[str, Any]) -> dict[str, Any]:
        async with self._lock:
            assert self.proc.stdin is not None
            rid = next(self._ids)
            line = json.dumps({"id": rid, "cmd": cmd, **params}) + "\n"
            try:
                self.proc.stdin.write(line.encode())
                await self.proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ChainError(f"embedded chain process is gone: {exc}") from exc
            try:
                raw = await asyncio.wait_for(self.readline(), _CALL_TIMEOUT)
            except TimeoutError:
                # its answer may still come and would be read as the next call's
                self._broken = f"no answer to {cmd} within {_CALL_TIMEOUT:g} s"
                raise ChainError(f"embedded chain: {self._broken}") from None
            resp: dict[str, Any] = json.loads(raw)
        if resp.get("id") != rid:
            raise ChainError(f"embedded chain: response id {resp.get('id')} != {rid}")
        return resp

    async def close(self, *, kill: bool) -> None:
        if kill and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        self._stderr_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._stderr_task


class _HttpTransport:
    """The same JSON-RPC, posted to a chain service (``cocoon chain run``) over HTTP."""

    def __init__(self, url: str, timeout: float, token: str) -> None:
        import aiohttp  # lazy: ~100 ms; `cocoon --help` imports this module, not the client

        self.url = url.rstrip("/") + "/rpc"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._has_token = bool(token)
        # Pooled connections die with the service; aiohttp drops a closed one when it is
        # next taken from the pool, so a service restarted on the same URL is reached again
        # by the next call (tests/chain: test_connection_survives_a_restart_of_the_service).
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout),
                                              headers=headers)
        self._errors: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError)

    async def call(self, cmd: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self._session.post(self.url, json={"cmd": cmd, **params}) as resp:
                status = resp.status
                body: dict[str, Any] = await resp.json(content_type=None)
        except self._errors as exc:
            raise ChainUnavailable(
                f"chain service at {self.url} is unreachable ({type(exc).__name__}: {exc}); "
                "is `cocoon chain run` (or `cocoon up`) running?") from exc
        except ValueError as exc:
            raise ChainError(f"chain service at {self.url}: malformed response: {exc}") from exc
        if status == 401:
            raise ChainUnauthorized(
                f"chain service at {self.url} refused this caller: "
                f"{'wrong token' if self._has_token else 'no token given'}; set "
                "chain.token_file to the token file of its `cocoon chain run` (--token-file, "
                "by default next to its --state file)")
        if status >= 500:  # the service is up but its chain is not (e.g. the emulator died)
            error = body.get("error") if isinstance(body, dict) else body
            raise ChainUnavailable(f"chain service at {self.url} failed ({status}): {error}")
        return body

    async def watch(self, seen: int, wait_s: float) -> int:
        """``GET /watch``: the service's change mark once it differs from ``seen``."""
        import aiohttp  # lazy, as above

        url = self.url[:-len("/rpc")] + "/watch"
        try:
            async with self._session.get(
                    url, params={"since": str(seen), "timeout": f"{wait_s:g}"},
                    timeout=aiohttp.ClientTimeout(total=wait_s + 10.0)) as resp:
                status = resp.status
                body = await resp.json(content_type=None)
        except self._errors as exc:
            raise ChainUnavailable(f"chain service at {url} is unreachable "
                                   f"({type(exc).__name__}: {exc})") from exc
        except ValueError as exc:
            raise ChainError(f"chain service at {url}: malformed response: {exc}") from exc
        if status == 401:
            raise ChainUnauthorized(f"chain service at {url} refused this caller's token")
        if status != 200 or not isinstance(body, dict) or type(body.get("mark")) is not int:
            raise ChainError(f"chain service at {url} cannot be watched ({status}): {body}")
        mark: int = body["mark"]
        return mark

    async def close(self, *, kill: bool) -> None:
        await self._session.close()


class EmbeddedChain(ContractOps):
    """A :class:`cocoon.chain.base.Chain` backed by ``@ton/sandbox``: in a Node child process
    this object owns (:meth:`start`), or through the chain service of another process
    (:meth:`connect`, ``cocoon chain run``)."""

    def __init__(self, transport: _PipeTransport | _HttpTransport,
                 state_path: Path | None) -> None:
        self._transport = transport
        self.state_path = state_path
        self._closed = False
        self._mark = 0  # transactions applied through this object (it owns the chain)
        self._moved = asyncio.Event()  # set, and replaced, when the mark moves

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
        transport = _PipeTransport(proc)
        chain = cls(transport, path)
        try:
            line = await asyncio.wait_for(transport.readline(), _START_TIMEOUT)
            ready = json.loads(line)
            if not ready.get("ready"):
                raise ChainError(f"embedded chain: unexpected greeting {line!r}")
            chain.restored = bool(ready.get("restored"))
        except BaseException:
            await chain.kill()
            raise
        return chain

    @classmethod
    async def connect(cls, url: str, *, token: str = "",
                      call_timeout: float = _CALL_TIMEOUT) -> EmbeddedChain:
        """Use the embedded chain another process serves at ``url`` (``cocoon chain run``),
        authenticated by its RPC ``token`` (:mod:`cocoon.chain.token`); raises
        :class:`ChainUnavailable` when nothing answers there, :class:`ChainUnauthorized` when
        the service refuses the token."""
        chain = cls(_HttpTransport(url, call_timeout, token), None)
        try:
            await chain.now()
        except BaseException:
            await chain.aclose()
            raise
        return chain

    restored: bool = False
    """Whether :meth:`start` loaded an existing state file."""

    @property
    def pid(self) -> int | None:
        """The chain server's process id when this object owns it."""
        t = self._transport
        return t.proc.pid if isinstance(t, _PipeTransport) else None

    async def aclose(self) -> None:
        """Stop the server cleanly (state is already on disk after every mutation); for a
        connection to a chain service, just disconnect."""
        if self._closed:
            return
        if isinstance(self._transport, _PipeTransport):
            with contextlib.suppress(ChainError, OSError, TimeoutError):
                await asyncio.wait_for(self._call("shutdown"), 10)
        self._closed = True
        await self._transport.close(kill=False)

    async def kill(self) -> None:
        """Kill the server at once (tests: simulate a crash)."""
        self._closed = True
        await self._transport.close(kill=True)

    async def __aenter__(self) -> EmbeddedChain:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- RPC -------------------------------------------------------------------------------

    async def rpc(self, cmd: str, params: dict[str, Any]) -> dict[str, Any]:
        """One raw JSON-RPC exchange: the response object ``{"ok", "result"|"error"}``
        (the chain service forwards these unchanged)."""
        if self._closed:
            raise ChainError("embedded chain is closed")
        resp = await self._transport.call(cmd, params)
        if cmd in _MOVING and isinstance(self._transport, _PipeTransport):
            self._mark += 1  # even when refused: a bounced message is a transaction too
            moved, self._moved = self._moved, asyncio.Event()
            moved.set()
        return resp

    async def wait_for_change(self, seen: int, wait_s: float) -> int:
        """See :meth:`cocoon.chain.base.Chain.wait_for_change`. The owning process counts
        the transactions it applies (every transaction of this chain goes through it); a
        connection to a chain service asks the service (``GET /watch``, long-polled)."""
        t = self._transport
        if isinstance(t, _HttpTransport):
            return await t.watch(seen, wait_s)
        if self._mark == seen:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait(), wait_s)
        return self._mark

    async def _call(self, cmd: str, **params: Any) -> dict[str, Any]:
        resp = await self.rpc(cmd, params)
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

    # ---- primitives of ContractOps (the Chain operations) ---------------------------------

    async def _deploy(
        self, sender: str, contract: str, data: Cell, value: int, body: Cell | None
    ) -> TxResult:
        params: dict[str, Any] = {
            "contract": contract,
            "from": sender,
            "dataBoc": base64.b64encode(m.boc(data)).decode(),
            "value": str(value),
        }
        if body is not None:
            params["body"] = base64.b64encode(m.boc(body)).decode()
        r = await self._call("deploy", **params)
        return self._result(str(r["address"]), r, f"deploy {contract}")

    async def _send_cell(
        self, sender: str, to: str, body: Cell, *, what: str, value: int = DEFAULT_MSG_VALUE
    ) -> TxResult:
        return await self.send(sender, to, value, body=m.boc(body), what=what)

    async def _ints(self, address: str, method: str, *args: int) -> list[int]:
        stack = await self.get(address, method, [{"type": "int", "value": str(a)} for a in args])
        return [_int(item) for item in stack]

    # accounts and time

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

    async def account(self, address: str) -> dict[str, Any]:
        """The account's state (``state``, ``balance``, and for an active one its ``code``
        and ``data`` as base64 BOCs), as a liteserver's account-state query gives it."""
        return await self._call("account", address=address)
