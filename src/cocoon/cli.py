"""``cocoon`` command line: run a role, or a whole local network (``cocoon up``).

The top of the command line: it assembles every subcommand's arguments from
:mod:`cocoon.commands` (and ``cocoon bench`` from :mod:`cocoon.benchmark`, a face above the
commands) and dispatches to them; the subcommands themselves live there. Building the parser
loads no aiohttp: ``cocoon --help`` and the short commands stay quick, and the servers (a
role's node, the chain service, the bench) are imported when they run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cocoon.apps import add_telegram_arguments, run_telegram
from cocoon.benchmark import add_bench_arguments
from cocoon.commands.attest import add_attest_arguments, run_attest
from cocoon.commands.chain import add_chain_arguments
from cocoon.commands.doctor import add_doctor_arguments, run_doctor
from cocoon.commands.model_hash import add_model_hash_arguments, run_model_hash
from cocoon.commands.receipt import add_receipt_arguments, run_receipt
from cocoon.commands.registry import add_registry_arguments, run_registry
from cocoon.commands.roles import ROLES, add_role_arguments, run_role_action
from cocoon.commands.up import add_up_arguments, run_up
from cocoon.errors import CocoonError

__all__ = ["main"]

_DESCRIPTION = "``cocoon`` command line: run a role, or a whole local network (``cocoon up``)."


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cocoon", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    add_role_arguments(sub)

    up = sub.add_parser("up", help="start a whole local network: proxy, workers, client")
    add_up_arguments(up)
    add_attest_arguments(sub)
    add_chain_arguments(sub)
    add_registry_arguments(sub)
    add_model_hash_arguments(sub)
    add_receipt_arguments(sub)
    add_doctor_arguments(sub)
    add_telegram_arguments(sub)
    bench = sub.add_parser("bench", help="benchmark the chain against the engine served directly")
    add_bench_arguments(bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in ROLES and args.action != "run":
            return run_role_action(args)
        if args.command in ROLES:
            _setup_logging(args.verbose)
            from cocoon.commands.serve import serve_role  # lazy: nodes + aiohttp, ~125 ms

            return serve_role(args)
        if args.command == "chain":
            _setup_logging(args.verbose)
            from cocoon.commands.chain_service import run_chain  # lazy: aiohttp, ~110 ms

            return run_chain(args)
        if args.command == "registry":
            return run_registry(args)
        if args.command == "up":
            return run_up(args)
        if args.command == "attest":
            return run_attest(args)
        if args.command == "model-hash":
            return run_model_hash(args)
        if args.command == "receipt":
            return run_receipt(args)
        if args.command == "doctor":
            return run_doctor(args)
        if args.command == "telegram":
            _setup_logging(args.verbose + 1)
            return run_telegram(args)
        if args.command == "bench":
            from cocoon.benchmark.suite import run_bench  # lazy: aiohttp load generator, ~115 ms

            return int(run_bench(args))
    except CocoonError as exc:
        print(f"cocoon {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
