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
from cocoon.money import format_ton, iso_utc
from cocoon.validation import parse_hostport

__all__ = ["ROLES", "add_role_arguments", "client_balance", "format_client_balance",
           "format_worker_earnings", "ledger_totals", "overrides", "run_role_action",
           "worker_earnings"]

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


def _role_options(p: argparse.ArgumentParser, role: str, *, suppress: bool,
                  run: bool) -> None:
    """The options of ``cocoon ROLE [ACTION]``: ``-c`` and ``--set`` everywhere, the node's
    own (addresses, engine, log level) where it runs (``run``). On an action's parser they
    default to ``SUPPRESS``, so ``cocoon client -c F topup 1`` and ``cocoon client topup 1 -c
    F`` mean the same."""
    d: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    p.add_argument("-c", "--config", metavar="FILE", help="the role's TOML config file", **d)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set engine.fake.chunks=10 (repeatable)",
                   **d)
    if role != "proxy":  # where the running node answers (balance, earnings, withdraw ask it)
        what = "the OpenAI API (client.http, default 127.0.0.1:10000)" if role == "client" \
            else "health and stats (worker.http, default 127.0.0.1:12000)"
        p.add_argument("--http", metavar="HOST:PORT", help=what, **d)
    if not run:
        return
    p.add_argument("--ready-file", metavar="FILE",
                   help="write the bound addresses here as JSON once serving", **d)
    p.add_argument("-v", "--verbose", action="count",
                   help="log debug lines too (the default logs info)",
                   **(d or {"default": 1}))
    if role == "proxy":
        p.add_argument("--listen", metavar="HOST:PORT",
                       help="where workers and clients connect (proxy.listen, default "
                            "127.0.0.1:11100)", **d)
        p.add_argument("--http", metavar="HOST:PORT",
                       help="health and stats (proxy.http, default 127.0.0.1:11000)", **d)
    elif role == "worker":
        p.add_argument("--proxy", metavar="HOST:PORT[,HOST:PORT...]",
                       help="the proxies to serve (worker.proxy; default 127.0.0.1:11100 "
                            "unless --registry finds them)", **d)
        p.add_argument("--registry", metavar="ADDRESS",
                       help="join the network of this root registry: serve every proxy "
                            "listed there whose attestation passes, and take the allow-lists "
                            "from it (chain.registry; the [chain] settings say how to read "
                            "the chain)", **d)
        p.add_argument("--engine", choices=["llama-cpp", "openai-http", "fake"],
                       help="what generates the tokens (engine.kind, default llama-cpp): "
                            "llama-cpp, embedded llama.cpp with SmolLM2-135M-Instruct unless "
                            "engine.llama_cpp.model_path names another GGUF; openai-http, an "
                            "OpenAI-compatible server at --upstream (vLLM, SGLang, "
                            "llama-server); fake, deterministic chunks for tests and "
                            "benchmarks", **d)
        p.add_argument("--upstream", metavar="URL",
                       help="--engine openai-http: the upstream's base URL "
                            "(engine.openai-http.base_url, default http://127.0.0.1:8000)", **d)
        p.add_argument("--max-concurrent", type=int, metavar="N",
                       help="requests this worker runs at once: the capacity it announces, "
                            "so the proxy sends it at most that many, routing each request "
                            "to the least-loaded worker (worker.max_concurrent; default: "
                            "256 for openai-http, 4 for llama-cpp and fake)",
                       **d)
        p.add_argument("--model-hash", metavar="HEX",
                       help="--engine openai-http: the upstream's weights as `cocoon "
                            "model-hash PATH` prints it, certified so registry model "
                            "allow-lists admit this worker (engine.openai-http.model_hash)",
                       **d)
        p.add_argument("--drain-timeout", type=float, metavar="SECONDS",
                       help="on SIGTERM, how long requests in flight may take to finish "
                            "while no new ones are taken (worker.drain_timeout_s, default "
                            "120; a second signal stops at once)", **d)
    else:
        p.add_argument("--proxy", metavar="HOST:PORT",
                       help="the proxy to send requests to (client.proxy, default "
                            "127.0.0.1:11100)", **d)


