"""The chain commands: the arguments of ``cocoon chain run`` (the service itself is
:mod:`cocoon.commands.chain_service`), and the roles' on-chain actions: ``cocoon proxy
open-channel|stake|unstake|register|deregister``, ``cocoon client open|topup|close|withdraw``
and ``cocoon worker withdraw``; each reads the role's ``[chain]`` config (``-c FILE`` or ``--set
chain.KEY=VALUE``), acts from the role's own wallet, and prints what happened (or JSON with
``--json``). Amounts are typed and printed in TON (:mod:`cocoon.money`); JSON
carries nanoTON in ``*_nanoton`` fields, dates in ISO-8601 UTC.

A payment leaves the role's wallet only if the wallet can pay it: the amount, what the
contract keeps of a top-up and the fees (:func:`require_funds`); otherwise the wallet's own
transaction would abort and the chain would say only that no transaction reached the
contract."""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from cocoon import config as role_config
from cocoon.chain.base import LISTING_VALUE, TOPUP_FEE, Chain, ChannelStatus, ProxyStatus
from cocoon.chain.connect import NodeChain
from cocoon.chain.localnet import NetworkParams
from cocoon.chain.registry import ensure_listed, raw_address, read_registry
from cocoon.chain.specs import NO_REGISTRY, ChannelSpec, ProxyInfo, ProxyStakeSpec
from cocoon.chain.vouchers import parse_voucher, public_key, read_voucher_file, voucher_path
from cocoon.crypto import load_or_create_ed25519_key
from cocoon.errors import CocoonError, ConfigError, InsufficientFunds
from cocoon.money import format_ton, iso_utc, parse_ton
from cocoon.validation import parse_hostport

__all__ = ["SEND_FEES", "add_chain_arguments", "channel_report", "client_chain_command",
           "one_channel", "proxy_listing", "proxy_open_channel", "proxy_stake",
           "require_funds", "switch_channel", "worker_withdraw"]

SEND_FEES = 50_000_000
"""What a payment may cost its sender in fees on top of the value it carries (0.05 TON: the
wallet's and the contract's gas and forwarding, about 2 mTON on the embedded chain)."""
DEFAULT_CLOSE_DELAY = 3600
"""A new channel's close delay when neither ``--close-delay`` nor a current channel says."""


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
    p.add_argument("-v", "--verbose", action="count", default=1,
                   help="log debug lines too (the default logs info)")


