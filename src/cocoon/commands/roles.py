"""``cocoon proxy|worker|client [ACTION]``: the roles' arguments, and inspecting a role.

``run`` (the default) starts the node (:mod:`cocoon.commands.serve`); ``proxy ledger`` checks the
proxy's books; ``client balance`` / ``worker earnings`` ask a running node for its copy of its
account (and read its channel on chain); the on-chain actions (``proxy open-channel|stake|
unstake``, ``client open|topup|close|withdraw``, ``worker withdraw``) are
:mod:`cocoon.commands.chain`'s.  Each reads the role's config (``-c FILE``, ``--set
KEY=VALUE`` and the role's own flags).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

from cocoon import config as cfg
from cocoon.chain.connect import open_chain
from cocoon.commands import chain as chain_cmd
from cocoon.commands.up import http_json
from cocoon.errors import CocoonError
from cocoon.ledger import Ledger
from cocoon.validation import parse_hostport

__all__ = ["ROLES", "add_role_arguments", "overrides", "run_role_action"]

ROLES = ("proxy", "worker", "client")


def overrides(args: argparse.Namespace, mapping: dict[str, str]) -> dict[str, Any]:
    """Config overrides from ``--set SECTION.KEY=VALUE`` and the flags in ``mapping``
    (argparse attribute -> dotted config key)."""
    out: dict[str, Any] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CocoonError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    for attr, dotted in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            out[dotted] = value
    return out


def _role_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    p.add_argument("-c", "--config", help="TOML config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set engine.fake.chunks=10")
    p.add_argument("--ready-file", help="write the bound addresses here as JSON when ready")
    p.add_argument("-v", "--verbose", action="count", default=1)
    return p


def add_role_arguments(sub: Any) -> None:
    """``cocoon proxy|worker|client ...`` under the top-level subparsers ``sub``."""
    p = _role_parser(sub, "proxy", "run a proxy, or inspect its ledger (cocoon proxy ledger)")
    p.add_argument("action", nargs="?",
                   choices=["run", "ledger", "open-channel", "stake", "unstake"],
                   default="run",
                   help="run (default); ledger: print the ledger's totals and check it; "
                        "open-channel WORKER_WALLET AMOUNT: deploy a worker's payout channel "
                        "funded from the proxy's wallet; stake AMOUNT: deploy the proxy's "
                        "stake contract (or add to it); unstake: request it back, then (after "
                        "the delay) take it")
    p.add_argument("worker_wallet", nargs="?",
                   help="open-channel: the worker's wallet address; stake: the amount")
    p.add_argument("amount", nargs="?", help="open-channel: initial funding in TON")
    p.add_argument("--close-delay", type=int, default=3600,
                   help="open-channel: seconds between a close request and the close")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--listen", help="HOST:PORT for workers and clients")
    p.add_argument("--http", help="HOST:PORT for health and stats")

    p = _role_parser(sub, "worker", "run a worker, or show its earnings (cocoon worker earnings)")
    p.add_argument("action", nargs="?", choices=["run", "earnings", "withdraw"], default="run",
                   help="run (default); earnings: the worker's verified copy of its account; "
                        "withdraw: cash out its newest payout voucher on chain")
    p.add_argument("--json", action="store_true", help="earnings: machine-readable output")
    p.add_argument("--proxy", help="proxy HOST:PORT")
    p.add_argument("--http", help="HOST:PORT for health and stats")
    p.add_argument("--engine", choices=["llama-cpp", "openai-http", "fake"])
    p.add_argument("--upstream", help="base URL of the OpenAI-compatible upstream")
    p.add_argument("--max-concurrent", type=int)

    p = _role_parser(sub, "client", "run a client (the OpenAI API for apps), or show its "
                                    "balance (cocoon client balance)")
    p.add_argument("action", nargs="?",
                   choices=["run", "balance", "open", "topup", "close", "withdraw"],
                   default="run",
                   help="run (default); balance: the client's verified copy of its account; "
                        "topup AMOUNT: deposit AMOUNT TON into its payment channel; close: "
                        "request the channel's close; withdraw: after the close delay, take "
                        "back what is left")
    p.add_argument("amount", nargs="?", help="open, topup: amount in TON, e.g. 2.5")
    p.add_argument("--payee", help="open: the proxy's wallet address (its /stats shows it)")
    p.add_argument("--payee-key", help="open: the proxy's voucher key, 64 hex (its /stats)")
    p.add_argument("--close-delay", type=int, default=3600,
                   help="open: seconds between a close request and the refund")
    p.add_argument("--json", action="store_true", help="balance: machine-readable output")
    p.add_argument("--proxy", help="proxy HOST:PORT")
    p.add_argument("--http", help="HOST:PORT of the OpenAI API")


def run_role_action(args: argparse.Namespace) -> int:
    """``cocoon proxy|worker|client ACTION`` for every action but ``run``
    (:func:`cocoon.commands.serve.serve_role`)."""
    if args.command == "proxy" and args.action == "ledger":
        return _proxy_ledger(args)
    if args.command == "proxy" and args.action in ("open-channel", "stake", "unstake"):
        pc = cfg.load(cfg.ProxyConfig, args.config, overrides(args, {}))
        if args.action == "open-channel":
            return chain_cmd.proxy_open_channel(args, pc)
        return chain_cmd.proxy_stake(args, pc)
    if args.command in ("client", "worker") and args.action in ("balance", "earnings"):
        return _account(args)
    return _chain_action(args)


def _on_chain(role_cfg: Any) -> dict[str, Any]:
    """The role's channel as the chain sees it."""

    async def read() -> dict[str, Any]:
        chain = await open_chain(role_cfg.chain)
        try:
            return await chain_cmd.channel_report(chain, role_cfg.chain.contract)
        finally:
            await chain.aclose()

    return asyncio.run(read())


