"""``cocoon registry``: the root registry's owner tool.

Deploys a registry, shows it, and sends its owner ops (allow or disallow an image or model
hash, update the params, hand it to a new owner) from the owner's wallet, on whichever chain
the ``[chain]`` table of ``-c FILE`` (and ``--set chain.KEY=VALUE``) names: the embedded chain
(``cocoon chain run``, what ``cocoon up`` starts; wallet ``owner`` unless ``chain.wallet`` says
otherwise) or ``ton``. Everything goes through the :class:`~cocoon.chain.base.Chain`
interface, so both backends send the same cells.

Amounts are typed and printed in TON (``--price 0.000000002``); ``--json`` gives them in
nanoTON, in fields named ``*_nanoton``. Hashes are 64 hex digits. Input errors are
:class:`ConfigError`; a contract's refusal is the
:class:`~cocoon.chain.errors.ContractRejected` subclass for its exit code, with the reason in
words.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
from collections.abc import Callable
from typing import Any

from cocoon.chain import messages as m
from cocoon.chain.config import ChainConfig
from cocoon.chain.connect import NodeChain
from cocoon.chain.errors import ChainError, ContractRejected, WrongSender
from cocoon.chain.localnet import NetworkParams
from cocoon.chain.registry import raw_address, read_registry
from cocoon.chain.specs import RegistryParams
from cocoon.config import build_table, read_toml
from cocoon.errors import ConfigError
from cocoon.ledger.config import BillingConfig
from cocoon.money import MAX_NANOTON, format_ton, parse_ton

__all__ = ["add_registry_arguments", "chain_config", "parse_hash", "run_registry"]

DEFAULT_OWNER_WALLET = "owner"
"""The embedded chain's wallet that owns the registry ``cocoon up`` deploys."""

_HASH = re.compile(r"[0-9a-fA-F]{64}")
_UINT32 = 1 << 32
_COINS = MAX_NANOTON + 1  # Coins: 120 bits

# flag -> (RegistryParams field, upper bound (exclusive), help); the fields in MONEY are
# amounts, typed in TON
_PARAM_FLAGS: dict[str, tuple[str, int, str]] = {
    "--price": ("price_per_token", _COINS, "TON a client pays per adjusted token, e.g. "
                                            "0.000000002"),
    "--worker-fee": ("worker_fee", _COINS, "TON a worker earns per adjusted token"),
    "--prompt-mult": ("prompt_mult", _UINT32, "prompt token multiplier (10000 = 1.0x)"),
    "--cached-mult": ("cached_mult", _UINT32, "cached prompt token multiplier"),
    "--completion-mult": ("completion_mult", _UINT32, "completion token multiplier"),
    "--reasoning-mult": ("reasoning_mult", _UINT32, "reasoning token multiplier"),
    "--training-mult": ("training_mult", _UINT32,
                        "fine-tuning: multiplier of each trained token (10000 = 1.0x)"),
    "--proxy-close-delay": ("proxy_close_delay", _UINT32, "seconds"),
    "--client-close-delay": ("client_close_delay", _UINT32, "seconds"),
    "--min-proxy-stake": ("min_proxy_stake", _COINS, "TON"),
    "--min-client-stake": ("min_client_stake", _COINS, "TON"),
}
MONEY = frozenset({"price_per_token", "worker_fee", "min_proxy_stake", "min_client_stake"})
"""The registry params that are amounts (nanoTON inside, TON on the command line)."""

_HASH_OPS = {
    "add-image": ("image", "add"),
    "del-image": ("image", "del"),
    "add-model": ("model", "add"),
    "del-model": ("model", "del"),
}


# ---- input ---------------------------------------------------------------------------------


def parse_hash(text: str, what: str = "hash") -> bytes:
    """64 hex digits -> 32 bytes; ConfigError otherwise."""
    if not _HASH.fullmatch(text):
        raise ConfigError(f"{what}: expected 64 hex digits (a 32-byte hash), got {text!r}")
    return bytes.fromhex(text)


def _address(text: str, what: str) -> str:
    try:
        return raw_address(text)
    except ChainError:
        raise ConfigError(f"{what}: not a TON address: {text!r}") from None


def _param_overrides(args: argparse.Namespace) -> dict[str, int]:
    out: dict[str, int] = {}
    for flag, (field, limit, _) in _PARAM_FLAGS.items():
        text = getattr(args, field, None)
        if text is None:
            continue
        if field in MONEY:
            value = parse_ton(text, allow_zero=True, what=flag)
        else:
            try:
                value = int(text)
            except ValueError:
                raise ConfigError(f"{flag}: not an integer: {text!r}") from None
        if not 0 <= value < limit:
            raise ConfigError(f"{flag}: out of range (0 .. {limit - 1}), got {value}")
        out[field] = value
    return out


def _checked(params: RegistryParams) -> RegistryParams:
    if params.worker_fee > params.price_per_token:
        raise ConfigError(f"worker fee ({format_ton(params.worker_fee)}) must not exceed the "
                          f"price per token ({format_ton(params.price_per_token)}): the proxy "
                          "would pay out more than it charges")
    return params


