"""Apps built on a cocoon client node, as its users would build them: ``cocoon telegram``
(:mod:`cocoon.apps.telegram`, aiogram 3, imported only when it runs)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

__all__ = ["add_telegram_arguments", "run_telegram"]


def add_telegram_arguments(sub: Any) -> None:
    p = sub.add_parser(
        "telegram", help="a Telegram bot answering through a client node",
        description="A Telegram bot (aiogram 3) that answers private messages, and group "
                    "messages that mention it or reply to it, through a cocoon client "
                    "node's OpenAI API, streaming the answer by editing its message. "
                    "/start, /reset, /model, /balance.")
    p.add_argument("--token-file", required=True, metavar="FILE",
                   help="the bot token from @BotFather, in a file only you can read (0600)")
    p.add_argument("--client", default="http://127.0.0.1:10000", metavar="URL",
                   help="the client node (default http://127.0.0.1:10000, as cocoon up)")
    p.add_argument("--api-url", default="", metavar="URL",
                   help="another Bot API server (e.g. a self-hosted telegram-bot-api); "
                        "default: Telegram's")
    p.add_argument("--model", default="", help="default: the first the client offers")
    p.add_argument("--history", type=int, default=10, metavar="TURNS",
                   help="turns kept per chat (default 10)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log more (-vv: debug); message text is never logged")


def run_telegram(args: argparse.Namespace) -> int:
    from cocoon.apps.telegram import BotConfig, read_token, run_bot  # lazy: aiogram, ~300 ms

    if args.history < 1:
        raise SystemExit("cocoon telegram: --history must be at least 1")
    config = BotConfig(token=read_token(args.token_file), client=args.client.rstrip("/"),
                       api_url=args.api_url, model=args.model, history=args.history)
    logging.getLogger("aiogram.event").setLevel(logging.WARNING)  # it logs per update

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_bot(config, stop)

    asyncio.run(main())
    return 0