def _account(args: argparse.Namespace) -> int:
    """Ask a running client or worker (its --http address) for its copy of its account."""
    over = overrides(args, {"http": "http"})
    role_cfg: Any = (cfg.load(cfg.ClientConfig, args.config, over)
                     if args.command == "client"
                     else cfg.load(cfg.WorkerConfig, args.config, over))
    stats = _stats(args, role_cfg.http)
    account = stats.get("billing") or {}
    if role_cfg.chain.enabled and role_cfg.chain.contract:
        account["on_chain"] = _on_chain(role_cfg)
    if args.json:
        print(json.dumps(account, indent=2))
    elif account.get("voucher") is None:
        print("no statement from the proxy yet (billing off, or no paid request so far)")
        if "on_chain" in account:
            print(f"{'on_chain':<20} {account['on_chain']}")
    else:
        for k, v in account.items():
            if k != "voucher":
                print(f"{k:<20} {v}")
        v = account["voucher"]
        print(f"{'voucher':<20} seqno {v['seqno']}, {v['cumulative_nanoton']} nanoTON, "
              f"{v['cumulative_tokens']} tokens, signed by proxy key {v['proxy_key'][:16]}...")
    return 0


def _chain_action(args: argparse.Namespace) -> int:
    """client topup|close|withdraw, worker withdraw: act on chain from the role's wallet."""
    over = overrides(args, {"http": "http"})
    if args.command == "client":
        return chain_cmd.client_chain_command(
            args, cfg.load(cfg.ClientConfig, args.config, over))
    wc = cfg.load(cfg.WorkerConfig, args.config, over)
    try:
        stats: dict[str, Any] | None = _stats(args, wc.http)
    except CocoonError:
        stats = None  # not running: the voucher it kept on disk
    return chain_cmd.worker_withdraw(args, wc, stats)


def _stats(args: argparse.Namespace, http: str) -> dict[str, Any]:
    host, port = parse_hostport(http, f"{args.command}.http")
    status, stats = http_json(f"http://{host}:{port}/stats")
    if status != 200 or not isinstance(stats, dict):
        raise CocoonError(f"no {args.command} answering on {host}:{port} (--http HOST:PORT)")
    return stats


def _proxy_ledger(args: argparse.Namespace) -> int:
    """Print the proxy ledger's totals and invariant check; exit 1 if it is inconsistent."""
    pc = cfg.load(cfg.ProxyConfig, args.config, overrides(args, {}))
    path = Path(pc.billing.ledger_path)
    if not path.exists():
        raise CocoonError(f"no ledger at {path} (billing.ledger_path)")
    with Ledger(path) as ledger:
        totals = dataclasses.asdict(ledger.totals())
        problems = ledger.check_invariants()
        commits = [dataclasses.asdict(c) for c in ledger.commits()]
    report = {"ledger": str(path), "totals": totals, "commits": len(commits),
              "consistent": not problems, "problems": problems}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"ledger {path}")
        for k, v in totals.items():
            print(f"  {k:<18} {v}")
        print("  consistent" if not problems else "  INCONSISTENT:\n    " + "\n    ".join(problems))
    return 0 if not problems else 1