def default_params() -> RegistryParams:
    """What ``cocoon up`` deploys: prices from :class:`BillingConfig`, delays and stakes from
    :class:`NetworkParams`."""
    return NetworkParams().registry_params(BillingConfig())


def chain_config(path: str | None, sets: list[str] | None) -> ChainConfig:
    """The ``[chain]`` table of the TOML file at ``path`` plus ``chain.KEY=VALUE`` overrides,
    validated as :class:`ChainConfig`; the embedded wallet defaults to ``owner``."""
    section: dict[str, Any] = {}
    where = "--set"
    if path:
        where = path
        tree = read_toml(path)
        table = tree.get("chain")
        if table is None:
            raise ConfigError(f"{path}: no [chain] table (backend, url, wallet, ...)")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: chain must be a table ([chain])")
        section = dict(table)
    for item in sets or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.startswith("chain.") or key == "chain.":
            raise ConfigError(f"--set expects chain.KEY=VALUE, got {item!r}")
        section[key.removeprefix("chain.")] = value.strip()
    config = build_table(ChainConfig, section, f"{where}[chain]")
    if not config.enabled:
        raise ConfigError("no chain configured: set chain.backend = \"embedded\" (with "
                          "chain.url) or \"ton\" (with chain.mnemonic_file), in the [chain] "
                          "table of -c FILE or with --set chain.KEY=VALUE")
    if config.backend == "embedded" and not config.wallet:
        config = dataclasses.replace(config, wallet=DEFAULT_OWNER_WALLET)
    return config


# ---- argparse ------------------------------------------------------------------------------


