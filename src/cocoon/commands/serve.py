"""``cocoon proxy|worker|client [run]``: build the role's node from its config and serve
until SIGINT/SIGTERM, writing the bound addresses to ``--ready-file`` once it serves."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from cocoon import config as cfg
from cocoon.commands.roles import overrides
from cocoon.engines import build_engine
from cocoon.nodes.client.node import ClientNode
from cocoon.nodes.common import run_until_signal, write_ready_file
from cocoon.nodes.proxy.node import ProxyNode
from cocoon.nodes.worker.node import WorkerNode
from cocoon.nodes.worker.training import worker_training

__all__ = ["serve_role"]

log = logging.getLogger("cocoon")


def serve_role(args: argparse.Namespace) -> int:
    """Run ``args.command`` (proxy, worker or client) until a signal stops it."""
    asyncio.run(_run_role(args))
    return 0


def _ready_writer(path: str | None) -> Any:
    def on_ready(node: Any) -> None:
        info = {"role": node.snapshot()["role"], "http": node.http.url}
        if hasattr(node, "port") and node.port:
            info["listen_port"] = node.port
        write_ready_file(path, info)

    return on_ready


async def _run_role(args: argparse.Namespace) -> None:
    if args.command == "proxy":
        pc = cfg.load(cfg.ProxyConfig, args.config,
                      overrides(args, {"listen": "listen", "http": "http"}))
        proxy = ProxyNode(pc)
        await run_until_signal(lambda stop: proxy.run(stop, _ready_writer(args.ready_file)))
    elif args.command == "worker":
        wc = cfg.load(cfg.WorkerConfig, args.config, overrides(args, {
            "proxy": "proxy", "http": "http", "engine": "engine.kind",
            "upstream": "engine.openai-http.base_url", "max_concurrent": "max_concurrent",
            "model_hash": "engine.openai-http.model_hash",
            "drain_timeout": "drain_timeout_s", "registry": "chain.registry"}))
        log.info("loading engine %s", wc.engine.kind)
        engine = await build_engine(wc.engine)
        log.info("engine %s ready: %s", engine.name, ", ".join(engine.models))
        worker = WorkerNode(wc, engine, training=worker_training(wc, engine))
        await run_until_signal(lambda stop: worker.run(stop, _ready_writer(args.ready_file)))
    elif args.command == "client":
        cc = cfg.load(cfg.ClientConfig, args.config,
                      overrides(args, {"proxy": "proxy", "http": "http"}))
        client = ClientNode(cc)
        await run_until_signal(lambda stop: client.run(stop, _ready_writer(args.ready_file)))