def _print(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for k, v in report.items():
        if isinstance(v, int) and k.endswith("_nanoton"):
            k, v = k.removesuffix("_nanoton"), format_ton(v)
        print(f"{k.replace('_', ' '):<16} {'-' if v is None else v}")


async def channel_report(chain: Any, channel: str) -> dict[str, Any]:
    st = await chain.channel_state(channel)
    return {"channel": channel, "status": st.status.name.lower(),
            "balance_nanoton": st.balance, "charged_nanoton": st.charged,
            "last_seqno": st.last_seqno, "close_at": iso_utc(st.close_at)}


async def _not_before(chain: Chain, at: int, what: str, then: str) -> None:
    """CocoonError (``"<what> at <ISO time> (in N s); <then>"``) while the chain's clock is
    before ``at``: a delay the contract enforces has not elapsed yet."""
    now = await chain.now()
    if now < at:
        raise CocoonError(f"{what} at {iso_utc(at)} (in {at - now} s); {then}")


async def require_funds(nc: NodeChain, value: int, what: str) -> None:
    """InsufficientFunds unless the node's wallet holds ``value`` (what the message carries)
    plus :data:`SEND_FEES`; the message says what the wallet has and what ``what`` needs."""
    have = await nc.chain.balance(nc.wallet)
    need = value + SEND_FEES
    if have < need:
        name = f" ({nc.wallet_name})" if nc.wallet_name else ""
        raise InsufficientFunds(
            f"wallet {nc.wallet}{name} has {format_ton(have)}, {what} needs "
            f"{format_ton(value)} plus up to {format_ton(SEND_FEES)} of fees",
            available=have, requested=need)


def _credit_value(amount: int) -> int:
    """What a top-up (deposit, stake) of ``amount`` carries: the amount and what the contract
    keeps (TOPUP_FEE)."""
    return amount + TOPUP_FEE


def _pubkey_hex(text: str | None, what: str) -> bytes:
    try:
        key = bytes.fromhex(text or "")
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(f"{what}: expected 64 hex digits (a raw Ed25519 public key)")
    return key


async def _open(nc: NodeChain, spec_args: dict[str, Any], amount: int) -> dict[str, Any]:
    """Deploy a channel from this node's wallet, funded with ``amount``."""
    spec = ChannelSpec(funder=nc.wallet, channel_id=time.time_ns() // 1000, **spec_args)
    await require_funds(nc, _credit_value(amount), f"opening a channel with {format_ton(amount)}")
    res = await nc.chain.deploy_channel(spec, sender=nc.sender, deposit=amount)
    report: dict[str, Any] = {"action": "open", "kind": spec.kind, "deposited_nanoton": amount}
    report.update(await channel_report(nc.chain, res.to))
    return report


def proxy_open_channel(args: argparse.Namespace, cfg: Any) -> int:
    """Deploy a worker's payout channel: funder the proxy's wallet, signer its voucher key."""
    amount = parse_ton(args.amount)
    key = load_or_create_ed25519_key(cfg.billing.signing_key_file)

    async def run() -> dict[str, Any]:
        nc = await NodeChain.open(cfg.chain)
        try:
            return await _open(nc, {
                "kind": "worker", "payee": args.worker_wallet,
                "signer_pubkey": public_key(key), "payee_pubkey": bytes(32),
                "close_delay": args.close_delay}, amount)
        finally:
            await nc.aclose()

    report = asyncio.run(run())
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
        if action == "stake":
            await require_funds(nc, _credit_value(amount), f"staking {format_ton(amount)}")
        if action == "stake" and not contract:
            # the network's minimum stake and delay: the registry's, else the local defaults
            defaults = NetworkParams()
            min_stake, delay = defaults.min_proxy_stake, defaults.proxy_close_delay
            if cfg.chain.registry:
                params = await chain.registry_params(cfg.chain.registry)
                min_stake, delay = params.min_proxy_stake, params.proxy_close_delay
            key = load_or_create_ed25519_key(cfg.billing.signing_key_file)
            spec = ProxyStakeSpec(owner=nc.wallet, proxy_pubkey=public_key(key),
                                  min_stake=min_stake, unstake_delay=delay,
                                  registry=cfg.chain.registry or NO_REGISTRY)
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
                       "stake_nanoton": st.stake, "unlock_at": iso_utc(st.unlock_at),
                       "commit_seqno": st.commit_seqno})
        return report
    finally:
        await nc.aclose()


async def _listing(cfg: Any, action: str) -> dict[str, Any]:
    registry, contract = cfg.chain.registry, cfg.chain.contract
    if not registry or not contract:
        raise ConfigError("chain.registry and chain.contract (the proxy's stake contract) "
                          "must both be configured to list the proxy")
    endpoint = cfg.advertised_endpoint(parse_hostport(cfg.listen, "proxy.listen")[1])
    info = ProxyInfo(client_endpoint=endpoint, worker_endpoint=endpoint)
    nc = await NodeChain.open(cfg.chain)
    try:
        report: dict[str, Any] = {"action": action, "registry": registry,
                                  "stake_contract": raw_address(contract)}
        if action == "register":
            await require_funds(nc, LISTING_VALUE, "listing the proxy")
            listing, sent = await ensure_listed(nc.chain, registry, contract, info,
                                                sender=nc.sender)
            report.update(listing.as_json(), sent=sent)
        else:
            await require_funds(nc, LISTING_VALUE, "removing the listing")
            await nc.chain.deregister_proxy(contract, sender=nc.sender)
        state = await read_registry(nc.chain, registry)
        report["listed"] = any(p.stake_contract == report["stake_contract"]
                               for p in state.proxies)
        return report
    finally:
        await nc.aclose()