def add_registry_arguments(sub: Any) -> None:
    """``cocoon registry ACTION ...`` under the top-level subparsers ``sub``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", help="TOML file whose [chain] table names the chain "
                                               "and the owner's wallet")
    common.add_argument("--set", action="append", metavar="chain.KEY=VALUE",
                        help="override a [chain] key, e.g. --set chain.url=http://...")
    common.add_argument("--json", action="store_true", help="machine-readable output")

    p: argparse.ArgumentParser = sub.add_parser(
        "registry", help="the root registry's owner tool: deploy, show, allow-list and params "
                         "updates, owner change")
    acts = p.add_subparsers(dest="registry_action", required=True, metavar="ACTION")

    def params_flags(q: argparse.ArgumentParser, default: str) -> None:
        for flag, (field, _, text) in _PARAM_FLAGS.items():
            q.add_argument(flag, dest=field, metavar="TON" if field in MONEY else "N",
                           help=f"{text} ({default})")

    q = acts.add_parser("deploy", parents=[common],
                        help="deploy a registry owned by the config's wallet")
    params_flags(q, "default: as `cocoon up` deploys")
    q.add_argument("--image", action="append", default=[], metavar="HASH",
                   help="allowed image hash (64 hex), repeatable")
    q.add_argument("--model", action="append", default=[], metavar="HASH",
                   help="allowed model hash (64 hex), repeatable")

    q = acts.add_parser("show", parents=[common],
                        help="owner, versions, params and allow-lists of a registry")
    q.add_argument("registry", metavar="REGISTRY", help="the registry's address")

    for action, (kind, verb) in _HASH_OPS.items():
        q = acts.add_parser(action, parents=[common],
                            help=f"{'allow' if verb == 'add' else 'disallow'} "
                                 f"{'an' if kind == 'image' else 'a'} {kind} hash")
        q.add_argument("registry", metavar="REGISTRY", help="the registry's address")
        q.add_argument("hash", metavar="HASH", help=f"the {kind} hash, 64 hex digits")

    q = acts.add_parser("set-params", parents=[common],
                        help="update params (unspecified ones keep their current values)")
    q.add_argument("registry", metavar="REGISTRY", help="the registry's address")
    params_flags(q, "default: unchanged")

    q = acts.add_parser("set-owner", parents=[common], help="hand the registry to a new owner")
    q.add_argument("registry", metavar="REGISTRY", help="the registry's address")
    q.add_argument("address", metavar="ADDRESS", help="the new owner's address")


# ---- the actions ---------------------------------------------------------------------------


def _state_report(registry: str, state: Any) -> dict[str, Any]:
    live = set(state.live_proxies())
    return {
        "registry": registry,
        "owner": state.owner,
        "version": state.version,
        "params_version": state.params_version,
        "params": {f"{k}_nanoton" if k in MONEY else k: v
                   for k, v in dataclasses.asdict(state.params).items()},
        "image_hashes": sorted(h.hex() for h in state.image_hashes),
        "model_hashes": sorted(h.hex() for h in state.model_hashes),
        # every listing; "live": staked at least the current minimum, info readable
        "proxies": [{**p.as_json(), "live": p in live} for p in state.proxies],
    }


async def _reworded(nc: Any, registry: str, what: str, send: Callable[[], Any]) -> None:
    """Send an owner op; a refusal is re-raised, same class, saying what was refused and,
    for a wrong sender, who the owner is."""
    try:
        await send()
    except ContractRejected as exc:
        hint = ""
        if isinstance(exc, WrongSender):
            owner = (await read_registry(nc.chain, registry)).owner
            hint = f"; only the owner {owner} may update it, this wallet is {nc.wallet}"
        raise type(exc)(f"{what}: refused by the registry {registry}{hint}",
                        exit_code=exc.exit_code, address=exc.address,
                        result=exc.result) from None


async def _act(args: argparse.Namespace, config: ChainConfig) -> dict[str, Any]:
    action: str = args.registry_action
    # parse every input before touching the chain
    registry = "" if action == "deploy" else _address(args.registry, "REGISTRY")
    overrides = _param_overrides(args) if action in ("deploy", "set-params") else {}
    digest = parse_hash(args.hash, "HASH") if action in _HASH_OPS else b""
    new_owner = _address(args.address, "ADDRESS") if action == "set-owner" else ""
    images = [parse_hash(h, "--image") for h in getattr(args, "image", [])]
    models = [parse_hash(h, "--model") for h in getattr(args, "model", [])]
    deploy_params = (_checked(dataclasses.replace(default_params(), **overrides))
                     if action == "deploy" else None)
    if action == "set-params" and not overrides:
        raise ConfigError("set-params: nothing to change (give --price, --worker-fee, ... "
                          "--min-client-stake)")

    nc = await NodeChain.open(config)
    try:
        report: dict[str, Any] = {"action": action}
        if deploy_params is not None:
            # the address follows from the initial data: the same deploy twice is one registry
            registry = m.registry_address(nc.wallet, deploy_params, images, models,
                                          getattr(nc.chain, "contracts_dir", None))
            reader: Any = nc.chain  # both backends read accounts; the Chain protocol does not
            existed = (await reader.account(registry)).get("state") == "active"
            if not existed:
                res = await nc.chain.deploy_registry(nc.wallet, deploy_params, images, models,
                                                     sender=nc.sender)
                registry = res.to
            report["existed"] = existed
        elif action in _HASH_OPS:
            kind, verb = _HASH_OPS[action]
            body = getattr(m, f"{verb}_{kind}_hash_body")(digest)
            report["hash"] = digest.hex()
            await _reworded(nc, registry, f"{action} {digest.hex()}",
                            lambda: nc.chain.registry_update(registry, body, sender=nc.sender))
        elif action == "set-params":
            current = (await read_registry(nc.chain, registry)).params
            params = _checked(dataclasses.replace(current, **overrides))
            report["changed"] = sorted(overrides)
            await _reworded(nc, registry, "set-params", lambda: nc.chain.registry_update(
                registry, m.update_params_body(params), sender=nc.sender))
        elif action == "set-owner":
            await _reworded(nc, registry, f"set-owner {new_owner}", lambda: nc.chain
                            .registry_update(registry, m.change_owner_body(new_owner),
                                             sender=nc.sender))
        report.update(_state_report(registry, await read_registry(nc.chain, registry)))
        return report
    finally:
        await nc.aclose()


def _print_text(report: dict[str, Any]) -> None:
    action = report["action"]
    if action == "deploy":
        print(f"registry {report['registry']} "
              f"{'already deployed' if report['existed'] else 'deployed'}")
    elif action != "show":
        print(f"{action}: done")
    print(f"{'registry':<20} {report['registry']}")
    print(f"{'owner':<20} {report['owner']}")
    print(f"{'version':<20} {report['version']} (params version {report['params_version']})")
    for k, v in report["params"].items():
        if k.endswith("_nanoton"):
            k, v = k.removesuffix("_nanoton"), format_ton(v)
        print(f"  {k:<18} {v}")
    for kind in ("image", "model"):
        hashes = report[f"{kind}_hashes"]
        empty = "none: no image is allowed" if kind == "image" else "none: any model"
        print(f"{kind + ' hashes':<20} {len(hashes) or empty}")
        for h in hashes:
            print(f"  {h}")
    proxies = report["proxies"]
    print(f"{'proxies':<20} {len(proxies) or 'none listed'}")
    for p in proxies:
        where = (f"clients {p['client_endpoint']}, workers {p['worker_endpoint']}"
                 if p["client_endpoint"] is not None else p.get("problem", ""))
        models = ", ".join(p["models"] or []) or "any model"
        state = "" if p["live"] else "  (not used: " + (
            "stake below the minimum" if p["client_endpoint"] is not None else "unreadable") + ")"
        print(f"  {p['stake_contract']}  stake {format_ton(p['stake_nanoton'])}, {where}, "
              f"{models}{state}")


def run_registry(args: argparse.Namespace) -> int:
    """Run ``cocoon registry ACTION``; CocoonError subclasses reach the caller."""
    config = chain_config(args.config, args.set)
    report = asyncio.run(_act(args, config))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_text(report)
    return 0
