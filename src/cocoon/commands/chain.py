"""The chain commands: the arguments of ``cocoon chain run`` (the service itself is
:mod:`cocoon.commands.chain_service`), and the roles' on-chain actions: ``cocoon proxy
open-channel|stake|unstake``, ``cocoon client open|topup|close|withdraw`` and ``cocoon worker
withdraw``; each reads the role's ``[chain]`` config (``-c FILE`` or ``--set
chain.KEY=VALUE``), acts from the role's own wallet, and prints what happened (or JSON with
``--json``)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
from decimal import Decimal, InvalidOperation
from typing import Any

from cocoon.chain.base import Chain, ChannelStatus, ProxyStatus
from cocoon.chain.connect import NodeChain
from cocoon.chain.localnet import NetworkParams
from cocoon.chain.specs import ChannelSpec, ProxyStakeSpec
from cocoon.chain.vouchers import parse_voucher, public_key, read_voucher_file
from cocoon.crypto import load_or_create_ed25519_key
from cocoon.errors import CocoonError, ConfigError

__all__ = ["add_chain_arguments", "channel_report", "client_chain_command", "parse_ton",
           "proxy_open_channel", "proxy_stake", "worker_withdraw"]

NANO = 10**9


def parse_ton(text: str) -> int:
    """``"1.5"`` TON -> 1_500_000_000 nanoTON (exact; at most 9 decimals, > 0)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ConfigError(f"not an amount of TON: {text!r}") from None
    nano = value * NANO
    if not value.is_finite() or nano != nano.to_integral_value() or nano <= 0:
        raise ConfigError(f"amount must be a positive number of TON with at most 9 decimals, "
                          f"got {text!r}")
    return int(nano)


def ton(nano: int) -> str:
    return f"{Decimal(nano) / NANO:f} TON"


def add_chain_arguments(sub: Any) -> None:
    """``cocoon chain run ...`` under the top-level subparsers ``sub``."""
    p: argparse.ArgumentParser = sub.add_parser(
        "chain", help="run the embedded chain service (what `cocoon up` starts)")
    p.add_argument("action", choices=["run"], help="run: serve the embedded chain over HTTP")
    p.add_argument("--state", default=".cocoon/chain-state.json",
                   help="chain state file (loaded if present, persisted after every change)")
    p.add_argument("--http", default="127.0.0.1:11200", help="HOST:PORT to serve on")
    p.add_argument("--clock", choices=["wall", "manual"], default="wall",
                   help="wall (default): chain time follows the wall clock; manual: only "
                        "set_time moves it (tests)")
    p.add_argument("--token-file", default="",
                   help="the RPC token every caller must present (created 0600 if missing; "
                        "default: next to --state, e.g. chain-state.token); roles name it in "
                        "chain.token_file")
    p.add_argument("--ready-file", help="write the bound address here as JSON when ready")
    p.add_argument("-v", "--verbose", action="count", default=1)