def proxy_listing(args: argparse.Namespace, cfg: Any) -> int:
    """``cocoon proxy register`` / ``cocoon proxy deregister``."""
    _print(asyncio.run(_listing(cfg, args.action)), args.json)
    return 0


def proxy_stake(args: argparse.Namespace, cfg: Any) -> int:
    """``cocoon proxy stake AMOUNT`` / ``cocoon proxy unstake``."""
    amount = parse_ton(args.amount) if args.action == "stake" else 0
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
            if before.status != ChannelStatus.OPEN:
                raise CocoonError(f"channel {channel} is {before.status.name.lower()}: it takes "
                                  "no top-up; open a new one with `cocoon client open AMOUNT`")
            await require_funds(nc, _credit_value(amount), f"a top-up of {format_ton(amount)}")
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
        if action == "withdraw":
            report["next"] = ("open a new channel with `cocoon client open AMOUNT -c "
                              "CONFIG`: the client switches to it")
        return report
    finally:
        await nc.aclose()


async def _client_open(cfg: Any, args: argparse.Namespace, amount: int) -> dict[str, Any]:
    """Deploy a new client channel. Payee, payee key and close delay default to those of the
    channel the config names (a new channel to the same proxy)."""
    key = load_or_create_ed25519_key(cfg.chain.key_file)
    nc = await NodeChain.open(cfg.chain)
    try:
        payee, payee_key, delay = args.payee, args.payee_key, args.close_delay
        current = cfg.chain.contract
        if current and (payee is None or payee_key is None or delay is None):
            parties = await nc.parties(current)
            if parties.kind != "client":
                raise ConfigError(f"chain.contract {current} is a {parties.kind} channel, not "
                                  "a client's: give --payee and --payee-key")
            payee = parties.payee if payee is None else payee
            payee_key = parties.payee_pubkey.hex() if payee_key is None else payee_key
            delay = parties.close_delay if delay is None else delay
        if not payee or payee_key is None:
            raise ConfigError("open needs --payee (the proxy's wallet address) and "
                              "--payee-key (its voucher key), from the proxy's /stats; or a "
                              "config whose chain.contract names a channel to that proxy")
        report = await _open(nc, {
            "kind": "client", "payee": payee, "signer_pubkey": public_key(key),
            "payee_pubkey": _pubkey_hex(payee_key, "--payee-key"),
            "close_delay": DEFAULT_CLOSE_DELAY if delay is None else delay}, amount)
        if current:
            report["previous_channel"] = current
            old = await nc.chain.channel_state(current)
            report["previous_status"] = old.status.name.lower()
            report["previous_balance_nanoton"] = old.balance
        return report
    finally:
        await nc.aclose()


def one_channel(cfg: Any) -> None:
    """A client's or worker's action acts on one channel: ConfigError when the config names
    several."""
    channels = cfg.channels()
    if len(channels) > 1:
        raise ConfigError(f"chain.contract names {len(channels)} channels (one per proxy): "
                          "say which with --set chain.contract=CHANNEL")