_JSON_HELP = "machine-readable output (amounts in nanoTON, in fields named *_nanoton)"


def _role(sub: Any, role: str, help_text: str, description: str,
          actions: list[tuple[str, str]]) -> dict[str, argparse.ArgumentParser]:
    """``cocoon ROLE [ACTION]``: the role's parser (running it is the default) and one
    parser per action, returned by name to add the action's own arguments."""
    p: argparse.ArgumentParser = sub.add_parser(role, help=help_text, description=description)
    _role_options(p, role, suppress=False, run=True)
    acts = p.add_subparsers(dest="action", metavar="[ACTION]", title="actions",
                            description="run (the default) starts the node; the others act "
                                        "on its account, its books or the chain")
    p.set_defaults(action="run")
    out = {}
    for name, text in actions:
        q = acts.add_parser(name, help=text, description=text)
        _role_options(q, role, suppress=True, run=name == "run")
        if name != "run":
            q.add_argument("--json", action="store_true", help=_JSON_HELP)
        out[name] = q
    return out


def _amount(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("amount",
                   help=f"{text}, in TON with up to 9 decimals (e.g. 2.5 or 0.000000186)")


def add_role_arguments(sub: Any) -> None:
    """``cocoon proxy|worker|client [ACTION] ...`` under the top-level subparsers ``sub``."""
    a = _role(sub, "proxy", "run a proxy, or act on its books and stake (cocoon proxy ledger)",
              "Run a proxy (the default), or act on its ledger, its stake and the workers' "
              "payout channels.", [
                  ("run", "serve workers and clients until SIGINT/SIGTERM"),
                  ("ledger", "print the ledger's totals and check its invariants (exit 1 if "
                             "inconsistent)"),
                  ("open-channel", "deploy a worker's payout channel, funded from the "
                                   "proxy's wallet"),
                  ("stake", "deploy the proxy's stake contract, or add to it"),
                  ("unstake", "ask the stake back (this also removes the registry listing); "
                              "run again after the delay to take it"),
                  ("register", "list the proxy in chain.registry through its stake, with "
                               "proxy.public_endpoint (a running proxy does this itself)"),
                  ("deregister", "remove the proxy's registry listing; the stake stays"),
              ])
    a["open-channel"].add_argument("worker_wallet", metavar="WORKER_WALLET",
                                   help="the worker's wallet address (it is paid there)")
    _amount(a["open-channel"], "the channel's initial funding")
    a["open-channel"].add_argument("--close-delay", type=int, default=3600, metavar="SECONDS",
                                   help="seconds between a close request and the close "
                                        "(default 3600)")
    _amount(a["stake"], "what to stake (the first stake must reach the registry's minimum)")

    a = _role(sub, "worker", "run a worker, or show its earnings (cocoon worker earnings)",
              "Run a worker (the default), or show and cash out what it earned.", [
                  ("run", "serve the proxy with an engine until SIGINT/SIGTERM"),
                  ("earnings", "the worker's verified copy of its account, and its payout "
                               "channel on chain"),
                  ("withdraw", "cash out the newest payout voucher on chain (the running "
                               "worker's, else the one kept in chain.voucher_file)"),
              ])

    a = _role(sub, "client", "run a client (the OpenAI API for apps), or act on its payment "
                             "channel (cocoon client balance)",
              "Run a client (the default), or act on its payment channel.", [
                  ("run", "serve the OpenAI API until SIGINT/SIGTERM"),
                  ("balance", "what the channel holds, what the proxy charged (its newest "
                              "signed statement) and what is left"),
                  ("open", "deploy a new payment channel to the proxy, funded from the "
                           "client's wallet, and switch the client's config (-c) to it"),
                  ("topup", "deposit more into the payment channel"),
                  ("close", "ask to close the channel (the proxy may redeem your last "
                            "voucher during the close delay)"),
                  ("withdraw", "after the close delay, take back what is left"),
              ])
    _amount(a["topup"], "what to deposit")
    _amount(a["open"], "the new channel's deposit")
    a["open"].add_argument("--payee", metavar="PROXY_WALLET",
                           help="the proxy's wallet address (its /stats shows it; default: "
                                "the payee of the channel the config names)")
    a["open"].add_argument("--payee-key", metavar="HEX",
                           help="the proxy's voucher key, 64 hex (its /stats shows it; "
                                "default: as in the channel the config names)")
    a["open"].add_argument("--close-delay", type=int, metavar="SECONDS",
                           help="seconds between a close request and the refund (default: "
                                "as in the channel the config names, else 3600)")


def run_role_action(args: argparse.Namespace) -> int:
    """``cocoon proxy|worker|client ACTION`` for every action but ``run``
    (:func:`cocoon.commands.serve.serve_role`)."""
    if args.command == "proxy" and args.action == "ledger":
        return _proxy_ledger(args)
    if args.command == "proxy" and args.action in ("open-channel", "stake", "unstake",
                                                   "register", "deregister"):
        pc = cfg.load(cfg.ProxyConfig, args.config, overrides(args, {}))
        if args.action == "open-channel":
            return chain_cmd.proxy_open_channel(args, pc)
        if args.action in ("register", "deregister"):
            return chain_cmd.proxy_listing(args, pc)
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
    """Ask a running client or worker (its --http address) for its copy of its account, and
    read its channel on chain."""
    over = overrides(args, {"http": "http"})
    role_cfg: Any = (cfg.load(cfg.ClientConfig, args.config, over)
                     if args.command == "client"
                     else cfg.load(cfg.WorkerConfig, args.config, over))
    chain_cmd.one_channel(role_cfg)
    billing = _stats(args, role_cfg.http).get("billing") or {}
    on_chain = (_on_chain(role_cfg) if role_cfg.chain.enabled and role_cfg.chain.contract
                else None)
    if args.command == "client":
        report, text = client_balance(billing, on_chain), format_client_balance
    else:
        report, text = worker_earnings(billing, on_chain), format_worker_earnings
    print(json.dumps(report, indent=2) if args.json else text(report))
    return 0


def client_balance(billing: dict[str, Any], on_chain: dict[str, Any] | None) -> dict[str, Any]:
    """``cocoon client balance --json``: the client's account from its node's copy (the
    proxy's newest signed statement: charged, reserved) and its channel as the chain holds
    it now. ``deposited_nanoton`` is read on chain when there is one (what the channel holds
    plus what it has paid the proxy), so a top-up shows at once, before any statement says
    so; without a chain it is the statement's."""
    charged, reserved = int(billing.get("charged", 0)), int(billing.get("reserved", 0))
    deposited = (on_chain["balance_nanoton"] + on_chain["charged_nanoton"]
                 if on_chain is not None else int(billing.get("deposited", 0)))
    report: dict[str, Any] = {
        "channel": (on_chain or {}).get("channel") or billing.get("channel"),
        "status": (on_chain or {}).get("status"),
        "deposited_nanoton": deposited,
        "charged_nanoton": charged,
        "reserved_nanoton": reserved,
        "available_nanoton": deposited - charged - reserved,
        "voucher": billing.get("voucher"),
        "rejected_statements": billing.get("rejected_statements", 0),
    }
    if "signed" in billing:
        report["signed"] = billing["signed"]
    if on_chain is not None:
        report["on_chain"] = on_chain
    return report


def format_client_balance(r: dict[str, Any]) -> str:
    """The text form of :func:`client_balance`: TON, dates in UTC."""
    lines = []
    if r.get("channel"):
        lines.append(f"{'channel':<12} {r['channel']}"
                     + (f" ({r['status']})" if r.get("status") else ""))
    c = r.get("on_chain")
    where = "on chain now" if c is not None else "as the proxy last stated"
    lines += [f"{'deposited':<12} {format_ton(r['deposited_nanoton'])} ({where})",
              f"{'charged':<12} {format_ton(r['charged_nanoton'])} (the proxy's newest "
              "signed statement)",
              f"{'reserved':<12} {format_ton(r['reserved_nanoton'])} (requests running now)",
              f"{'available':<12} {format_ton(r['available_nanoton'])}"]
    if r.get("signed"):
        lines.append(f"{'you signed':<12} {format_ton(r['signed']['cumulative_nanoton'])} "
                     "(what the proxy may redeem)")
    if c is not None:
        lines.append(f"{'channel now':<12} holds {format_ton(c['balance_nanoton'])}, paid the "
                     f"proxy {format_ton(c['charged_nanoton'])}")
        if c.get("close_at"):
            lines.append(f"{'closes at':<12} {c['close_at']}")
    lines.append(_statement_line(r.get("voucher"), 12))
    return "\n".join(lines)


def _statement_line(v: dict[str, Any] | None, width: int) -> str:
    """The proxy's newest signed statement, as a line of a report."""
    if v is None:
        return "no statement from the proxy yet (billing off, or no paid request so far)"
    return (f"{'statement':<{width}} seqno {v['seqno']}: {format_ton(v['cumulative_nanoton'])} "
            f"for {v['cumulative_tokens']} tokens, signed by proxy key "
            f"{v['proxy_key'][:16]}...")


def worker_earnings(billing: dict[str, Any], on_chain: dict[str, Any] | None) -> dict[str, Any]:
    """``cocoon worker earnings --json``: what the proxy's newest statement says the worker
    earned, its newest payout voucher, and its payout channel on chain."""
    report: dict[str, Any] = {
        "earned_nanoton": int(billing.get("earned", 0)),
        "voucher": billing.get("voucher"),
        "rejected_statements": billing.get("rejected_statements", 0),
        "channel": (on_chain or {}).get("channel") or billing.get("channel"),
        "payout_voucher": billing.get("payout_voucher"),
    }
    if on_chain is not None:
        report["on_chain"] = on_chain
        voucher = report["payout_voucher"] or {}
        report["withdrawable_nanoton"] = max(
            0, int(voucher.get("cumulative_nanoton", 0)) - on_chain["charged_nanoton"])
    return report


def format_worker_earnings(r: dict[str, Any]) -> str:
    lines = [f"{'earned':<14} {format_ton(r['earned_nanoton'])} (the proxy's newest signed "
             "statement)"]
    if r.get("channel"):
        lines.append(f"{'channel':<14} {r['channel']}")
    c = r.get("on_chain")
    if c is not None:
        lines.append(f"{'channel now':<14} holds {format_ton(c['balance_nanoton'])}, paid you "
                     f"{format_ton(c['charged_nanoton'])} ({c['status']})")
        lines.append(f"{'withdrawable':<14} {format_ton(r['withdrawable_nanoton'])} "
                     "(`cocoon worker withdraw`)")
    lines.append(_statement_line(r.get("voucher"), 14))
    return "\n".join(lines)


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
        commits = ledger.commits()
    report: dict[str, Any] = {
        "ledger": str(path), "totals": ledger_totals(totals), "commits": len(commits),
        "last_commit_at": iso_utc(commits[-1].at) if commits else None,
        "consistent": not problems, "problems": problems}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"ledger {path}")
        for k, v in report["totals"].items():
            if k.endswith("_nanoton"):
                k, v = k.removesuffix("_nanoton"), format_ton(v)
            print(f"  {k.replace('_', ' '):<18} {v}")
        print(f"  {'commits':<18} {len(commits)}"
              + (f", the last at {report['last_commit_at']}" if commits else ""))
        print("  consistent" if not problems else "  INCONSISTENT:\n    " + "\n    ".join(problems))
    return 0 if not problems else 1


LEDGER_MONEY = ("deposited", "charged", "reserved", "earned", "commission")
"""The ledger's totals that are amounts of money (nanoTON); the others are counts."""


def ledger_totals(totals: dict[str, Any]) -> dict[str, Any]:
    """The ledger's totals with each amount's field named ``*_nanoton``."""
    return {f"{k}_nanoton" if k in LEDGER_MONEY else k: v for k, v in totals.items()}