def _print(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for k, v in report.items():
        if isinstance(v, int) and k.endswith("_nanoton"):
            k, v = k.removesuffix("_nanoton"), ton(v)
        print(f"{k:<16} {v}")


async def channel_report(chain: Any, channel: str) -> dict[str, Any]:
    st = await chain.channel_state(channel)
    return {"channel": channel, "status": st.status.name.lower(),
            "balance_nanoton": st.balance, "charged_nanoton": st.charged,
            "last_seqno": st.last_seqno, "close_at": st.close_at or None}


async def _not_before(chain: Chain, at: int, what: str, then: str) -> None:
    """CocoonError (``"<what> at <at> (in N s); <then>"``) while the chain's clock is before
    ``at``: a delay the contract enforces has not elapsed yet."""
    now = await chain.now()
    if now < at:
        raise CocoonError(f"{what} at {at} (in {at - now} s); {then}")


def _pubkey_hex(text: str | None, what: str) -> bytes:
    try:
        key = bytes.fromhex(text or "")
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(f"{what}: expected 64 hex digits (a raw Ed25519 public key)")
    return key


async def _open(cfg: Any, spec_args: dict[str, Any], amount: int) -> dict[str, Any]:
    """Deploy a channel from this node's wallet, funded with ``amount``."""
    nc = await NodeChain.open(cfg.chain)
    try:
        spec = ChannelSpec(funder=nc.wallet, channel_id=time.time_ns() // 1000, **spec_args)
        res = await nc.chain.deploy_channel(spec, sender=nc.sender, deposit=amount)
        report: dict[str, Any] = {"action": "open", "kind": spec.kind,
                                  "deposited_nanoton": amount}
        report.update(await channel_report(nc.chain, res.to))
        return report
    finally:
        await nc.aclose()


def proxy_open_channel(args: argparse.Namespace, cfg: Any) -> int:
    """Deploy a worker's payout channel: funder the proxy's wallet, signer its voucher key."""
    if not args.worker_wallet or args.amount is None:
        raise ConfigError("open-channel needs WORKER_WALLET and AMOUNT (TON)")
    key = load_or_create_ed25519_key(cfg.billing.signing_key_file)
    report = asyncio.run(_open(cfg, {
        "kind": "worker", "payee": args.worker_wallet, "signer_pubkey": public_key(key),
        "payee_pubkey": bytes(32), "close_delay": args.close_delay}, parse_ton(args.amount)))
    report["next"] = (f"the worker sets chain.contract = \"{report['channel']}\" and "
                      "announces it; the proxy then pays it through this channel")
    _print(report, args.json)
    return 0


async def _stake(cfg: Any, action: str, amount: int) -> dict[str, Any]:
    nc = await NodeChain.open(cfg.chain)
    try:
        chain, me = nc.chain, nc.sender
        contract = cfg.chain.contract
        report: dict[str, Any] = {"action": action}
        if action == "stake" and not contract:
            # the network's minimum stake and delay: the registry's, else the local defaults
            defaults = NetworkParams()
            min_stake, delay = defaults.min_proxy_stake, defaults.proxy_close_delay
            if cfg.chain.registry:
                params = await chain.registry_params(cfg.chain.registry)
                min_stake, delay = params.min_proxy_stake, params.proxy_close_delay
            key = load_or_create_ed25519_key(cfg.billing.signing_key_file)
            spec = ProxyStakeSpec(owner=nc.wallet, proxy_pubkey=public_key(key),
                                  min_stake=min_stake, unstake_delay=delay)
            contract = (await chain.deploy_proxy_stake(spec, sender=me, stake=amount)).to
            report["next"] = (f"set chain.contract = \"{contract}\" in the proxy's config: "
                              "its commits are published there")
        elif action == "stake":
            await chain.add_stake(contract, amount, sender=me)
        else:
            if not contract:
                raise ConfigError("chain.contract (the proxy's stake contract) is not "
                                  "configured")
            st = await chain.proxy_state(contract)
            if st.state == ProxyStatus.ACTIVE:
                await chain.request_unstake(contract, sender=me)
            elif st.state == ProxyStatus.UNSTAKING:
                await _not_before(chain, st.unlock_at, "the stake unlocks",
                                  "run unstake again then")
                await chain.unstake(contract, sender=me)
            else:
                raise CocoonError(f"stake contract {contract} is already closed")
        st = await chain.proxy_state(contract)
        report.update({"contract": contract, "state": st.state.name.lower(),
                       "stake_nanoton": st.stake, "unlock_at": st.unlock_at or None,
                       "commit_seqno": st.commit_seqno})
        return report
    finally:
        await nc.aclose()


def proxy_stake(args: argparse.Namespace, cfg: Any) -> int:
    """``cocoon proxy stake AMOUNT`` / ``cocoon proxy unstake``."""
    amount = 0
    if args.action == "stake":
        if args.worker_wallet is None:  # the first positional holds the amount here
            raise ConfigError("stake needs an amount of TON, e.g. `cocoon proxy stake 10`")
        amount = parse_ton(args.worker_wallet)
    _print(asyncio.run(_stake(cfg, args.action, amount)), args.json)
    return 0


async def _client_action(cfg: Any, action: str, amount: int) -> dict[str, Any]:
    channel = cfg.chain.contract
    if not channel:
        raise ConfigError("chain.contract (the client's payment channel) is not configured")
    nc = await NodeChain.open(cfg.chain)
    try:
        chain, me = nc.chain, nc.sender
        before = await chain.channel_state(channel)
        report: dict[str, Any] = {"action": action}
        if action == "topup":
            await chain.deposit(channel, amount, sender=me)
            report["deposited_nanoton"] = amount
        elif action == "close":
            if before.status != ChannelStatus.OPEN:
                raise CocoonError(f"channel {channel} is already {before.status.name.lower()}")
            await chain.request_close(channel, sender=me)
        elif action == "withdraw":
            if before.status == ChannelStatus.OPEN:
                raise CocoonError(f"channel {channel} is open: run `cocoon client close` "
                                  "first; the proxy may redeem your last voucher during the "
                                  "close delay, then withdraw returns the rest")
            if before.status == ChannelStatus.CLOSING:
                await _not_before(chain, before.close_at, f"channel {channel} closes",
                                  "withdraw after that")
                await chain.close(channel, sender=me)
            wallet_before = await chain.balance(nc.wallet)
            await chain.withdraw(channel, sender=me)
            report["wallet_change_nanoton"] = await chain.balance(nc.wallet) - wallet_before
        report.update(await channel_report(chain, channel))
        return report
    finally:
        await nc.aclose()


def client_chain_command(args: argparse.Namespace, cfg: Any) -> int:
    if args.action in ("topup", "open") and args.amount is None:
        raise ConfigError(f"{args.action} needs an amount of TON, e.g. "
                          f"`cocoon client {args.action} 5`")
    amount = parse_ton(args.amount) if args.action in ("topup", "open") else 0
    if args.action == "open":
        if not cfg.chain.key_file:
            raise ConfigError("chain.key_file (the key that will sign this client's charge "
                              "vouchers) is not configured")
        if not args.payee:
            raise ConfigError("open needs --payee (the proxy's wallet address)")
        key = load_or_create_ed25519_key(cfg.chain.key_file)
        report = asyncio.run(_open(cfg, {
            "kind": "client", "payee": args.payee, "signer_pubkey": public_key(key),
            "payee_pubkey": _pubkey_hex(args.payee_key, "--payee-key"),
            "close_delay": args.close_delay}, amount))
        report["next"] = (f"set chain.contract = \"{report['channel']}\" in the client's "
                          "config and restart it")
        _print(report, args.json)
        return 0
    _print(asyncio.run(_client_action(cfg, args.action, amount)), args.json)
    return 0


async def _worker_withdraw(cfg: Any, voucher_b64: str) -> dict[str, Any]:
    voucher = parse_voucher(base64.b64decode(voucher_b64))
    if voucher.channel != cfg.chain.contract:
        raise CocoonError(f"the worker's voucher is for {voucher.channel}, not the configured "
                          f"channel {cfg.chain.contract}")
    nc = await NodeChain.open(cfg.chain)
    try:
        before = await nc.chain.channel_state(voucher.channel)
        if voucher.cumulative <= before.charged:
            report = {"action": "withdraw", "paid_nanoton": 0,
                      "note": "nothing new to cash out: the channel already paid "
                              f"{ton(before.charged)}"}
        else:
            wallet_before = await nc.chain.balance(nc.wallet)
            await nc.chain.submit_voucher(voucher.channel, voucher, sender=nc.sender)
            report = {"action": "withdraw", "paid_nanoton": voucher.cumulative - before.charged,
                      "wallet_change_nanoton": await nc.chain.balance(nc.wallet)
                      - wallet_before}
        report.update(await channel_report(nc.chain, voucher.channel))
        return report
    finally:
        await nc.aclose()


def worker_withdraw(args: argparse.Namespace, cfg: Any, stats: dict[str, Any] | None) -> int:
    """Cash out the worker's newest payout voucher on chain: the running worker's (its
    /stats), else the one kept in ``chain.voucher_file``."""
    if not cfg.chain.contract:
        raise ConfigError("chain.contract (the worker's payout channel) is not configured")
    voucher = ((stats or {}).get("billing") or {}).get("payout_voucher")
    boc = voucher["boc"] if voucher else None
    if boc is None and cfg.chain.voucher_file:
        kept = read_voucher_file(cfg.chain.voucher_file)
        boc = base64.b64encode(kept.body_boc()).decode() if kept is not None else None
    if boc is None:
        where = "the worker is not running and " if stats is None else ""
        raise CocoonError(f"no payout voucher to cash out: {where}none was received yet "
                          "(no paid request so far, or chain.voucher_file is not set)")
    _print(asyncio.run(_worker_withdraw(cfg, boc)), args.json)
    return 0