def client_chain_command(args: argparse.Namespace, cfg: Any) -> int:
    """``cocoon client open|topup|close|withdraw``."""
    one_channel(cfg)
    amount = parse_ton(args.amount) if args.action in ("topup", "open") else 0
    if args.action != "open":
        _print(asyncio.run(_client_action(cfg, args.action, amount)), args.json)
        return 0
    if not cfg.chain.key_file:
        raise ConfigError("chain.key_file (the key that will sign this client's charge "
                          "vouchers) is not configured")
    # before any money moves: the inputs, and that the config can be switched
    if args.payee_key is not None:
        _pubkey_hex(args.payee_key, "--payee-key")
    if args.config:
        switch_channel(args.config, "0:" + "00" * 32, dry_run=True)
    report = asyncio.run(_client_open(cfg, args, amount))
    channel = report["channel"]
    if args.config:
        switch_channel(args.config, channel)
        report["config"] = args.config
        report["next"] = (f"{args.config} now names this channel (chain.contract): a client "
                          "under `cocoon up` switches to it at once; restart a client you run "
                          "yourself")
    else:
        report["next"] = (f"set chain.contract = \"{channel}\" in the client's config and "
                          "restart it")
    if report.get("previous_status") == "open" or report.get("previous_balance_nanoton"):
        report["next"] += (f"; the previous channel {report['previous_channel']} still holds "
                           f"{format_ton(report['previous_balance_nanoton'])}: close and "
                           "withdraw it with --set chain.contract="
                           f"{report['previous_channel']}")
    _print(report, args.json)
    return 0


_TABLE = re.compile(r"\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(?:#.*)?")
_CONTRACT = re.compile(r"(\s*)contract\s*=")


def switch_channel(path: str, channel: str, *, dry_run: bool = False) -> None:
    """Make the client config at ``path`` name ``channel`` (``chain.contract``): only that
    line changes (or is added to its ``[chain]`` table), comments and everything else stay;
    the file is replaced atomically and only once it loads back as the same config with the
    new channel. ConfigError, leaving the file as it was, when it cannot be edited so;
    ``dry_run`` checks that without writing."""
    file = Path(path)
    before = role_config.load(role_config.ClientConfig, path)
    expected = dataclasses.replace(before, chain=dataclasses.replace(before.chain,
                                                                     contract=channel))
    lines = file.read_text().splitlines(keepends=True)
    value = json.dumps(channel)
    table, header, done = "", None, False
    for i, line in enumerate(lines):
        m = _TABLE.fullmatch(line.rstrip("\r\n"))
        if m is not None:
            table = m[1]
            if table in ("chain", "client.chain"):
                header = i
            continue
        c = _CONTRACT.match(line)
        if c is not None and table in ("chain", "client.chain"):
            lines[i] = f"{c[1]}contract = {value}\n"
            done = True
            break
    if not done and header is not None:
        lines.insert(header + 1, f"contract = {value}\n")
    elif not done:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines += ["\n", "[chain]\n", f"contract = {value}\n"]
    tmp = file.with_name(f".{file.name}.tmp")
    tmp.write_text("".join(lines))
    try:
        shutil.copymode(file, tmp)
        if role_config.load(role_config.ClientConfig, str(tmp)) != expected:
            raise ConfigError(f"{path}: could not set chain.contract to {channel} alone (the "
                              "file is written in a way this tool does not edit): set it by "
                              "hand")
        if not dry_run:
            os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)


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
                              f"{format_ton(before.charged)}"}
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
    one_channel(cfg)
    channel = cfg.chain.contract
    payouts = (stats or {}).get("payouts") or [(stats or {}).get("billing") or {}]
    voucher = next((p.get("payout_voucher") for p in payouts
                    if p.get("channel") == channel), None)
    boc = voucher["boc"] if voucher else None
    if boc is None and cfg.chain.voucher_file:
        # kept beside voucher_file when the worker is paid through several channels
        for path in (cfg.chain.voucher_file,
                     voucher_path(cfg.chain.voucher_file, channel, several=True)):
            kept = read_voucher_file(path)
            if kept is not None and kept.channel == channel:
                boc = base64.b64encode(kept.body_boc()).decode()
                break
    if boc is None:
        where = "the worker is not running and " if stats is None else ""
        raise CocoonError(f"no payout voucher to cash out: {where}none was received yet "
                          "(no paid request so far, or chain.voucher_file is not set)")
    _print(asyncio.run(_worker_withdraw(cfg, boc)), args.json)
    return 0
